"""`edgecl eval`: the class-incremental protocol B{init} Inc{increment} on cached embeddings.

Each session goes through `run_session`, the code `edgecl learn` runs on the device, so the
figures describe what a user gets. Accuracy is measured after every session on the test images of
every class seen so far. A method with a slow learner (SAFE, edgecl) first tunes the backbone on
the first session's training images, as `edgecl train` does, and is evaluated on the embeddings of
that tuned backbone; methods that share a slow-learner config share the tuning. A method that
adapts the backbone in every session (InfLoRA) trains it on each session's images first and is
evaluated on that session's backbone; each session's training is cached.
"""

from __future__ import annotations

import copy
import dataclasses
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from edgecl.core import bundle as bundles
from edgecl.core.cache import cache_root
from edgecl.core.methods import MethodConfig, method_class, method_config
from edgecl.core.session import LabeledEmbeddings, run_session
from edgecl.errors import EdgeclError, param
from edgecl.eval.datasets import TrainTest, class_order, load_train_test, session_sizes
from edgecl.eval.embedding_cache import cached_embeddings
from edgecl.eval.metrics import IncrementalResult, accuracy, auroc, fpr_at_tpr, summarize
from edgecl.host.backbone_onnx import host_embed_function
from edgecl.host.backbones import DEFAULT_BACKBONE, create_backbone, embedding_key, preprocess_config
from edgecl.host.devices import resolve_device
from edgecl.host.slow_learner import check_slow_learner
from edgecl.host.subspace import SubspaceMemory


@dataclass
class LabeledFeatures:
    features: torch.Tensor
    labels: np.ndarray  # position of the class in the session order


@dataclass
class EvalReport:
    protocol: dict
    results: list[IncrementalResult]
    skipped: list[str] = field(default_factory=list)
    joint: dict[str, float] = field(default_factory=dict)  # frozen-backbone bounds, all classes at once
    backbones: dict[str, dict] = field(default_factory=dict)  # slow-learner tuning, per method

    def to_dict(self) -> dict:
        report = {
            "protocol": self.protocol,
            "results": [r.to_dict() for r in self.results],
            "skipped": self.skipped,
            "joint": self.joint,
            "backbones": self.backbones,
        }
        if len(self.results) == 1:
            report.update(self.results[0].to_dict())
        return report


SessionData = Callable[[int, int, int], tuple[LabeledEmbeddings, LabeledFeatures]]


def few_shot(labels: np.ndarray, chosen: np.ndarray, shots: int | None, seed: int, session: int) -> np.ndarray:
    """`chosen` cut to `shots` images per class, drawn by the seed, in the sessions after the first."""
    if shots is None or session == 0:
        return chosen
    rng = np.random.default_rng([seed, session])
    kept = np.zeros_like(chosen)
    for label in np.unique(labels[chosen]):
        members = np.flatnonzero(chosen & (labels == label))
        kept[rng.choice(members, min(shots, len(members)), replace=False)] = True
    return kept


def frozen_sessions(
    train: LabeledFeatures, test: LabeledFeatures, shots: int | None = None, seed: int = 0
) -> SessionData:
    """Sessions cut from embeddings of one backbone: (session, first class, end) -> (train, all the test
    images: the seen classes' and, for "unknown", those of the classes not learned yet)."""

    def session(t: int, lo: int, hi: int) -> tuple[LabeledEmbeddings, LabeledFeatures]:
        chosen = few_shot(train.labels, (train.labels >= lo) & (train.labels < hi), shots, seed, t)
        return LabeledEmbeddings(train.features[chosen], torch.from_numpy(train.labels[chosen] - lo)), test

    return session


