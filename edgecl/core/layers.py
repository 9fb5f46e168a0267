"""The trainable modules that sit on the frozen embedding: LuCA and the cosine classifier."""

from __future__ import annotations

import math
from typing import NamedTuple

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

    def reset_parameters(self, generator: torch.Generator | None = None, scheme: str = "xavier") -> None:
        """xavier: xavier-uniform weights, zero biases (what the official code resets a module to);
        pytorch: nn.Linear's own default, U(+-1/sqrt(fan_in)) for weights and biases, drawn from `generator`."""
        if scheme not in ("xavier", "pytorch"):
            raise ValueError(f"unknown LuCA init {scheme!r}")
        for layer in (self.down, self.up, self.squeeze, self.excite):
            bound = 1 / math.sqrt(layer.in_features)  # kaiming_uniform_(a=sqrt(5)), nn.Linear's default, has this bound
            if scheme == "xavier":
                nn.init.xavier_uniform_(layer.weight, generator=generator)
            else:
                nn.init.uniform_(layer.weight, -bound, bound, generator=generator)
            if layer.bias is not None and scheme == "xavier":
                nn.init.zeros_(layer.bias)
            elif layer.bias is not None:
                nn.init.uniform_(layer.bias, -bound, bound, generator=generator)
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
            "down_weight": (bottleneck, dim),
            "down_bias": (bottleneck,),
            "up_weight": (dim, bottleneck),
            "up_bias": (dim,),
            "norm_weight": (dim,),
            "norm_bias": (dim,),
            "squeeze_weight": (bottleneck, dim),
            "excite_weight": (dim, bottleneck),
        }
        for name, shape in shapes.items():
            self.register_buffer(name, torch.zeros(sessions, *shape))

    def __len__(self) -> int:
        return self.down_weight.shape[0]

    @staticmethod
    def _tensors(luca: LuCA) -> dict[str, torch.Tensor]:
        return {
            "down_weight": luca.down.weight,
            "down_bias": luca.down.bias,
            "up_weight": luca.up.weight,
            "up_bias": luca.up.bias,
            "norm_weight": luca.norm.weight,
            "norm_bias": luca.norm.bias,
            "squeeze_weight": luca.squeeze.weight,
            "excite_weight": luca.excite.weight,
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


class ScaleShift(nn.Module):
    """f -> scale * f + shift per channel (SSF's operation), starting as the identity. SAFE's fast
    learner applies it to the embedding; the SSF tuner folds it into a layer's weight and bias."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.ones(dim))
        self.shift = nn.Parameter(torch.zeros(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale + self.shift


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
    sums = torch.zeros(num_classes, features.shape[1], dtype=features.dtype, device=features.device).index_add_(
        0, targets, features
    )
    counts = torch.bincount(targets, minlength=num_classes).clamp_min(1).to(features.dtype)
    return sums / counts[:, None]


def power_normalize(features: torch.Tensor, power: float) -> torch.Tensor:
    """sign(f) |f|^power per channel (power 1: unchanged). A CNN's pooled features are non-negative and
    heavy-tailed; their square root spreads the many small channels against the few large ones."""
    return features if power == 1 else features.sign() * features.abs().pow(power)


def inverse_sqrt(matrix: torch.Tensor, min_eigenvalue: float | None = None) -> torch.Tensor:
    """S^-1/2 of a symmetric positive definite S, from its eigendecomposition; eigenvalues under `min_eigenvalue`
    (where given) are raised to it first."""
    values, vectors = torch.linalg.eigh(matrix)
    if min_eigenvalue is not None:
        values = values.clamp_min(min_eigenvalue)
    return (vectors * values.rsqrt()) @ vectors.T


def whitening_of(features: torch.Tensor, shrink: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean, W) with W = (C + shrink * mean variance * I)^-1/2, C the covariance of `features`: (f - mean) W has
    about unit variance along each of their principal directions, the weak ones damped by the shrinkage."""
    x = features.double()
    centre = x.mean(0)
    cov = torch.cov(x.T, correction=1) if len(x) > 1 else x.new_zeros(x.shape[1], x.shape[1])
    level = cov.diagonal().mean()
    level = level if level > 0 else x.square().mean().clamp_min(1e-12)  # one image, or all alike
    shrunk = cov + shrink * level * torch.eye(len(cov), dtype=x.dtype, device=x.device)
    return centre.float(), inverse_sqrt(shrunk, min_eigenvalue=1e-12).float()


def class_balance(counts: torch.Tensor, power: float) -> torch.Tensor | None:
    """(mean count / count)^power per class: scaling a ridge solution's columns by it is scaling the
    columns of Q = H^T Y, i.e. each class's images weighed as if the classes were closer in size. Ones
    where a class's count is not known (heads written before counts were kept). Without branches on the
    counts, so that the heads' graph takes them as an input."""
    if power == 0:
        return None
    weights = (counts.mean() / counts.clamp(min=1)).pow(power)
    return torch.where((counts > 0).all(), weights, torch.ones_like(weights))


def entropy(logits: torch.Tensor) -> torch.Tensor:
    """Shannon entropy of softmax(logits) over the last axis."""
    log_p = torch.log_softmax(logits, dim=-1)
    return -(log_p.exp() * log_p).sum(dim=-1)


def fill_unkept_statistics(state_dict: dict, prefix: str, rows: str, names: tuple[str, ...]) -> None:
    """Per-class statistics (`names`) that bundles written before they were kept lack, as zeros ("not
    known"), one per row of `rows`. Only when all of them are missing: heads that lack some but not all
    were damaged, and loading them must fail."""
    present = state_dict.get(prefix + rows)
    if present is not None and not any(prefix + name in state_dict for name in names):
        for name in names:
            state_dict[prefix + name] = torch.zeros(len(present))


def merge_class_statistics(
    means: torch.Tensor,
    counts: torch.Tensor,
    similarity: torch.Tensor,
    features: torch.Tensor,
    targets: torch.Tensor,
    num_classes: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Class means, image counts and typical similarities (each class's mean cosine of its images to its mean)
    after adding `features` (targets: class indices; rows past the current ones are new classes). A class
    whose count is unknown (0: a bundle written before counts were kept) weighs as much as its new images."""
    dim, grow = features.shape[1], num_classes - len(means)
    means, counts, similarity = (
        torch.cat([t, torch.zeros(grow, *t.shape[1:], dtype=t.dtype)]) for t in (means, counts, similarity)
    )
    added = torch.bincount(targets, minlength=num_classes).to(means.dtype)
    old = torch.where((counts == 0) & (added > 0) & (torch.arange(num_classes) < num_classes - grow), added, counts)
    total = old + added
    sums = torch.zeros(num_classes, dim, dtype=means.dtype).index_add_(0, targets, features.to(means.dtype))
    merged = torch.where(total[:, None] > 0, (old[:, None] * means + sums) / total.clamp_min(1)[:, None], means)
    own = F.cosine_similarity(features, merged[targets], dim=-1)
    own_sums = torch.zeros(num_classes, dtype=means.dtype).index_add_(0, targets, own.to(means.dtype))
    known_old = torch.where(
        similarity > 0, old, torch.zeros_like(old)
    )  # an unknown similarity is measured on the new images
    merged_similarity = torch.where(
        added > 0, (known_old * similarity + own_sums) / (known_old + added).clamp_min(1), similarity
    )
    return merged, total, merged_similarity


def relative_similarities(features: torch.Tensor, means: torch.Tensor, similarity: torch.Tensor) -> torch.Tensor:
    """(N, classes): each sample's cosine to each class mean over that class's typical cosine (1: as close as
    the class's own images are on average; a class without a typical value is taken as is)."""
    scale = torch.where(similarity > 0, similarity, torch.ones_like(similarity)).to(features.dtype)
    return (F.normalize(features, dim=-1) @ F.normalize(means.to(features.dtype), dim=-1).T) / scale


class Resemblance(NamedTuple):
    known: int  # the known class the new images are most like
    closeness: float  # about 1: as another sample of that class would be
    rival: float  # the same measure of the nearest other known class's mean to that class (0: none)


def resemblance(
    features: torch.Tensor,
    means: torch.Tensor,
    similarity: torch.Tensor,
    counts: torch.Tensor,
    active: torch.Tensor | None = None,
) -> Resemblance | None:
    """The known class the images of one new class are most like, and how much: the cosine of their mean
    direction to the class's mean, over the cosine that as many other images of that class would give; about 1
    for the class taught again. With unit vectors a m + b e (m the class's direction, e noise), the class's
    typical cosine s over its n_c images gives a^2 = (s^2 - 1/n_c) / (1 - 1/n_c) (each image is in its own
    mean), and n new images are expected at a^2 / (s sqrt(a^2 + b^2 / n)). `rival` measures the other known
    classes' means the same way: where one reads like that class taught again, so may any new class (an
    embedding whose classes all point one way). None for a method without means."""
    kept = (similarity > 0) & (counts > 1)
    kept = kept if active is None else kept & active
    if not kept.any() or not len(features):
        return None
    s, n_c = similarity.to(features.dtype).clamp(1e-6, 1.0), counts.to(features.dtype).clamp_min(2)
    a2 = ((s**2 - 1 / n_c) / (1 - 1 / n_c)).clamp(1e-6, 1.0)

    def expected(n, of=slice(None)) -> torch.Tensor:  # the cosine n images of class `of` give its mean
        return a2[of] / (s[of] * torch.sqrt(a2[of] + (1 - a2[of]) / n))

    directions = F.normalize(means.to(features.dtype), dim=-1)
    direction = F.normalize(F.normalize(features, dim=-1).mean(0), dim=0)
    ratio = torch.where(kept, (direction @ directions.T) / expected(len(features)), -torch.inf)
    best = int(ratio.argmax())
    others = kept.clone()
    others[best] = False
    rivals = (directions @ directions[best]) / expected(n_c, best)  # each other class's mean as its n_j images
    rival = float(rivals[others].max()) if others.any() else 0.0
    return Resemblance(best, float(ratio[best]), rival)


def known_from_means(
    features: torch.Tensor, means: torch.Tensor, similarity: torch.Tensor, active: torch.Tensor | None = None
) -> torch.Tensor:
    """Per sample, in [0, 1]: its relative similarity to the class it is most like. Unseen classes sit farther
    from every mean than known images from theirs, and the per-class scale lets one threshold fit tight and
    loose classes alike (measured against the top probability: docs/methods.md). `active` masks out
    forgotten classes."""
    if active is not None:
        means, similarity = means[active], similarity[active]
    if not len(means):
        return torch.zeros(len(features))
    return relative_similarities(features, means, similarity).max(dim=1).values.clamp(0, 1)


def held_out_known(
    features: torch.Tensor,
    targets: torch.Tensor,
    means: torch.Tensor,
    counts: torch.Tensor,
    similarity: torch.Tensor,
    active: torch.Tensor | None = None,
) -> torch.Tensor:
    """known_from_means of a class's own images, each held out of its class mean (leave one out): what an
    image the class never saw scores, for calibrating the threshold without setting images aside. `active`:
    the classes still predicted (a forgotten one's mean does not count, as in classifying). NaN for an image
    that is all its class has: held out, its class has no mean."""
    relative = relative_similarities(features, means, similarity)
    if active is not None:
        relative[:, ~active] = -1.0
    n = counts[targets].to(features.dtype)
    held_out = (n[:, None] * means[targets].to(features.dtype) - features) / (n - 1).clamp_min(1)[:, None]
    own = (
        F.cosine_similarity(features, held_out, dim=-1)
        / torch.where(similarity > 0, similarity, torch.ones_like(similarity))[targets]
    )
    relative[torch.arange(len(features)), targets] = own
    return torch.where(n > 1, relative.max(dim=1).values.clamp(0, 1), torch.full_like(own, torch.nan))
