"""The backbone on the device: one Embedder per runtime, chosen by name or by what is available.

An Embedder turns a preprocessed float32 batch (N, 3, H, W) into embeddings (N, D). The torch
runtime rebuilds the timm architecture (host-only import, done lazily) and loads the bundle's
merged weights; exported runtimes need no timm.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from edgecl.bundle import Bundle
from edgecl.embed import CPU_BATCH_SIZE
from edgecl.errors import EdgeclError


@dataclass
class Embedder:
    runtime: str
    reason: str  # why this runtime serves the backbone, for `edgecl info`
    embed: Callable[[np.ndarray], torch.Tensor]
    batch_size: int = CPU_BATCH_SIZE

    def __call__(self, images: np.ndarray) -> torch.Tensor:
        return self.embed(images)


class RuntimeUnavailable(Exception):
    """This runtime cannot serve this bundle here; the message says why."""


def _torch_embedder(bundle: Bundle) -> Embedder:
    try:
        from edgecl.backbones import create_model, embed_function
    except ImportError as err:
        raise RuntimeUnavailable(f"timm is not installed ({err})") from err
    spec = bundle.manifest.backbone
    model = create_model(spec["name"], spec.get("model_kwargs"))
    model.load_state_dict(bundle.backbone_weights())
    return Embedder("torch", f"PyTorch eager on the CPU ({spec['name']})", embed_function(model))


RUNTIMES: dict[str, Callable[[Bundle], Embedder]] = {"torch": _torch_embedder}
PREFERENCE = ("torch",)


def open_embedder(bundle: Bundle, runtime: str | None = None) -> Embedder:
    """The named runtime (an error if it cannot serve), or the first that can in PREFERENCE order."""
    if runtime is not None:
        if runtime not in RUNTIMES:
            raise EdgeclError(f"--runtime {runtime}: unknown runtime (known: {', '.join(RUNTIMES)})")
        try:
            return RUNTIMES[runtime](bundle)
        except RuntimeUnavailable as err:
            raise EdgeclError(f"--runtime {runtime}: not available: {err}") from err
    reasons = []
    for name in PREFERENCE:
        try:
            return RUNTIMES[name](bundle)
        except RuntimeUnavailable as err:
            reasons.append(f"{name}: {err}")
    raise EdgeclError(f"{bundle.path}: no runtime can run the backbone ({'; '.join(reasons)})")
