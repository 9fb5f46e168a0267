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


class LuCAStack(nn.Module):
    """Frozen LuCA modules of past sessions, stored stacked: (N, D) -> (T, N, D) in a fixed number of
    batched ops for any T, so inference does not slow down by per-module overhead as sessions pile up."""

    def __init__(self, dim: int, bottleneck: int = 48, sessions: int = 0) -> None:
        super().__init__()
        self.dim, self.bottleneck = dim, bottleneck
        shapes = {
            "down_weight": (bottleneck, dim), "down_bias": (bottleneck,), "up_weight": (dim, bottleneck), "up_bias": (dim,),
            "norm_weight": (dim,), "norm_bias": (dim,), "squeeze_weight": (bottleneck, dim), "excite_weight": (dim, bottleneck),
        }
        for name, shape in shapes.items():
            self.register_buffer(name, torch.zeros(sessions, *shape))

    def __len__(self) -> int:
        return self.down_weight.shape[0]

    @staticmethod
    def _tensors(luca: LuCA) -> dict[str, torch.Tensor]:
        return {
            "down_weight": luca.down.weight, "down_bias": luca.down.bias, "up_weight": luca.up.weight, "up_bias": luca.up.bias,
            "norm_weight": luca.norm.weight, "norm_bias": luca.norm.bias,
            "squeeze_weight": luca.squeeze.weight, "excite_weight": luca.excite.weight,
        }

    def append(self, luca: LuCA) -> None:
        for name, tensor in self._tensors(luca).items():
            setattr(self, name, torch.cat([getattr(self, name), tensor.detach()[None]]))

    def module(self, index: int) -> LuCA:
        """Session `index`'s module on its own (inspection and tests)."""
        luca = LuCA(self.dim, self.bottleneck)
        with torch.no_grad():
            for name, tensor in self._tensors(luca).items():
                tensor.copy_(getattr(self, name)[index])
        return luca

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xs = x.expand(len(self), *x.shape)
        h = torch.baddbmm(self.down_bias[:, None], xs, self.down_weight.mT)
        h = torch.baddbmm(self.up_bias[:, None], F.gelu(h), self.up_weight.mT)
        h = torch.addcmul(self.norm_bias[:, None], F.layer_norm(xs + h, (self.dim,)), self.norm_weight[:, None])
        gate = torch.bmm(F.relu(torch.bmm(h, self.squeeze_weight.mT)), self.excite_weight.mT)
        return h * torch.sigmoid(gate)


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
    sums = torch.zeros(num_classes, features.shape[1], dtype=features.dtype, device=features.device).index_add_(0, targets, features)
    counts = torch.bincount(targets, minlength=num_classes).clamp_min(1).to(features.dtype)
    return sums / counts[:, None]


def power_normalize(features: torch.Tensor, power: float) -> torch.Tensor:
    """sign(f) |f|^power per channel (power 1: unchanged). A CNN's pooled features are non-negative and
    heavy-tailed; their square root spreads the many small channels against the few large ones."""
    return features if power == 1 else features.sign() * features.abs().pow(power)


def entropy(logits: torch.Tensor) -> torch.Tensor:
    """Shannon entropy of softmax(logits) over the last axis."""
    log_p = torch.log_softmax(logits, dim=-1)
    return -(log_p.exp() * log_p).sum(dim=-1)