def run_protocol(
    method: str,
    config: MethodConfig,
    sessions: SessionData,
    sizes: Sequence[int],
    class_names: Sequence[str],
    *,
    embedding_dim: int,
    seed: int,
    show_progress: bool = True,
) -> IncrementalResult:
    learner = method_class(method)(config, embedding_dim)
    bounds = np.cumsum([0, *sizes])
    per_session: list[float] = []
    matrix: list[list[float]] = []
    learn_seconds = 0.0
    aurocs: list[float | None] = []
    fprs: list[float | None] = []
    baseline: list[float | None] = []
    for t in range(len(sizes)):
        lo, hi = int(bounds[t]), int(bounds[t + 1])
        data, every = sessions(t, lo, hi)
        seen = every.labels < hi
        test = LabeledFeatures(every.features[seen], every.labels[seen])
        session = run_session(learner, data, class_names[lo:hi], seed, t, show_progress=show_progress)
        learn_seconds += session.stats["seconds"]
        predicted = learner.predict(test.features).argmax(dim=1).numpy()
        per_session.append(accuracy(predicted, test.labels))
        groups = np.searchsorted(bounds, test.labels, side="right") - 1
        matrix.append([accuracy(predicted[groups == j], test.labels[groups == j]) for j in range(t + 1)])
        known, unseen = learner.known_scores(every.features).numpy(), ~seen
        top = learner.predict(every.features).max(dim=1).values.numpy()
        both = bool(unseen.any() and seen.any())
        aurocs.append(auroc(known[seen], known[unseen]) if both else None)
        fprs.append(fpr_at_tpr(known[seen], known[unseen]) if both else None)
        baseline.append(auroc(top[seen], top[unseen]) if both else None)
    result = summarize(method, per_session, matrix, {"learn": round(learn_seconds, 3)})
    result.unknown_auroc, result.unknown_fpr95, result.unknown_auroc_top_probability = aurocs, fprs, baseline
    return result


def method_configs(methods: Sequence[str], epochs: int | None, settings: dict[str, str]) -> dict[str, MethodConfig]:
    """Each method's config; a --set key applies to every method that has it, and must fit one."""
    configs = {name: method_config(name, epochs=epochs) for name in methods}
    if epochs is not None and not any(config.has_setting("epochs") for config in configs.values()):
        raise EdgeclError(f"{param('epochs')}: none of {', '.join(methods)} trains by epochs")
    for key, text in settings.items():
        errors = []
        for name, config in configs.items():
            try:
                configs[name] = config.setting(key, text)
            except EdgeclError as error:
                errors.append(error.marked)
        if len(errors) == len(configs):
            raise EdgeclError("; ".join(dict.fromkeys(errors)))
    return configs


class _Embedder:
    """Embeds images of the train and test splits with a backbone (cached on disk), labelled by
    their class's position in the session order."""

    def __init__(self, dataset: TrainTest, position: np.ndarray, preprocess, cache: Path, show_progress: bool) -> None:
        self.dataset, self.position, self.preprocess, self.cache, self.show_progress = (
            dataset,
            position,
            preprocess,
            cache,
            show_progress,
        )
        self.skipped: list[str] = []
        self.seconds = 0.0

    def __call__(
        self, model: torch.nn.Module, label: str, sha: str | None = None, chosen: dict[str, np.ndarray] | None = None
    ) -> dict[str, LabeledFeatures]:
        """Both splits, or the images `chosen` (a mask per split name)."""
        start = time.perf_counter()
        sha = sha or bundles.sha256_bytes(bundles.tensors_to_bytes(model.state_dict()))
        embed, runtime = host_embed_function(model, self.preprocess.input_size, sha, self.cache / "onnx")
        splits = {}
        for name, split in (("train", self.dataset.train), ("test", self.dataset.test)):
            mask = np.ones(len(split.paths), bool) if chosen is None else chosen[name]
            paths, labels = [p for p, keep in zip(split.paths, mask) if keep], split.labels[mask]
            embedded, _ = cached_embeddings(
                paths,
                embed,
                self.preprocess,
                sha,
                self.cache / "embeddings",
                description=f"embedding {name}, {label} ({runtime})",
                show_progress=self.show_progress,
            )
            splits[name] = LabeledFeatures(embedded.features, self.position[labels[embedded.kept]])
            self.skipped = sorted(set(self.skipped) | set(embedded.skipped))
        self.seconds += time.perf_counter() - start
        return splits


