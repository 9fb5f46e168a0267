"""TOSCA (arXiv 2502.14762): one LuCA module per session on the frozen embedding.

Training a session: a fresh LuCA (xavier-uniform), cross-entropy over every class seen so far on a
cosine classifier with a learnable scale, plus an L1 penalty on the LuCA weights; afterwards the new
classes' rows become their prototypes (mean LuCA output). Inference runs every session's module and
keeps, for each sample on its own, the module whose prediction has the lowest entropy.

Departures from the official code, on purpose: the module is chosen per sample, not per test batch
(per-batch choice leaks the task identity through the batch); heads train on cached embeddings of
the frozen backbone, so there is no image augmentation.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from edgecl.heads import CosineClassifier, LuCA, class_means, entropy
from edgecl.methods.base import ContinualMethod, MethodConfig, register_method
from edgecl.training import SGDSchedule, train_minibatches


@dataclass(frozen=True)
class ToscaConfig(MethodConfig):
    bottleneck: int = 48
    epochs: int = 20
    batch_size: int = 48
    lr: float = 0.025
    min_lr: float = 1e-8
    momentum: float = 0.9
    weight_decay: float = 0.0
    min_steps: int = 400
    l1: float = 5e-4
    sigma_init: float = 1.0

    def schedule(self) -> SGDSchedule:
        return SGDSchedule(self.epochs, self.batch_size, self.lr, self.min_lr, self.momentum, self.weight_decay, self.min_steps)


@register_method
class Tosca(ContinualMethod):
    name = "tosca"
    config_class = ToscaConfig
    config: ToscaConfig

    def __init__(self, config: ToscaConfig, embedding_dim: int) -> None:
        super().__init__(config, embedding_dim)
        self.sessions = nn.ModuleList()
        self.classifier = CosineClassifier(embedding_dim, 0, config.sigma_init)

    @property
    def num_classes(self) -> int:
        return self.classifier.num_classes

    def learn(self, features: torch.Tensor, targets: torch.Tensor, generator: torch.Generator, *, show_progress: bool = True) -> dict[str, float]:
        old = self.num_classes
        new = self.check_new_classes(targets)
        module = LuCA(self.embedding_dim, self.config.bottleneck)
        module.reset_parameters(generator)
        with torch.no_grad():
            self.classifier.add_classes(class_means(module(features), targets - old, new))

        def batch_loss(batch: torch.Tensor) -> torch.Tensor:
            logits = self.classifier(module(features[batch]))
            return F.cross_entropy(logits, targets[batch]) + self.config.l1 * module.l1()

        self.train()
        loss = train_minibatches(
            [*module.parameters(), *self.classifier.parameters()], batch_loss, len(targets), self.config.schedule(),
            generator, description=f"tosca session {len(self.sessions)}", show_progress=show_progress,
        )
        self.eval()
        with torch.no_grad():
            self.classifier.weight[old:] = class_means(module(features), targets - old, new)
        self.sessions.append(module)
        return {"loss": loss}

    def session_logits(self, features: torch.Tensor) -> torch.Tensor:
        """(sessions, N, classes): every session module's prediction for every sample."""
        return torch.stack([self.classifier(module(features)) for module in self.sessions])

    def logits(self, features: torch.Tensor) -> torch.Tensor:
        logits = self.session_logits(features)
        chosen = entropy(logits).argmin(dim=0)
        return logits[chosen, torch.arange(features.shape[0])]

    def structure(self) -> dict[str, Any]:
        return {"sessions": len(self.sessions), "classes": self.num_classes}

    def build(self, structure: dict[str, Any]) -> None:
        self.sessions = nn.ModuleList(LuCA(self.embedding_dim, self.config.bottleneck) for _ in range(structure["sessions"]))
        self.classifier = CosineClassifier(self.embedding_dim, structure["classes"], self.config.sigma_init)
