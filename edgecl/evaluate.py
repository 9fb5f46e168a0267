"""`edgecl eval`: the class-incremental protocol B{init} Inc{increment} on cached embeddings.

Each session goes through `run_session`, the code `edgecl learn` runs on the device, so the
figures describe what a user gets. Accuracy is measured after every session on the test images of
every class seen so far. A method with a slow learner (SAFE, edgecl) first tunes the backbone on
the first session's training images, as `edgecl train` does, and is evaluated on the embeddings of
that tuned backbone; methods that share a slow-learner config share the tuning.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from edgecl import bundle as bundles
from edgecl.backbones import DEFAULT_BACKBONE, create_backbone, preprocess_config
from edgecl.data import TrainTest, class_order, load_train_test, session_sizes
from edgecl.embedding_cache import cache_root, cached_embeddings
from edgecl.errors import EdgeclError
from edgecl.export import host_embed_function
from edgecl.methods import MethodConfig, method_class, method_config
from edgecl.metrics import IncrementalResult, accuracy, summarize
from edgecl.runtime.service import LabeledEmbeddings, run_session


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
        report = {"protocol": self.protocol, "results": [r.to_dict() for r in self.results], "skipped": self.skipped,
                  "joint": self.joint, "backbones": self.backbones}
        if len(self.results) == 1:
            report.update(self.results[0].to_dict())
        return report


def run_protocol(
    method: str,
    config: MethodConfig,
    train: LabeledFeatures,
    test: LabeledFeatures,
    sizes: Sequence[int],
    class_names: Sequence[str],
    *,
    seed: int,
    show_progress: bool = True,
) -> IncrementalResult:
    learner = method_class(method)(config, train.features.shape[1])
    bounds = np.cumsum([0, *sizes])
    per_session: list[float] = []
    matrix: list[list[float]] = []
    learn_seconds = 0.0
    for t in range(len(sizes)):
        lo, hi = int(bounds[t]), int(bounds[t + 1])
        chosen = (train.labels >= lo) & (train.labels < hi)
        data = LabeledEmbeddings(train.features[chosen], torch.from_numpy(train.labels[chosen] - lo))
        session = run_session(learner, data, class_names[lo:hi], seed, t, show_progress=show_progress)
        learn_seconds += session.stats["seconds"]
        seen = test.labels < hi
        labels = test.labels[seen]
        predicted = learner.predict(test.features[seen]).argmax(dim=1).numpy()
        per_session.append(accuracy(predicted, labels))
        groups = np.searchsorted(bounds, labels, side="right") - 1
        matrix.append([accuracy(predicted[groups == j], labels[groups == j]) for j in range(t + 1)])
    return summarize(method, per_session, matrix, {"learn": round(learn_seconds, 3)})


def method_configs(methods: Sequence[str], epochs: int | None, settings: dict[str, str]) -> dict[str, MethodConfig]:
    """Each method's config; a --set key applies to every method that has it, and must fit one."""
    configs = {name: method_config(name, epochs=epochs) for name in methods}
    for key, text in settings.items():
        errors = []
        for name, config in configs.items():
            try:
                configs[name] = config.setting(key, text)
            except EdgeclError as error:
                errors.append(error)
        if len(errors) == len(configs):
            raise errors[0]
    return configs


class _Embedder:
    """Embeds the train and test splits with one backbone (cached on disk), in the session order."""

    def __init__(self, dataset: TrainTest, position: np.ndarray, preprocess, cache: Path, show_progress: bool) -> None:
        self.dataset, self.position, self.preprocess, self.cache, self.show_progress = dataset, position, preprocess, cache, show_progress
        self.skipped: list[str] = []
        self.seconds = 0.0

    def __call__(self, model: torch.nn.Module, label: str, sha: str | None = None) -> dict[str, LabeledFeatures]:
        start = time.perf_counter()
        sha = sha or bundles.sha256_bytes(bundles.tensors_to_bytes(model.state_dict()))
        embed, runtime = host_embed_function(model, self.preprocess.input_size, sha, self.cache / "onnx")
        splits = {}
        for name, split in (("train", self.dataset.train), ("test", self.dataset.test)):
            embedded, _ = cached_embeddings(
                split.paths, embed, self.preprocess, sha, self.cache / "embeddings",
                description=f"embedding {name}, {label} ({runtime})", show_progress=self.show_progress,
            )
            splits[name] = LabeledFeatures(embedded.features, self.position[split.labels[embedded.kept]])
            self.skipped = sorted(set(self.skipped) | set(embedded.skipped))
        self.seconds += time.perf_counter() - start
        return splits


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
    epochs: int | None = None,
    settings: dict[str, str] | None = None,
    joint: bool = False,
    device: str = "cpu",
    cache_dir: Path | None = None,
    show_progress: bool = True,
) -> EvalReport:
    configs = method_configs(methods, epochs, settings or {})
    dataset = load_train_test(root, train_list, test_list, exclude)
    sizes = session_sizes(len(dataset.classes), init, increment)
    model, spec = create_backbone(backbone, weights, random_init=random_init)
    preprocess = preprocess_config(model)
    order = class_order(len(dataset.classes), seed)
    position = np.empty(len(order), dtype=np.int64)
    position[order] = np.arange(len(order))
    cache = cache_root(cache_dir)
    embedder = _Embedder(dataset, position, preprocess, cache, show_progress)
    base_sha = bundles.sha256_bytes(bundles.tensors_to_bytes(model.state_dict()))
    features: dict[Any, dict[str, LabeledFeatures]] = {}
    tuning: dict[Any, dict] = {}
    for config in configs.values():
        slow = config.slow_learner()
        if slow in features:
            continue
        if slow is None:
            features[None] = embedder(model, "frozen backbone", base_sha)
            continue
        from edgecl.slow_learner import tuned_backbone

        first = position[dataset.train.labels] < init
        paths = [p for p, keep in zip(dataset.train.paths, first) if keep]
        tuned, stats = tuned_backbone(
            create_backbone(backbone, weights, random_init=random_init)[0], paths, position[dataset.train.labels][first],
            preprocess, slow, base_sha256=base_sha, cache_dir=cache / "slow", device=device, seed=seed, show_progress=show_progress,
        )
        tuning[slow] = {k: v for k, v in stats.items() if k != "structure"}
        features[slow] = embedder(tuned, f"{slow.tuner} slow learner")
    names = [dataset.classes[i] for i in order]
    results, backbones = [], {}
    for name, config in configs.items():
        slow = config.slow_learner()
        splits = features[slow]
        result = run_protocol(name, config, splits["train"], splits["test"], sizes, names, seed=seed, show_progress=show_progress)
        if slow is not None:
            backbones[name] = tuning[slow]
            result.seconds["slow_learner"] = tuning[slow]["seconds"]
        results.append(result)
    bounds = {}
    if joint:
        from edgecl.joint import joint_bounds

        frozen = features[None] if None in features else embedder(model, "frozen backbone", base_sha)
        bounds = joint_bounds(frozen["train"], frozen["test"], seed=seed, show_progress=show_progress)
    for result in results:
        result.seconds["embed"] = round(embedder.seconds, 3)
    first = next(iter(features.values()))
    protocol = {
        "data": str(root), "init": init, "increment": increment, "sessions": len(sizes), "seed": seed,
        "classes": len(dataset.classes), "train_images": len(first["train"].labels),
        "test_images": len(first["test"].labels), "backbone": spec.name, "weights": spec.weights_source,
        "class_order": names, "configs": {name: config.to_dict() for name, config in configs.items()},
    }
    return EvalReport(protocol, results, embedder.skipped, bounds, backbones)
