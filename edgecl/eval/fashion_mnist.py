"""Fashion-MNIST from Debian's `dataset-fashion-mnist` package, written out as image folders."""

from __future__ import annotations

import gzip
import os
from pathlib import Path

import numpy as np
from PIL import Image

from edgecl.errors import EdgeclError

# EDGECL_FASHION_MNIST: a folder holding the four .gz files, where the Debian package cannot be installed
DEFAULT_ROOT = Path(os.environ.get("EDGECL_FASHION_MNIST", "/usr/share/datasets/fashion-mnist"))
CLASSES = ("T-shirt_top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle_boot")
_FILES = {"train": "train-{}-idx{}-ubyte.gz", "test": "t10k-{}-idx{}-ubyte.gz"}


def load(split: str, root: Path = DEFAULT_ROOT) -> tuple[np.ndarray, np.ndarray]:
    """(images uint8 (N, 28, 28), labels uint8 (N,)) of the 'train' or 'test' split."""
    pattern = _FILES[split]
    images_file, labels_file = Path(root) / pattern.format("images", 3), Path(root) / pattern.format("labels", 1)
    for path in (images_file, labels_file):
        if not path.is_file():
            raise EdgeclError(
                f"{path}: missing; install Fashion-MNIST with `apt-get install dataset-fashion-mnist` "
                "or set EDGECL_FASHION_MNIST to a folder with its four .gz files"
            )
    images = np.frombuffer(gzip.open(images_file).read(), np.uint8, offset=16).reshape(-1, 28, 28)
    labels = np.frombuffer(gzip.open(labels_file).read(), np.uint8, offset=8)
    return images, labels


def balanced_indices(labels: np.ndarray, per_class: int, classes: list[int], seed: int = 0) -> dict[int, np.ndarray]:
    """`per_class` indices of each class, drawn without replacement by a seeded generator, sorted."""
    rng = np.random.default_rng(seed)
    return {c: np.sort(rng.choice(np.flatnonzero(labels == c), per_class, replace=False)) for c in classes}


def write_image_folders(
    out: Path, split: str, per_class: int, classes: list[int] | None = None, *, seed: int = 0, root: Path = DEFAULT_ROOT
) -> dict[str, list[Path]]:
    """out/<class name>/<index>.png for `per_class` images of each class; returns the paths by class."""
    images, labels = load(split, root)
    chosen = balanced_indices(labels, per_class, list(range(len(CLASSES))) if classes is None else classes, seed)
    written: dict[str, list[Path]] = {}
    for c, indices in chosen.items():
        folder = Path(out) / CLASSES[c]
        folder.mkdir(parents=True, exist_ok=True)
        written[CLASSES[c]] = []
        for i in indices:
            path = folder / f"{split}_{i:05d}.png"
            if not path.exists():
                Image.fromarray(images[i]).save(path)
            written[CLASSES[c]].append(path)
    return written
