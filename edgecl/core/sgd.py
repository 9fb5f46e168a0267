"""One mini-batch SGD loop with a cosine schedule, shared by every method that trains heads."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch

from edgecl.core.progress import progress_bar
from edgecl.core.threads import torch_threads


@dataclass(frozen=True)
class SGDSchedule:
    epochs: int = 20
    batch_size: int = 48
    lr: float = 0.025
    min_lr: float = 1e-8
    momentum: float = 0.9
    weight_decay: float = 0.0
    # Heads train on cached embeddings, so a small session (50 images) gets very few steps from
    # epochs alone; a floor on steps keeps small sessions trained (docs/methods.md).
    min_steps: int = 0

    def epochs_for(self, num_samples: int) -> int:
        steps_per_epoch = max(math.ceil(num_samples / self.batch_size), 1)
        return max(self.epochs, math.ceil(self.min_steps / steps_per_epoch))


def cosine_lr(step: int, total: int, lr: float, min_lr: float) -> float:
    """The cosine schedule from `lr` at step 0 to `min_lr` at step `total`."""
    return min_lr + 0.5 * (lr - min_lr) * (1 + math.cos(math.pi * step / total))


class MomentumSGD:
    """torch.optim.SGD's update (momentum without dampening, L2 weight decay), written out because
    building a torch.optim optimizer imports ~900 modules (torch._dynamo, sympy): 1.4 s on a desktop
    core, more on a Jetson, paid by every `edgecl learn` process."""

    def __init__(self, params: list[torch.nn.Parameter], momentum: float, weight_decay: float) -> None:
        self.params = params
        self.momentum, self.weight_decay = momentum, weight_decay
        self.buffers: list[torch.Tensor | None] = [None] * len(params)

    def zero_grad(self) -> None:
        for p in self.params:
            p.grad = None

    @torch.no_grad()
    def step(self, lr: float) -> None:
        for i, p in enumerate(self.params):
            if p.grad is None:
                continue
            grad = p.grad.add(p, alpha=self.weight_decay) if self.weight_decay else p.grad
            if self.momentum:
                if self.buffers[i] is None:
                    self.buffers[i] = grad.clone()
                else:
                    self.buffers[i].mul_(self.momentum).add_(grad)
                grad = self.buffers[i]
            p.add_(grad, alpha=-lr)


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
    optimizer = MomentumSGD(params, schedule.momentum, schedule.weight_decay)
    epochs = schedule.epochs_for(num_samples)
    total = max(epochs * math.ceil(num_samples / schedule.batch_size), 1)
    mean_loss = float("nan")
    step = 0
    # Heads' ops are small: on one thread, edgecl's learn heads took 5.3 s instead of 18.5 beside a
    # process holding one of two cores, and the same within noise on an idle CPU (benchmarks/learn_cost.py).
    with torch_threads(1), progress_bar(description, total, enabled=show_progress, unit="steps") as advance:
        for _ in range(epochs):
            order = torch.randperm(num_samples, generator=generator)
            losses = []
            for batch in order.split(schedule.batch_size):
                lr = cosine_lr(step, total, schedule.lr, schedule.min_lr)
                loss = batch_loss(batch)
                optimizer.zero_grad()
                loss.backward()
                optimizer.step(lr)
                losses.append(loss.detach())
                step += 1
            mean_loss = torch.stack(losses).mean().item()
            advance(len(losses), loss=mean_loss)
    return mean_loss