def adapted_sessions(
    model: torch.nn.Module,
    config: Any,
    embedder: _Embedder,
    base_sha: str,
    *,
    sessions: int,
    device: str,
    seed: int,
    stats: list[dict],
    shots: int | None = None,
) -> SessionData:
    """Sessions of a method that adapts the backbone on the host in each (InfLoRA): train on the
    session's images (cached), then embed its train images and the test images seen so far."""
    from edgecl.host.inflora_training import cached_session

    config = dataclasses.replace(config, sessions=sessions)
    dataset, position = embedder.dataset, embedder.position
    state = {"model": model, "memory": SubspaceMemory.from_config(config), "key": base_sha}
    train_classes, test_classes = position[dataset.train.labels], position[dataset.test.labels]

    def session(t: int, lo: int, hi: int) -> tuple[LabeledEmbeddings, LabeledFeatures]:
        chosen = few_shot(train_classes, (train_classes >= lo) & (train_classes < hi), shots, seed, t)
        paths = [p for p, keep in zip(dataset.train.paths, chosen) if keep]
        state["model"], state["memory"], info, state["key"] = cached_session(
            state["model"],
            state["memory"],
            paths,
            train_classes[chosen] - lo,
            embedder.preprocess,
            config,
            session=t,
            previous=state["key"],
            cache_dir=embedder.cache / "inflora",
            device=device,
            seed=seed,
            show_progress=embedder.show_progress,
        )
        stats.append(info)
        splits = embedder(
            state["model"], f"inflora session {t}", chosen={"train": chosen, "test": np.ones_like(test_classes, bool)}
        )
        train = splits["train"]
        return LabeledEmbeddings(train.features, torch.from_numpy(train.labels - lo)), splits["test"]

    return session


def fixed_backbone_features(
    configs: Iterable[MethodConfig],
    model: torch.nn.Module,
    fresh_backbone: Callable[[], torch.nn.Module],
    embedder: _Embedder,
    base_sha: str,
    init: int,
    *,
    device: str,
    seed: int,
) -> tuple[dict, dict]:
    """Both splits' embeddings for each distinct slow-learner setting (None: the frozen backbone),
    the slow learner tuned on the first `init` classes' training images, and each tuning's stats."""
    dataset, position = embedder.dataset, embedder.position
    features: dict[Any, dict[str, LabeledFeatures]] = {}
    tuning: dict[Any, dict] = {}
    for config in configs:
        slow = config.slow_learner()
        if slow in features or config.session_backbone() is not None:
            continue
        if slow is None:
            features[None] = embedder(model, "frozen backbone", base_sha)
            continue
        from edgecl.host.slow_learner import tuned_backbone

        first = position[dataset.train.labels] < init
        paths = [p for p, keep in zip(dataset.train.paths, first) if keep]
        tuned, stats = tuned_backbone(
            fresh_backbone(),
            paths,
            position[dataset.train.labels][first],
            embedder.preprocess,
            slow,
            base_sha256=base_sha,
            cache_dir=embedder.cache / "slow",
            device=device,
            seed=seed,
            show_progress=embedder.show_progress,
        )
        tuning[slow] = {k: v for k, v in stats.items() if k != "structure"}
        features[slow] = embedder(tuned, f"{stats['tuner']} slow learner")
    return features, tuning


def check_shots(shots: int | None, dataset: TrainTest, init: int, order: list[int]) -> None:
    """Shots for the sessions after the first: at least one, and no more than each of their classes has."""
    if shots is None:
        return
    counts = np.bincount(dataset.train.labels, minlength=len(dataset.classes))
    later = order[init:]
    fewest = min(later, key=lambda c: counts[c]) if later else None
    if shots < 1 or (fewest is not None and shots > counts[fewest]):
        raise EdgeclError(
            f"{param('shots')} {shots}: must be from 1 to the training images of the smallest later class "
            f"({dataset.classes[fewest]}: {counts[fewest] if fewest is not None else 0})"
        )


