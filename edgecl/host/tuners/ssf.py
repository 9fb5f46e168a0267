"""SSF (Lian et al., NeurIPS 2022): a learnable scale and shift on the output of each linear,
convolution and normalisation layer: y = gamma * layer(x) + beta.

For these layers (BatchNorm in eval mode included) that is the same as the layer with weight
gamma * W (per output channel) and bias gamma * b + beta, so SSF is attached here as exactly that
reparameterisation of the weight and bias: training sees SSF, and `merge` keeps the computed
weights, giving a plain timm model with the original parameter count and the same outputs.
Layers without a bias (convolutions followed by BatchNorm in CNNs) get their SSF on the norm.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils import parametrize

from edgecl.core.layers import ScaleShift
from edgecl.host.tuners.tuner import Tuner

TARGETS = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.modules.batchnorm._BatchNorm, nn.LayerNorm, nn.GroupNorm)


class _ScaledWeight(nn.Module):
    def __init__(self, ssf: ScaleShift) -> None:
        super().__init__()
        self.ssf = ssf

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        return weight * self.ssf.scale.view(-1, *([1] * (weight.dim() - 1)))


class _ScaledShiftedBias(nn.Module):
    def __init__(self, ssf: ScaleShift) -> None:
        super().__init__()
        self.ssf = ssf

    def forward(self, bias: torch.Tensor) -> torch.Tensor:
        return bias * self.ssf.scale + self.ssf.shift


def targets(model: nn.Module) -> list[nn.Module]:
    return [
        m
        for m in model.modules()
        if isinstance(m, TARGETS) and getattr(m, "weight", None) is not None and getattr(m, "bias", None) is not None
    ]


class SSF(Tuner):
    name = "ssf"
    mergeable = True

    def attach(self, model: nn.Module) -> list[nn.Parameter]:
        params = []
        for layer in targets(model):
            ssf = ScaleShift(layer.weight.shape[0])
            parametrize.register_parametrization(layer, "weight", _ScaledWeight(ssf), unsafe=True)
            parametrize.register_parametrization(layer, "bias", _ScaledShiftedBias(ssf), unsafe=True)
            params += [ssf.scale, ssf.shift]
        return params

    def merge(self, model: nn.Module) -> nn.Module:
        for layer in [m for m in model.modules() if parametrize.is_parametrized(m)]:
            for name in ("weight", "bias"):
                if parametrize.is_parametrized(layer, name):
                    parametrize.remove_parametrizations(layer, name, leave_parametrized=True)
            for name in ("weight", "bias"):
                getattr(layer, name).requires_grad_(False)
        return model
