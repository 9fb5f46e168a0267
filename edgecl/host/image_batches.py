"""Batches of images for training through the backbone on the host (slow learner, InfLoRA):
timm's training augmentation, or the device's own preprocessing for passes that must see what
inference sees. Unreadable images are dropped from their batch."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence

import torch
from torch.utils.data import DataLoader, Dataset

from edgecl.core.images import UnreadableImage, load_image
from edgecl.core.preprocess import PreprocessConfig, preprocess
from edgecl.core.progress import progress_bar
from edgecl.core.sgd import cosine_lr


class _Images(Dataset):
    def __init__(self, paths: Sequence, labels: Sequence[int], transform) -> None:
        self.paths, self.labels, self.transform = list(paths), list(labels), transform

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int):
        try:
            image = load_image(self.paths[index])
        except UnreadableImage:
            return torch.zeros(0), -1
        return self.transform(image), self.labels[index]


def _collate(batch):
    kept = [(x, y) for x, y in batch if y >= 0]
    if not kept:  # every image of the batch unreadable: the training loops skip it
        return torch.zeros(0), torch.zeros(0, dtype=torch.long)
    return torch.stack([x for x, _ in kept]), torch.tensor([y for _, y in kept])


def train_transform(config: PreprocessConfig):
    import timm.data

    return timm.data.create_transform(
        config.input_size,
        is_training=True,
        scale=(0.08, 1.0),
        hflip=0.5,
        color_jitter=None,
        auto_augment=None,
        interpolation=config.interpolation,
        mean=config.mean,
        std=config.std,
    )


class _Inference:
    def __init__(self, config: PreprocessConfig) -> None:
        self.config = config

    def __call__(self, image) -> torch.Tensor:
        return torch.from_numpy(preprocess(image, self.config))


def image_loader(
    paths: Sequence, labels: Sequence[int], config: PreprocessConfig, batch_size: int, *, augment: bool, seed: int = 0
) -> DataLoader:
    """Shuffled, augmented batches (augment=True, the last partial batch dropped when there is more
    than one) or the images in order as inference preprocesses them."""
    transform = train_transform(config) if augment else _Inference(config)
    return DataLoader(
        _Images(paths, labels, transform),
        batch_size=batch_size,
        shuffle=augment,
        num_workers=min(8, max((os.cpu_count() or 2) // 2, 1)),
        collate_fn=_collate,
        generator=torch.Generator().manual_seed(seed),
        drop_last=augment and len(paths) > batch_size,
    )


def train_on_images(
    loader: DataLoader,
    epochs: int,
    lr: float,
    min_lr: float,
    forward: Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, dict[str, float]]],
    zero_grad: Callable[[], None],
    update: Callable[[float], None],
    *,
    device: torch.device,
    description: str,
    show_progress: bool,
) -> tuple[int, torch.Tensor]:
    """`epochs` passes over `loader` with a cosine learning rate from `lr` to `min_lr`: the loss of
    `forward(images, targets)` (bf16 autocast on CUDA; it also returns figures for the progress bar)
    is backpropagated and `update(lr)` steps the optimizer. Returns (steps, last loss)."""
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")
    total, step, seen, loss = max(epochs * len(loader), 1), 0, 0, torch.tensor(float("nan"))
    start = time.perf_counter()
    with progress_bar(description, epochs * len(loader), enabled=show_progress, unit="steps") as advance:
        for _ in range(epochs):
            for images, targets in loader:
                if not len(targets):
                    continue
                images, targets = images.to(device, non_blocking=True), targets.to(device)
                with autocast:
                    loss, figures = forward(images, targets)
                zero_grad()
                loss.backward()
                update(cosine_lr(step, total, lr, min_lr))
                step, seen = step + 1, seen + len(targets)
                advance(1, loss=float(loss.detach()), **figures, img_s=seen / (time.perf_counter() - start))
    return step, loss.detach()
