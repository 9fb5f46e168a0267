"""`tosca-paper` beside a re-implementation of the official TOSCA learner, both on the same frozen
embeddings: Fashion-MNIST (300 train / 100 test images per class), EfficientNet-Lite0, B2 Inc2, the
class order of seed 1993, training seeds 1993-1997, the module chosen per sample in both. Also
`tosca` and `edgecl` with either row initialisation (docs/methods.md, section 4).

    .venv/bin/python -m benchmarks.tosca_official [--out DIR] [--data DIR] [--seeds 1993,...]
        [--increment N] [--edgecl SLOW_EPOCHS] [--only LABEL ...]

The reference learner below is written from the official code's behaviour (muratonuryildirim/tosca
on LAMDA-PILOT): torch.optim.SGD and CosineAnnealingLR stepped per epoch, a LuCA built of nn.Linear
layers that keeps PyTorch's default init in session 0 and is re-initialised xavier (zero bias)
after every session, bottleneck width // 16, a cosine classifier whose first rows are uniform and
whose later rows are appended as zeros, rows replaced by the mean module output after training.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import statistics
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from edgecl.core import bundle as bundles
from edgecl.core.cache import cache_root
from edgecl.core.methods import method_class, method_config
from edgecl.core.session import run_session
from edgecl.eval import fashion_mnist
from edgecl.eval.datasets import class_order, load_train_test, session_sizes
from edgecl.eval.protocol import LabeledFeatures, _Embedder, fixed_backbone_features, frozen_sessions
from edgecl.host.backbones import create_backbone, preprocess_config

ORDER_SEED, SEEDS, INIT, INCREMENT = 1993, (1993, 1994, 1995, 1996, 1997), 2, 2
# (label, method, --set texts)
VARIANTS: list[tuple[str, str, dict[str, str]]] = [
    ("tosca-paper", "tosca-paper", {}),
    (
        "tosca-paper before issue 28",
        "tosca-paper",
        {"bottleneck_ratio": "0", "row_init": "prototypes", "first_module_init": "xavier", "lr_per_epoch": "false"},
    ),
    ("tosca-paper, rows at the untrained prototypes", "tosca-paper", {"row_init": "prototypes"}),
    ("tosca-paper, bottleneck 48", "tosca-paper", {"bottleneck_ratio": "0", "bottleneck": "48"}),
    ("tosca-paper, xavier LuCA in session 0", "tosca-paper", {"first_module_init": "xavier"}),
    ("tosca-paper, cosine rate per batch", "tosca-paper", {"lr_per_epoch": "false"}),
    ("tosca", "tosca", {}),
    ("tosca, official rows", "tosca", {"row_init": "official"}),
    ("tosca, official rows and LuCA init", "tosca", {"row_init": "official", "first_module_init": "pytorch"}),
]


def edgecl_variants(slow_epochs: int) -> list[tuple[str, str, dict[str, str]]]:
    """edgecl with either row initialisation; slow learner tuned for `slow_epochs` (0: the frozen backbone)."""
    slow = {"safe.slow.epochs": str(slow_epochs)} if slow_epochs else {"safe.slow.tuner": "none"}
    backbone = f"slow learner {slow_epochs} epochs" if slow_epochs else "frozen backbone"
    return [
        (f"edgecl ({backbone})", "edgecl", slow),
        (f"edgecl ({backbone}), official rows", "edgecl", {**slow, "tosca.row_init": "official"}),
    ]


class ReferenceLuCA(nn.Module):
    """The official adapter-calibrator: LayerNorm(x + MLP(x)), gated by a bias-free squeeze-excite."""

    def __init__(self, dim: int, ratio: int = 16) -> None:
        super().__init__()
        hidden = dim // ratio
        self.norm = nn.LayerNorm(dim)
        self.adapter = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))
        self.gate = nn.Sequential(
            nn.Linear(dim, hidden, bias=False), nn.ReLU(), nn.Linear(hidden, dim, bias=False), nn.Sigmoid()
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.norm(x + self.adapter(x))
        return h * self.gate(h)

    def reset_xavier(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                m.reset_parameters()


def _entropy(logits: torch.Tensor) -> torch.Tensor:
    p = logits.softmax(-1)
    return -(p * torch.log(p + 1e-9)).sum(-1)


def reference_run(
    train: LabeledFeatures,
    test: LabeledFeatures,
    sizes: list[int],
    seed: int,
    *,
    prototype_rows: bool = False,
    epochs: int = 20,
    batch_size: int = 48,
    lr: float = 0.025,
    l1: float = 5e-4,
) -> dict[str, Any]:
    """The official learner on embeddings; `prototype_rows` starts every new row at the untrained
    module's prototypes instead (what `tosca-paper` did before)."""
    torch.manual_seed(seed)
    dim = train.features.shape[1]
    module = ReferenceLuCA(dim)
    weight, sigma = torch.zeros(0, dim), nn.Parameter(torch.ones(1))
    saved: list[nn.Module] = []
    per_session, entropies = [], []
    bounds = np.cumsum([0, *sizes])
    for t in range(len(sizes)):
        lo, hi = int(bounds[t]), int(bounds[t + 1])
        chosen = (train.labels >= lo) & (train.labels < hi)
        x, y = train.features[chosen], torch.from_numpy(train.labels[chosen])
        with torch.no_grad():
            if prototype_rows:
                new = torch.stack([module(x[y == c]).mean(0) for c in range(lo, hi)])
            elif t == 0:
                new = torch.empty(hi - lo, dim).uniform_(-1 / math.sqrt(dim), 1 / math.sqrt(dim))
            else:
                new = torch.zeros(hi - lo, dim)
        weight = nn.Parameter(torch.cat([weight.detach(), new]))
        params = [*module.parameters(), weight, sigma]
        optimizer = torch.optim.SGD(params, lr=lr, momentum=0.9, weight_decay=0)
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=epochs, eta_min=1e-8)
        module.train()
        for _ in range(epochs):
            for batch in torch.randperm(len(y)).split(batch_size):
                logits = sigma * F.normalize(module(x[batch]), dim=1) @ F.normalize(weight, dim=1).T
                loss = F.cross_entropy(logits, y[batch]) + l1 * sum(p.abs().sum() for p in module.parameters())
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
            scheduler.step()
        module.eval()
        with torch.no_grad():
            out = module(x)
            for c in range(lo, hi):
                weight.data[c] = out[y == c].mean(0)
            saved.append(copy.deepcopy(module))
            seen = test.labels < hi
            logits = torch.stack(
                [sigma * F.normalize(m(test.features[seen]), dim=1) @ F.normalize(weight, dim=1).T for m in saved]
            )
            best = _entropy(logits).argmin(0)
            predicted = logits[best, torch.arange(int(seen.sum()))].argmax(1).numpy()
            per_session.append(float((predicted == test.labels[seen]).mean()))
            if t in (0, len(sizes) - 1):
                entropies.append(_entropy(logits[0][test.labels[seen] < sizes[0]]).mean().item())
        module.reset_xavier()
    return {
        "per_session": per_session,
        "A_last": per_session[-1],
        "A_avg": float(np.mean(per_session)),
        "entropy_s0": entropies[0],
        "entropy_s0_last": entropies[-1],
    }


