"""SAFE's slow learner: parameter-efficient tuning of the backbone on the host's first session,
then merged into it (host side: trains through the backbone, on images).

Loss = CE (cosine head on the tuned embedding) + transfer loss between the L2-normalised
embeddings of the tuned model (s) and the frozen pretrained model (t): with C = s^T t / B (D x D),
l_diag * sum_i (C_ii - 1)^2 + l_rdn * sum_{i != j} C_ij^2, which keeps the tuned features
correlated with the pretrained ones. SGD with momentum, cosine schedule, random-resized-crop and
flip augmentation; BatchNorm statistics stay frozen (eval mode), so the tuned layers merge exactly.
"""

from __future__ import annotations

import copy
import dataclasses
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from edgecl.core.cache import cache_key, cached_result
from edgecl.core.layers import CosineClassifier, class_means
from edgecl.core.methods.safe import AUTO_TUNER, SlowLearnerConfig
from edgecl.core.preprocess import PreprocessConfig
from edgecl.core.sgd import MomentumSGD
from edgecl.errors import EdgeclError
from edgecl.host.image_batches import image_loader, train_on_images
from edgecl.host.tuners import TUNERS, create_tuner, rebuild, tuner_for


def transfer_loss(student: torch.Tensor, teacher: torch.Tensor, l_diag: float, l_rdn: float) -> torch.Tensor:
    with torch.autocast(student.device.type, enabled=False):  # D x D sums of squares: float32, not bfloat16
        s, t = F.normalize(student.float(), dim=-1), F.normalize(teacher.float(), dim=-1)
        c = s.T @ t / s.shape[0]
        diagonal = torch.diagonal(c)
        on = (diagonal - 1).pow(2).sum()
        off = c.pow(2).sum() - diagonal.pow(2).sum()
        return l_diag * on + l_rdn * off


def check_slow_learner(config: SlowLearnerConfig | None) -> None:
    """Before the backbone is even loaded: a tuner name that train_slow_learner would refuse."""
    if config is not None and config.tuner not in TUNERS and config.tuner != AUTO_TUNER:
        raise EdgeclError(
            f"slow learner tuner {config.tuner!r}: unknown "
            f"(known: {AUTO_TUNER}, {', '.join(TUNERS)}, or none to train no slow learner)"
        )


def train_slow_learner(
    model: nn.Module,
    paths: Sequence,
    labels: Sequence[int],
    preprocess: PreprocessConfig,
    config: SlowLearnerConfig,
    *,
    device: str = "cpu",
    seed: int = 0,
    show_progress: bool = True,
) -> tuple[nn.Module, dict[str, Any]]:
    """Tune `model` (in place) on the session-0 images, merge, return (model, stats, incl. its structure)."""
    config = dataclasses.replace(config, tuner=tuner_for(config.tuner, model))
    torch.manual_seed(seed)
    device = torch.device(device)
    teacher = copy.deepcopy(model).to(device).eval().requires_grad_(False)
    model = model.to(device).eval().requires_grad_(False)
    tuner = create_tuner(config.tuner)
    params = tuner.attach(model)
    for p in params:
        p.requires_grad_(True)
    model.to(device)
    num_classes = int(max(labels)) + 1
    loader = image_loader(paths, labels, preprocess, config.batch_size, augment=True, seed=seed)
    head = CosineClassifier(teacher_dim(teacher, preprocess, device), 0).to(device)
    head.add_classes(_prototypes(teacher, loader, num_classes, device))
    trainable = [*params, *head.parameters()]
    optimizer = MomentumSGD(trainable, config.momentum, config.weight_decay)

    def forward(images: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        student = model(images)
        with torch.no_grad():
            pretrained = teacher(images)
        ce = F.cross_entropy(head(student.float()), targets)
        return ce + transfer_loss(student, pretrained, config.l_diag, config.l_rdn), {"ce": float(ce.detach())}

    start = time.perf_counter()
    step, loss = train_on_images(
        loader,
        config.epochs,
        config.lr,
        config.min_lr,
        forward,
        optimizer.zero_grad,
        optimizer.step,
        device=device,
        description=f"slow learner ({config.tuner})",
        show_progress=show_progress,
    )
    merged = tuner.merge(model).cpu().eval().requires_grad_(False)
    stats = {
        "tuner": config.tuner,
        "device": str(device),
        "epochs": config.epochs,
        "steps": step,
        "images": len(paths),
        "seconds": round(time.perf_counter() - start, 1),
        "final_loss": float(loss),
        "trainable_parameters": sum(p.numel() for p in params),
        "structure": tuner.structure(),
    }
    return merged, stats


def teacher_dim(model: nn.Module, preprocess: PreprocessConfig, device) -> int:
    with torch.no_grad():
        return int(model(torch.zeros(1, *preprocess.input_size, device=device)).shape[-1])


def _prototypes(model: nn.Module, loader: DataLoader, num_classes: int, device) -> torch.Tensor:
    """Class means of the pretrained embeddings (one pass, augmented): the cosine head's start."""
    features, targets = [], []
    with torch.no_grad():
        for images, labels in loader:
            if not len(labels):
                continue
            features.append(model(images.to(device)).float())
            targets.append(labels.to(device))
    return class_means(torch.cat(features), torch.cat(targets), num_classes)


def tuned_backbone(
    model: nn.Module,
    paths: Sequence[Path],
    labels: Sequence[int],
    preprocess: PreprocessConfig,
    config: SlowLearnerConfig,
    *,
    base_sha256: str,
    cache_dir: Path,
    device: str = "cpu",
    seed: int = 0,
    show_progress: bool = True,
) -> tuple[nn.Module, dict[str, Any]]:
    """`train_slow_learner`, cached in `cache_dir` by backbone, config, images and seed (evaluations
    of several methods, or a rerun, tune the backbone once)."""
    config = dataclasses.replace(config, tuner=tuner_for(config.tuner, model))  # `auto` shares its tuner's cache
    identity = {
        "images": cache_key(paths, base_sha256, preprocess),
        "labels": [int(v) for v in labels],
        "config": dataclasses.asdict(config),
        "seed": seed,
        "device": torch.device(device).type,
    }
    trained = {}

    def compute():
        trained["model"], stats = train_slow_learner(
            model, paths, labels, preprocess, config, device=device, seed=seed, show_progress=show_progress
        )
        return trained["model"].state_dict(), stats

    state, stats, hit = cached_result(cache_dir, identity, compute)
    if not hit:
        return trained["model"], stats
    rebuild(model, stats["structure"]).load_state_dict(state)
    return model.eval().requires_grad_(False), stats
