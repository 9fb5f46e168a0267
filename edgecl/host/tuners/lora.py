"""LoRA: a low-rank branch on chosen linear maps, W x -> (W + B A) x, with A fixed and B trained
from zero (the InfLoRA form: A is designed by the caller; by default it is LoRA's kaiming-uniform
start, whose rows have norm 1/sqrt(3), the scale InfLoRA gives its designed rows).

Like SSF it is attached as a reparameterisation of the layer's weight, so training sees the branch
and `merge` keeps W + B A: a plain timm model with the original parameter count.

Which maps (`layers`): `kv` the key and value projections inside each ViT block's fused qkv (B
writes only the k and v rows, one A shared by both, as the official InfLoRA), `qkv` all three,
`conv1x1` every 1x1 convolution of a CNN (a linear map over channels at each position), `auto`
kv for ViTs and conv1x1 otherwise.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn.utils import parametrize

from edgecl.errors import EdgeclError
from edgecl.host.tuners.tuner import Tuner


@dataclass
class Target:
    name: str
    layer: nn.Module
    rows: tuple[int, int] | None = None  # output rows the branch writes (None: all)

    @property
    def in_features(self) -> int:
        return self.layer.weight.shape[1]

    @property
    def out_rows(self) -> int:
        return self.layer.weight.shape[0] if self.rows is None else self.rows[1] - self.rows[0]

    def inputs(self, x: torch.Tensor) -> torch.Tensor:
        """The layer's input as (positions, in_features): tokens for linear maps, pixels for 1x1 convs."""
        if isinstance(self.layer, nn.Conv2d):
            stride = self.layer.stride
            return x[:, :, :: stride[0], :: stride[1]].permute(0, 2, 3, 1).reshape(-1, x.shape[1])
        return x.reshape(-1, x.shape[-1])


def _qkv_layers(model: nn.Module, rows: Callable[[int], tuple[int, int] | None]) -> list[Target]:
    found = []
    for name, module in model.named_modules():
        qkv = getattr(module, "qkv", None)
        if isinstance(qkv, nn.Linear) and qkv.out_features == 3 * qkv.in_features:
            found.append(Target(f"{name}.qkv", qkv, rows(qkv.in_features)))
    return found


def _conv1x1_layers(model: nn.Module) -> list[Target]:
    return [
        Target(name, m)
        for name, m in model.named_modules()
        if isinstance(m, nn.Conv2d) and m.kernel_size == (1, 1) and m.groups == 1 and m.padding in ((0, 0), 0)
    ]


def _auto(model: nn.Module) -> list[Target]:
    return _qkv_layers(model, lambda d: (d, 3 * d)) or _conv1x1_layers(model)


LAYER_SETS: dict[str, Callable[[nn.Module], list[Target]]] = {
    "auto": _auto,
    "kv": lambda model: _qkv_layers(model, lambda d: (d, 3 * d)),
    "qkv": lambda model: _qkv_layers(model, lambda d: None),
    "conv1x1": _conv1x1_layers,
}


def find_targets(model: nn.Module, layers: str) -> list[Target]:
    if layers not in LAYER_SETS:
        raise EdgeclError(f"layers={layers!r}: unknown layer set (known: {', '.join(LAYER_SETS)})")
    found = LAYER_SETS[layers](model)
    if not found:
        raise EdgeclError(f"layers={layers}: {type(model).__name__} has no such layers")
    return found


class LowRankDelta(nn.Module):
    """The parametrisation weight -> weight + B A (B written into `rows` of the output)."""

    def __init__(self, target: Target, rank: int) -> None:
        super().__init__()
        self.rows = target.rows
        self.out_features = target.layer.weight.shape[0]
        down = torch.empty(rank, target.in_features)
        nn.init.kaiming_uniform_(down, a=math.sqrt(5))
        self.register_buffer("down", down)  # A: fixed
        self.up = nn.Parameter(torch.zeros(target.out_rows, rank))  # B: trained from zero

    def delta(self) -> torch.Tensor:
        product = self.up @ self.down
        if self.rows is None:
            return product
        before, after = self.rows[0], self.out_features - self.rows[1]
        return nn.functional.pad(product, (0, 0, before, after))

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        delta = self.delta()
        return weight + delta.view(*delta.shape, *([1] * (weight.dim() - 2))).to(weight.dtype)


class LoRA(Tuner):
    name = "lora"
    mergeable = True

    def __init__(self, rank: int = 10, layers: str = "auto") -> None:
        self.rank, self.layers = rank, layers
        self.branches: dict[str, tuple[Target, LowRankDelta]] = {}

    def attach(self, model: nn.Module) -> list[nn.Parameter]:
        for target in find_targets(model, self.layers):
            branch = LowRankDelta(target, self.rank).to(target.layer.weight.device)
            parametrize.register_parametrization(target.layer, "weight", branch, unsafe=True)
            self.branches[target.name] = (target, branch)
        return [branch.up for _, branch in self.branches.values()]

    def merge(self, model: nn.Module) -> nn.Module:
        for target, _ in self.branches.values():
            parametrize.remove_parametrizations(target.layer, "weight", leave_parametrized=True)
            target.layer.weight.requires_grad_(False)
        self.branches = {}
        return model
