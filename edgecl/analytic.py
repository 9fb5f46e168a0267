"""The analytic classifier (RanPAC, as SAFE uses it): a fixed random projection of the embedding,
ReLU, and ridge regression onto one-hot labels, solved in closed form.

    H = ReLU(f W_rand)          W_rand: D x M, standard normal, regenerated from its seed
    G += H^T H,  Q += H^T Y     sufficient statistics, accumulated session by session
    W = (G + lambda I)^-1 Q

Because G and Q are sums over samples, learning session by session gives exactly the ridge
solution on all data seen so far: adding classes is a rank update and a solve, with no gradient
steps. lambda is picked on an 80/20 split of the first session's data, with one eigendecomposition
for all candidates, and kept after it; RanPAC picks it again every session (`repick`), which on a
device costs an M x M eigendecomposition per classifier and `learn` and measured no better (README).
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import torch
from torch import nn

RIDGES = tuple(10.0**k for k in range(-2, 9))


@lru_cache(maxsize=4)
def random_projection(dim: int, size: int, seed: int) -> torch.Tensor:
    """numpy's legacy RandomState stream is frozen across versions, so the host and a device with
    another numpy or torch regenerate the same matrix from the seed instead of storing it.
    Classifiers with the same (dim, size, seed) share one read-only tensor: SAFE's slow and fast
    heads then read 10 MB once per image instead of twice (benchmarks/classify.py)."""
    matrix = torch.from_numpy(np.random.RandomState(seed).standard_normal((dim, size)).astype(np.float32))
    return matrix.requires_grad_(False)


class AnalyticClassifier(nn.Module):
    def __init__(self, dim: int, size: int = 2048, seed: int = 0, num_classes: int = 0) -> None:
        super().__init__()
        self.dim, self.size, self.seed = dim, size, seed
        self.register_buffer("projection", random_projection(dim, size, seed), persistent=False)
        # G lives in float64; the bundle keeps its upper triangle in float32 (8.4 MB at M=2048, not 34)
        self.register_buffer("gram", torch.zeros(size, size, dtype=torch.float64), persistent=False)
        self.register_buffer("gram_packed", torch.zeros(size * (size + 1) // 2))
        self.register_buffer("moment", torch.zeros(size, num_classes, dtype=torch.float64))  # Q
        self.register_buffer("weight", torch.zeros(size, num_classes))  # W, the current solution
        self.register_buffer("ridge", torch.tensor(0.0, dtype=torch.float64))

        self.register_load_state_dict_post_hook(lambda module, _: module._unpack())

    @property
    def num_classes(self) -> int:
        return self.moment.shape[1]

    def _upper(self) -> tuple[torch.Tensor, torch.Tensor]:
        return tuple(torch.triu_indices(self.size, self.size))

    def _unpack(self) -> None:
        rows, cols = self._upper()
        gram = torch.zeros(self.size, self.size, dtype=torch.float64)
        gram[rows, cols] = self.gram_packed.double()
        self.gram = gram + gram.triu(1).T

    def expand(self, features: torch.Tensor) -> torch.Tensor:
        return torch.relu(features @ self.projection)

    def add(self, features: torch.Tensor, targets: torch.Tensor, num_classes: int, ridges: tuple[float, ...] = RIDGES,
            repick: bool = False) -> float:
        """Accumulate one session (targets in [0, num_classes)), pick lambda if none was picked yet (or
        `repick`), solve; returns lambda."""
        h = self.expand(features).double()
        y = torch.nn.functional.one_hot(targets, num_classes).double()
        self.moment = torch.cat([self.moment, torch.zeros(self.size, num_classes - self.num_classes, dtype=torch.float64)], dim=1)
        if repick or float(self.ridge) == 0:
            self.ridge = torch.tensor(self.select_ridge(h, y, ridges), dtype=torch.float64)
        self.gram += h.T @ h
        self.moment += h.T @ y
        self.gram_packed = self.gram[self._upper()].float()
        self.weight = self.solve(float(self.ridge))
        return float(self.ridge)

    def select_ridge(self, h: torch.Tensor, y: torch.Tensor, ridges: tuple[float, ...]) -> float:
        """The lambda with the least squared error on the last 20% of this session's samples, fitting
        on everything before them (earlier sessions + the first 80%)."""
        cut = int(0.8 * len(h))
        if cut == 0 or cut == len(h):
            return float(self.ridge) if float(self.ridge) > 0 else ridges[len(ridges) // 2]
        gram = self.gram + h[:cut].T @ h[:cut]
        moment = self.moment + h[:cut].T @ y[:cut]
        values, vectors = torch.linalg.eigh(gram)
        projected = vectors.T @ moment
        held_h, held_y = h[cut:] @ vectors, y[cut:]
        errors = [float(((held_h @ (projected / (values + r)[:, None]) - held_y) ** 2).mean()) for r in ridges]
        return ridges[int(np.argmin(errors))]

    def solve(self, ridge: float) -> torch.Tensor:
        eye = torch.eye(self.size, dtype=torch.float64)
        return torch.linalg.solve(self.gram + ridge * eye, self.moment).float()

    def classify(self, expanded: torch.Tensor) -> torch.Tensor:
        """Logits from features already through `expand` (which classifiers sharing a projection
        can run once for all of them)."""
        return expanded @ self.weight

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.classify(self.expand(features))
