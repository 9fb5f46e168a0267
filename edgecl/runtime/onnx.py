"""The exported backbone under onnxruntime (device side: imports onnxruntime, never onnx or timm)."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import torch

INPUT_NAME = "images"
OUTPUT_NAME = "embeddings"


def ort_session(path: Path, providers: Sequence[str]):
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.log_severity_level = 3  # errors only: a missing CUDA library is reported by the fallback
    return onnxruntime.InferenceSession(str(path), options, providers=list(providers))


def ort_embed_function(session):
    def embed(images: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(session.run([OUTPUT_NAME], {INPUT_NAME: np.ascontiguousarray(images, dtype=np.float32)})[0])

    return embed