def edgecl_run(
    method: str, config, sessions, sizes: list[int], names: list[str], dim: int, seed: int
) -> dict[str, Any]:
    """run_protocol's loop (each session through run_session), keeping the learner to also measure a
    tosca method's module 0: its mean entropy on session 0's test images after session 0 and at the end."""
    learner = method_class(method)(config, dim)
    bounds, per_session, entropies = np.cumsum([0, *sizes]), [], []
    for t in range(len(sizes)):
        lo, hi = int(bounds[t]), int(bounds[t + 1])
        data, test = sessions(t, lo, hi)
        seen = test.labels < hi  # the sessions may also hand over test images of classes not learned yet
        run_session(learner, data, names[lo:hi], seed, t, show_progress=False)
        predicted = learner.predict(test.features[seen]).argmax(dim=1).numpy()
        per_session.append(float((predicted == test.labels[seen]).mean()))
        if hasattr(learner, "session_logits") and t in (0, len(sizes) - 1):
            with torch.no_grad():
                own = learner.session_logits(test.features[test.labels < sizes[0]])[0]
            entropies.append(_entropy(own).mean().item())
    result = {"per_session": per_session, "A_last": per_session[-1], "A_avg": float(np.mean(per_session))}
    if entropies:
        result["entropy_s0"], result["entropy_s0_last"] = entropies
    return result


