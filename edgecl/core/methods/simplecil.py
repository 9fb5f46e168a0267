"""SimpleCIL: nearest class mean by cosine on the frozen embedding, the baseline every paper reports."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from edgecl.core.layers import (
    Resemblance,
    fill_unkept_statistics,
    held_out_known,
    known_from_means,
    merge_class_statistics,
    resemblance,
)
from edgecl.core.methods.interface import ContinualMethod, MethodConfig, register_method


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
        self.register_buffer("class_count", torch.zeros(0))
        self.register_buffer("class_similarity", torch.zeros(0))

    @property
    def num_classes(self) -> int:
        return self.prototypes.shape[0]

    adds_to_classes = True

    def learn(
        self, features: torch.Tensor, targets: torch.Tensor, generator: torch.Generator, *, show_progress: bool = True
    ) -> dict[str, float]:
        total = self.num_classes + self.session_classes(targets)
        self.prototypes, self.class_count, self.class_similarity = merge_class_statistics(
            self.prototypes, self.class_count, self.class_similarity, features, targets, total
        )
        return {}

    def logits(self, features: torch.Tensor) -> torch.Tensor:
        return self.config.logit_scale * F.linear(F.normalize(features, dim=-1), F.normalize(self.prototypes, dim=-1))

    @torch.inference_mode()
    def known_scores(self, features: torch.Tensor, active: torch.Tensor | None = None) -> torch.Tensor:
        return known_from_means(features, self.prototypes, self.class_similarity, active)

    @torch.inference_mode()
    def resemblance(self, features: torch.Tensor, active: torch.Tensor | None = None) -> Resemblance | None:
        return resemblance(features, self.prototypes, self.class_similarity, self.class_count, active)

    @torch.inference_mode()
    def held_out_known_scores(
        self, features: torch.Tensor, targets: torch.Tensor, active: torch.Tensor | None = None
    ) -> torch.Tensor:
        return held_out_known(features, targets, self.prototypes, self.class_count, self.class_similarity, active)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs) -> None:
        fill_unkept_statistics(state_dict, prefix, "prototypes", ("class_count", "class_similarity"))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def structure(self) -> dict[str, Any]:
        return {"classes": self.num_classes}

    def build(self, structure: dict[str, Any]) -> None:
        classes = structure["classes"]
        self.prototypes, self.class_count, self.class_similarity = (
            torch.zeros(classes, self.embedding_dim),
            torch.zeros(classes),
            torch.zeros(classes),
        )
