"""The backbone as ONNX, the portable artifact: onnxruntime runs it anywhere, TensorRT builds its
engine from it on the target. Host side (imports onnx and the exporter)."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from edgecl.core.embedding import EmbedBatch
from edgecl.core.files import written_aside
from edgecl.errors import EdgeclError
from edgecl.runtime.ort import INPUT_NAME, OUTPUT_NAME, ort_embed_function, ort_session

OPSET = 18  # >= 17 keeps LayerNormalization one op
BACKBONE_PARITY_ATOL = 1e-4  # on the embeddings, PyTorch against onnxruntime


def export_onnx(model: nn.Module, input_size: tuple[int, int, int], path: Path) -> Path:
    """Export with a dynamic batch axis, then run the ONNX checker; written aside and renamed."""
    import onnx

    path = Path(path)
    dummy = torch.zeros(2, *input_size)
    axes = {INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}}
    with written_aside(path, durable=False) as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            torch.onnx.export(
                model,
                (dummy,),
                str(tmp),
                input_names=[INPUT_NAME],
                output_names=[OUTPUT_NAME],
                dynamic_axes=axes,
                opset_version=OPSET,
                dynamo=False,
            )
        except Exception:  # noqa: BLE001 - models the TorchScript exporter cannot trace go through torch.export
            batch = torch.export.Dim("batch", min=1)
            torch.onnx.export(
                model,
                (dummy,),
                str(tmp),
                input_names=[INPUT_NAME],
                output_names=[OUTPUT_NAME],
                dynamic_shapes=({0: batch},),
                opset_version=OPSET,
                dynamo=True,
                external_data=False,
            )
        onnx.checker.check_model(str(tmp))
    return path


def parity(model: nn.Module, onnx_path: Path, images: np.ndarray) -> float:
    """Max abs difference between PyTorch and onnxruntime (CPU) embeddings of `images`."""
    with torch.no_grad():
        expected = model(torch.from_numpy(images)).numpy()
    got = ort_session(onnx_path, ["CPUExecutionProvider"]).run(None, {INPUT_NAME: images})[0]
    return float(np.abs(expected - got).max())


def host_embed_function(
    model: nn.Module, input_size: tuple[int, int, int], backbone_sha256: str, cache_dir: Path
) -> tuple[EmbedBatch, str]:
    """The backbone through onnxruntime for bulk embedding on the host (several times faster than
    eager PyTorch on a CPU), exported once per backbone into `cache_dir`; PyTorch if that fails."""
    from edgecl.host.backbones import embed_function

    path = Path(cache_dir) / f"{backbone_sha256[:32]}-{'x'.join(map(str, input_size))}.onnx"
    try:
        if not path.is_file():
            path.parent.mkdir(parents=True, exist_ok=True)
            export_onnx(model, input_size, path)
        probe = np.random.default_rng(0).standard_normal((2, *input_size)).astype(np.float32)
        if parity(model, path, probe) > BACKBONE_PARITY_ATOL:
            raise EdgeclError("onnxruntime output differs from PyTorch")
        return ort_embed_function(ort_session(path, ["CPUExecutionProvider"])), "onnxruntime"
    except Exception:  # noqa: BLE001 - speed only: any failure falls back to the exact PyTorch path
        return embed_function(model), "torch"