def _stats(values: list[float]) -> str:
    return (
        f"{100 * statistics.mean(values):.1f} +- {100 * statistics.stdev(values):.1f}"
        if len(values) > 1
        else f"{100 * values[0]:.1f}"
    )


def _print(label: str, runs: list[dict]) -> None:
    line = f"{label}: A_last {_stats([r['A_last'] for r in runs])}, A_avg {_stats([r['A_avg'] for r in runs])}"
    if "entropy_s0" in runs[0]:
        after, end = (statistics.mean(r[key] for r in runs) for key in ("entropy_s0", "entropy_s0_last"))
        line += f"; module 0's mean entropy on session-0 test images: {after:.2f} after session 0, {end:.2f} at the end"
    print(line, flush=True)


REFERENCE = {"official learner (reference)": False, "official learner, rows at the untrained prototypes": True}


def run(
    out: Path,
    seeds: tuple[int, ...] = SEEDS,
    edgecl_slow_epochs: int | None = None,
    data: Path | None = None,
    only: list[str] | None = None,
    increment: int = INCREMENT,
) -> dict:
    data = data or out / "fashion-mnist-300"
    fashion_mnist.write_image_folders(data / "train", "train", 300)
    fashion_mnist.write_image_folders(data / "test", "test", 100)
    dataset = load_train_test(data)
    model, spec = create_backbone()
    order = class_order(len(dataset.classes), ORDER_SEED)
    position = np.empty(len(order), dtype=np.int64)
    position[order] = np.arange(len(order))
    names = [dataset.classes[i] for i in order]
    sizes = session_sizes(len(names), INIT, increment)
    embedder = _Embedder(dataset, position, preprocess_config(model), cache_root(), show_progress=False)
    base_sha = bundles.sha256_bytes(bundles.tensors_to_bytes(model.state_dict()))
    variants = VARIANTS + (edgecl_variants(edgecl_slow_epochs) if edgecl_slow_epochs is not None else [])
    variants = [v for v in variants if only is None or v[0] in only]
    configs = {label: method_config(method, settings=settings) for label, method, settings in variants}
    # the slow learner (edgecl) is tuned once, with the order's seed: the seeds below vary the heads only
    features, _ = fixed_backbone_features(
        configs.values(), model, lambda: create_backbone()[0], embedder, base_sha, INIT, device="cpu", seed=ORDER_SEED
    )
    results: dict[str, Any] = {
        "protocol": {
            "data": "Fashion-MNIST 300/100 per class",
            "backbone": spec.name,
            "init": INIT,
            "increment": increment,
            "class_order": names,
            "seeds": list(seeds),
        }
    }
    for label, prototype_rows in REFERENCE.items():
        if only is None or label in only:
            frozen = features.get(None) or embedder(model, "frozen backbone", base_sha)
            runs = [
                reference_run(frozen["train"], frozen["test"], sizes, seed, prototype_rows=prototype_rows)
                for seed in seeds
            ]
            results[label] = runs
            _print(label, runs)
    for label, method, _ in variants:
        config = configs[label]
        chosen = features[config.slow_learner()]
        sessions = frozen_sessions(chosen["train"], chosen["test"])
        results[label] = [
            edgecl_run(method, config, sessions, sizes, names, spec.embedding_dim, seed) for seed in seeds
        ]
        _print(label, results[label])
    return results


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("build/bench"), help="Where tosca_official.json goes.")
    parser.add_argument(
        "--data", type=Path, help="Folder for the Fashion-MNIST images (default: OUT/fashion-mnist-300)."
    )
    parser.add_argument("--seeds", default=",".join(map(str, SEEDS)), help="Training seeds, comma-separated.")
    parser.add_argument("--increment", type=int, default=INCREMENT, help="Classes per session after the first 2.")
    parser.add_argument(
        "--edgecl",
        type=int,
        metavar="SLOW_EPOCHS",
        help="Also edgecl, its slow learner tuned this many epochs, once (0: the frozen backbone).",
    )
    parser.add_argument("--only", action="append", metavar="LABEL", help="Run only the rows so labelled (repeatable).")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    report = run(
        args.out, tuple(int(s) for s in args.seeds.split(",")), args.edgecl, args.data, args.only, args.increment
    )
    (args.out / "tosca_official.json").write_text(json.dumps(report, indent=1) + "\n")
    print(f"wrote {args.out / 'tosca_official.json'}")
