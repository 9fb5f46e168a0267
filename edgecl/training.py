"""One mini-batch SGD loop with a cosine schedule, shared by every method that trains heads."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Iterable

import torch

from edgecl.progress import progress_bar


@dataclass(frozen=True)
class SGDSchedule:
    epochs: int = 20
    batch_size: int = 48
    lr: float = 0.025
    min_lr: float = 1e-8
    momentum: float = 0.9
    weight_decay: float = 0.0
    # Heads train on cached embeddings, so a small session (50 images) gets very few steps from
    # epochs alone; a floor on steps keeps small sessions trained (measured in tests/test_tosca.py).
    min_steps: int = 0

    def epochs_for(self, num_samples: int) -> int:
        steps_per_epoch = max(math.ceil(num_samples / self.batch_size), 1)
        return max(self.epochs, math.ceil(self.min_steps / steps_per_epoch))


def train_minibatches(
    params: Iterable[torch.nn.Parameter],
    batch_loss: Callable[[torch.Tensor], torch.Tensor],
    num_samples: int,
    schedule: SGDSchedule,
    generator: torch.Generator,
    *,
    description: str = "training",
    show_progress: bool = True,
) -> float:
    """Minimise batch_loss(indices) over shuffled mini-batches; returns the last epoch's mean loss."""
    params = [p for p in params if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=schedule.lr, momentum=schedule.momentum, weight_decay=schedule.weight_decay)
    epochs = schedule.epochs_for(num_samples)
    total = max(epochs * math.ceil(num_samples / schedule.batch_size), 1)
    mean_loss = float("nan")
    step = 0
    with progress_bar(description, epochs, enabled=show_progress, unit="epochs") as advance:
        for _ in range(epochs):
            order = torch.randperm(num_samples, generator=generator)
            losses = []
            for batch in order.split(schedule.batch_size):
                for group in optimizer.param_groups:
                    group["lr"] = schedule.min_lr + 0.5 * (schedule.lr - schedule.min_lr) * (1 + math.cos(math.pi * step / total))
                loss = batch_loss(batch)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                losses.append(loss.detach())
                step += 1
            mean_loss = torch.stack(losses).mean().item()
            advance(1, loss=mean_loss)
    return mean_loss
