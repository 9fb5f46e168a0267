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
memory kept 2.3% of Lite0's input dimensions: no protection (measured: docs/methods.md).

Designing A (`design`): `projected` is the official rule, the top singular directions of the new
covariance projected out of the memory. The energy the threshold leaves outside the memory (5% at
0.95) is where those directions find the old inputs too, so the old outputs still move (4x less
than plain LoRA, median over Lite0's layers). `contrast` (edgecl's default) also keeps the mean
covariance of the old sessions and, inside the free space, takes the directions with the most new
energy per unit of old energy (a generalised eigenproblem), only those where the old sessions'
mean energy is at most `max_leak` of the new inputs' energy; a layer with no such direction is
not adapted. (Against the mean, not the sum: one old session may carry up to n times as much; the
sum would bound each but would shut later sessions out faster.)
"""

from __future__ import annotations

import math

import torch

from edgecl.core.layers import inverse_sqrt

REMOVE, RETAIN = "remove", "retain"
A_SCALE = 1 / math.sqrt(3)  # InfLoRA's rows: the norm of LoRA's kaiming-uniform start
# old energy counts at least this fraction of the new inputs' mean energy per direction, so that a
# direction nearly empty for both sessions does not pass as new
OLD_ENERGY_FLOOR = 1e-3


def _svd(matrix: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    u, s, _ = torch.linalg.svd(matrix.double(), full_matrices=False)
    return u, s


def _rows(directions: torch.Tensor, rank: int, dim: int) -> torch.Tensor:
    """A (rank x D) from up to `rank` directions (D x n, columns), unit rows scaled to A_SCALE; rows
    past the directions stay zero."""
    down = torch.zeros(rank, dim, dtype=torch.float64)
    kept = directions[:, :rank]
    if kept.shape[1]:
        down[: kept.shape[1]] = (kept / kept.norm(dim=0, keepdim=True)).T * A_SCALE
    return down.float()


def projected_design(memory: SubspaceMemory, name: str, covariance: torch.Tensor, rank: int) -> torch.Tensor:
    u, s = _svd(memory.project(name, covariance))
    dim = covariance.shape[0]
    # beyond the free dimensions the singular vectors are an arbitrary completion, inside the memory
    kept = min(rank, dim - memory.occupied(name, dim), int((s > s[0] * 1e-9).sum()) if len(s) and s[0] > 0 else 0)
    return _rows(u[:, :kept], rank, dim)


def contrast_design(memory: SubspaceMemory, name: str, covariance: torch.Tensor, rank: int) -> torch.Tensor:
    if name not in memory.old:  # the first session, or a memory saved before edgecl kept the old covariance
        return projected_design(memory, name, covariance, rank)
    dim = covariance.shape[0]
    free = memory.free_basis(name, dim)
    new = free.T @ covariance.double() @ free
    old = free.T @ memory.old[name] @ free
    floor = OLD_ENERGY_FLOOR * float(torch.trace(new)) / max(new.shape[0], 1)
    if floor <= 0:
        return _rows(free[:, :0], rank, dim)
    whiten = inverse_sqrt(old + floor * torch.eye(old.shape[0], dtype=torch.float64))
    contrast, directions = torch.linalg.eigh(whiten @ new @ whiten)
    order = contrast.argsort(descending=True)
    chosen = order[contrast[order] * memory.max_leak >= 1]
    return _rows(free @ whiten @ directions[:, chosen], rank, dim)


DESIGNS = {"projected": projected_design, "contrast": contrast_design}


def _symmetric(saved: torch.Tensor) -> torch.Tensor:
    """A covariance from its saved upper triangle (or, as first saved, the whole matrix)."""
    if saved.dim() == 2:
        return saved.double()
    dim = math.isqrt(8 * saved.numel() + 1) // 2
    rows, cols = torch.triu_indices(dim, dim)
    full = torch.zeros(dim, dim, dtype=torch.float64)
    full[rows, cols] = saved.double()
    full[cols, rows] = saved.double()
    return full


class SubspaceMemory:
    def __init__(self, power: int = 1, design: str = "projected", max_leak: float = 0.01) -> None:
        self.power, self.design_rule, self.max_leak = power, DESIGNS[design], max_leak
        self.bases: dict[str, torch.Tensor] = {}
        self.modes: dict[str, str] = {}
        self.old: dict[str, torch.Tensor] = {}  # mean input covariance of the sessions so far
        self.sessions: dict[str, int] = {}

    @classmethod
    def from_config(cls, config) -> SubspaceMemory:
        """The memory an InfLoRA backbone config (edgecl.core.methods.inflora) asks for."""
        return cls(config.energy_power, config.design, config.max_leak)

    def project(self, name: str, covariance: torch.Tensor) -> torch.Tensor:
        """The part of `covariance` outside the old sessions' input subspace."""
        c = covariance.double()
        if name not in self.bases:
            return c
        u = self.bases[name]
        inside = u @ (u.T @ c)
        return c - inside if self.modes[name] == REMOVE else inside

    def design(self, name: str, covariance: torch.Tensor, rank: int) -> torch.Tensor:
        """InfLoRA's A (rank x D) for a new session whose inputs have this covariance."""
        return self.design_rule(self, name, covariance, rank)

    def free_basis(self, name: str, dim: int) -> torch.Tensor:
        """An orthonormal basis (D x f) of the directions the memory leaves free."""
        if name not in self.bases:
            return torch.eye(dim, dtype=torch.float64)
        u = self.bases[name]
        if self.modes[name] == RETAIN:
            return u
        _, vectors = torch.linalg.eigh(torch.eye(dim, dtype=torch.float64) - u @ u.T)
        return vectors[:, u.shape[1] :]

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
        keeps_old = self.design_rule is contrast_design and (name in self.old or name not in self.bases)
        if keeps_old:  # (a memory saved without the old covariance cannot start it late)
            n = self.sessions.get(name, 0)
            self.old[name] = (self.old[name] * n + c) / (n + 1) if n else c.clone()
            self.sessions[name] = n + 1
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
            self.bases[name], self.modes[name] = full[:, self.bases[name].shape[1] :], RETAIN

    def state_dict(self) -> dict[str, torch.Tensor]:
        state = {}
        for name, basis in self.bases.items():
            state[f"{name}.basis"] = basis.float().contiguous()
            state[f"{name}.retain"] = torch.tensor(self.modes[name] == RETAIN)
        for name, old in self.old.items():  # symmetric: the upper triangle, half the file
            rows, cols = torch.triu_indices(*old.shape)
            state[f"{name}.old"] = old[rows, cols].float().contiguous()
            state[f"{name}.sessions"] = torch.tensor(self.sessions[name])
        return state

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> SubspaceMemory:
        """This memory's design settings with the saved bases (memories saved before edgecl kept the
        old covariance design their layers by the official rule, then and later)."""
        for key, tensor in state.items():
            name = key.rsplit(".", 1)[0]
            if key.endswith(".basis"):
                self.bases[name] = tensor.double()
                self.modes[name] = RETAIN if bool(state[f"{name}.retain"]) else REMOVE
            elif key.endswith(".old"):
                self.old[name], self.sessions[name] = _symmetric(tensor), int(state[f"{name}.sessions"])
        return self
