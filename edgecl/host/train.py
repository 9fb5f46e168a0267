"""`edgecl train`: the host's first session, from an image folder to a new bundle.

A method with a slow learner (SAFE, edgecl) first tunes the backbone on these images and merges the
tuning into it; the bundle stores that backbone, so export and the device see a plain timm model
(plus any adapters that cannot merge, recorded under backbone.tuner). InfLoRA adapts the backbone
on these images as its first session, merges it, and keeps its subspace memory in the bundle for
later host sessions."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgecl.core import bundle as bundles
from edgecl.core.bundle import Manifest
from edgecl.core.cache import cache_root
from edgecl.core.images import paths_and_labels, scan_class_folders
from edgecl.core.methods import method_class, method_config
from edgecl.core.session import embed_classes, record_session, run_session
from edgecl.errors import EdgeclError, param
from edgecl.host.backbone_onnx import host_embed_function
from edgecl.host.backbones import DEFAULT_BACKBONE, create_backbone, embedding_key, preprocess_config
from edgecl.host.devices import resolve_device
from edgecl.host.slow_learner import check_slow_learner
from edgecl.host.subspace import SubspaceMemory

log = logging.getLogger(__name__)


@dataclass
class TrainReport:
    bundle: Path
    classes: list[str]
    images: int
    skipped: list[str]  # "path: reason" of images that could not be read
    backbone: str
    embedding_dim: int
    method: str
    seconds_heads: float
    slow_learner: dict | None  # its stats, when the method tuned the backbone


def setting_texts(settings: dict[str, Any] | None) -> dict[str, str]:
    """Method settings as the texts `MethodConfig.setting` parses: Python values are welcome too."""
    return {
        key: (str(value).lower() if isinstance(value, bool) else str(value)) for key, value in (settings or {}).items()
    }


def train(
    data: Path,
    out: Path,
    *,
    backbone: str = DEFAULT_BACKBONE,
    weights: Path | None = None,
    random_init: bool = False,
    img_size: int | None = None,
    global_pool: str | None = None,
    method: str = "edgecl",
    epochs: int | None = None,
    settings: dict[str, Any] | None = None,
    device: str | None = None,
    seed: int = 0,
    force: bool = False,
    lock_timeout: float = 60.0,
    show_progress: bool = True,
) -> TrainReport:
    """Session 0 on DATA/<class>/<images>: a new bundle at `out`."""
    bundles.check_creatable(out, force)
    device = resolve_device(device)
    settings = setting_texts(settings)
    classes = scan_class_folders(data)
    config = method_config(method, epochs=epochs, settings=settings)
    if epochs is not None and not config.has_setting("epochs"):
        raise EdgeclError(f"{param('epochs')}: method {method} trains nothing by epochs")
    check_slow_learner(config.slow_learner())
    config.check_session(len(classes))
    model, spec = create_backbone(
        backbone, weights, random_init=random_init, img_size=img_size, global_pool=global_pool
    )
    learner = method_class(method)(
        config, spec.embedding_dim
    )  # before any training: a bad setting fails here, not after it
    preprocess = preprocess_config(model)
    backbone_info = spec.to_dict()
    paths, labels = paths_and_labels(classes)
    slow = config.slow_learner()
    if slow is not None:
        from edgecl.host.slow_learner import train_slow_learner

        if device == "cpu":
            log.info(
                "the slow learner trains %d epoch(s) on %d images through the backbone on the CPU, which takes long "
                "(the bar's eta says how long; on 2 cores an epoch per 600 images takes about 70 s with Lite0, 300 s "
                "with a ViT-S at 224 px); a GPU host takes "
                "minutes, and fewer slow-learner epochs (0: none) take less",
                slow.epochs,
                len(paths),
            )

        model, stats = train_slow_learner(
            model, paths, labels, preprocess, slow, device=device, seed=seed, show_progress=show_progress
        )
        backbone_info["tuner"] = stats.pop("structure")
        backbone_info["slow_learner"] = stats
    extra_files: dict[str, bytes] = {}
    adapted = config.session_backbone()
    if adapted is not None:
        from edgecl.host.inflora_training import train_session

        memory = SubspaceMemory.from_config(adapted)
        model, stats = train_session(
            model,
            memory,
            paths,
            labels,
            preprocess,
            adapted,
            session=0,
            device=device,
            seed=seed,
            show_progress=show_progress,
        )
        memory_bytes = bundles.tensors_to_bytes(memory.state_dict())
        extra_files[bundles.INFLORA_MEMORY_FILE] = memory_bytes
        backbone_info["inflora"] = {
            **stats,
            "device": device,
            "memory": {"file": bundles.INFLORA_MEMORY_FILE, "sha256": bundles.sha256_bytes(memory_bytes)},
        }
    backbone_bytes = bundles.tensors_to_bytes(model.state_dict())
    backbone_entry = {"file": bundles.BACKBONE_FILE, "sha256": bundles.sha256_bytes(backbone_bytes)}
    embed, _ = host_embed_function(
        model, preprocess.input_size, embedding_key(backbone_entry["sha256"], spec.model_kwargs), cache_root() / "onnx"
    )
    embedded = embed_classes(classes, embed, preprocess, show_progress=show_progress)
    session = run_session(learner, embedded, [c.name for c in classes], seed, 0, show_progress=show_progress)
    heads_entry, heads_bytes = bundles.content_named(bundles.HEADS_STEM, learner.state_dict())
    manifest = Manifest(
        backbone={**backbone_info, **backbone_entry},
        preprocess=preprocess.to_dict(),
        method={"name": method, "config": learner.config.to_dict()},
        heads={},
        seed=seed,
    )
    record_session(manifest, learner, heads_entry, session)
    files = {bundles.BACKBONE_FILE: backbone_bytes, heads_entry["file"]: heads_bytes, **extra_files}
    created = bundles.create(out, manifest, files, force=force, lock_timeout=lock_timeout)
    return TrainReport(
        created.path,
        created.manifest.class_names,
        session.images,
        embedded.skipped,
        spec.name,
        spec.embedding_dim,
        method,
        session.stats["seconds"],
        backbone_info.get("slow_learner"),
    )
