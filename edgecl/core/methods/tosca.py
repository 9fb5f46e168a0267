"""TOSCA (arXiv 2502.14762): one LuCA module per session on the frozen embedding.

Training a session: a fresh LuCA (xavier-uniform), cross-entropy over every class seen so far on a
cosine classifier with a learnable scale, plus an L1 penalty on the LuCA weights; afterwards the new
classes' rows become their prototypes (mean LuCA output). Inference runs every session's module and
keeps, for each sample on its own, the module whose prediction has the lowest entropy.

Where edgecl departs from the official code, and why (figures in README, tests/test_accuracy.py):
- The module is chosen per sample, never per test batch (a per-batch choice leaks the task identity).
- Heads train on cached embeddings of the frozen backbone: no image augmentation; instead a floor
  on SGD steps (`min_steps`) so that a 50-image session is trained, not just touched.
- `replay_ratio`: each class leaves its embedding mean and diagonal variance (2 x D floats); later
  sessions add Gaussian samples of the old classes to the cross-entropy, so a module learns old vs
  new instead of "everything is new" (a one-class session has nothing else to learn from).
- `per_module_prototypes`: when a session adds classes, their prototypes are also taken through
  every earlier (frozen) module, so each module classifies all classes in its own feature space and
  the entropies being compared come from complete classifiers.
`tosca-paper` turns these three off.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from edgecl.core.layers import CosineClassifier, LuCA, LuCAStack, class_means, entropy
from edgecl.core.methods.base import ContinualMethod, MethodConfig, register_method
from edgecl.core.sgd import SGDSchedule, train_minibatches


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

    def schedule(self) -> SGDSchedule:
        return SGDSchedule(self.epochs, self.batch_size, self.lr, self.min_lr, self.momentum, self.weight_decay, self.min_steps)


def class_means_stacked(outputs: torch.Tensor, targets: torch.Tensor, num_classes: int) -> torch.Tensor:
    """(T, N, D) module outputs -> (T, classes, D) prototypes per module."""
    return torch.stack([class_means(out, targets, num_classes) for out in outputs])


@register_method
class Tosca(ContinualMethod):
    name = "tosca"
    summary = "TOSCA/LuCA: one sparse adapter-calibrator per session on the embedding, chosen per sample by entropy (with replay of old-class statistics)"
    config_class = ToscaConfig
    config: ToscaConfig

    def __init__(self, config: ToscaConfig, embedding_dim: int) -> None:
        super().__init__(config, embedding_dim)
        self.sessions = LuCAStack(embedding_dim, config.bottleneck)
        self.classifier = CosineClassifier(embedding_dim, 0, config.sigma_init)
        self.register_buffer("class_mean", torch.zeros(0, embedding_dim))
        self.register_buffer("class_var", torch.zeros(0, embedding_dim))
        self.register_buffer("module_rows", torch.zeros(0, 0, embedding_dim))  # (sessions, classes, D), unit length

    @property
    def num_classes(self) -> int:
        return self.classifier.num_classes

    def _replay(self, count: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        classes = torch.randint(0, self.class_mean.shape[0], (count,), generator=generator)
        noise = torch.randn(count, self.embedding_dim, generator=generator)
        return self.class_mean[classes] + self.class_var[classes].sqrt() * noise, classes

    def learn(self, features: torch.Tensor, targets: torch.Tensor, generator: torch.Generator, *, show_progress: bool = True) -> dict[str, float]:
        old = self.num_classes
        new = self.check_new_classes(targets)
        local = targets - old
        module = LuCA(self.embedding_dim, self.config.bottleneck)
        module.reset_parameters(generator)
        with torch.no_grad():
            self.classifier.add_classes(class_means(module(features), local, new))
        replay = self.config.replay_ratio > 0 and old > 0

        def batch_loss(batch: torch.Tensor) -> torch.Tensor:
            x, y = features[batch], targets[batch]
            if replay:
                pseudo, pseudo_y = self._replay(math.ceil(self.config.replay_ratio * len(batch)), generator)
                x, y = torch.cat([x, pseudo]), torch.cat([y, pseudo_y])
            return F.cross_entropy(self.classifier(module(x)), y) + self.config.l1 * module.l1()

        self.train()
        loss = train_minibatches(
            [*module.parameters(), *self.classifier.parameters()], batch_loss, len(targets), self.config.schedule(),
            generator, description=f"tosca session {len(self.sessions)}", show_progress=show_progress,
        )
        self.eval()
        with torch.no_grad():
            self.classifier.weight[old:] = class_means(module(features), local, new)
            mean = class_means(features, local, new)
            self.class_mean = torch.cat([self.class_mean, mean])
            self.class_var = torch.cat([self.class_var, (class_means(features**2, local, new) - mean**2).clamp_min(0)])
            if self.config.per_module_prototypes:
                rows = F.normalize(self.classifier.weight.detach(), dim=-1)[None]
                if len(self.sessions):
                    earlier = F.normalize(class_means_stacked(self.sessions(features), local, new), dim=-1)
                    rows = torch.cat([torch.cat([self.module_rows, earlier], dim=1), rows])
                self.module_rows = rows
        self.sessions.append(module)
        return {"loss": loss}

    def session_logits(self, features: torch.Tensor) -> torch.Tensor:
        """(sessions, N, classes): every session module's prediction for every sample."""
        outputs = F.normalize(self.sessions(features), dim=-1)
        # module_rows are stored unit-length: sessions x classes of them, too many to normalise per call
        rows = self.module_rows if self.config.per_module_prototypes else F.normalize(self.classifier.weight, dim=-1)[None]
        return self.classifier.sigma * torch.bmm(outputs, rows.expand(len(outputs), *rows.shape[1:]).mT)

    def logits(self, features: torch.Tensor) -> torch.Tensor:
        logits = self.session_logits(features)
        chosen = entropy(logits).argmin(dim=0)
        return logits[chosen, torch.arange(features.shape[0])]

    def structure(self) -> dict[str, Any]:
        return {"sessions": len(self.sessions), "classes": self.num_classes}

    def build(self, structure: dict[str, Any]) -> None:
        sessions, classes, dim = structure["sessions"], structure["classes"], self.embedding_dim
        self.sessions = LuCAStack(dim, self.config.bottleneck, sessions)
        self.classifier = CosineClassifier(dim, classes, self.config.sigma_init)
        self.class_mean, self.class_var = torch.zeros(classes, dim), torch.zeros(classes, dim)
        shape = (sessions, classes, dim) if self.config.per_module_prototypes else (0, 0, dim)
        self.module_rows = torch.zeros(shape)


@dataclass(frozen=True)
class ToscaPaperConfig(ToscaConfig):
    min_steps: int = 0
    replay_ratio: float = 0.0
    per_module_prototypes: bool = False


@register_method
class ToscaPaper(Tosca):
    """TOSCA trained as published (still choosing the module per sample)."""

    name = "tosca-paper"
    summary = "TOSCA as published: no replay, one prototype set, no minimum of steps"
    config_class = ToscaPaperConfig
