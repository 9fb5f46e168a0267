"""Where the host trains through the backbone (the slow learner, InfLoRA)."""

from __future__ import annotations

import torch

from edgecl.errors import EdgeclError, param


def resolve_device(device: str | None) -> str:
    """`device` checked against this machine; None: CUDA when there is a GPU, else the CPU."""
    if device is None:
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        parsed = torch.device(device)
    except (RuntimeError, TypeError) as error:
        raise EdgeclError(f"{param('device')} {device}: not a device ({error})") from None
    if parsed.type == "cuda" and not torch.cuda.is_available():
        raise EdgeclError(f"{param('device')} {device}: CUDA is not available on this machine (use cpu)")
    count = torch.cuda.device_count() if parsed.type == "cuda" else 0
    if parsed.type == "cuda" and parsed.index is not None and parsed.index >= count:
        raise EdgeclError(
            f"{param('device')} {device}: this machine has {count} CUDA device(s), cuda:0 to cuda:{count - 1}"
        )
    return device
