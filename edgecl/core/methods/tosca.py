"""TOSCA (arXiv 2502.14762): one LuCA module per session on the frozen embedding.

Training a session: a fresh LuCA (xavier-uniform), cross-entropy over every class seen so far on a
cosine classifier with a learnable scale, plus an L1 penalty on the LuCA weights; afterwards the new
classes' rows become their prototypes (mean LuCA output). Inference runs every session's module and
keeps, for each sample on its own, the module whose prediction has the lowest entropy.

Where edgecl departs from the official code, and why (figures in docs/methods.md):
- The module is chosen per sample, never per test batch (a per-batch choice leaks the task identity).
- Heads train on cached embeddings of the frozen backbone: no image augmentation; instead a floor
  on SGD steps (`min_steps`) so that a 50-image session is trained, not just touched.
- `replay_ratio`: each class leaves its embedding mean and diagonal variance (2 x D floats); later
  sessions add Gaussian samples of the old classes to the cross-entropy, so a module learns old vs
  new instead of "everything is new" (a one-class session has nothing else to learn from).
- `per_module_prototypes`: when a session adds classes, their prototypes are also taken through
  every earlier (frozen) module, so each module classifies all classes in its own feature space and
  the entropies being compared come from complete classifiers.
`tosca-paper` turns these three off and trains as the official code does (docs/methods.md): the
bottleneck is the embedding width / 16, session 0's classifier rows start random (nn.Linear-style
uniform) and later sessions' new rows at zero, session 0's LuCA keeps nn.Linear's default init (later
ones xavier, zero bias), and the cosine rate steps once per epoch. The official code trains on
augmented images through the backbone; edgecl trains on fixed embeddings.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from edgecl.core.layers import (
    CosineClassifier,
    LuCA,
    LuCAStack,
    class_means,
    entropy,
    fill_unkept_statistics,
    merge_class_statistics,
)
from edgecl.core.methods.interface import ContinualMethod, MethodConfig, register_method
from edgecl.core.progress import progress_bar
from edgecl.core.sgd import MomentumSGD, SGDSchedule, cosine_lr, train_minibatches
from edgecl.core.threads import torch_threads
from edgecl.errors import EdgeclError

ROW_INITS = ("prototypes", "official")  # official: session 0 random (nn.Linear-style uniform), later sessions zero
MODULE_INITS = ("xavier", "pytorch")


@dataclass(frozen=True)
class ToscaConfig(MethodConfig):
    bottleneck: int = 48
    epochs: int = 20
    batch_size: int = 48
    lr: float = 0.025
    min_lr: float = 1e-8
    momentum: float = 0.9
    weight_decay: float = 0.0
    l1: float = 5e-4
    sigma_init: float = 1.0
    min_steps: int = 400
    replay_ratio: float = 1.0  # Gaussian old-class samples per real sample in a batch; 0 = off
    per_module_prototypes: bool = True
    bottleneck_ratio: int = 0  # above 0: the bottleneck is the embedding width // this (official: 16), not `bottleneck`
    row_init: str = "prototypes"  # new classes' rows before training: the untrained module's prototypes, or "official"
    first_module_init: str = "xavier"  # session 0's LuCA; "pytorch": nn.Linear's default (official). Later ones: xavier
    lr_per_epoch: bool = False  # the cosine rate steps once per epoch (official), not per batch

    def __post_init__(self) -> None:
        super().__post_init__()
        for name, known in (("row_init", ROW_INITS), ("first_module_init", MODULE_INITS)):
            if getattr(self, name) not in known:
                value = getattr(self, name)
                raise EdgeclError(f"{type(self).__name__}.{name}={value!r}: must be one of {', '.join(known)}")

    def schedule(self) -> SGDSchedule:
        return SGDSchedule(
            self.epochs, self.batch_size, self.lr, self.min_lr, self.momentum, self.weight_decay, self.min_steps
        )

    def bottleneck_for(self, embedding_dim: int) -> int:
        return max(embedding_dim // self.bottleneck_ratio, 1) if self.bottleneck_ratio else self.bottleneck


def class_means_stacked(outputs: torch.Tensor, targets: torch.Tensor, num_classes: int) -> torch.Tensor:
    """(T, N, D) module outputs -> (T, classes, D) prototypes per module."""
    return torch.stack([class_means(out, targets, num_classes) for out in outputs])


def train_epoch_cosine(
    params: list[torch.nn.Parameter],
    batch_loss: Callable[[torch.Tensor], torch.Tensor],
    num_samples: int,
    schedule: SGDSchedule,
    generator: torch.Generator,
    *,
    description: str,
    show_progress: bool,
) -> float:
    """train_minibatches with the cosine rate held through each epoch: the official code's
    CosineAnnealingLR(T_max=epochs, eta_min=min_lr), stepped after every epoch."""
    params = [p for p in params if p.requires_grad]
    optimizer = MomentumSGD(params, schedule.momentum, schedule.weight_decay)
    epochs = schedule.epochs_for(num_samples)
    mean_loss = float("nan")
    with torch_threads(1), progress_bar(description, epochs, enabled=show_progress, unit="epochs") as advance:
        for epoch in range(epochs):
            lr = cosine_lr(epoch, epochs, schedule.lr, schedule.min_lr)
            losses = []
            for batch in torch.randperm(num_samples, generator=generator).split(schedule.batch_size):
                loss = batch_loss(batch)
                optimizer.zero_grad()
                loss.backward()
                optimizer.step(lr)
                losses.append(loss.detach())
            mean_loss = torch.stack(losses).mean().item()
            advance(1, loss=mean_loss)
    return mean_loss


@register_method
class Tosca(ContinualMethod):
    name = "tosca"
    summary = (
        "TOSCA/LuCA: one sparse adapter-calibrator per session on the embedding, chosen per sample by entropy "
        "(with replay of old-class statistics)"
    )
    config_class = ToscaConfig
    config: ToscaConfig

    def __init__(self, config: ToscaConfig, embedding_dim: int) -> None:
        super().__init__(config, embedding_dim)
        self.bottleneck = config.bottleneck_for(embedding_dim)
        self.sessions = LuCAStack(embedding_dim, self.bottleneck)
        self.classifier = CosineClassifier(embedding_dim, 0, config.sigma_init)
        self.register_buffer("class_mean", torch.zeros(0, embedding_dim))
        self.register_buffer("class_var", torch.zeros(0, embedding_dim))
        self.register_buffer("class_count", torch.zeros(0))  # images each class was learned from
        self.register_buffer("module_rows", torch.zeros(0, 0, embedding_dim))  # (sessions, classes, D), unit length

    @property
    def num_classes(self) -> int:
        return self.classifier.num_classes

    def _first_rows(
        self, module: LuCA, features: torch.Tensor, local: torch.Tensor, new: int, generator: torch.Generator
    ) -> torch.Tensor:
        """The new classes' rows while the session trains (prototypes replace them afterwards)."""
        if self.config.row_init == "prototypes":
            return class_means(module(features), local, new)
        if self.num_classes == 0:  # the official code's first classifier: CosineLinear's U(+-1/sqrt(D)) init
            bound = 1 / math.sqrt(self.embedding_dim)
            return torch.empty(new, self.embedding_dim).uniform_(-bound, bound, generator=generator)
        # appended as zeros: their first gradient (through normalize's 1/eps at zero) sets their direction
        return torch.zeros(new, self.embedding_dim)

    def _replay(self, count: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        classes = torch.randint(0, self.class_mean.shape[0], (count,), generator=generator)
        noise = torch.randn(count, self.embedding_dim, generator=generator)
        return self.class_mean[classes] + self.class_var[classes].sqrt() * noise, classes

    adds_to_classes = True

    def learn(
        self, features: torch.Tensor, targets: torch.Tensor, generator: torch.Generator, *, show_progress: bool = True
    ) -> dict[str, float]:
        """A session trains a new module on its images; images of a known class also update that class's
        statistics (mean, variance, count: exact) and its prototype in every module (new: its mean through the
        new module; earlier: the old direction and the new images' mean, weighted by their counts)."""
        old = self.num_classes
        new = self.session_classes(targets)
        fresh = targets >= old
        local = targets[fresh] - old
        module = LuCA(self.embedding_dim, self.bottleneck)
        module.reset_parameters(generator, self.config.first_module_init if old == 0 else "xavier")
        with torch.no_grad():
            self.classifier.add_classes(self._first_rows(module, features[fresh], local, new, generator))
        replay = self.config.replay_ratio > 0 and old > 0

        def batch_loss(batch: torch.Tensor) -> torch.Tensor:
            x, y = features[batch], targets[batch]
            if replay:
                pseudo, pseudo_y = self._replay(math.ceil(self.config.replay_ratio * len(batch)), generator)
                x, y = torch.cat([x, pseudo]), torch.cat([y, pseudo_y])
            return F.cross_entropy(self.classifier(module(x)), y) + self.config.l1 * module.l1()

        self.train()
        train = train_epoch_cosine if self.config.lr_per_epoch else train_minibatches
        loss = train(
            [*module.parameters(), *self.classifier.parameters()],
            batch_loss,
            len(targets),
            self.config.schedule(),
            generator,
            description=f"tosca session {len(self.sessions)}",
            show_progress=show_progress,
        )
        self.eval()
        with torch.no_grad():
            if new:
                self.classifier.weight[old:] = class_means(module(features[fresh]), local, new)
            counts_before = torch.cat([self.class_count, torch.zeros(new)])
            squares = self.class_var + self.class_mean**2
            mean, count, _ = merge_class_statistics(
                self.class_mean, self.class_count, torch.zeros(old), features, targets, old + new
            )
            square, _, _ = merge_class_statistics(
                squares, self.class_count, torch.zeros(old), features**2, targets, old + new
            )
            self.class_mean, self.class_var, self.class_count = mean, (square - mean**2).clamp_min(0), count
            if self.config.per_module_prototypes:
                self.module_rows = self._module_rows(module, features, targets, old, new, counts_before)
        self.sessions.append(module)
        return {"loss": loss}

    def _module_rows(
        self,
        module: LuCA,
        features: torch.Tensor,
        targets: torch.Tensor,
        old: int,
        new: int,
        counts_before: torch.Tensor,
    ) -> torch.Tensor:
        """Every class's unit prototype in every module, the new one last (sessions, classes, D)."""
        total = old + new
        present = torch.unique(targets)
        rows = F.normalize(self.classifier.weight.detach(), dim=-1).clone()
        rows[present] = F.normalize(class_means(module(features), targets, total)[present], dim=-1)
        if not len(self.sessions):
            return rows[None]
        through = F.normalize(class_means_stacked(self.sessions(features), targets, total), dim=-1)  # (T, classes, D)
        earlier = torch.cat([self.module_rows, torch.zeros(len(self.sessions), new, self.embedding_dim)], dim=1)
        added = torch.bincount(targets, minlength=total).float()
        known = present[present < old]
        weight = torch.where(
            counts_before[known] > 0, counts_before[known], added[known]
        )  # unknown counts: as many as the new
        share = (weight / (weight + added[known]))[None, :, None]
        earlier[:, known] = F.normalize(share * earlier[:, known] + (1 - share) * through[:, known], dim=-1)
        earlier[:, old:] = through[:, old:]
        return torch.cat([earlier, rows[None]])

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs) -> None:
        fill_unkept_statistics(state_dict, prefix, "class_mean", ("class_count",))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def session_logits(self, features: torch.Tensor) -> torch.Tensor:
        """(sessions, N, classes): every session module's prediction for every sample."""
        outputs = F.normalize(self.sessions(features), dim=-1)
        # module_rows are stored unit-length: sessions x classes of them, too many to normalise per call
        rows = (
            self.module_rows if self.config.per_module_prototypes else F.normalize(self.classifier.weight, dim=-1)[None]
        )
        return self.classifier.sigma * torch.bmm(outputs, rows.expand(len(outputs), *rows.shape[1:]).mT)

    def logits(self, features: torch.Tensor) -> torch.Tensor:
        logits = self.session_logits(features)
        chosen = entropy(logits).argmin(dim=0)
        return logits[chosen, torch.arange(features.shape[0])]

    def structure(self) -> dict[str, Any]:
        return {"sessions": len(self.sessions), "classes": self.num_classes}

    def build(self, structure: dict[str, Any]) -> None:
        sessions, classes, dim = structure["sessions"], structure["classes"], self.embedding_dim
        self.sessions = LuCAStack(dim, self.bottleneck, sessions)
        self.classifier = CosineClassifier(dim, classes, self.config.sigma_init)
        self.class_mean, self.class_var, self.class_count = (
            torch.zeros(classes, dim),
            torch.zeros(classes, dim),
            torch.zeros(classes),
        )
        shape = (sessions, classes, dim) if self.config.per_module_prototypes else (0, 0, dim)
        self.module_rows = torch.zeros(shape)


@dataclass(frozen=True)
class ToscaPaperConfig(ToscaConfig):
    min_steps: int = 0
    replay_ratio: float = 0.0
    per_module_prototypes: bool = False
    bottleneck_ratio: int = 16
    row_init: str = "official"
    first_module_init: str = "pytorch"
    lr_per_epoch: bool = True

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ToscaPaperConfig:
        # bundles written before these settings keep their modules' shape and go on training as they began
        before = {"bottleneck_ratio": 0, "row_init": "prototypes", "first_module_init": "xavier", "lr_per_epoch": False}
        return super().from_dict({**before, **data})


@register_method
class ToscaPaper(Tosca):
    """TOSCA trained as published (still choosing the module per sample)."""

    name = "tosca-paper"
    summary = "TOSCA as published: no replay, one prototype set, no minimum of steps, the official init and schedule"
    config_class = ToscaPaperConfig
