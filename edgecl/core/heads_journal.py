"""The heads of a bundle as a base file and a journal of the sessions since, so that a `learn` of one
class writes what changed (megabytes) instead of every tensor (70 MB at the defaults: two M x M
Cholesky factors that any session changes throughout).

A journal entry holds, for one session:
- every tensor that changed, except what the analytic classifiers can recompute (their factor of
  G + lambda I and their Q), as the part added at the end when it only grew, else whole; their W
  (all that classifying reads) is stored whole;
- what each analytic classifier was given in the session (its inputs and targets), so that learning
  later replays the factor's update exactly: the same operations on the same numbers.

Classifying reads the base and the entries' tensors and never replays (the factors are not used to
classify); learning replays, and after JOURNAL_LIMIT entries a session writes a new base instead."""

from __future__ import annotations

from collections.abc import Callable

import torch

from edgecl.core.analytic import AnalyticClassifier

JOURNAL_LIMIT = 4  # entries before a new base: classify reads up to this many small files more, learn replays them
_REPLAYED = ("factor_packed", "gram_packed", "moment")  # an analytic classifier's tensors rebuilt from its inputs
_TAIL, _INPUT = "~tail", "~input"

Tensors = dict[str, torch.Tensor]


def analytic_modules(method: torch.nn.Module) -> dict[str, AnalyticClassifier]:
    return {name: module for name, module in method.named_modules() if isinstance(module, AnalyticClassifier)}


def _replayed(name: str, analytic: dict[str, AnalyticClassifier]) -> bool:
    prefix, _, leaf = name.rpartition(".")
    return leaf in _REPLAYED and prefix in analytic


def start(method: torch.nn.Module) -> Tensors:
    """What the entry of the session about to run is written against: the tensors it may change."""
    analytic = analytic_modules(method)
    for module in analytic.values():
        module.recorded.clear()
    return {k: v.detach().clone() for k, v in method.state_dict().items() if not _replayed(k, analytic)}


def entry(method: torch.nn.Module, before: Tensors) -> Tensors:
    """The journal entry of the session just run, against `before` (start's)."""
    analytic = analytic_modules(method)
    out: Tensors = {}
    for name, tensor in method.state_dict().items():
        if _replayed(name, analytic):
            continue
        old = before.get(name)
        if old is not None and old.shape == tensor.shape and old.dtype == tensor.dtype and torch.equal(old, tensor):
            continue
        grown = (
            old is not None
            and old.dim() == tensor.dim()
            and old.dtype == tensor.dtype
            and old.dim() > 0
            and len(old) <= len(tensor)
            and old.shape[1:] == tensor.shape[1:]
            and torch.equal(tensor[: len(old)], old)
        )
        if grown:
            out[f"{name}{_TAIL}"] = tensor[len(old) :]
        else:
            out[name] = tensor
    for prefix, module in analytic.items():
        for i, (features, targets, classes) in enumerate(module.recorded):
            out[f"{prefix}.{_INPUT}{i}.features"] = features
            out[f"{prefix}.{_INPUT}{i}.targets"] = targets
            out[f"{prefix}.{_INPUT}{i}.classes"] = torch.tensor(classes)
        module.recorded.clear()
    return out


def _split(tensors: Tensors) -> tuple[Tensors, dict[str, list[tuple[torch.Tensor, torch.Tensor, int]]]]:
    changed, inputs = {}, {}
    for name, tensor in tensors.items():
        if f".{_INPUT}" not in name:
            changed[name] = tensor
    recorded = [n.partition(f".{_INPUT}") for n in tensors if n.endswith(".features") and f".{_INPUT}" in n]
    for prefix, _, rest in sorted(recorded, key=lambda r: (r[0], int(r[2].split(".")[0]))):  # 2 before 10
        base = f"{prefix}.{_INPUT}{rest.split('.')[0]}"
        inputs.setdefault(prefix, []).append(
            (tensors[f"{base}.features"], tensors[f"{base}.targets"], int(tensors[f"{base}.classes"]))
        )
    return changed, inputs


def _applied(state: Tensors, changed: Tensors) -> Tensors:
    result = dict(state)
    for name, tensor in changed.items():
        if name.endswith(_TAIL):
            key = name[: -len(_TAIL)]
            result[key] = torch.cat([result[key], tensor])
        else:
            result[name] = tensor
    return result


def replay(
    restore: Callable[[dict, Tensors], torch.nn.Module],
    base_structure: dict,
    base: Tensors,
    entries: list[tuple[dict, Tensors]],
    *,
    learning: bool,
    max_classes: int,
) -> torch.nn.Module:
    """The method after the base and the entries ((structure, tensors) each). `restore(structure, state)`
    builds it. With `learning`, each entry's analytic inputs are added again, which brings the factors
    and Q up to date for the next session; without, those stay the base's (classifying never reads them)
    and the classifiers refuse to learn. `max_classes`: the bundle's, which no recorded session may exceed."""
    method = restore(base_structure, base)
    for structure, tensors in entries:
        changed, inputs = _split(tensors)
        if learning:
            analytic = analytic_modules(method)
            for prefix, adds in inputs.items():
                for features, targets, classes in adds:
                    if not 0 < classes <= max_classes:  # a journal entry must not size what the bundle has not
                        raise ValueError(f"{prefix}: a recorded session of {classes} classes")
                    analytic[prefix].add(features, targets, classes, solve=False)  # W: the entry's
            state = method.state_dict()
        else:
            state = _grown_for(method, structure, restore)
        method = restore(structure, _applied(state, changed))
    if not learning and entries:
        for module in analytic_modules(method).values():
            module.stale = True
    for module in analytic_modules(method).values():
        module.recorded.clear()
    return method


def _grown_for(
    method: torch.nn.Module, structure: dict, restore: Callable[[dict, Tensors], torch.nn.Module]
) -> Tensors:
    """The method's state with the analytic classifiers' Q padded to the classes of `structure` (their factors
    stay as they are; only learning reads them, and learning replays)."""
    state = method.state_dict()
    with torch.device("meta"):
        shapes = {k: v.shape for k, v in restore(structure, None).state_dict().items()}
    for name in [n for n in state if n.endswith(".moment")]:
        if name in shapes and shapes[name] != state[name].shape:
            grown = torch.zeros(shapes[name], dtype=state[name].dtype)
            grown[:, : state[name].shape[1]] = state[name]
            state[name] = grown
    return state
