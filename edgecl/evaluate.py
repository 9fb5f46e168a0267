"""`edgecl eval`: the class-incremental protocol B{init} Inc{increment} on cached embeddings.

Each session goes through `run_session`, the code `edgecl learn` runs on the device, so the
figures describe what a user gets. Accuracy is measured after every session on the test images of
every class seen so far.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from edgecl import bundle as bundles
from edgecl.backbones import DEFAULT_BACKBONE, create_backbone, preprocess_config
from edgecl.data import class_order, load_train_test, session_sizes
from edgecl.embedding_cache import cache_root, cached_embeddings
from edgecl.export import host_embed_function
from edgecl.methods import create_method, method_class
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

    def to_dict(self) -> dict:
        report = {"protocol": self.protocol, "results": [r.to_dict() for r in self.results], "skipped": self.skipped}
        if len(self.results) == 1:
            report.update(self.results[0].to_dict())
        return report


def run_protocol(
    method: str,
    train: LabeledFeatures,
    test: LabeledFeatures,
    sizes: Sequence[int],
    class_names: Sequence[str],
    *,
    seed: int,
    epochs: int | None = None,
    show_progress: bool = True,
) -> IncrementalResult:
    learner = create_method(method, train.features.shape[1], epochs=epochs)
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
    cache_dir: Path | None = None,
    show_progress: bool = True,
) -> EvalReport:
    for name in methods:
        method_class(name)
    dataset = load_train_test(root, train_list, test_list, exclude)
    sizes = session_sizes(len(dataset.classes), init, increment)
    model, spec = create_backbone(backbone, weights, random_init=random_init)
    preprocess = preprocess_config(model)
    backbone_sha = bundles.sha256_bytes(bundles.tensors_to_bytes(model.state_dict()))
    order = class_order(len(dataset.classes), seed)
    position = np.empty(len(order), dtype=np.int64)
    position[order] = np.arange(len(order))
    start = time.perf_counter()
    root = cache_root(cache_dir)
    embed, runtime = host_embed_function(model, preprocess.input_size, backbone_sha, root / "onnx")
    splits, skipped = {}, []
    for name, split in (("train", dataset.train), ("test", dataset.test)):
        embedded, _ = cached_embeddings(
            split.paths, embed, preprocess, backbone_sha, root / "embeddings",
            description=f"embedding {name} ({runtime})", show_progress=show_progress,
        )
        splits[name] = LabeledFeatures(embedded.features, position[split.labels[embedded.kept]])
        skipped.extend(embedded.skipped)
    embed_seconds = time.perf_counter() - start
    names = [dataset.classes[i] for i in order]
    results = []
    for name in methods:
        result = run_protocol(name, splits["train"], splits["test"], sizes, names, seed=seed, epochs=epochs, show_progress=show_progress)
        result.seconds["embed"] = round(embed_seconds, 3)
        results.append(result)
    protocol = {
        "data": str(root), "init": init, "increment": increment, "sessions": len(sizes), "seed": seed,
        "classes": len(dataset.classes), "train_images": len(splits["train"].labels),
        "test_images": len(splits["test"].labels), "backbone": spec.name, "weights": spec.weights_source,
        "class_order": names,
    }
    return EvalReport(protocol, results, skipped)
