"""The heads at inference: onnxruntime on the bundle's heads.onnx, or the method in PyTorch.

heads.onnx (written by `edgecl export`, edgecl/host/heads_onnx.py) computes the method's class
probabilities from the embeddings and the heads' tensors, which are graph inputs: onnxruntime binds
the bundle's current tensors by name, so the graph stays valid as `learn` adds sessions and
classes. At batch 1 on a CPU PyTorch spends most of the heads' time on per-op overhead (about 75
small ops); onnxruntime runs the same graph in a fraction of it (benchmarks/classify.py).
The graph is checked against PyTorch on load; any doubt, and the heads run in PyTorch.
Device side: imports onnxruntime, never onnx or the exporter.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from edgecl.core.bundle import Bundle
from edgecl.core.methods import ContinualMethod
from edgecl.errors import DamagedFile, EdgeclError
from edgecl.runtime.embedders import EXPORT_AGAIN, RuntimeUnavailable, check_whole
from edgecl.runtime.ort import session_options

FEATURES = "features"
PROBABILITIES = "probabilities"
HEADS_LOAD_ATOL = 1e-4  # on the probabilities, against PyTorch, when a bundle's heads.onnx is loaded
HEADS_RUNTIMES = ("onnxruntime", "torch")


@dataclass
class Heads:
    runtime: str
    reason: str  # for `edgecl info`
    predict: Callable[[torch.Tensor], torch.Tensor]  # (N, D) embeddings -> (N, classes) probabilities


class HeadsUnavailable(Exception):
    """heads.onnx cannot serve this bundle's heads here; the message says why."""


class OrtHeads:
    """heads.onnx in onnxruntime with a method's tensors bound once; checked against PyTorch on creation."""

    def __init__(self, graph: bytes, method: ContinualMethod) -> None:
        try:
            import onnxruntime
        except ImportError as err:
            raise HeadsUnavailable(f"onnxruntime is not installed ({err})") from err
        self.ort = onnxruntime
        # one thread if it cannot share the backbone's pool: two pools on the same cores slow each other
        options = session_options(threads_if_alone=1)
        try:
            self.session = onnxruntime.InferenceSession(graph, options, providers=["CPUExecutionProvider"])
        except Exception as err:  # noqa: BLE001 - an unreadable graph only costs speed
            raise HeadsUnavailable(f"onnxruntime cannot load heads.onnx ({err})") from err
        state = method.state_dict()
        names = [i.name for i in self.session.get_inputs() if i.name != FEATURES]
        missing = sorted(set(names) - set(state))
        if missing:
            raise HeadsUnavailable(f"heads.onnx wants tensors the heads lack ({', '.join(missing)})")
        self.arrays = [state[name].detach().contiguous().numpy() for name in names]  # the OrtValues share this memory
        self.bound = {name: onnxruntime.OrtValue.ortvalue_from_numpy(array) for name, array in zip(names, self.arrays)}
        probe = torch.randn(4, method.embedding_dim, generator=torch.Generator().manual_seed(0))
        try:
            diff = float((self(probe) - method.predict(probe)).abs().max())
        except Exception as err:  # noqa: BLE001
            raise HeadsUnavailable(f"heads.onnx does not run on these heads ({err})") from err
        if not diff <= HEADS_LOAD_ATOL:
            raise HeadsUnavailable(
                f"heads.onnx differs from the heads in PyTorch by {diff:.1e} (> {HEADS_LOAD_ATOL:g})"
            )

    def __call__(self, features: torch.Tensor) -> torch.Tensor:
        array = np.ascontiguousarray(features.detach().numpy(), dtype=np.float32)
        x = self.ort.OrtValue.ortvalue_from_numpy(array)
        return torch.from_numpy(
            self.session.run_with_ort_values([PROBABILITIES], {FEATURES: x, **self.bound})[0].numpy()
        )


def open_heads(bundle: Bundle, method: ContinualMethod, backbone_runtime: str, runtime: str | None = None) -> Heads:
    """onnxruntime when heads.onnx can serve and the backbone is not forced to PyTorch, else PyTorch.
    `runtime` forces one (an error if onnxruntime cannot serve, saying why)."""
    if runtime is not None and runtime not in HEADS_RUNTIMES:
        raise EdgeclError(f"heads runtime {runtime}: unknown (known: {', '.join(HEADS_RUNTIMES)})")
    pytorch = f"PyTorch {torch.__version__} on the CPU"
    if runtime == "torch" or (runtime is None and backbone_runtime == "torch"):
        return Heads("torch", pytorch, method.predict)
    entry = (bundle.manifest.export or {}).get("heads") or {}
    try:
        if "file" not in entry:
            raise HeadsUnavailable(entry.get("error", "the bundle has no heads.onnx (run `edgecl export` on the host)"))
        try:
            graph = bundle.read_bytes(entry)
        except DamagedFile as err:
            raise HeadsUnavailable(f"{err}; {EXPORT_AGAIN}") from err
        try:
            check_whole(graph, bundle.path / entry["file"])
        except RuntimeUnavailable as err:
            raise HeadsUnavailable(str(err)) from None
        predict = OrtHeads(graph, method)
        return Heads("onnxruntime", "heads.onnx on the CPU, the bundle's head tensors bound as inputs", predict)
    except HeadsUnavailable as err:
        if runtime == "onnxruntime":
            raise EdgeclError(f"heads through onnxruntime: not available: {err}") from err
        return Heads("torch", f"{pytorch} ({err})", method.predict)
