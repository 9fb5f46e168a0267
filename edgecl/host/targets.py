"""Export target profiles: one JSON file per device in edgecl/host/profiles/, shipped as package data."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from importlib import resources

from edgecl.errors import EdgeclError, param

PRECISIONS = ("fp32", "fp16")


@dataclass(frozen=True)
class BatchProfile:
    min: int
    opt: int
    max: int

    def __post_init__(self) -> None:
        if not 1 <= self.min <= self.opt <= self.max:
            raise ValueError(f"batch profile needs 1 <= min <= opt <= max, got {self}")


@dataclass(frozen=True)
class TargetProfile:
    name: str
    description: str
    precision: str  # of the TensorRT engine
    fp32_layers: tuple[str, ...]  # ONNX op types kept in fp32 in an fp16 engine (LayerNorm overflows in fp16)
    workspace_mib: int
    batch: BatchProfile
    onnxruntime_providers: tuple[str, ...]  # in order of preference
    aliases: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise ValueError(f"{self.name}: precision {self.precision!r} is not one of {PRECISIONS}")

    @classmethod
    def from_dict(cls, data: dict) -> TargetProfile:
        return cls(
            name=data["name"],
            description=data.get("description", ""),
            precision=data["precision"],
            fp32_layers=tuple(data.get("fp32_layers", ())),
            workspace_mib=int(data["workspace_mib"]),
            batch=BatchProfile(**data["batch"]),
            onnxruntime_providers=tuple(data["onnxruntime_providers"]),
            aliases=tuple(data.get("aliases", ())),
        )

    def to_dict(self) -> dict:
        return asdict(self)


def available_targets() -> dict[str, TargetProfile]:
    profiles = {}
    for entry in (resources.files("edgecl.host") / "profiles").iterdir():
        if entry.name.endswith(".json"):
            profile = TargetProfile.from_dict(json.loads(entry.read_text()))
            profiles[profile.name] = profile
    return dict(sorted(profiles.items()))


def load_target(name: str) -> TargetProfile:
    profiles = available_targets()
    for profile in profiles.values():
        if name == profile.name or name in profile.aliases:
            return profile
    known = ", ".join(p.name + "".join(f" ({a})" for a in p.aliases) for p in profiles.values())
    raise EdgeclError(f"{param('target')} {name}: unknown target (known: {known})")
