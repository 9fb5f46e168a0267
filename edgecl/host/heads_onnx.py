"""The heads' inference as ONNX (heads.onnx), run by onnxruntime on the device (edgecl/runtime/heads.py).
Host side: imports the exporter and onnx.

The graph maps (embeddings, the method's tensors) to class probabilities; the tensors are inputs,
not constants, and every axis that grows with sessions or classes is dynamic, so `learn` on the
device changes the tensors it binds, never the graph. Which axes grow is found by building the
method's empty modules for one and for two more sessions and classes than it has, and comparing
the shapes. Tensors inference does not read (G, Q, training statistics) are left out of the graph.
"""

from __future__ import annotations

import copy
import logging
import time
import warnings
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from edgecl.core.methods import ContinualMethod
from edgecl.host.backbone_onnx import OPSET
from edgecl.runtime.heads import FEATURES, PROBABILITIES, OrtHeads

HEADS_PARITY_ATOL = 1e-5  # on the probabilities, PyTorch against onnxruntime, at export


class _Inference(nn.Module):
    """method(features) with its tensors taken from the arguments."""

    def __init__(self, method: ContinualMethod, names: list[str]) -> None:
        super().__init__()
        self.method, self.names = method, names

    def forward(self, features: torch.Tensor, *tensors: torch.Tensor) -> torch.Tensor:
        return torch.func.functional_call(self.method, dict(zip(self.names, tensors)), (features,))


def _grown(structure: Any, by: int) -> Any:
    """The structure with every count (sessions, classes) `by` larger."""
    if isinstance(structure, dict):
        return {key: _grown(value, by) for key, value in structure.items()}
    return structure + by if isinstance(structure, int) and not isinstance(structure, bool) else structure


def _empty_state(method: ContinualMethod, structure: dict[str, Any]) -> dict[str, torch.Tensor]:
    empty = type(method)(method.config, method.embedding_dim)
    empty.build(structure)
    return empty.state_dict()


def _traceable(method: ContinualMethod) -> ContinualMethod:
    """A copy whose empty buffers have zero strides: torch.export fails cloning an empty tensor whose
    strides reach past its storage, as torch.zeros(0, 0, D) has (a switched-off part's buffer)."""
    result = copy.deepcopy(method)
    for name, buffer in list(result.named_buffers()):
        if buffer.numel() == 0:
            path, _, leaf = name.rpartition(".")
            result.get_submodule(path)._buffers[leaf] = torch.empty_strided(
                buffer.shape, (0,) * buffer.dim(), dtype=buffer.dtype
            )
    return result


def _prune_unused_inputs(model: Any) -> None:
    used = {name for node in model.graph.node for name in node.input}
    kept = [i for i in model.graph.input if i.name in used]
    del model.graph.input[:]
    model.graph.input.extend(kept)


def export_heads(method: ContinualMethod) -> bytes:
    """heads.onnx for `method` (its config and kind of structure; any number of sessions and classes)."""
    import onnx

    method.eval()
    structure = method.structure()
    example, further = _empty_state(method, _grown(structure, 1)), _empty_state(method, _grown(structure, 2))
    names = [n for n, t in example.items() if t.numel()]  # an empty tensor (a switched-off part) stays the module's own
    growing = tuple(
        {
            axis: torch.export.Dim.DYNAMIC
            for axis, (a, b) in enumerate(zip(example[n].shape, further[n].shape))
            if a != b
        }
        for n in names
    )
    features = torch.zeros(2, method.embedding_dim)  # 2, not 1: torch.export fixes axes of size 0 or 1
    torch_log = logging.getLogger("torch")
    level = torch_log.level
    torch_log.setLevel(logging.CRITICAL)  # a failed export is reported by export_checked in one line
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            program = torch.export.export(
                _Inference(_traceable(method), names),
                (features, *(example[n] for n in names)),
                dynamic_shapes=({0: torch.export.Dim.DYNAMIC}, growing),
                strict=True,
            )
            onnx_program = torch.onnx.export(
                program,
                input_names=[FEATURES, *names],
                output_names=[PROBABILITIES],
                opset_version=OPSET,
                dynamo=True,
                external_data=False,
                verbose=False,
            )
    finally:
        torch_log.setLevel(level)
    model = onnx_program.model_proto
    _prune_unused_inputs(model)
    onnx.checker.check_model(model)
    return model.SerializeToString()


@dataclass
class HeadsExport:
    data: bytes | None = field(repr=False)  # None: the heads stay in PyTorch on the device
    max_abs_diff: float | None
    error: str | None
    seconds: float


def export_checked(method: ContinualMethod, features: torch.Tensor) -> HeadsExport:
    """export_heads, then the graph as the device runs it (OrtHeads) against PyTorch on `features`; a
    failure is reported, not raised: the heads then run in PyTorch, slower at batch 1 but never wrong."""
    start = time.perf_counter()
    try:
        data = export_heads(method)
        diff = float((OrtHeads(data, method)(features) - method.predict(features)).abs().max())
    except Exception as err:  # noqa: BLE001 - any exporter failure leaves the heads in PyTorch
        return HeadsExport(
            None,
            None,
            f"the heads could not be exported ({type(err).__name__}: {str(err).splitlines()[0][:200]})",
            time.perf_counter() - start,
        )
    if not diff <= HEADS_PARITY_ATOL:
        return HeadsExport(
            None,
            diff,
            f"heads.onnx differed from PyTorch by {diff:.1e} (> {HEADS_PARITY_ATOL:g})",
            time.perf_counter() - start,
        )
    return HeadsExport(data, diff, None, time.perf_counter() - start)
