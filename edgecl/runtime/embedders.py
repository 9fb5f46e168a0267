"""The backbone on the device: one Embedder per runtime, chosen by name or by what is available.

An Embedder turns a preprocessed float32 batch (N, 3, H, W) into embeddings (N, D). Preference:
a TensorRT engine (built on first use), onnxruntime on backbone.onnx (providers in the export
profile's order), PyTorch (rebuilds the timm architecture: a host-only import, done lazily).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch

from edgecl.core.bundle import Bundle
from edgecl.core.cache import cache_root
from edgecl.core.embedding import CPU_BATCH_SIZE
from edgecl.errors import DamagedFile, EdgeclError, param, python_text
from edgecl.runtime import tensorrt_engines as trt_runtime
from edgecl.runtime.onnx_graph import MalformedGraph, references_external_data
from edgecl.runtime.ort import (
    GPU_PROVIDERS,
    ort_embed_function,
    ort_session,
    tensorrt_provider_options,
    usable_providers,
)

log = logging.getLogger(__name__)


@dataclass
class Embedder:
    runtime: str
    reason: str  # what serves the backbone and how, for `edgecl info`
    embed: Callable[[np.ndarray], torch.Tensor]
    batch_size: int = CPU_BATCH_SIZE
    passed_over: list[str] = field(default_factory=list)  # preferred runtimes that could not serve, and why
    # PyTorch threads for the heads: 1 when another runtime works the same CPU cores (two thread pools
    # on 2 cores slow each other down: docs/benchmarks.md); None leaves PyTorch's default.
    head_threads: int | None = None
    backbone_sha256: str = ""  # of the bundle's backbone this embedder serves

    def claim_threads(self) -> None:
        if self.head_threads is not None:
            torch.set_num_threads(self.head_threads)

    def __call__(self, images: np.ndarray) -> torch.Tensor:
        return self.embed(images)


class RuntimeUnavailable(Exception):
    """This runtime cannot serve this bundle here; the message says why."""


FIRST_USE_LOCK_TIMEOUT = 30.0  # a learn holds the lock for seconds; past that, onnxruntime serves this process
NOT_EXPORTED = "the bundle has no backbone.onnx (run `edgecl export --target NAME` on the host)"
EXPORT_AGAIN = "run `edgecl export` on the host again"


def _tensorrt(bundle: Bundle) -> Embedder:
    export = bundle.manifest.export
    if not export:
        raise RuntimeUnavailable(NOT_EXPORTED)
    if not trt_runtime.for_tensorrt(export["profile"]):
        raise RuntimeUnavailable(
            f"the bundle was exported for target {export['profile']['name']}, which has no TensorRT settings"
        )
    try:
        trt = trt_runtime.import_tensorrt()
    except trt_runtime.TensorRTUnavailable as err:
        raise RuntimeUnavailable(str(err)) from err
    key = trt_runtime.current_key(trt, export["profile"])
    try:
        engine = (
            bundle.manifest.engines.get(key)
            or trt_runtime.build_into_bundle(bundle.path, lock_timeout=FIRST_USE_LOCK_TIMEOUT, keep_existing=True).entry
        )
        backbone = trt_runtime.TensorRTBackbone(bundle.read_bytes(engine), export["profile"]["batch"]["max"])
    except (
        EdgeclError,
        trt_runtime.TensorRTUnavailable,
        RuntimeError,
        OSError,
    ) as err:  # a failed build or load: the next runtime serves
        raise RuntimeUnavailable(f"engine {key}: {err}") from err
    reason = f"TensorRT {trt.__version__} engine {key} on {torch.cuda.get_device_name()}"
    return Embedder("tensorrt", reason, backbone, export["profile"]["batch"]["opt"])


def _onnxruntime(bundle: Bundle) -> Embedder:
    export = bundle.manifest.export
    if not export:
        raise RuntimeUnavailable(NOT_EXPORTED)
    try:
        import onnxruntime
    except ImportError as err:
        raise RuntimeUnavailable(f"onnxruntime is not installed ({err})") from err
    profile = export["profile"]
    providers, skipped = usable_providers(profile["onnxruntime_providers"], torch.cuda.is_available())
    trt_cache = cache_root() / "ort-tensorrt" / export["sha256"][:16]
    input_size = bundle.manifest.preprocess["input_size"]
    options = [
        tensorrt_provider_options(profile, input_size, trt_cache) if p == "TensorrtExecutionProvider" else {}
        for p in providers
    ]
    try:
        model = bundle.read_bytes(export)
    except DamagedFile as err:
        raise RuntimeUnavailable(f"{err}; {EXPORT_AGAIN}") from err
    check_whole(model, bundle.path / export["file"])
    try:
        session = ort_session(model, providers, options)
    except Exception as err:  # noqa: BLE001 - a graph onnxruntime refuses (an unknown op, garbage): the next runtime serves
        raise RuntimeUnavailable(
            f"onnxruntime cannot load {export['file']} ({first_line(err)}); {EXPORT_AGAIN}"
        ) from None
    used = session.get_providers()
    skipped += [f"{p}: failed to start (onnxruntime's message is on stderr)" for p in providers if p not in used]
    reason = f"onnxruntime {onnxruntime.__version__} with {', '.join(used)}" + (
        f" (skipped {'; '.join(skipped)})" if skipped else ""
    )
    on_gpu = used[0] in GPU_PROVIDERS
    return Embedder(
        "onnxruntime",
        reason,
        ort_embed_function(session),
        profile["batch"]["opt"] if on_gpu else CPU_BATCH_SIZE,
        head_threads=None if on_gpu else 1,
    )


def _torch(bundle: Bundle) -> Embedder:
    try:
        from edgecl.host.backbones import embed_function, rebuild
    except ImportError as err:
        raise RuntimeUnavailable(f"timm is not installed ({err})") from err
    spec = bundle.manifest.backbone
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = rebuild(spec, bundle.backbone_weights())
    reason = (
        f"PyTorch {torch.__version__} eager on "
        f"{torch.cuda.get_device_name() if device == 'cuda' else 'the CPU'} ({spec['name']})"
    )
    return Embedder("torch", reason, embed_function(model, device), 32 if device == "cuda" else CPU_BATCH_SIZE)


def first_line(error: Exception) -> str:
    return (str(error).strip().splitlines() or [type(error).__name__])[0][:200]


def check_whole(model: bytes, where) -> None:
    """An ONNX graph of a bundle carries its tensors itself: one that points at other files is refused."""
    try:
        external = references_external_data(model)
    except MalformedGraph as err:
        raise RuntimeUnavailable(f"{where}: not an ONNX graph ({err}); {EXPORT_AGAIN}") from None
    if external:
        raise RuntimeUnavailable(
            f"{where}: refers to tensors in files outside the graph, which a bundle never does; {EXPORT_AGAIN}"
        )


RUNTIMES: dict[str, Callable[[Bundle], Embedder]] = {
    "tensorrt": _tensorrt,
    "onnxruntime": _onnxruntime,
    "torch": _torch,
}


def open_embedder(bundle: Bundle, runtime: str | None = None) -> Embedder:
    """The named runtime (an error if it cannot serve), or the first that can in RUNTIMES order."""
    if runtime is not None:
        if runtime not in RUNTIMES:
            raise EdgeclError(f"{param('runtime')} {runtime}: unknown runtime (known: {', '.join(RUNTIMES)})")
        try:
            embedder = RUNTIMES[runtime](bundle)
        except RuntimeUnavailable as err:
            raise EdgeclError(f"{param('runtime')} {runtime}: not available: {err}") from err
        embedder.backbone_sha256 = bundle.manifest.backbone["sha256"]
        return embedder
    passed_over = []
    for name, make in RUNTIMES.items():
        try:
            embedder = make(bundle)
        except RuntimeUnavailable as err:
            passed_over.append(f"{name}: {err}")
            continue
        embedder.passed_over = passed_over
        embedder.backbone_sha256 = bundle.manifest.backbone["sha256"]
        if name == "torch" and bundle.manifest.export:  # exported, yet neither engine could run it: say why, once
            log.warning(
                "the exported backbone cannot run here, so PyTorch runs it (slower): %s",
                python_text(next((r for r in passed_over if r.startswith("onnxruntime")), passed_over[-1])),
            )
        return embedder
    raise EdgeclError(f"{bundle.path}: no runtime can run the backbone ({'; '.join(passed_over)})")
