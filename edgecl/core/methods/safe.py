"""SAFE (NeurIPS 2024): a slow and a fast learner, each with an analytic classifier, blended by entropy.

- Slow learner: parameter-efficient tuning inside the backbone, trained once on the host in session
  0 and merged into the exported backbone (edgecl/slow_learner.py). Here it is the embedding itself,
  classified by its analytic classifier.
- Fast learner: on the device a small module on the embedding (SAFE keeps tuning the backbone's
  PET, which a device cannot afford), identity after session 0, trained every later session with
  CE + cross-classification (each learner's old-class weights and current features through the
  other learner's classifier, both ways) + feature alignment (1 - cos to the slow embedding).
- Inference: entropy H of each learner's softmax; w = softmax(-gamma [H_fast, H_slow]) per sample;
  logits = w_fast z_fast + w_slow z_slow. No test-label oracle (the official evaluation keeps the
  better of blended and slow-only accuracy using the test labels; edgecl does not).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from edgecl.core.analytic import PROJECTION, AnalyticClassifier, check_projection, legacy_projection
from edgecl.core.layers import (
    CosineClassifier,
    LuCA,
    Resemblance,
    ScaleShift,
    class_balance,
    class_means,
    entropy,
    fill_unkept_statistics,
    held_out_known,
    known_from_means,
    merge_class_statistics,
    resemblance,
)
from edgecl.core.methods.interface import ContinualMethod, MethodConfig, register_method
from edgecl.core.sgd import SGDSchedule, train_minibatches
from edgecl.errors import EdgeclError


class ResidualLuCA(nn.Module):
    """The LuCA adapter-calibrator as a residual correction that starts at zero: x + LuCA'(x)."""

    def __init__(self, dim: int, bottleneck: int) -> None:
        super().__init__()
        self.luca = LuCA(dim, bottleneck)
        self.gain = nn.Parameter(torch.zeros(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.gain * self.luca(x)


FAST_MODULES = {
    "scale_shift": lambda dim, cfg: ScaleShift(dim),
    "luca": lambda dim, cfg: ResidualLuCA(dim, cfg.fast_bottleneck),
}


AUTO_TUNER = "auto"  # the slow learner's tuner left to the backbone (edgecl/host/tuners: tuner_for)


@dataclass(frozen=True)
class SlowLearnerConfig(MethodConfig):
    """The slow learner inside the backbone, trained on the host in session 0 (edgecl/slow_learner.py)."""

    # ssf | adaptformer | auto (adaptformer on a ViT, ssf elsewhere) | none (also: epochs 0)
    tuner: str = "ssf"
    epochs: int = 20
    batch_size: int = 48
    lr: float = 0.01
    min_lr: float = 1e-8
    momentum: float = 0.9
    weight_decay: float = 5e-4
    l_diag: float = 0.01  # transfer loss: sum (C_ii - 1)^2 (SAFE ImageNet-A)
    l_rdn: float = (
        0.0  # transfer loss: sum C_ij^2, i != j (SAFE ImageNet-A: 10; it kills a CNN's features: docs/methods.md)
    )

    @property
    def enabled(self) -> bool:
        return self.tuner != "none" and self.epochs > 0


# the flat names of bundles written before the slow learner's settings were a group of their own
_LEGACY_SLOW = {
    "slow_tuner": "tuner",
    "slow_epochs": "epochs",
    "slow_batch_size": "batch_size",
    "slow_lr": "lr",
    "slow_weight_decay": "weight_decay",
    "slow_diag": "l_diag",
    "slow_rdn": "l_rdn",
}


@dataclass(frozen=True)
class SafeConfig(MethodConfig):
    projection: int = PROJECTION  # M of the analytic classifiers
    projection_seed: int = 0
    # hadamard | gaussian (RanPAC's dense matrix: 0.1-0.3 points more, 0.6-0.9 ms slower per image: docs/methods.md)
    projection_kind: str = "hadamard"
    repick_ridge: bool = (
        False  # RanPAC picks lambda every session; kept from the first here (measured: docs/methods.md)
    )
    gamma: float = 1.0  # entropy blending (SAFE: 1 on CIFAR, 100 on ImageNet-A)
    fast_learner: bool = True  # off: the slow learner alone
    fast: str = "scale_shift"  # the fast learner's module on the embedding: scale_shift | luca
    fast_bottleneck: int = 48
    epochs: int = 15  # SAFE's follow_epoch
    batch_size: int = 48
    lr: float = 0.01
    min_lr: float = 1e-8
    momentum: float = 0.9
    weight_decay: float = 5e-4
    min_steps: int = 400
    l_cos: float = 0.5  # feature alignment, summed over the batch (SAFE CIFAR: 0.5)
    l_cc: float = 1.0  # cross-classification (SAFE CIFAR: 1)
    sigma_init: float = 1.0
    # the slow analytic classifier's columns weighed by (mean class count / class count)^p, so that a class taught
    # from 5 images is not drowned by one of 300 (measured: docs/methods.md); 0 = the plain ridge solution
    class_balance: float = 0.75
    slow: SlowLearnerConfig = field(default_factory=SlowLearnerConfig)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SafeConfig:
        data = {"class_balance": 0.0, **legacy_projection(data)}  # bundles from before the setting keep their W
        legacy = {_LEGACY_SLOW[k]: v for k, v in data.items() if k in _LEGACY_SLOW}
        if legacy:
            data = {
                **{k: v for k, v in data.items() if k not in _LEGACY_SLOW},
                "slow": {**data.get("slow", {}), **legacy},
            }
        return super().from_dict(data)

    def schedule(self) -> SGDSchedule:
        return SGDSchedule(
            self.epochs, self.batch_size, self.lr, self.min_lr, self.momentum, self.weight_decay, self.min_steps
        )

    def __post_init__(self) -> None:
        super().__post_init__()
        check_projection(self.projection_kind)
        if self.fast not in FAST_MODULES:
            raise EdgeclError(f"fast={self.fast}: must be one of {', '.join(sorted(FAST_MODULES))}")

    def slow_learner(self) -> SlowLearnerConfig | None:
        return self.slow if self.slow.enabled else None


def blend(logits: list[torch.Tensor], gamma: float) -> torch.Tensor:
    """Per sample: weights softmax(-gamma * entropy) over the members, then the weighted logits."""
    stacked = torch.stack(logits)
    weights = torch.softmax(-gamma * entropy(stacked), dim=0)
    return (weights[..., None] * stacked).sum(dim=0)


@register_method
class Safe(ContinualMethod):
    name = "safe"
    summary = (
        "SAFE (NeurIPS 2024): slow learner in the backbone, fast learner on the embedding, "
        "analytic classifiers, entropy blend"
    )
    config_class = SafeConfig
    slow_epochs_setting = "slow.epochs"
    config: SafeConfig

    def __init__(self, config: SafeConfig, embedding_dim: int) -> None:
        super().__init__(config, embedding_dim)
        dim = embedding_dim
        self.slow_head, self.fast_head = (AnalyticClassifier.from_settings(dim, config) for _ in range(2))
        self.fast = FAST_MODULES[config.fast](dim, config)
        self.slow_classifier = CosineClassifier(dim, 0, config.sigma_init)  # prototypes of the embedding
        self.fast_classifier = CosineClassifier(dim, 0, config.sigma_init)
        self.register_buffer("sessions", torch.tensor(0))
        self.register_buffer("class_count", torch.zeros(0))  # images each class was learned from
        self.register_buffer("class_similarity", torch.zeros(0))  # each class's images' mean cosine to its mean

    @property
    def num_classes(self) -> int:
        return self.slow_classifier.num_classes

    adds_to_classes = True

    def learn(
        self, features: torch.Tensor, targets: torch.Tensor, generator: torch.Generator, *, show_progress: bool = True
    ) -> dict[str, float]:
        old = self.num_classes
        new = self.session_classes(targets)
        fresh = targets >= old
        local = targets[fresh] - old
        stats: dict[str, float] = {}
        # the slow classifier's rows are the class means: a known class's images update its mean exactly
        means, self.class_count, self.class_similarity = merge_class_statistics(
            self.slow_classifier.weight.detach(), self.class_count, self.class_similarity, features, targets, old + new
        )
        self.slow_classifier.weight = torch.nn.Parameter(means.to(self.slow_classifier.weight.dtype))
        with torch.no_grad():
            self.fast_classifier.add_classes(class_means(self.fast(features[fresh]), local, new))
        if old and self.config.fast_learner:
            stats["loss"] = self._train_fast(features, targets, old, generator, show_progress)
        with torch.no_grad():
            fast_features = self.fast(features)
            if old and self.config.fast_learner and new:  # a known class keeps the row its training left
                self.fast_classifier.weight[old:] = class_means(fast_features[fresh], local, new)
        order = torch.randperm(len(targets), generator=generator)  # the ridge's cross-validation folds
        stats["ridge_slow"] = self.slow_head.add(features[order], targets[order], old + new)
        stats["ridge_fast"] = self.fast_head.add(fast_features[order], targets[order], old + new)
        self.sessions += 1
        return stats

    def _train_fast(
        self, x: torch.Tensor, y: torch.Tensor, old: int, generator: torch.Generator, show_progress: bool
    ) -> float:
        cfg = self.config
        slow_old = self.slow_classifier.weight.detach()[:old]
        old_labels = torch.arange(old)

        def batch_loss(batch: torch.Tensor) -> torch.Tensor:
            slow_x, target = x[batch], y[batch]
            fast_x = self.fast(slow_x)
            loss = F.cross_entropy(self.fast_classifier(fast_x), target)
            loss = loss + cfg.l_cos * (1 - F.cosine_similarity(fast_x, slow_x, dim=-1)).sum()
            if cfg.l_cc:
                labels = torch.cat([old_labels, target])
                via_fast = self.fast_classifier(torch.cat([slow_old, slow_x]))
                via_slow = self.slow_classifier(torch.cat([self.fast_classifier.weight[:old], fast_x]))
                loss = loss + cfg.l_cc * (F.cross_entropy(via_fast, labels) + F.cross_entropy(via_slow, labels))
            return loss

        self.slow_classifier.requires_grad_(False)
        self.train()
        loss = train_minibatches(
            [*self.fast.parameters(), *self.fast_classifier.parameters()],
            batch_loss,
            len(y),
            cfg.schedule(),
            generator,
            description=f"safe fast learner, session {int(self.sessions)}",
            show_progress=show_progress,
        )
        self.eval()
        return loss

    def member_logits(self, features: torch.Tensor) -> dict[str, torch.Tensor]:
        if not self.config.fast_learner:
            members = {"slow": self.slow_head(features)}
        else:
            # both heads share one projection (same kind, dim, size, seed): one pass over it for both inputs
            n = len(features)
            expanded = self.slow_head.expand(torch.cat([self.fast(features), features]))
            members = {"fast": self.fast_head.classify(expanded[:n]), "slow": self.slow_head.classify(expanded[n:])}
        # the slow member only: its features are fixed, so its ridge solution is exact; the fast member's rows
        # come from a fast learner retrained every session, and weighing them up carried its drift onto the
        # base classes (measured: docs/methods.md)
        weights = class_balance(self.class_count, self.config.class_balance)
        if weights is not None:
            members["slow"] = members["slow"] * weights
        return members

    def logits(self, features: torch.Tensor) -> torch.Tensor:
        return blend(list(self.member_logits(features).values()), self.config.gamma)

    @torch.inference_mode()
    def known_scores(self, features: torch.Tensor, active: torch.Tensor | None = None) -> torch.Tensor:
        # the slow classifier's rows are the class means
        return known_from_means(features, self.slow_classifier.weight, self.class_similarity, active)

    @torch.inference_mode()
    def resemblance(self, features: torch.Tensor, active: torch.Tensor | None = None) -> Resemblance | None:
        return resemblance(features, self.slow_classifier.weight, self.class_similarity, self.class_count, active)

    @torch.inference_mode()
    def held_out_known_scores(
        self, features: torch.Tensor, targets: torch.Tensor, active: torch.Tensor | None = None
    ) -> torch.Tensor:
        means = self.slow_classifier.weight
        return held_out_known(features, targets, means, self.class_count, self.class_similarity, active)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs) -> None:
        fill_unkept_statistics(state_dict, prefix, "slow_classifier.weight", ("class_count", "class_similarity"))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def structure(self) -> dict[str, Any]:
        return {"classes": self.num_classes}

    def build(self, structure: dict[str, Any]) -> None:
        classes, dim = structure["classes"], self.embedding_dim
        self.slow_head, self.fast_head = (AnalyticClassifier.from_settings(dim, self.config, classes) for _ in range(2))
        self.slow_classifier = CosineClassifier(dim, classes, self.config.sigma_init)
        self.fast_classifier = CosineClassifier(dim, classes, self.config.sigma_init)
        self.class_count, self.class_similarity = torch.zeros(classes), torch.zeros(classes)
