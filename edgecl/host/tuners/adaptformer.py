"""AdaptFormer (Chen et al., NeurIPS 2022) as SAFE uses it on ViTs: a bottleneck adapter parallel
to each block's MLP, mlp(x) + scale * up(dropout(ReLU(down(x)))), 64-d, scale 0.1, down kaiming,
up and biases zero (so it starts as the identity). Here the adapter reads the MLP's input (after
the block's norm). The ReLU keeps it from merging: it stays in the exported graph."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from edgecl.errors import EdgeclError
from edgecl.host.tuners.tuner import Tuner


class Adapter(nn.Module):
    def __init__(self, dim: int, bottleneck: int, scale: float, dropout: float) -> None:
        super().__init__()
        self.down = nn.Linear(dim, bottleneck)
        self.up = nn.Linear(bottleneck, dim)
        self.dropout = nn.Dropout(dropout)
        self.scale = scale
        nn.init.kaiming_uniform_(self.down.weight, a=math.sqrt(5))
        for tensor in (self.down.bias, self.up.weight, self.up.bias):
            nn.init.zeros_(tensor)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.scale * self.up(self.dropout(torch.relu(self.down(x))))


class MlpWithAdapter(nn.Module):
    def __init__(self, mlp: nn.Module, adapter: Adapter) -> None:
        super().__init__()
        self.mlp = mlp
        self.adapter = adapter

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.mlp(x) + self.adapter(x)


class AdaptFormer(Tuner):
    name = "adaptformer"
    mergeable = False

    def __init__(self, bottleneck: int = 64, scale: float = 0.1, dropout: float = 0.1) -> None:
        self.settings = {"bottleneck": bottleneck, "scale": scale, "dropout": dropout}

    @staticmethod
    def fits(model: nn.Module) -> bool:
        """Whether the model has ViT-style blocks, each with an MLP to put an adapter beside."""
        blocks = getattr(model, "blocks", None)
        return blocks is not None and len(blocks) > 0 and all(hasattr(b, "mlp") for b in blocks)

    def attach(self, model: nn.Module) -> list[nn.Parameter]:
        if not self.fits(model):
            raise EdgeclError(
                f"the adaptformer tuner needs a ViT-style backbone with blocks[i].mlp; "
                f"{type(model).__name__} has none (use ssf)"
            )
        params = []
        for block in model.blocks:
            dim = block.mlp.fc1.in_features
            adapter = Adapter(dim, self.settings["bottleneck"], self.settings["scale"], self.settings["dropout"])
            block.mlp = MlpWithAdapter(block.mlp, adapter)
            params += list(adapter.parameters())
        return params

    def merge(self, model: nn.Module) -> nn.Module:
        model.requires_grad_(False)
        return model

    def structure(self) -> dict[str, Any]:
        return {"name": self.name, "settings": dict(self.settings)}
