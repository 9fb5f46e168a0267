"""The interface every continual-learning method implements, and the registry that names them.

A method lives on embeddings: `learn` takes one session's features and (new) class indices,
`logits` scores features against every class seen so far, one sample at a time in effect
(no batch statistics, no per-batch choices). Its tensors are its `state_dict`; `structure()`
is the JSON that rebuilds empty modules of the right shapes before loading them.
"""

from __future__ import annotations

import dataclasses
import math
import typing
from abc import ABC, abstractmethod
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from torch import nn

from edgecl.errors import EdgeclError, param

if TYPE_CHECKING:
    from edgecl.core.layers import Resemblance

# settings that must be above zero; every other number must be zero or more (and finite)
_POSITIVE = frozenset(
    {
        "batch_size",
        "head_batch_size",
        "projection",
        "bottleneck",
        "fast_bottleneck",
        "rank",
        "lr",
        "head_lr",
        "sigma_init",
        "analytic_scale",
        "sessions",
        "temperature",
        "feature_power",
    }
)
# sizes of tensors: a stored config (a bundle from elsewhere) cannot ask for more than a device holds
_AT_MOST = {
    "projection": 1 << 16,
    "bottleneck": 1 << 14,
    "fast_bottleneck": 1 << 14,
    "rank": 1 << 10,
    "class_balance": 2,  # beyond, a 5-image class's weight against a 300-image one leaves float32
}


