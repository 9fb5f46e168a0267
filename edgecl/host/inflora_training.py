"""InfLoRA on the host: one session of backbone adaptation on images, merged into the weights.

1. Input covariance of each adapted layer on the session's images (inference preprocessing),
   through the backbone as earlier sessions left it.
2. A LoRA branch per layer (edgecl/tuners/lora.py) whose A is designed from that covariance and
   the DualGPM memory (edgecl/subspace.py: up to `rank` directions out of the old sessions'
   inputs); B starts at zero.
3. B and a linear head on this session's classes trained with cross-entropy (Adam, cosine, timm's
   augmentation, BatchNorm frozen: eval mode, as the official code trains).
4. Merge W += B A; the covariance again with the merged backbone; the memory takes this session's
   directions up to the session's threshold.

Without a memory (`memory=None`) this is plain LoRA trained the same way (A at LoRA's random
start), the reference the interference measurements compare against.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from edgecl.core.cache import cache_key, cached_result, identity_key
from edgecl.core.methods.inflora import InfLoraBackboneConfig
from edgecl.core.preprocess import PreprocessConfig
from edgecl.core.progress import progress_bar
from edgecl.host.backbones import embedding_dim
from edgecl.host.image_batches import image_loader, train_on_images
from edgecl.host.subspace import SubspaceMemory
from edgecl.host.tuners.lora import LoRA, Target, find_targets

MEMORY_PREFIX = "inflora_memory."
CACHE_VERSION = 1  # bump when a change to the session's computation should invalidate cached sessions


@torch.no_grad()
def layer_covariances(
    model: nn.Module,
    targets: Sequence[Target],
    loader: DataLoader,
    device,
    *,
    description: str = "input covariance",
    show_progress: bool = False,
) -> dict[str, torch.Tensor]:
    """E[x x^T] of each target layer's input over every position of every image (float64)."""
    sums = {t.name: torch.zeros(t.in_features, t.in_features, dtype=torch.float64, device=device) for t in targets}
    counts = dict.fromkeys(sums, 0)

    def hook_for(target: Target):
        def hook(_module, args):
            rows = target.inputs(args[0].detach().float())
            sums[target.name] += (rows.T @ rows).double()
            counts[target.name] += rows.shape[0]

        return hook

    handles = [t.layer.register_forward_pre_hook(hook_for(t)) for t in targets]
    try:
        with progress_bar(description, len(loader), enabled=show_progress, unit="batches") as advance:
            for images, labels in loader:
                if len(labels):
                    model(images.to(device))
                advance(1)
    finally:
        for handle in handles:
            handle.remove()
    return {name: (total / max(counts[name], 1)).cpu() for name, total in sums.items()}


def train_session(
    model: nn.Module,
    memory: SubspaceMemory | None,
    paths: Sequence,
    labels: Sequence[int],
    preprocess: PreprocessConfig,
    config: InfLoraBackboneConfig,
    *,
    session: int,
    device: str = "cpu",
    seed: int = 0,
    show_progress: bool = True,
) -> tuple[nn.Module, dict[str, Any]]:
    """Adapt `model` (in place) to one session's images, merge, update `memory`; (model, stats)."""
    torch.manual_seed(seed + session)
    start = time.perf_counter()
    dim = embedding_dim(model)
    device = torch.device(device)
    model = model.to(device).eval().requires_grad_(False)
    targets = find_targets(model, config.layers)
    plain = image_loader(paths, labels, preprocess, config.batch_size, augment=False)
    tuner = LoRA(config.rank, config.layers)
    params = tuner.attach(model)
    directions = None
    if memory is not None:
        covariances = layer_covariances(
            model,
            targets,
            plain,
            device,
            description=f"inflora session {session}: input subspace",
            show_progress=show_progress,
        )
        for name, (_, branch) in tuner.branches.items():
            branch.down.copy_(memory.design(name, covariances[name], config.rank))
        directions = sum(int(branch.down.any(dim=1).sum()) for _, branch in tuner.branches.values())
        # a branch without a direction cannot change its layer; leaving its B out of training also
        # stops the backward pass at the first layer that can change
        params = [branch.up for _, branch in tuner.branches.values() if branch.down.any()]
    loss = None
    if directions != 0:  # with none, no direction is free of the old inputs: the backbone stays as it is
        head = nn.Linear(dim, int(max(labels)) + 1).to(device)
        trainable = [*params, *head.parameters()]
        for _, branch in tuner.branches.values():
            branch.up.requires_grad_(False)
        for p in trainable:
            p.requires_grad_(True)
        loss = _train(
            model,
            head,
            trainable,
            image_loader(paths, labels, preprocess, config.batch_size, augment=True, seed=seed + session),
            config,
            device,
            f"inflora session {session}",
            show_progress,
        )
    tuner.merge(model)
    stats: dict[str, Any] = {
        "session": session,
        "images": len(paths),
        "epochs": config.epochs,
        "final_loss": loss,
        "trainable_parameters": sum(p.numel() for p in params),
    }
    if memory is not None:
        if directions:  # else the weights did not change and the design's covariances still hold
            covariances = layer_covariances(
                model,
                targets,
                plain,
                device,
                description=f"inflora session {session}: memory update",
                show_progress=show_progress,
            )
        threshold = config.threshold(session)
        for name, covariance in covariances.items():
            memory.update(name, covariance, threshold)
        occupied = [memory.occupied(t.name, t.in_features) / t.in_features for t in targets]
        stats.update(
            threshold=round(threshold, 4),
            protected_fraction=round(sum(occupied) / len(occupied), 4),
            directions=directions,
            direction_slots=config.rank * len(targets),
        )
    stats["seconds"] = round(time.perf_counter() - start, 1)
    return model.cpu().eval().requires_grad_(False), stats


