"""The analytic classifier (RanPAC, as SAFE uses it): a fixed random projection of the embedding,
ReLU, and ridge regression onto one-hot labels, solved in closed form.

    H = ReLU(P f)               P: D -> M, random, regenerated from its seed (PROJECTIONS)
    G += H^T H,  Q += H^T Y     sufficient statistics, accumulated session by session
    W = (G + lambda I)^-1 Q

Because G and Q are sums over samples, learning session by session gives exactly the ridge
solution on all data seen so far: adding classes is a rank update and a solve, with no gradient
steps. What is kept of G is the Cholesky factor of G + lambda I, which a session of k samples
updates in O(k M^2) (`cholesky_update`). lambda is picked by 5-fold cross-validation on the first
session's data (2000 samples held out at most), with one eigendecomposition for all candidates and
folds, and kept after it. RanPAC picks it again every session, on an 80/20 split (`repick` here,
by the same cross-validation), which on a device costs an M x M eigendecomposition per classifier
and `learn` and measured no better (docs/methods.md).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from functools import lru_cache
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from edgecl.core.threads import torch_threads
from edgecl.errors import EdgeclError

PROJECTION = 4096  # M of SAFE's and edgecl's analytic classifiers and of the joint bound (measured: docs/methods.md)
RIDGES = tuple(10.0 ** (k / 2) for k in range(-4, 17))  # 1e-2 .. 1e8 in half decades (docs/methods.md)
FOLDS = 5  # of the ridge's cross-validation: one 80/20 split's pick swung between 3e3 and 1e5 (docs/methods.md)
HELD_OUT = 2000  # samples at most are held out in turn (the rest always fit), which bounds the pick's cost

# numpy's legacy RandomState stream is frozen across versions, so the host and a device with another
# numpy or torch regenerate the same projection from the seed instead of storing it.


class GaussianProjection:
    """RanPAC's: a dense D x M standard normal matrix (10.5 MB at 1280 x 2048, all of it read for every
    image classified)."""

    def __init__(self, dim: int, size: int, seed: int) -> None:
        self.matrix = torch.from_numpy(np.random.RandomState(seed).standard_normal((dim, size)).astype(np.float32))

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return x @ self.matrix


def hadamard(n: int) -> torch.Tensor:
    """The n x n Walsh-Hadamard matrix (Sylvester's construction; n a power of two)."""
    h = torch.ones(1, 1)
    while len(h) < n:
        h = torch.cat([torch.cat([h, h], 1), torch.cat([h, -h], 1)])
    return h


class HadamardProjection:
    """A structured stand-in for the Gaussian matrix (Fastfood: Le, Sarlos & Smola, ICML 2013). Per block
    of d = 2^k outputs, x zero-padded to d goes through random signs, a Walsh-Hadamard transform / sqrt(d),
    a random permutation, Gaussian scales, a second transform, and row scales drawn so that the rows'
    lengths are distributed as those of a d-dimensional Gaussian vector. Each output is then, like a
    Gaussian row's, a zero-mean variable of variance |x|^2, and accuracy stays within 0.1 to 0.3
    points (docs/methods.md), but a block holds 4 d numbers instead of D x d and costs two transforms, each two
    small matmuls (H_d = H_a kron H_b on x reshaped to a x b)."""

    def __init__(self, dim: int, size: int, seed: int) -> None:
        self.dim, self.size = dim, size
        self.d = 1 << max(dim - 1, 0).bit_length()
        blocks = -(-size // self.d)
        rs = np.random.RandomState(seed)
        signs = rs.randint(0, 2, (blocks, self.d)) * 2.0 - 1.0
        order = np.stack([rs.permutation(self.d) + i * self.d for i in range(blocks)])
        gauss = rs.standard_normal((blocks, self.d))
        rows = np.sqrt(rs.chisquare(self.d, (blocks, self.d))) / np.linalg.norm(gauss, axis=1, keepdims=True)
        self.signs = torch.tensor(signs / math.sqrt(self.d), dtype=torch.float32)
        self.order = torch.from_numpy(order.reshape(-1))
        self.gauss, self.rows = (torch.tensor(a, dtype=torch.float32) for a in (gauss, rows))
        half = (self.d.bit_length() - 1) // 2
        self.left, self.right = hadamard(1 << half), hadamard(self.d >> half)

    def _transform(self, z: torch.Tensor) -> torch.Tensor:
        shape = z.shape
        return (self.left @ z.reshape(-1, len(self.left), len(self.right)) @ self.right).reshape(shape)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        n, width = len(x), self.signs.numel()
        z = self._transform(F.pad(x, (0, self.d - self.dim))[:, None, :] * self.signs)
        z = z.reshape(n, width).index_select(1, self.order).reshape(z.shape) * self.gauss
        return (self._transform(z) * self.rows).reshape(n, width)[:, : self.size]


PROJECTIONS: dict[str, Callable[[int, int, int], Callable[[torch.Tensor], torch.Tensor]]] = {
    "hadamard": HadamardProjection,
    "gaussian": GaussianProjection,
}


@lru_cache(maxsize=4)
def random_projection(kind: str, dim: int, size: int, seed: int) -> Callable[[torch.Tensor], torch.Tensor]:
    """Classifiers with the same (kind, dim, size, seed) share one projection: SAFE's slow and fast
    heads then pass both their inputs through it as one batch (benchmarks/classify.py)."""
    with torch.device("cpu"):  # real numbers whatever device a caller sizes modules on (edgecl.core.session)
        return PROJECTIONS[kind](dim, size, seed)


def check_projection(kind: str) -> None:
    if kind not in PROJECTIONS:
        raise EdgeclError(f"projection_kind={kind}: unknown projection (known: {', '.join(PROJECTIONS)})")


def legacy_projection(data: dict[str, Any]) -> dict[str, Any]:
    """A stored method config from before projection_kind existed was written with the Gaussian matrix."""
    return data if "projection_kind" in data else {**data, "projection_kind": "gaussian"}


def _row_starts(size: int) -> list[int]:
    return [i * size - i * (i - 1) // 2 for i in range(size + 1)]


# Row by row through numpy views: a Python loop of M slice copies takes a fifth of the time of torch's
# boolean-mask scatter and gather (0.45 and 0.23 s at M = 4096 here), and needs no M x M mask


def pack_upper(matrix: torch.Tensor) -> torch.Tensor:
    """A square matrix's upper triangle, row by row, as float32."""
    size = len(matrix)
    packed, starts = torch.empty(size * (size + 1) // 2), _row_starts(size)
    out, rows = packed.numpy(), matrix.numpy()
    for i in range(size):
        out[starts[i] : starts[i + 1]] = rows[i, i:]
    return packed


def unpack_upper(packed: torch.Tensor, size: int, block: int = 512, symmetric: bool = True) -> torch.Tensor:
    """The float64 matrix whose upper triangle `pack_upper` wrote: symmetric, or upper triangular."""
    matrix, starts = (torch.empty if symmetric else torch.zeros)(size, size, dtype=torch.float64), _row_starts(size)
    rows, values = matrix.numpy(), packed.numpy()
    for i in range(size):
        rows[i, i:] = values[starts[i] : starts[i + 1]]
    for b in range(0, size if symmetric else 0, block):  # mirror a block of rows at a time, for the cache
        e = min(b + block, size)
        matrix[b:e, :b] = matrix[:b, b:e].T
        diagonal = matrix[b:e, b:e]
        diagonal.copy_(diagonal.triu() + diagonal.triu(1).T)
    return matrix


def cholesky_factor(system: torch.Tensor) -> torch.Tensor:
    """The upper R with R^T R = system (symmetric positive definite), computed in the system's own memory."""
    # symmetric, so its transpose is the column-major layout LAPACK factors in place (a row-major input
    # is first copied: 134 MB at M = 4096); torch zeroes the other triangle
    lower, info = system.mT, torch.empty((), dtype=torch.int32)
    torch.linalg.cholesky_ex(lower, out=(lower, info))
    if info:
        raise EdgeclError(
            f"analytic classifier: G + lambda I is not positive definite in float64 "
            f"(leading minor {int(info)}); pick a larger ridge"
        )
    return system


def factor_of_gram(gram: torch.Tensor, ridge: float) -> torch.Tensor:
    """The upper R with R^T R = G + lambda I, formed and factored in G's own memory."""
    gram.diagonal().add_(ridge)
    return cholesky_factor(gram)


def cholesky_update(factor: torch.Tensor, rows: torch.Tensor) -> None:
    """Upper R with R^T R = A becomes, in place, the factor of A + rows^T rows: k rows cost about
    2 k M^2 flops, where accumulating G and factoring it again cost 2 k M^2 + M^3 / 3 (at M = 4096 here:
    50 rows 0.12 s against 0.55, 1,000 rows the same time, 3,000 rows 3.3 s against 1.9: LAPACK's ormqr
    runs slower than the matmul that accumulates G). Block by block of columns, a QR of the block's
    triangle stacked on the rows' block zeroes those rows; its Q^T then carries the rest of the rows
    on (the stacked Householder update of LAPACK's tpqrt, on torch's QR). All of it on one thread: as fast
    on an idle CPU, and a core taken by other work no longer stalls each of its some 200 small ops
    (docs/benchmarks.md, section 9). The numbers are those of two threads to the bit up to 128 rows (Q
    formed); ormqr's differ in the last bits (about 1e-14 of the factor) with the thread count."""
    with torch_threads(1):
        _update(factor, rows)


def _update(factor: torch.Tensor, rows: torch.Tensor) -> None:
    size, explicit = len(factor), len(rows) <= 128
    block = 128 if explicit else 256 if len(rows) <= 1024 else 512
    if not len(rows):
        return
    for start in range(0, size, block):
        end = min(start + block, size)
        width = end - start
        stacked = torch.cat([factor[start:end, start:end].triu(), rows[:, :width]])
        if explicit:  # a small Q formed once beats LAPACK's ormqr applying its reflectors (0.12 vs 0.24 s)
            q, r = torch.linalg.qr(stacked, mode="complete")
        else:
            reflectors, tau = torch.geqrf(stacked)
        factor[start:end, start:end] = r[:width] if explicit else reflectors[:width].triu()
        if end < size:
            rest = torch.cat([factor[start:end, end:], rows[:, width:]])
            rest = q.mT @ rest if explicit else torch.ormqr(reflectors, tau, rest, left=True, transpose=True)
            factor[start:end, end:] = rest[:width]
            rows = rest[width:]
    factor.mul_(factor.diagonal().sign()[:, None])  # a positive diagonal, as Cholesky's (R^T R is unchanged)


def gram_of_factor(factor: torch.Tensor, ridge: float) -> torch.Tensor:
    """G = R^T R - lambda I from the upper factor of G + lambda I (2 M^3 flops)."""
    gram = factor.T @ factor
    gram.diagonal().sub_(ridge)
    return gram


def solve_factored(factor: torch.Tensor, rhs: torch.Tensor) -> torch.Tensor:
    """(R^T R)^-1 rhs by two triangular solves (cholesky_solve copies the factor first, at 4x their time)."""
    return torch.linalg.solve_triangular(factor, torch.linalg.solve_triangular(factor.mT, rhs, upper=False), upper=True)


class AnalyticClassifier(nn.Module):
    def __init__(
        self,
        dim: int,
        size: int = PROJECTION,
        seed: int = 0,
        num_classes: int = 0,
        kind: str = "hadamard",
        repick: bool = False,
    ) -> None:
        super().__init__()
        self.dim, self.size, self.seed, self.kind, self.repick = dim, size, seed, kind, repick
        self.projection = random_projection(kind, dim, size, seed)
        # What is kept of G between sessions, as the bundle keeps it: an upper triangle in float32 (33.6 MB
        # at M = 4096, not 134), unpacked to float64 only while a session is added, so a session learned in
        # this process gives what it gives after a save and reload. With lambda kept after the first
        # session it is the Cholesky factor R of G + lambda I, which a session updates in O(k M^2); with
        # lambda picked every session (`repick`) it is G, since R in float32 fixes G to about 1e-7 lambda only.
        self.register_buffer(self._kept, torch.zeros(size * (size + 1) // 2))
        self.register_buffer("moment", torch.zeros(size, num_classes, dtype=torch.float64))  # Q
        self.register_buffer("weight", torch.zeros(size, num_classes))  # W, the current solution
        self.register_buffer("ridge", torch.tensor(0.0, dtype=torch.float64))  # 0: nothing learned yet
        self._holds_gram = False  # factor_packed holds G still, as loaded from a bundle that kept G
        self.recorded: list[tuple[torch.Tensor, torch.Tensor, int]] = []  # this session's adds, for the heads' journal
        self.stale = False  # loaded to classify from a journal: W is current, the factor and Q are not

    @property
    def _kept(self) -> str:
        return "gram_packed" if self.repick else "factor_packed"

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs) -> None:
        kept, other = prefix + self._kept, prefix + ("factor_packed" if self.repick else "gram_packed")
        holds_gram = self._holds_gram and kept not in state_dict and other not in state_dict  # a partial load keeps it
        if other in state_dict and kept not in state_dict:
            triangle = state_dict.pop(other)
            if self.repick and len(triangle) == len(getattr(self, self._kept)):  # a factor where G is kept
                factor = unpack_upper(triangle, self.size, symmetric=False)
                triangle = pack_upper(gram_of_factor(factor, float(state_dict.get(prefix + "ridge", 0.0))))
            # bundles written before the factor was kept: G, factored at the next add (nothing learned: G = 0)
            holds_gram = not self.repick and float(state_dict.get(prefix + "ridge", 0.0)) > 0
            state_dict[kept] = triangle
        self._holds_gram = holds_gram
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def _save_to_state_dict(self, destination, prefix, keep_vars) -> None:
        super()._save_to_state_dict(destination, prefix, keep_vars)
        if self._holds_gram:  # not factored yet: saved as it came
            destination[prefix + "gram_packed"] = destination.pop(prefix + "factor_packed")

    def _factor_held_gram(self) -> None:
        if not self._holds_gram:
            return
        if self.learned:
            try:
                factor = factor_of_gram(unpack_upper(self.factor_packed, self.size), float(self.ridge))
            except EdgeclError:  # G rounded to float32 is indefinite by about 1e-7 |G|, more than a small lambda
                values, vectors = torch.linalg.eigh(unpack_upper(self.factor_packed, self.size))
                factor = cholesky_factor(
                    (vectors * (values.clamp(min=0) + float(self.ridge))) @ vectors.T
                )  # nearest PSD G
            self.factor_packed = pack_upper(factor)
        self._holds_gram = False

    @classmethod
    def from_settings(cls, dim: int, settings: Any, num_classes: int = 0) -> AnalyticClassifier:
        """From a method config's `projection` (M), `projection_seed`, `projection_kind` and `repick_ridge`."""
        return cls(
            dim,
            settings.projection,
            settings.projection_seed,
            num_classes,
            settings.projection_kind,
            settings.repick_ridge,
        )

    @property
    def num_classes(self) -> int:
        return self.moment.shape[1]

    @property
    def learned(self) -> bool:
        return float(self.ridge) > 0

    @property
    def gram(self) -> torch.Tensor:
        """G, float64 (where the factor is kept: R^T R - lambda I, 2 M^3 flops)."""
        if self.repick:
            return unpack_upper(self.gram_packed, self.size)
        return gram_of_factor(self.factor, float(self.ridge))

    @property
    def factor(self) -> torch.Tensor:
        """R, upper triangular in float64, with R^T R = G + lambda I."""
        if self.repick:
            return factor_of_gram(self.gram, float(self.ridge))
        self._factor_held_gram()
        return unpack_upper(self.factor_packed, self.size, symmetric=False)

    def expand(self, features: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.projection(features))

    def add(
        self,
        features: torch.Tensor,
        targets: torch.Tensor,
        num_classes: int,
        ridges: tuple[float, ...] = RIDGES,
        *,
        solve: bool = True,
    ) -> float:
        """Accumulate one session (targets in [0, num_classes)), pick lambda in the first session (every
        session if `repick`), solve; returns lambda. If it fails, nothing has changed. Without `solve`, W
        stays as it was where lambda is kept: for a caller that holds the new W already (the journal's replay)."""
        if not min(ridges) > 0:
            raise EdgeclError(f"ridge candidates must be positive (got {min(ridges):g})")
        if self.stale:
            raise RuntimeError(
                "this analytic classifier was loaded to classify; load the heads for learning to add to it"
            )
        h = self.expand(features).double()
        y = torch.nn.functional.one_hot(targets, num_classes).double()
        previous = self.moment
        self.moment = torch.cat(
            [previous, torch.zeros(self.size, num_classes - self.num_classes, dtype=torch.float64)], dim=1
        )
        moment = self.moment + h.T @ y
        try:
            ridge, kept, weight = self._fit(h, y, ridges, moment, solve)
        except BaseException:
            self.moment = previous
            raise
        self.moment = moment
        self.ridge = torch.tensor(ridge, dtype=torch.float64)
        setattr(self, self._kept, kept)
        self.weight = weight
        self.recorded.append((features.detach().float().clone(), targets.clone(), num_classes))
        return ridge

    def _fit(
        self, h: torch.Tensor, y: torch.Tensor, ridges: tuple[float, ...], moment: torch.Tensor, solve: bool = True
    ) -> tuple[float, torch.Tensor, torch.Tensor]:
        """(lambda, the packed triangle to keep, W) with this session's H added; `moment` is Q with its Y."""
        if self.learned and not self.repick:
            factor = self.factor
            cholesky_update(factor, h)
            return float(self.ridge), pack_upper(factor), self.solve(factor, moment) if solve else self.weight
        gram = self.gram if self.learned else None
        ridge = self.select_ridge(h, y, ridges, gram)
        system = (gram if gram is not None else torch.zeros(self.size, self.size, dtype=torch.float64)).addmm_(h.T, h)
        gram_kept = pack_upper(system) if self.repick else None
        try:
            factor = factor_of_gram(system, ridge)
        except EdgeclError:
            if gram_kept is None:
                raise
            system = unpack_upper(gram_kept, self.size)  # G rounded to float32 and a small lambda: LU solves it
            system.diagonal().add_(ridge)
            return ridge, gram_kept, torch.linalg.solve(system, moment).float().contiguous()
        return ridge, gram_kept if self.repick else pack_upper(factor), self.solve(factor, moment)

    def select_ridge(
        self,
        h: torch.Tensor,
        y: torch.Tensor,
        ridges: tuple[float, ...],
        gram: torch.Tensor | None = None,
        folds: int = FOLDS,
    ) -> float:
        """The lambda with the least squared error over `folds`-fold cross-validation on this session's
        first HELD_OUT samples (earlier sessions, whose G is `gram`, and later samples always in the fit;
        folds are every k-th sample, so the caller shuffles)."""
        if min(folds, len(h)) < 2:
            return float(self.ridge) if self.learned else ridges[len(ridges) // 2]
        return ridges[int(np.argmin(self.cross_validation_errors(h, y, ridges, folds, gram=gram)))]

    def cross_validation_errors(
        self,
        h: torch.Tensor,
        y: torch.Tensor,
        ridges: tuple[float, ...],
        folds: int = FOLDS,
        held_out: int = HELD_OUT,
        gram: torch.Tensor | None = None,
    ) -> list[float]:
        """Held-out squared error per candidate lambda. No refits: with the fit on everything,
        A = G + lambda I and P_f = H_f A^-1 H_f^T, fold f's held-out residuals are
        (I - P_f)^-1 (Y_f - H_f W), so one eigendecomposition of G serves every candidate and fold."""
        if gram is None and self.learned:
            gram = self.gram
        values, rotated, projected = self._spectrum(h, y, gram)
        rotated, y = rotated[:held_out], y[:held_out]
        folds = min(folds, len(y))
        errors = []
        for ridge in ridges:
            scaled = rotated / (values + ridge)
            residual, error = y - scaled @ projected, 0.0
            for f in range(folds):  # fold f: every folds-th sample from f
                hat = scaled[f::folds] @ rotated[f::folds].T
                held, info = torch.linalg.solve_ex(torch.eye(len(hat), dtype=hat.dtype) - hat, residual[f::folds])
                error += float((held**2).sum()) if not info else math.inf
            errors.append(error)
        return errors

    def _spectrum(
        self, h: torch.Tensor, y: torch.Tensor, gram: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(eigenvalues of G + H^T H, H and G's targets in its eigenvectors V); G = 0 where `gram` is None.
        A first session with fewer samples than M takes them from the n x n kernel H H^T = U S U^T
        instead, since H V = U S^1/2 there (benchmarks/analytic.py: the first session)."""
        if gram is None and len(h) < self.size:
            values, u = torch.linalg.eigh(h @ h.T)
            values = values.clamp(min=0)  # rounding leaves the kernel's zero eigenvalues slightly negative
            root = values.sqrt()
            return values, u * root, root[:, None] * (u.T @ y)
        values, vectors = torch.linalg.eigh(h.T @ h if gram is None else gram + h.T @ h)
        return values, h @ vectors, vectors.T @ (self.moment + h.T @ y)

    def solve(self, factor: torch.Tensor | None = None, moment: torch.Tensor | None = None) -> torch.Tensor:
        """W from R and Q (the kept ones unless given)."""
        solution = solve_factored(self.factor if factor is None else factor, self.moment if moment is None else moment)
        # contiguous, as a reloaded W is: a column-major W takes other matmul kernels, and the scores
        # of a bundle just learned would differ from the same bundle reloaded in the last bits
        return solution.float().contiguous()

    def classify(self, expanded: torch.Tensor) -> torch.Tensor:
        """Logits from features already through `expand` (which classifiers sharing a projection
        can run once for all of them)."""
        return expanded @ self.weight

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.classify(self.expand(features))
