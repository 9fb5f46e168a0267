"""The interface of an in-backbone parameter-efficient tuner."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, ClassVar

from torch import nn


class Tuner(ABC):
    name: ClassVar[str]
    mergeable: ClassVar[bool]

    @abstractmethod
    def attach(self, model: nn.Module) -> list[nn.Parameter]:
        """Insert the trainable modules into `model` (frozen otherwise); returns their parameters."""

    @abstractmethod
    def merge(self, model: nn.Module) -> nn.Module:
        """Fold the tuned modules into the weights (mergeable tuners) or keep them; returns the model."""

    def structure(self) -> dict[str, Any] | None:
        """What a bundle records to rebuild modules that stay in the graph; None once merged."""
        return None