def _train(
    model, head, trainable, loader, config: InfLoraBackboneConfig, device, description: str, show_progress: bool
) -> float:
    optimizer = torch.optim.Adam(trainable, lr=config.lr, weight_decay=config.weight_decay)

    def update(lr: float) -> None:
        for group in optimizer.param_groups:
            group["lr"] = lr
        optimizer.step()

    def forward(images: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        return F.cross_entropy(head(model(images).float()), targets), {}

    _, loss = train_on_images(
        loader,
        config.epochs,
        config.lr,
        0.0,
        forward,
        optimizer.zero_grad,
        update,
        device=device,
        description=description,
        show_progress=show_progress,
    )
    return float(loss)


def cached_session(
    model: nn.Module,
    memory: SubspaceMemory,
    paths: Sequence[Path],
    labels: Sequence[int],
    preprocess: PreprocessConfig,
    config: InfLoraBackboneConfig,
    *,
    session: int,
    previous: str,
    cache_dir: Path,
    device: str = "cpu",
    seed: int = 0,
    show_progress: bool = True,
) -> tuple[nn.Module, SubspaceMemory, dict[str, Any], str]:
    """`train_session` cached in `cache_dir`, keyed by the chain of sessions before it (`previous`:
    the key of the last session, or the base weights' hash) and this session's images, labels,
    config and seed; returns (model, memory, stats, this session's key)."""
    identity = {
        "previous": previous,
        "images": cache_key(paths, previous, preprocess),
        "labels": [int(v) for v in labels],
        "config": dataclasses.asdict(config),
        "session": session,
        "seed": seed,
        "device": torch.device(device).type,
        "version": CACHE_VERSION,
    }
    trained = {}

    def compute():
        trained["model"], stats = train_session(
            model,
            memory,
            paths,
            labels,
            preprocess,
            config,
            session=session,
            device=device,
            seed=seed,
            show_progress=show_progress,
        )
        return {
            **trained["model"].state_dict(),
            **{MEMORY_PREFIX + k: v for k, v in memory.state_dict().items()},
        }, stats

    state, stats, hit = cached_result(cache_dir, identity, compute)
    key = identity_key(identity)
    if not hit:
        return trained["model"], memory, stats, key
    model.load_state_dict({k: v for k, v in state.items() if not k.startswith(MEMORY_PREFIX)})
    memory = SubspaceMemory.from_config(config).load_state_dict(
        {k[len(MEMORY_PREFIX) :]: v for k, v in state.items() if k.startswith(MEMORY_PREFIX)}
    )
    return model.eval(), memory, stats, key


def output_change(
    before: nn.Module, after: nn.Module, targets: Sequence[Target], covariances: dict[str, torch.Tensor]
) -> dict[str, float]:
    """Per adapted layer, ||(W_after - W_before) X||_F / ||W_before X||_F over the inputs X whose
    covariance is given (tr(dW C dW^T) / tr(W C W^T)): how much a session moved the layer's output
    on earlier inputs."""
    weights_before, weights_after = dict(before.named_parameters()), dict(after.named_parameters())
    change = {}
    for target in targets:
        w0 = weights_before[f"{target.name}.weight"].detach().double().flatten(1)
        dw = weights_after[f"{target.name}.weight"].detach().double().flatten(1) - w0
        c = covariances[target.name].double()
        change[target.name] = math.sqrt(
            float(torch.trace(dw @ c @ dw.T)) / max(float(torch.trace(w0 @ c @ w0.T)), 1e-30)
        )
    return change


@dataclasses.dataclass
class Interference:
    ratios: dict[str, float]  # per adapted layer: plain LoRA's output change on session 0's inputs over this one's
    protected: float  # the mean fraction of the layers' input space the memory holds after session 1
    directions: int  # designed directions of A in use (of rank x layers)
    final_loss: float | None  # session 1's training loss at its end (None: no direction, no training)


def interference_ratios(
    model: nn.Module,
    first: tuple[Sequence, Sequence[int]],
    second: tuple[Sequence, Sequence[int]],
    preprocess: PreprocessConfig,
    config: InfLoraBackboneConfig,
    memories: dict[str, tuple[SubspaceMemory, float]],
    *,
    show_progress: bool = False,
) -> tuple[float, dict[str, Interference]]:
    """Train session 0 on `first` (paths, labels), then session 1 on `second` once as plain LoRA and
    once per memory (name -> (an empty memory, the threshold to fill it to with session 0's inputs));
    returns plain LoRA's final loss in session 1 and each memory's `Interference`. A layer a
    memory leaves unadapted has ratio inf."""
    import copy

    model, _ = train_session(
        model, SubspaceMemory(), *first, preprocess, config, session=0, show_progress=show_progress
    )
    targets = find_targets(model, config.layers)
    old_inputs = layer_covariances(
        model, targets, image_loader(*first, preprocess, config.batch_size, augment=False), "cpu"
    )

    def session_one(memory: SubspaceMemory | None) -> tuple[dict[str, float], dict[str, Any]]:
        adapted, stats = train_session(
            copy.deepcopy(model), memory, *second, preprocess, config, session=1, show_progress=show_progress
        )
        return output_change(model, adapted, targets, old_inputs), stats

    plain, plain_stats = session_one(None)
    results = {}
    for name, (memory, threshold) in memories.items():
        for layer, covariance in old_inputs.items():
            memory.update(layer, covariance, threshold)
        change, stats = session_one(memory)
        results[name] = Interference(
            {layer: plain[layer] / value if value > 0 else math.inf for layer, value in change.items()},
            sum(memory.occupied(t.name, t.in_features) / t.in_features for t in targets) / len(targets),
            stats["directions"],
            stats["final_loss"],
        )
    return plain_stats["final_loss"], results
