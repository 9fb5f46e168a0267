"""The exported backbone under onnxruntime (device side: imports onnxruntime, never onnx or timm)."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

INPUT_NAME = "images"
OUTPUT_NAME = "embeddings"
GPU_PROVIDERS = ("TensorrtExecutionProvider", "CUDAExecutionProvider")


_shared_pool: bool | None = None


def _shares_one_pool() -> bool:
    """Whether this process's sessions run on one CPU thread pool. The heads' graph then runs on the
    backbone's warm threads: on a pool of its own it would contend with them for the same cores, and on
    one thread it is slower (about 0.5 ms an image with 9 sessions, benchmarks/classify.py)."""
    global _shared_pool
    if _shared_pool is None:
        try:
            from onnxruntime.capi._pybind_state import set_global_thread_pool_sizes

            set_global_thread_pool_sizes(0, 0)  # 0: onnxruntime's default sizes
            _shared_pool = True
        except Exception:  # noqa: BLE001 - an onnxruntime without it: a pool per session
            _shared_pool = False
    return _shared_pool


def session_options(threads_if_alone: int = 0):
    """Options for every session edgecl opens; `threads_if_alone` caps a session's own pool when the
    process cannot share one (0: onnxruntime's default)."""
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.log_severity_level = 3  # errors only: providers that cannot start are reported by the caller
    if _shares_one_pool():
        options.use_per_session_threads = False
    else:
        options.intra_op_num_threads = options.inter_op_num_threads = threads_if_alone
    return options


def ort_session(model: Path | bytes, providers: Sequence[str], provider_options: Sequence[dict] | None = None):
    import onnxruntime

    source = model if isinstance(model, bytes) else str(model)
    # a provider that fails to start (onnxruntime-gpu lists TensorRT even without its libraries) makes
    # onnxruntime print its fallback on stdout, which would corrupt `--json` output
    with contextlib.redirect_stdout(sys.stderr):
        return onnxruntime.InferenceSession(
            source, session_options(), providers=list(providers), provider_options=provider_options
        )


def tensorrt_provider_options(profile: dict, input_size: Sequence[int], cache: Path) -> dict[str, str]:
    """onnxruntime's TensorRT provider set up as `edgecl engine build` sets up TensorRT: the profile's
    precision, workspace, fp32 LayerNorm and batch range (without a range it rebuilds its engine
    whenever a batch size outside those seen arrives), engines and timing cache kept in `cache`."""
    batch = profile["batch"]
    shape = {k: f"{INPUT_NAME}:{batch[k]}x{'x'.join(str(n) for n in input_size)}" for k in ("min", "opt", "max")}
    return {
        "trt_fp16_enable": str(profile["precision"] == "fp16"),
        "trt_layer_norm_fp32_fallback": str("LayerNormalization" in profile["fp32_layers"]),
        "trt_max_workspace_size": str(int(profile["workspace_mib"]) << 20),
        "trt_profile_min_shapes": shape["min"],
        "trt_profile_opt_shapes": shape["opt"],
        "trt_profile_max_shapes": shape["max"],
        "trt_engine_cache_enable": "True",
        "trt_engine_cache_path": str(cache),
        "trt_timing_cache_enable": "True",
        "trt_timing_cache_path": str(cache),
    }


def ort_embed_function(session):
    def embed(images: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(
            session.run([OUTPUT_NAME], {INPUT_NAME: np.ascontiguousarray(images, dtype=np.float32)})[0]
        )

    return embed


def usable_providers(wanted: Sequence[str], cuda_available: bool) -> tuple[list[str], list[str]]:
    """(providers to ask for, in order; those skipped with the reason) for this machine."""
    import onnxruntime

    available = set(onnxruntime.get_available_providers())
    usable, skipped = [], []
    for provider in wanted:
        if provider not in available:
            skipped.append(f"{provider}: not in this onnxruntime build")
        elif provider in GPU_PROVIDERS and not cuda_available:
            skipped.append(f"{provider}: no CUDA GPU")
        else:
            usable.append(provider)
    return usable or ["CPUExecutionProvider"], skipped
