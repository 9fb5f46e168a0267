"""SimpleCIL: nearest class mean by cosine on the frozen embedding, the baseline every paper reports."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from edgecl.core.layers import class_means
from edgecl.core.methods.base import ContinualMethod, MethodConfig, register_method


@dataclass(frozen=True)
class SimpleCILConfig(MethodConfig):
    # Only shapes the reported score (softmax of scaled cosines); the label is the nearest mean.
    logit_scale: float = 16.0


@register_method
class SimpleCIL(ContinualMethod):
    name = "simplecil"
    summary = "SimpleCIL: nearest class mean (cosine) on the frozen embedding, the baseline every paper reports"
    config_class = SimpleCILConfig
    config: SimpleCILConfig

    def __init__(self, config: SimpleCILConfig, embedding_dim: int) -> None:
        super().__init__(config, embedding_dim)
        self.register_buffer("prototypes", torch.zeros(0, embedding_dim))

    @property
    def num_classes(self) -> int:
        return self.prototypes.shape[0]

    def learn(self, features: torch.Tensor, targets: torch.Tensor, generator: torch.Generator, *, show_progress: bool = True) -> dict[str, float]:
        old = self.num_classes
        new = self.check_new_classes(targets)
        self.prototypes = torch.cat([self.prototypes, class_means(features, targets - old, new)])
        return {}

    def logits(self, features: torch.Tensor) -> torch.Tensor:
        return self.config.logit_scale * F.linear(F.normalize(features, dim=-1), F.normalize(self.prototypes, dim=-1))

    def structure(self) -> dict[str, Any]:
        return {"classes": self.num_classes}

    def build(self, structure: dict[str, Any]) -> None:
        self.prototypes = torch.zeros(structure["classes"], self.embedding_dim)
