"""The backbone as ONNX, the portable artifact: onnxruntime runs it anywhere, TensorRT builds its
engine from it on the target. Host side (imports onnx and the exporter)."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from edgecl import __version__
from edgecl.core import bundle as bundles
from edgecl.core.images import UnreadableImage, find_images, load_image
from edgecl.core.preprocess import PreprocessConfig, preprocess
from edgecl.core.progress import progress_bar
from edgecl.core.session import load_method
from edgecl.errors import EdgeclError
from edgecl.host.backbone_onnx import BACKBONE_PARITY_ATOL, OPSET, export_onnx, parity
from edgecl.host.heads_onnx import HeadsExport, export_checked
from edgecl.host.targets import load_target

PARITY_IMAGES = 32


@dataclass
class ExportReport:
    file: Path
    size_bytes: int
    target: str
    max_abs_diff: float
    parity_images: int
    real_images: bool
    seconds: float  # the whole export, heads included
    heads: HeadsExport
    profile: dict  # the target profile, as the manifest records it


def _parity_inputs(images: Sequence[Path], config: PreprocessConfig) -> tuple[np.ndarray, bool]:
    arrays = []
    for path in find_images(images) if images else []:
        try:
            arrays.append(preprocess(load_image(path), config))
        except UnreadableImage:
            continue
        if len(arrays) == PARITY_IMAGES:
            break
    if arrays:
        return np.stack(arrays), True
    return np.random.default_rng(0).standard_normal((4, *config.input_size)).astype(np.float32), False


def export_bundle(
    bundle_path: Path,
    target: str,
    images: Sequence[Path] = (),
    *,
    lock_timeout: float = 60.0,
    show_progress: bool = False,
) -> ExportReport:
    """Write backbone.onnx into the bundle for `target`, after the checker and a parity check
    against PyTorch (on `images` when given, else on random inputs), and heads.onnx, checked on those
    inputs' embeddings (or left out, saying why); old engines are dropped."""
    start = time.perf_counter()
    profile = load_target(target)
    bundle = bundles.Bundle.open(bundle_path)
    from edgecl.host.backbones import rebuild

    with progress_bar("export", 5, enabled=show_progress, unit="steps") as advance:
        advance(0, step="the backbone from the bundle")
        model = rebuild(bundle.manifest.backbone, bundle.backbone_weights(), exportable=True)
        config = PreprocessConfig.from_dict(bundle.manifest.preprocess)
        inputs, real = _parity_inputs(images, config)
        advance(step="ONNX export")
        with bundles.scratch_beside(bundle_path) as scratch:  # not $TMPDIR: the next writer removes a killed one's
            onnx_path = export_onnx(model, config.input_size, Path(scratch) / bundles.ONNX_FILE)
            advance(step=f"parity with PyTorch on {len(inputs)} inputs")
            diff = parity(model, onnx_path, inputs)
            if diff > BACKBONE_PARITY_ATOL:
                raise EdgeclError(
                    f"{bundle_path}: the ONNX backbone differs from PyTorch by {diff:.2e} "
                    f"(> {BACKBONE_PARITY_ATOL:g}); not exported"
                )
            data = onnx_path.read_bytes()
        advance(step="heads.onnx")
        with torch.no_grad():
            heads = export_checked(load_method(bundle), model(torch.from_numpy(inputs)))
        advance(step="writing the bundle")
        record = {
            "opset": OPSET,
            "target": profile.name,
            "profile": profile.to_dict(),
            "parity": {"max_abs_diff": diff, "images": len(inputs), "real_images": real},
        }
        change = _commit(bundle_path, bundle.manifest.backbone["sha256"], record, data, heads, lock_timeout)
        advance(step="done")
    return ExportReport(
        Path(bundle_path) / change.manifest.export["file"],
        len(data),
        profile.name,
        diff,
        len(inputs),
        real,
        time.perf_counter() - start,
        heads,
        profile.to_dict(),
    )


def _commit(
    bundle_path: Path, backbone_sha: str, record: dict, data: bytes, heads: HeadsExport, lock_timeout: float
) -> None:
    import onnx

    with bundles.update(bundle_path, lock_timeout) as change:
        if change.manifest.backbone["sha256"] != backbone_sha:
            raise EdgeclError(f"{bundle_path}: its backbone changed during the export; run export again")
        change.manifest.export = {
            **change.write_file(bundles.ONNX_FILE, data),
            **record,
            "exported": bundles.now(),
            "versions": {"edgecl": __version__, "torch": torch.__version__, "onnx": onnx.__version__},
            "heads": (
                {
                    **change.write_file(bundles.HEADS_ONNX_FILE, heads.data),
                    "parity": {"max_abs_diff": heads.max_abs_diff},
                }
                if heads.data is not None
                else {"error": heads.error}
            ),
        }
        change.manifest.engines = {}  # built from the previous ONNX, if any
    return change