def evaluate(
    root: Path,
    init: int,
    increment: int,
    methods: Sequence[str],
    *,
    seed: int = 1993,
    train_list: Path | None = None,
    test_list: Path | None = None,
    exclude: Sequence[str] = (),
    backbone: str = DEFAULT_BACKBONE,
    weights: Path | None = None,
    random_init: bool = False,
    img_size: int | None = None,
    global_pool: str | None = None,
    epochs: int | None = None,
    settings: dict[str, str] | None = None,
    joint: bool = False,
    device: str | None = None,
    shots: int | None = None,
    cache_dir: Path | None = None,
    show_progress: bool = True,
) -> EvalReport:
    device = resolve_device(device)
    configs = method_configs(methods, epochs, settings or {})
    dataset = load_train_test(root, train_list, test_list, exclude)
    sizes = session_sizes(len(dataset.classes), init, increment)
    check_shots(shots, dataset, init, class_order(len(dataset.classes), seed))
    for config in configs.values():
        check_slow_learner(config.slow_learner())
        for size in set(sizes):
            config.check_session(size)
    options = {"random_init": random_init, "img_size": img_size, "global_pool": global_pool}
    model, spec = create_backbone(backbone, weights, **options)
    preprocess = preprocess_config(model)
    order = class_order(len(dataset.classes), seed)
    position = np.empty(len(order), dtype=np.int64)
    position[order] = np.arange(len(order))
    cache = cache_root(cache_dir)
    embedder = _Embedder(dataset, position, preprocess, cache, show_progress)
    base_sha = embedding_key(bundles.sha256_bytes(bundles.tensors_to_bytes(model.state_dict())), spec.model_kwargs)
    fresh_backbone = lambda: create_backbone(backbone, weights, **options)[0]  # noqa: E731
    features, tuning = fixed_backbone_features(
        configs.values(), model, fresh_backbone, embedder, base_sha, init, device=device, seed=seed
    )
    names = [dataset.classes[i] for i in order]
    results, backbones = [], {}
    for name, config in configs.items():
        slow, adapted = config.slow_learner(), config.session_backbone()
        if adapted is not None:
            stats: list[dict] = []
            sessions = adapted_sessions(
                copy.deepcopy(model),
                adapted,
                embedder,
                base_sha,
                sessions=len(sizes),
                device=device,
                seed=seed,
                stats=stats,
                shots=shots,
            )
        else:
            sessions = frozen_sessions(features[slow]["train"], features[slow]["test"], shots, seed)
        result = run_protocol(
            name,
            config,
            sessions,
            sizes,
            names,
            embedding_dim=spec.embedding_dim,
            seed=seed,
            show_progress=show_progress,
        )
        if adapted is not None:
            backbones[name] = {"sessions": stats}
            result.seconds["backbone"] = round(sum(s["seconds"] for s in stats), 1)
        elif slow is not None:
            backbones[name] = tuning[slow]
            result.seconds["slow_learner"] = tuning[slow]["seconds"]
        results.append(result)
    bounds = {}
    if joint:
        from edgecl.eval.joint import joint_bounds

        frozen = features[None] if None in features else embedder(model, "frozen backbone", base_sha)
        bounds = joint_bounds(frozen["train"], frozen["test"], seed=seed, show_progress=show_progress)
    for result in results:
        result.seconds["embed"] = round(embedder.seconds, 3)
    first = next(iter(features.values()), None)
    counts = (
        (len(first["train"].labels), len(first["test"].labels))
        if first
        else (len(dataset.train.paths), len(dataset.test.paths))
    )
    protocol = {
        "data": str(root),
        "init": init,
        "increment": increment,
        "sessions": len(sizes),
        "seed": seed,
        "classes": len(dataset.classes),
        "train_images": counts[0],
        "test_images": counts[1],
        "backbone": spec.name,
        "weights": spec.weights_source,
        "shots": shots,
        "img_size": preprocess.input_size[-1],
        "global_pool": spec.model_kwargs.get("global_pool"),
        "class_order": names,
        "configs": {name: config.to_dict() for name, config in configs.items()},
    }
    return EvalReport(protocol, results, embedder.skipped, bounds, backbones)
