"""`edgecl adapt`: a host session for a bundle whose method adapts the backbone every session
(InfLoRA): the backbone is adapted on the new classes' images outside the old sessions' input
subspace (the bundle's memory), merged, and the heads learn the classes on its embeddings.

The bundle gets a new backbone file and memory, all in one commit; its ONNX export and engines
describe the old backbone, so they are dropped: export again before going back to the device.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from edgecl.core import bundle as bundles
from edgecl.core.bundle import Bundle
from edgecl.core.images import paths_and_labels, scan_new_classes
from edgecl.core.preprocess import PreprocessConfig
from edgecl.core.session import check_new_names, embed_classes, load_method, record_session, run_session, stored_config
from edgecl.errors import EdgeclError
from edgecl.host.backbones import embed_function, rebuild
from edgecl.host.devices import resolve_device
from edgecl.host.subspace import SubspaceMemory


@dataclass
class AdaptResult:
    session: bundles.SessionEntry
    skipped: list[str]
    backbone: dict
    dropped_export: bool


def adapt(
    bundle_path: Path,
    folder: Path,
    *,
    label: str | None = None,
    device: str | None = None,
    lock_timeout: float = 60.0,
    show_progress: bool = True,
) -> AdaptResult:
    from edgecl.host.inflora_training import train_session

    device = resolve_device(device)
    bundle = Bundle.open(bundle_path)
    m = bundle.manifest
    config = stored_config(bundle)
    adapted = config.session_backbone()
    if adapted is None or "inflora" not in m.backbone:
        raise EdgeclError(
            f"{bundle_path}: its method {m.method['name']} keeps the backbone fixed after training; use `edgecl learn`"
        )
    classes = scan_new_classes(folder, label)
    check_new_names(classes, m, label)
    config.check_session(len(classes))
    memory = SubspaceMemory.from_config(adapted).load_state_dict(bundle.read_tensors(m.backbone["inflora"]["memory"]))
    model = rebuild(m.backbone, bundle.backbone_weights())
    preprocess = PreprocessConfig.from_dict(m.preprocess)
    paths, labels = paths_and_labels(classes)
    index = len(m.sessions)
    # the threshold schedule counts the memory's sessions: device `learn` sessions never touch it
    backbone_session = 1 + len(m.backbone.get("inflora_sessions", []))
    model, stats = train_session(
        model,
        memory,
        paths,
        labels,
        preprocess,
        adapted,
        session=backbone_session,
        device=device,
        seed=m.seed,
        show_progress=show_progress,
    )
    data = embed_classes(classes, embed_function(model), preprocess, show_progress=show_progress)
    with bundles.update(bundle_path, lock_timeout) as change:
        if change.manifest.backbone != m.backbone or len(change.manifest.sessions) != index:
            raise EdgeclError(f"{bundle_path}: changed while adapting; run adapt again")
        change.manifest.remember(f"adapt of session {index} ({', '.join(c.name for c in classes)})")  # for `undo`
        method = load_method(change.bundle, learning=True)
        session = run_session(method, data, [c.name for c in classes], m.seed, index, show_progress=show_progress)
        backbone_entry = change.write_tensors("backbone", model.state_dict())
        memory_entry = change.write_tensors("inflora_memory", memory.state_dict())
        history = [
            *m.backbone.get("inflora_sessions", []),
            {k: v for k, v in m.backbone["inflora"].items() if k != "memory"},
        ]
        change.manifest.backbone = {
            **m.backbone,
            **backbone_entry,
            "inflora": {**stats, "device": device, "memory": memory_entry},
            "inflora_sessions": history,
        }
        dropped = bool(change.manifest.export or change.manifest.engines)
        change.manifest.export, change.manifest.engines = None, {}
        record_session(change.manifest, method, change.write_tensors(bundles.HEADS_STEM, method.state_dict()), session)
    return AdaptResult(session, data.skipped, change.manifest.backbone, dropped)
