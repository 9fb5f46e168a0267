"""Adding images to a class the bundle knows: a class taught with 5 images and then given 15 more (two
sessions, the second adding to the class) against the same class taught with the same 20 at once, on
the frozen EfficientNet-Lite0 embeddings (ImageNet weights), with the methods that can add.

Fashion-MNIST (300 train / 100 test images per class): the base session holds 8 classes, each of the
other 2 is taught in turn. Caltech-101 (official split, when --caltech is given to the benchmark's
run): the base holds 11 classes, 10 of the others are taught in turn. Three draws of the 20 images per
class. Reported: accuracy on the taught class's test images, and on every seen class's."""

from __future__ import annotations

import copy
import statistics
from pathlib import Path

import numpy as np
import torch

from edgecl.core import bundle as bundles
from edgecl.core.cache import cache_root
from edgecl.core.methods import method_class, method_config
from edgecl.core.session import LabeledEmbeddings, run_session
from edgecl.eval import fashion_mnist
from edgecl.eval.datasets import class_order, load_train_test
from edgecl.eval.protocol import _Embedder
from edgecl.host.backbones import create_backbone, preprocess_config

METHODS = {"edgecl": {"safe.slow.tuner": "none"}, "safe": {"slow.tuner": "none"}, "tosca": {}, "simplecil": {}}
DRAWS = 3


def _features(dataset, seed: int):
    model, spec = create_backbone()
    order = class_order(len(dataset.classes), seed)
    position = np.empty(len(order), dtype=np.int64)
    position[order] = np.arange(len(order))
    embedder = _Embedder(dataset, position, preprocess_config(model), cache_root(), False)
    sha = bundles.sha256_bytes(bundles.tensors_to_bytes(model.state_dict()))
    splits = embedder(model, "frozen backbone", sha)
    return splits["train"], splits["test"], spec.embedding_dim


def _accuracy(method, test, classes: int, taught: int) -> tuple[float, float]:
    seen = test.labels < classes
    predicted = method.predict(test.features[seen]).argmax(dim=1).numpy()
    labels = test.labels[seen]
    return float((predicted[labels == taught] == taught).mean()), float((predicted == labels).mean())


def measure(dataset, base: int, taught: int, seed: int = 1993) -> dict:
    train, test, dim = _features(dataset, seed)
    names = [str(i) for i in range(len(dataset.classes))]
    results: dict[str, dict[str, list[float]]] = {}
    for name, settings in METHODS.items():
        config = method_config(name, settings=settings)
        learner = method_class(name)(config, dim)
        first = train.labels < base
        run_session(
            learner,
            LabeledEmbeddings(train.features[first], torch.from_numpy(train.labels[first])),
            names[:base],
            seed,
            0,
            show_progress=False,
        )
        scores = results.setdefault(name, {k: [] for k in ("5+15 class", "20 class", "5+15 all", "20 all")})
        for c in range(base, min(base + taught, len(names))):
            members = np.flatnonzero(train.labels == c)
            for draw in range(DRAWS):
                chosen = np.random.default_rng([seed, c, draw]).choice(members, min(20, len(members)), replace=False)
                feats = train.features[chosen]
                zeros = torch.zeros(len(chosen), dtype=torch.long)
                twice, once = copy.deepcopy(learner), copy.deepcopy(learner)
                known = names[:base]
                run_session(
                    twice,
                    LabeledEmbeddings(feats[:5], zeros[:5]),
                    [names[c]],
                    seed,
                    1,
                    known_classes=known,
                    show_progress=False,
                )
                run_session(
                    twice,
                    LabeledEmbeddings(feats[5:], zeros[5:]),
                    [names[c]],
                    seed,
                    2,
                    known_classes=[*known, names[c]],
                    show_progress=False,
                )
                run_session(
                    once, LabeledEmbeddings(feats, zeros), [names[c]], seed, 1, known_classes=known, show_progress=False
                )
                # the taught class is numbered `base` in both learners
                a_class, a_all = _accuracy(twice, _relabel(test, c, base), base + 1, base)
                b_class, b_all = _accuracy(once, _relabel(test, c, base), base + 1, base)
                for key, value in (
                    ("5+15 class", a_class),
                    ("20 class", b_class),
                    ("5+15 all", a_all),
                    ("20 all", b_all),
                ):
                    scores[key].append(value)
    return {name: {k: statistics.mean(v) for k, v in s.items()} for name, s in results.items()}


def _relabel(test, c: int, base: int):
    """The test split with class c numbered `base` (right after the base classes) and the other later ones out."""
    labels = test.labels.copy()
    keep = (labels < base) | (labels == c)
    labels[labels == c] = base
    return type(test)(test.features[keep], labels[keep])


def run(out: Path, caltech: Path | None = None) -> dict:
    data = out / "add-to-class"
    fashion_mnist.write_image_folders(data / "fm" / "train", "train", 300, seed=0)
    fashion_mnist.write_image_folders(data / "fm" / "test", "test", 100, seed=0)
    results = {"fashion-mnist": measure(load_train_test(data / "fm"), base=8, taught=2)}
    if caltech is not None and (caltech / "101_ObjectCategories").is_dir():
        dataset = load_train_test(
            caltech / "101_ObjectCategories", caltech / "train.txt", caltech / "test.txt", ["BACKGROUND_Google"]
        )
        results["caltech-101"] = measure(dataset, base=11, taught=10)
    for data_name, methods in results.items():
        for name, r in methods.items():
            print(
                f"{data_name}, {name}: taught class {r['5+15 class']:.3f} (5, then 15 more) "
                f"vs {r['20 class']:.3f} (20 at once); "
                f"all seen {r['5+15 all']:.3f} vs {r['20 all']:.3f}"
            )
    return results


if __name__ == "__main__":
    import sys

    run(Path(sys.argv[1]), Path(sys.argv[2]) if len(sys.argv) > 2 else None)
