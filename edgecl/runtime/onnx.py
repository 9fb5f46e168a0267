"""The exported backbone under onnxruntime (device side: imports onnxruntime, never onnx or timm)."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import torch

INPUT_NAME = "images"
OUTPUT_NAME = "embeddings"
GPU_PROVIDERS = ("TensorrtExecutionProvider", "CUDAExecutionProvider")


def ort_session(model: Path | bytes, providers: Sequence[str], provider_options: Sequence[dict] | None = None):
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.log_severity_level = 3  # errors only: providers that cannot start are reported by the caller
    source = model if isinstance(model, bytes) else str(model)
    return onnxruntime.InferenceSession(source, options, providers=list(providers), provider_options=provider_options)


def ort_embed_function(session):
    def embed(images: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(session.run([OUTPUT_NAME], {INPUT_NAME: np.ascontiguousarray(images, dtype=np.float32)})[0])

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
