"""DualGPM (Liang & Li, InfLoRA, CVPR 2024): per adapted layer, the input subspace that earlier
sessions occupy, kept so that a new session's low-rank update stays out of it.

The memory of a layer is an orthonormal basis U (D x k) in one of two modes: `remove` (U spans the
old inputs; a new covariance C is projected to (I - U U^T) C) or `retain` (U spans what is still
free; C -> U U^T C). A layer switches from remove to retain once k passes D / 2, so the stored
basis is always the smaller one. A session adds directions until the memory holds a fraction
`threshold` of its inputs' energy (in the first session too; the official code stops one short).

The energy left outside the memory is the sum of the singular values (to `power`) of the
one-sidedly projected covariance, the official code's quantity; with power 1 this over-counts the
residual a little (a nuclear norm, not the trace of the two-sided projection), so the memory grows
slightly past its threshold.

Energy: GPM measures it by the squared singular values of the inputs, i.e. the eigenvalues of their
covariance (power 1, the default). The official InfLoRA code squares the covariance's spectrum
instead (power 2); for a CNN's non-negative features that spectrum is dominated by the mean, and the
memory kept 2.3% of Lite0's input dimensions: no protection (measured: README).
"""

from __future__ import annotations

import math

import torch

REMOVE, RETAIN = "remove", "retain"
A_SCALE = 1 / math.sqrt(3)  # InfLoRA's rows: the norm of LoRA's kaiming-uniform start


def _svd(matrix: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    u, s, _ = torch.linalg.svd(matrix.double(), full_matrices=False)
    return u, s


class SubspaceMemory:
    def __init__(self, power: int = 1) -> None:
        self.power = power
        self.bases: dict[str, torch.Tensor] = {}
        self.modes: dict[str, str] = {}

    def project(self, name: str, covariance: torch.Tensor) -> torch.Tensor:
        """The part of `covariance` outside the old sessions' input subspace."""
        c = covariance.double()
        if name not in self.bases:
            return c
        u = self.bases[name]
        inside = u @ (u.T @ c)
        return c - inside if self.modes[name] == REMOVE else inside

    def design(self, name: str, covariance: torch.Tensor, rank: int) -> torch.Tensor:
        """InfLoRA's A (rank x D): the top singular directions of the projected covariance, scaled."""
        u, s = _svd(self.project(name, covariance))
        dim = covariance.shape[0]
        down = torch.zeros(rank, dim, dtype=torch.float64)
        # beyond the free dimensions the singular vectors are an arbitrary completion, inside the memory
        kept = min(rank, dim - self.occupied(name, dim), int((s > s[0] * 1e-9).sum()) if len(s) and s[0] > 0 else 0)
        down[:kept] = u[:, :kept].T * A_SCALE
        return down.float()

    def occupied(self, name: str, dim: int) -> int:
        """How many of the layer's D input directions the memory protects."""
        if name not in self.bases:
            return 0
        k = self.bases[name].shape[1]
        return k if self.modes[name] == REMOVE else dim - k

    def update(self, name: str, covariance: torch.Tensor, threshold: float) -> None:
        """Add the directions of this session's inputs that hold its energy up to `threshold`."""
        c = covariance.double()
        dim = c.shape[0]
        u_all, s_all = _svd(c)
        total = float((s_all**self.power).sum())
        if total == 0:
            return
        if name not in self.bases:
            u = u_all
            ratio = torch.cumsum(s_all**self.power, 0) / total
            self.bases[name], self.modes[name] = u[:, : min(int((ratio < threshold).sum()) + 1, dim)], REMOVE
        elif self.modes[name] == REMOVE:
            u_old = self.bases[name]
            u, s = _svd(self.project(name, c))
            captured, added = (total - float((s**self.power).sum())) / total, 0
            while added < min(len(s), dim - u_old.shape[1]) and captured < threshold:
                captured += float(s[added] ** self.power) / total
                added += 1
            if added:
                self.bases[name] = torch.cat([u_old, u[:, :added]], dim=1)[:, :dim]
        else:
            free = self.bases[name]
            u, s = _svd(self.project(name, c))
            remaining, taken = float((s**self.power).sum()) / total, 0
            while taken < min(len(s), free.shape[1]) and remaining >= 1 - threshold:
                remaining -= float(s[taken] ** self.power) / total
                taken += 1
            if taken:
                used = u[:, :taken]
                rest, _ = torch.linalg.svd(free - used @ (used.T @ free), full_matrices=True)[:2]
                self.bases[name] = rest[:, : free.shape[1] - taken]
        if self.modes[name] == REMOVE and self.bases[name].shape[1] > dim / 2:
            full, _ = torch.linalg.svd(self.bases[name], full_matrices=True)[:2]
            self.bases[name], self.modes[name] = full[:, self.bases[name].shape[1]:], RETAIN

    def state_dict(self) -> dict[str, torch.Tensor]:
        state = {}
        for name, basis in self.bases.items():
            state[f"{name}.basis"] = basis.float().contiguous()
            state[f"{name}.retain"] = torch.tensor(self.modes[name] == RETAIN)
        return state

    @classmethod
    def from_state_dict(cls, state: dict[str, torch.Tensor], power: int = 1) -> "SubspaceMemory":
        memory = cls(power)
        for key, tensor in state.items():
            if key.endswith(".basis"):
                name = key[: -len(".basis")]
                memory.bases[name] = tensor.double()
                memory.modes[name] = RETAIN if bool(state[f"{name}.retain"]) else REMOVE
        return memory