@dataclasses.dataclass(frozen=True)
class MethodConfig:
    def __post_init__(self) -> None:
        for name, kind in typing.get_type_hints(type(self)).items():
            value, kind = getattr(self, name), _unless_none(kind)
            if kind not in (int, float) or value is None:
                continue
            if (
                isinstance(value, bool)  # an int to Python, but a stored `true` is no size or rate
                or not isinstance(value, (int, float))
                or not math.isfinite(value)
                or value < 0
                or (name in _POSITIVE and value == 0)
            ):
                bound = "above 0" if name in _POSITIVE else "0 or more"
                raise EdgeclError(f"{type(self).__name__}.{name}={value!r}: must be a number {bound}")
            if name in _AT_MOST and value > _AT_MOST[name]:
                raise EdgeclError(f"{type(self).__name__}.{name}={value!r}: must be at most {_AT_MOST[name]}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> MethodConfig:
        hints = typing.get_type_hints(cls)
        unknown = sorted(set(data) - set(hints))
        if unknown:
            raise EdgeclError(f"{cls.__name__}: unknown setting(s) {', '.join(unknown)}")
        nested = {k: hints[k].from_dict(v) for k, v in data.items() if _is_config(hints[k]) and isinstance(v, dict)}
        return cls(**{**data, **nested})

    @classmethod
    def has_setting(cls, key: str) -> bool:
        """Whether `override(key=...)` changes something: the config or one of its parts has `key`."""
        hints = typing.get_type_hints(cls)
        return key in hints or any(_is_config(kind) and kind.has_setting(key) for kind in hints.values())

    def override(self, **values: Any) -> MethodConfig:
        """New config with these fields replaced (None: unchanged, unknown names: ignored); a dotted
        name reaches into a nested config (tosca.epochs)."""
        hints = typing.get_type_hints(type(self))
        changes: dict[str, Any] = {}
        for key, value in values.items():
            head, _, rest = key.partition(".")
            if value is None:
                continue
            if head not in hints:  # e.g. --epochs for a method made of others: each part that has it
                for name, kind in hints.items():
                    if _is_config(kind) and not rest and key in typing.get_type_hints(kind):
                        changes[name] = changes.get(name, getattr(self, name)).override(**{key: value})
                continue
            if rest and _is_config(hints[head]):
                changes[head] = changes.get(head, getattr(self, head)).override(**{rest: value})
            elif not rest:
                changes[head] = value
        return dataclasses.replace(self, **changes)

    def setting(self, key: str, text: str, _group: str = "") -> MethodConfig:
        """--set key=value: the value parsed as the field's type."""
        hints, name = typing.get_type_hints(type(self)), _group + key
        head, _, rest = key.partition(".")
        if head not in hints:
            owner = f"{_group.rstrip('.')} has" if _group else f"{self.method_name()} has"
            nearby = [
                f"{_group}{group}.{key}"
                for group, kind in hints.items()
                if _is_config(kind) and _has_setting(kind, key)
            ]
            hint = f"; did you mean {' or '.join(nearby)}?" if nearby else ""
            raise EdgeclError(
                f"{param('settings')} {name}: {owner} no setting {head!r} (known: {', '.join(hints)}){hint}"
            )
        kind = hints[head]
        if rest:
            if not _is_config(kind):
                raise EdgeclError(f"{param('settings')} {name}: {_group}{head} is not a group of settings")
            return dataclasses.replace(self, **{head: getattr(self, head).setting(rest, text, f"{_group}{head}.")})
        if _is_config(kind):
            known = ", ".join(f"{_group}{head}.{field}" for field in typing.get_type_hints(kind))
            raise EdgeclError(
                f"{param('settings')} {name}={text}: {name} is a group of settings; set one of them ({known})"
            )
        if kind is not _unless_none(kind) and text.strip().lower() in _NONE:
            return dataclasses.replace(self, **{head: None})
        kind = _unless_none(kind)
        try:
            value = _parse_bool(text) if kind is bool else kind(text)
        except (TypeError, ValueError) as err:
            raise EdgeclError(
                f"{param('settings')} {name}={text}: not a valid {getattr(kind, '__name__', kind)}"
            ) from err
        try:
            return dataclasses.replace(self, **{head: value})
        except EdgeclError as err:
            raise EdgeclError(f"{param('settings')} {name}={text}: {err}") from None

    def method_name(self) -> str:
        """ "method NAME" for the method this config belongs to, else the config's class name."""
        names = [name for name, cls in METHODS.items() if cls.config_class is type(self)]
        return f"method {names[0]}" if names else type(self).__name__

    def check_session(self, new_classes: int) -> None:
        """Refuse, in one line, a session of this many new classes that the method cannot learn."""

    def slow_learner(self) -> Any:
        """The in-backbone slow learner to train on the host's first session, or None."""
        return None

    def session_backbone(self) -> Any:
        """The backbone adaptation to run on the host in every session (InfLoRA), or None."""
        return None


# --set text for a setting that may be left to the method (None); not "none", which reads as "off" for whiten
_NONE = ("auto",)


def _unless_none(kind: Any) -> Any:
    """X for a setting typed `X | None`, else the type as it is."""
    args = typing.get_args(kind)
    if type(None) in args and len(args) == 2:
        return next(arg for arg in args if arg is not type(None))
    return kind


def _is_config(kind: Any) -> bool:
    return isinstance(kind, type) and issubclass(kind, MethodConfig)


class ContinualMethod(nn.Module, ABC):
    name: ClassVar[str]
    summary: ClassVar[str] = ""
    config_class: ClassVar[type[MethodConfig]]
    adds_to_classes: ClassVar[bool] = False  # whether a session may bring more images of a known class
    slow_epochs_setting: ClassVar[str | None] = None  # the setting of its slow learner's epochs, where it has one

    def __init__(self, config: MethodConfig, embedding_dim: int) -> None:
        super().__init__()
        self.config = config
        self.embedding_dim = embedding_dim

    @property
    @abstractmethod
    def num_classes(self) -> int: ...

    @abstractmethod
    def learn(
        self, features: torch.Tensor, targets: torch.Tensor, generator: torch.Generator, *, show_progress: bool = True
    ) -> dict[str, float]:
        """One session: `targets` are the new classes, numbered on from `num_classes`."""

    @abstractmethod
    def logits(self, features: torch.Tensor) -> torch.Tensor:
        """(N, D) -> (N, num_classes), each row a function of its own sample only."""

    @abstractmethod
    def structure(self) -> dict[str, Any]: ...

    @abstractmethod
    def build(self, structure: dict[str, Any]) -> None:
        """Create empty modules shaped as `structure` says, ready for load_state_dict."""

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """Class probabilities: what `predict` returns and what the heads' ONNX graph computes."""
        return torch.softmax(self.logits(features), dim=-1)

    @torch.inference_mode()
    def predict(self, features: torch.Tensor) -> torch.Tensor:
        self.eval()
        return self(features)

    @torch.inference_mode()
    def known_scores(self, features: torch.Tensor, active: torch.Tensor | None = None) -> torch.Tensor:
        """(N,) in [0, 1], per sample: how much it looks like a class the method knows, for saying
        "unknown" under a threshold. This default is the top probability; methods that keep class
        means use the embedding's similarity to the nearest one, which separates unseen classes
        far better (docs/methods.md). `active`: a mask of the classes still predicted (forgotten ones out)."""
        return restrict(self.predict(features), active).max(dim=1).values

    @torch.inference_mode()
    def held_out_known_scores(
        self, features: torch.Tensor, targets: torch.Tensor, active: torch.Tensor | None = None
    ) -> torch.Tensor:
        """known_scores of a session's own training images as if each were not among them (calibrates the
        threshold; NaN where nothing can be held out, left out of the calibration); this default scores them
        as they are."""
        return self.known_scores(features, active)

    def resemblance(self, features: torch.Tensor, active: torch.Tensor | None = None) -> Resemblance | None:
        """For the images of one new class: the known class they are most like and how much (1: as another
        sample of it would be; layers.resemblance), where the method keeps class means; this default: None."""
        return None

    def session_classes(self, targets: torch.Tensor) -> int:
        """The number of new classes of a session that may also bring images of known classes (methods that
        can add to a class: `adds_to_classes`); the new ones continue the numbering without gaps."""
        if not self.adds_to_classes:
            return self.check_new_classes(targets)
        fresh = torch.unique(targets[targets >= self.num_classes])
        if not torch.equal(fresh, torch.arange(self.num_classes, self.num_classes + len(fresh))):
            raise ValueError(
                f"a session's new classes must be numbered {self.num_classes}.. without gaps, got {fresh.tolist()}"
            )
        return len(fresh)

    def check_new_classes(self, targets: torch.Tensor) -> int:
        """The number of new classes; they must continue the numbering without gaps."""
        present = torch.unique(targets)
        expected = torch.arange(self.num_classes, self.num_classes + len(present))
        if not torch.equal(present, expected):
            raise ValueError(
                f"a session's classes must be numbered {self.num_classes}.. without gaps, got {present.tolist()}"
            )
        return len(present)


def restrict(probabilities: torch.Tensor, active: torch.Tensor | None) -> torch.Tensor:
    """Probabilities over the `active` classes only (the others 0), summing to 1 again."""
    if active is None:
        return probabilities
    kept = probabilities * active.to(probabilities.dtype)
    return kept / kept.sum(dim=1, keepdim=True).clamp_min(1e-30)


METHODS: dict[str, type[ContinualMethod]] = {}


def _has_setting(kind: type, key: str) -> bool:
    """Whether a config class has the dotted setting `key`."""
    head, _, rest = key.partition(".")
    hints = typing.get_type_hints(kind)
    if head not in hints:
        return False
    return _has_setting(hints[head], rest) if rest and _is_config(hints[head]) else not rest


def register_method(cls: type[ContinualMethod]) -> type[ContinualMethod]:
    METHODS[cls.name] = cls
    return cls


def _parse_bool(text: str) -> bool:
    words = {"1": True, "true": True, "yes": True, "on": True, "0": False, "false": False, "no": False, "off": False}
    if text.lower() not in words:
        raise ValueError(text)
    return words[text.lower()]


def method_class(name: str) -> type[ContinualMethod]:
    if name not in METHODS:
        raise EdgeclError(f"{param('method')} {name}: unknown method (known: {', '.join(sorted(METHODS))})")
    return METHODS[name]


def method_config(
    name: str, config: dict[str, Any] | None = None, settings: dict[str, str] | None = None, **overrides: Any
) -> MethodConfig:
    """A method's config: defaults or `config`, then keyword overrides, then --set texts."""
    cls = method_class(name)
    result = (cls.config_class.from_dict(config) if config is not None else cls.config_class()).override(**overrides)
    for key, text in (settings or {}).items():
        result = result.setting(key, text)
    return result


def create_method(
    name: str, embedding_dim: int, config: dict[str, Any] | None = None, **overrides: Any
) -> ContinualMethod:
    return method_class(name)(method_config(name, config, **overrides), embedding_dim)


def restore_method(
    name: str, embedding_dim: int, config: dict[str, Any], structure: dict[str, Any], state: dict[str, torch.Tensor]
) -> ContinualMethod:
    method = create_method(name, embedding_dim, config)
    method.build(structure)
    method.load_state_dict(state)
    method.eval()
    return method
