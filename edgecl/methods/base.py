"""The interface every continual-learning method implements, and the registry that names them.

A method lives on embeddings: `learn` takes one session's features and (new) class indices,
`logits` scores features against every class seen so far, one sample at a time in effect
(no batch statistics, no per-batch choices). Its tensors are its `state_dict`; `structure()`
is the JSON that rebuilds empty modules of the right shapes before loading them.
"""

from __future__ import annotations

import dataclasses
from abc import ABC, abstractmethod
from typing import Any, ClassVar

import torch
from torch import nn

from edgecl.errors import EdgeclError


@dataclasses.dataclass(frozen=True)
class MethodConfig:
    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "MethodConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise EdgeclError(f"{cls.__name__}: unknown setting(s) {', '.join(unknown)}")
        return cls(**data)

    def override(self, **values: Any) -> "MethodConfig":
        names = {f.name for f in dataclasses.fields(self)}
        return dataclasses.replace(self, **{k: v for k, v in values.items() if v is not None and k in names})


class ContinualMethod(nn.Module, ABC):
    name: ClassVar[str]
    config_class: ClassVar[type[MethodConfig]]

    def __init__(self, config: MethodConfig, embedding_dim: int) -> None:
        super().__init__()
        self.config = config
        self.embedding_dim = embedding_dim

    @property
    @abstractmethod
    def num_classes(self) -> int: ...

    @abstractmethod
    def learn(self, features: torch.Tensor, targets: torch.Tensor, generator: torch.Generator, *, show_progress: bool = True) -> dict[str, float]:
        """One session: `targets` are the new classes, numbered on from `num_classes`."""

    @abstractmethod
    def logits(self, features: torch.Tensor) -> torch.Tensor:
        """(N, D) -> (N, num_classes), each row a function of its own sample only."""

    @abstractmethod
    def structure(self) -> dict[str, Any]: ...

    @abstractmethod
    def build(self, structure: dict[str, Any]) -> None:
        """Create empty modules shaped as `structure` says, ready for load_state_dict."""

    @torch.inference_mode()
    def predict(self, features: torch.Tensor) -> torch.Tensor:
        self.eval()
        return torch.softmax(self.logits(features), dim=-1)

    def check_new_classes(self, targets: torch.Tensor) -> int:
        """The number of new classes; they must continue the numbering without gaps."""
        present = torch.unique(targets)
        expected = torch.arange(self.num_classes, self.num_classes + len(present))
        if not torch.equal(present, expected):
            raise ValueError(f"a session's classes must be numbered {self.num_classes}.. without gaps, got {present.tolist()}")
        return len(present)


METHODS: dict[str, type[ContinualMethod]] = {}


def register_method(cls: type[ContinualMethod]) -> type[ContinualMethod]:
    METHODS[cls.name] = cls
    return cls


def method_class(name: str) -> type[ContinualMethod]:
    if name not in METHODS:
        raise EdgeclError(f"--method {name}: unknown method (known: {', '.join(sorted(METHODS))})")
    return METHODS[name]


def create_method(name: str, embedding_dim: int, config: dict[str, Any] | None = None, **overrides: Any) -> ContinualMethod:
    cls = method_class(name)
    base = cls.config_class.from_dict(config) if config is not None else cls.config_class()
    return cls(base.override(**overrides), embedding_dim)


def restore_method(name: str, embedding_dim: int, config: dict[str, Any], structure: dict[str, Any], state: dict[str, torch.Tensor]) -> ContinualMethod:
    method = create_method(name, embedding_dim, config)
    method.build(structure)
    method.load_state_dict(state)
    method.eval()
    return method
