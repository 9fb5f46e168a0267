"""The backbone as ONNX, the portable artifact: onnxruntime runs it anywhere, TensorRT builds its
engine from it on the target. Host side (imports onnx and the exporter)."""

from __future__ import annotations

import os
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch import nn

from edgecl import __version__
from edgecl.core import bundle as bundles
from edgecl.core.embedding import EmbedBatch
from edgecl.errors import EdgeclError
from edgecl.host.heads_onnx import HeadsExport, export_checked
from edgecl.core.images import UnreadableImage, find_images, load_image
from edgecl.core.preprocess import PreprocessConfig, preprocess
from edgecl.host.targets import load_target
from edgecl.runtime.ort import INPUT_NAME, OUTPUT_NAME, ort_embed_function, ort_session
from edgecl.runtime.service import load_method

OPSET = 18  # >= 17 keeps LayerNormalization one op
PARITY_ATOL = 1e-4
PARITY_IMAGES = 32


def export_onnx(model: nn.Module, input_size: tuple[int, int, int], path: Path) -> Path:
    """Export with a dynamic batch axis, then run the ONNX checker; written aside and renamed."""
    import onnx

    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    dummy = torch.zeros(2, *input_size)
    axes = {INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            torch.onnx.export(model, (dummy,), str(tmp), input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                              dynamic_axes=axes, opset_version=OPSET, dynamo=False)
        except Exception:  # noqa: BLE001 - models the TorchScript exporter cannot trace go through torch.export
            batch = torch.export.Dim("batch", min=1)
            torch.onnx.export(model, (dummy,), str(tmp), input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                              dynamic_shapes=({0: batch},), opset_version=OPSET, dynamo=True, external_data=False)
    onnx.checker.check_model(str(tmp))
    os.replace(tmp, path)
    return path


def parity(model: nn.Module, onnx_path: Path, images: np.ndarray) -> float:
    """Max abs difference between PyTorch and onnxruntime (CPU) embeddings of `images`."""
    with torch.no_grad():
        expected = model(torch.from_numpy(images)).numpy()
    got = ort_session(onnx_path, ["CPUExecutionProvider"]).run(None, {INPUT_NAME: images})[0]
    return float(np.abs(expected - got).max())


def host_embed_function(model: nn.Module, input_size: tuple[int, int, int], backbone_sha256: str, cache_dir: Path) -> tuple[EmbedBatch, str]:
    """The backbone through onnxruntime for bulk embedding on the host (several times faster than
    eager PyTorch on a CPU), exported once per backbone into `cache_dir`; PyTorch if that fails."""
    from edgecl.host.backbones import embed_function

    path = Path(cache_dir) / f"{backbone_sha256[:32]}-{'x'.join(map(str, input_size))}.onnx"
    try:
        if not path.is_file():
            path.parent.mkdir(parents=True, exist_ok=True)
            export_onnx(model, input_size, path)
        probe = np.random.default_rng(0).standard_normal((2, *input_size)).astype(np.float32)
        if parity(model, path, probe) > PARITY_ATOL:
            raise EdgeclError("onnxruntime output differs from PyTorch")
        return ort_embed_function(ort_session(path, ["CPUExecutionProvider"])), "onnxruntime"
    except Exception:  # noqa: BLE001 - speed only: any failure falls back to the exact PyTorch path
        return embed_function(model), "torch"


@dataclass
class ExportReport:
    file: Path
    size_bytes: int
    target: str
    max_abs_diff: float
    parity_images: int
    real_images: bool
    seconds: float
    heads: HeadsExport


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


def export_bundle(bundle_path: Path, target: str, images: Sequence[Path] = (), *, lock_timeout: float = 60.0) -> ExportReport:
    """Write backbone.onnx into the bundle for `target`, after the checker and a parity check
    against PyTorch (on `images` when given, else on random inputs), and heads.onnx, checked on those
    inputs' embeddings (or left out, saying why); old engines are dropped."""
    start = time.perf_counter()
    profile = load_target(target)
    bundle = bundles.Bundle.open(bundle_path)
    from edgecl.host.backbones import rebuild

    model = rebuild(bundle.manifest.backbone, bundle.backbone_weights(), exportable=True)
    config = PreprocessConfig.from_dict(bundle.manifest.preprocess)
    inputs, real = _parity_inputs(images, config)
    with tempfile.TemporaryDirectory() as scratch:
        onnx_path = export_onnx(model, config.input_size, Path(scratch) / bundles.ONNX_FILE)
        diff = parity(model, onnx_path, inputs)
        if diff > PARITY_ATOL:
            raise EdgeclError(f"{bundle_path}: the ONNX backbone differs from PyTorch by {diff:.2e} (> {PARITY_ATOL:g}); not exported")
        data = onnx_path.read_bytes()
    with torch.no_grad():
        heads = export_checked(load_method(bundle), model(torch.from_numpy(inputs)))
    import onnx

    with bundles.update(bundle_path, lock_timeout) as change:
        if change.manifest.backbone["sha256"] != bundle.manifest.backbone["sha256"]:
            raise EdgeclError(f"{bundle_path}: its backbone changed during the export; run export again")
        change.manifest.export = {
            **change.write_file(bundles.ONNX_FILE, data),
            "opset": OPSET, "target": profile.name, "profile": profile.to_dict(),
            "parity": {"max_abs_diff": diff, "images": len(inputs), "real_images": real},
            "exported": bundles.now(), "versions": {"edgecl": __version__, "torch": torch.__version__, "onnx": onnx.__version__},
            "heads": ({**change.write_file(bundles.HEADS_ONNX_FILE, heads.data), "parity": {"max_abs_diff": heads.max_abs_diff}}
                      if heads.data is not None else {"error": heads.error}),
        }
        change.manifest.engines = {}  # built from the previous ONNX, if any
    return ExportReport(Path(bundle_path) / change.manifest.export["file"], len(data), profile.name, diff, len(inputs), real, time.perf_counter() - start, heads)
