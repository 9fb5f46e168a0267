"""Which score tells known from unseen classes best: after each session of the class-incremental protocol
(edgecl on the frozen EfficientNet-Lite0 embeddings), the AUROC of the test images of the classes learned
so far against those of the classes not learned yet, for each candidate score. `edgecl` runs at its defaults
with the slow learner off: on the ViT that whitens Caltech-101's [CLS] (11 first-session classes), not
Fashion-MNIST's (2).
On Caltech-101 each score is also given without the unseen classes whose twin is known (`TWINS`: two classes
of one object or of its part, such as `ketch` and `schooner`), which no score on an embedding can tell apart.

    python -m benchmarks.unknown_scores fashion-mnist DATA          # DATA/train/<class>, DATA/test/<class>; B2 Inc2
    python -m benchmarks.unknown_scores caltech-101 CALTECH         # the official split; B11 Inc10
    python -m benchmarks.unknown_scores caltech-101 CALTECH VIT     # on the ViT-S/14 of VIT (benchmarks.vit_weights)
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from benchmarks.vit_weights import MODEL
from edgecl.core import bundle as bundles
from edgecl.core.analytic import solve_factored
from edgecl.core.cache import cache_root
from edgecl.core.layers import known_from_means
from edgecl.core.methods import method_class, method_config
from edgecl.core.session import LabeledEmbeddings, run_session
from edgecl.eval.datasets import class_order, load_train_test, session_sizes
from edgecl.eval.metrics import auroc, fpr_at_tpr
from edgecl.eval.protocol import _Embedder
from edgecl.host.backbones import create_backbone, preprocess_config

# Caltech-101 classes that show the same object, or one the other's part (the worst unseen classes by AUROC)
TWINS = (
    ("ketch", "schooner"),
    ("lobster", "crayfish"),
    ("Faces", "Faces_easy"),
    ("crocodile", "crocodile_head"),
    ("flamingo", "flamingo_head"),
    ("cougar_body", "cougar_face"),
    ("lotus", "water_lilly"),
    ("chair", "windsor_chair"),
)
TWINLESS = ", unseen twins of known classes left out"


def twins_of_known(names: list[str], learned: int) -> list[int]:
    """The positions of the unseen classes whose twin is among the first `learned`."""
    position = {name: i for i, name in enumerate(names)}
    pairs = [(position[a], position[b]) for a, b in TWINS if a in position and b in position]
    return [u for a, b in pairs for k, u in ((a, b), (b, a)) if k < learned <= u]


def relative_mahalanobis(train: torch.Tensor, labels: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
    """Ren et al.'s relative Mahalanobis score on unit vectors: the distance to the nearest class under the
    covariance shared by the classes, less the distance to all the training data as one Gaussian. A bundle
    could keep what it needs exactly (a D x D sum of outer products and the class sums)."""
    train, features = F.normalize(train.double(), dim=-1), F.normalize(features.double(), dim=-1)
    classes, index = torch.unique(labels, return_inverse=True)
    means = torch.zeros(len(classes), train.shape[1], dtype=train.dtype).index_add_(0, index, train)
    means /= torch.bincount(index).to(train.dtype)[:, None]

    def precision(centered: torch.Tensor) -> torch.Tensor:
        cov = centered.T @ centered / len(centered)
        return torch.linalg.inv(cov + 0.1 * cov.diagonal().mean() * torch.eye(len(cov), dtype=cov.dtype))

    shared = precision(train - means[index])
    projected = features @ shared
    distances = (projected * features).sum(1)[:, None] - 2 * projected @ means.T + ((means @ shared) * means).sum(1)
    centre = train.mean(0)
    background = (((features - centre) @ precision(train - centre)) * (features - centre)).sum(1)
    return -(distances - background[:, None]).min(1).values.float()


def scores(method, features: torch.Tensor, train: torch.Tensor, labels: torch.Tensor) -> dict[str, np.ndarray]:
    """Each candidate score of `features` (higher: more like a known class); `train`, `labels`: the training
    embeddings seen so far (for the nearest-image score, which a bundle could not afford to keep)."""
    logits = method.logits(features)
    temperature = method.config.temperature
    f, trained = method.heads_input(features), method.heads_input(train)  # where the class means live
    means = method.safe.slow_classifier.weight
    variance = method.tosca.class_var + 1e-3 * method.tosca.class_var.mean()
    neighbours = F.normalize(trained, dim=-1)
    slow = method.safe.slow_head
    expanded = slow.expand(f).double()
    # the ridge's leverage h^T (G + lambda I)^-1 h, over |h|^2: how little of h the training data spans
    leverage = (expanded * solve_factored(slow.factor, expanded.T).T).sum(1) / expanded.square().sum(1)
    candidates = {
        "top probability": torch.softmax(logits / temperature, -1).max(1).values.numpy(),
        "energy": torch.logsumexp(logits / temperature, -1).numpy(),
        "Mahalanobis (diagonal)": (
            -(((f[:, None] - method.tosca.class_mean[None]) ** 2) / variance[None]).sum(-1).min(1).values
        ).numpy(),
        "nearest training image": (F.normalize(f, dim=-1) @ neighbours.T).max(1).values.numpy(),
        "relative Mahalanobis (unit vectors)": relative_mahalanobis(trained, labels, f).numpy(),
        "cosine to the nearest mean": known_from_means(f, means, torch.zeros(len(means))).numpy(),
        "leverage of the slow analytic classifier": (-leverage).float().numpy(),
        "the same, over the class's typical cosine": method.known_scores(features).numpy(),
    }
    # pairs with the chosen score, as the mean of their ranks among these test images: an optimistic estimate
    # (a bundle would have to rank against its own images)
    chosen = _ranks(candidates["the same, over the class's typical cosine"])
    for other in ("top probability", "relative Mahalanobis (unit vectors)", "nearest training image"):
        candidates[f"ranks of the chosen score and {other}, mean"] = chosen + _ranks(candidates[other])
    return candidates


def _ranks(values: np.ndarray) -> np.ndarray:
    """Ranks in 0..1, ties sharing their mean rank (a saturated top probability ties often)."""
    ranks = np.empty(len(values))
    ranks[np.argsort(values, kind="stable")] = np.arange(len(values))
    _, tied, counts = np.unique(values, return_inverse=True, return_counts=True)
    return (np.bincount(tied, weights=ranks) / counts)[tied] / len(values)


def run(name: str, root: Path, vit_weights: Path | None = None) -> dict[str, list[tuple[float, float]]]:
    """AUROC and the false-positive rate at 95% true positives of each score, after each session."""
    if name == "fashion-mnist":
        dataset, init, increment = load_train_test(root), 2, 2
    else:
        dataset = load_train_test(
            root / "101_ObjectCategories", root / "train.txt", root / "test.txt", ["BACKGROUND_Google"]
        )
        init, increment = 11, 10
    model, spec = create_backbone(MODEL, vit_weights, img_size=224) if vit_weights else create_backbone()
    order = class_order(len(dataset.classes), 1993)
    position = np.empty(len(order), dtype=np.int64)
    position[order] = np.arange(len(order))
    names = [dataset.classes[i] for i in order]
    embedder = _Embedder(dataset, position, preprocess_config(model), cache_root(), False)
    splits = embedder(model, "frozen backbone", bundles.sha256_bytes(bundles.tensors_to_bytes(model.state_dict())))
    train, test = splits["train"], splits["test"]
    method = method_class("edgecl")(method_config("edgecl", settings={"safe.slow.tuner": "none"}), spec.embedding_dim)
    bounds = np.cumsum([0, *session_sizes(len(dataset.classes), init, increment)])
    results: dict[str, list[tuple[float, float]]] = {}
    for t in range(len(bounds) - 2):
        lo, hi = int(bounds[t]), int(bounds[t + 1])
        chosen = (train.labels >= lo) & (train.labels < hi)
        data = LabeledEmbeddings(train.features[chosen], torch.from_numpy(train.labels[chosen] - lo))
        run_session(method, data, [str(c) for c in range(lo, hi)], 1993, t, show_progress=False)
        seen = test.labels < hi
        twins = np.isin(test.labels, twins_of_known(names, hi))
        with torch.no_grad():
            taught = train.labels < hi
            labels = torch.from_numpy(train.labels[taught])
            for score, values in scores(method, test.features, train.features[taught], labels).items():
                known, unseen = values[seen], values[~seen]
                results.setdefault(score, []).append((auroc(known, unseen), fpr_at_tpr(known, unseen)))
                if name == "caltech-101":
                    apart = values[~seen & ~twins]
                    results.setdefault(score + TWINLESS, []).append((auroc(known, apart), fpr_at_tpr(known, apart)))
    for score, values in results.items():
        per_session = " / ".join(f"{a:.3f}" for a, _ in values)
        mean_auroc, mean_fpr = (float(np.mean([v[i] for v in values])) for i in (0, 1))
        print(
            f"{name}, {score}: AUROC after sessions 0-{len(values) - 1}: {per_session}; "
            f"mean AUROC {mean_auroc:.3f}, mean FPR at 95% TPR {mean_fpr:.3f}"
        )
    return results


if __name__ == "__main__":
    run(sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3]) if len(sys.argv) > 3 else None)
