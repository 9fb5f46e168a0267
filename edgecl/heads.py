"""The trainable modules that sit on the frozen embedding: LuCA and the cosine classifier."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class LuCA(nn.Module):
    """TOSCA's Learn-and-Calibrate module on one embedding vector.

    adapter:    h = LayerNorm(x + W2 GELU(W1 x))      (W1, W2 with bias)
    calibrator: out = h * sigmoid(V2 ReLU(V1 h))      (no bias)
    768-d, bottleneck 48 -> 149,808 parameters.
    """

    def __init__(self, dim: int, bottleneck: int = 48) -> None:
        super().__init__()
        self.down = nn.Linear(dim, bottleneck)
        self.up = nn.Linear(bottleneck, dim)
        self.norm = nn.LayerNorm(dim)
        self.squeeze = nn.Linear(dim, bottleneck, bias=False)
        self.excite = nn.Linear(bottleneck, dim, bias=False)

    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        for layer in (self.down, self.up, self.squeeze, self.excite):
            nn.init.xavier_uniform_(layer.weight, generator=generator)
            if layer.bias is not None:
                nn.init.zeros_(layer.bias)
        self.norm.reset_parameters()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.norm(x + self.up(F.gelu(self.down(x))))
        return h * torch.sigmoid(self.excite(F.relu(self.squeeze(h))))

    def l1(self) -> torch.Tensor:
        return sum(p.abs().sum() for p in self.parameters())


class CosineClassifier(nn.Module):
    """logits = sigma * cos(x, w_c) with a learnable scale sigma; grows by rows as classes arrive."""

    def __init__(self, dim: int, num_classes: int = 0, sigma: float = 1.0) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(num_classes, dim))
        self.sigma = nn.Parameter(torch.tensor([float(sigma)]))

    @property
    def num_classes(self) -> int:
        return self.weight.shape[0]

    def add_classes(self, rows: torch.Tensor) -> None:
        self.weight = nn.Parameter(torch.cat([self.weight.data, rows.to(self.weight.dtype)]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.sigma * F.linear(F.normalize(x, dim=-1), F.normalize(self.weight, dim=-1))


def class_means(features: torch.Tensor, targets: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Row c = mean of the features of class c (targets in [0, num_classes))."""
    sums = torch.zeros(num_classes, features.shape[1], dtype=features.dtype).index_add_(0, targets, features)
    counts = torch.bincount(targets, minlength=num_classes).clamp_min(1).to(features.dtype)
    return sums / counts[:, None]


def entropy(logits: torch.Tensor) -> torch.Tensor:
    """Shannon entropy of softmax(logits) over the last axis."""
    log_p = torch.log_softmax(logits, dim=-1)
    return -(log_p.exp() * log_p).sum(dim=-1)
