"""Shared fixtures: small synthetic image folders and a tiny random-init bundle for plumbing tests.

Accuracy is never measured on these (random weights, synthetic colours); see test_accuracy.py.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from edgecl.eval import fashion_mnist

PLUMBING_BACKBONE = "test_efficientnet"  # a tiny timm CNN; random weights
# the default method (edgecl) on short schedules, for tests about plumbing rather than accuracy
QUICK_EDGECL = {"safe.slow.epochs": "1", "tosca.min_steps": "0", "safe.min_steps": "0", "safe.projection": "256"}
COLOURS = {
    "red": (220, 40, 40),
    "green": (40, 200, 60),
    "blue": (40, 60, 220),
    "yellow": (230, 220, 40),
    "grey": (128, 128, 128),
    "purple": (150, 40, 160),
}


def write_class(folder: Path, colour: tuple[int, int, int], count: int, seed: int, size=(48, 40)) -> list[Path]:
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(count):
        noise = rng.integers(-30, 30, size=(size[1], size[0], 3))
        pixels = np.clip(np.array(colour)[None, None, :] + noise, 0, 255).astype(np.uint8)
        path = folder / f"img_{i:03d}.png"
        Image.fromarray(pixels).save(path)
        paths.append(path)
    return paths


def make_image_folder(root: Path, names: list[str], count: int = 6, seed: int = 0) -> Path:
    for k, name in enumerate(names):
        write_class(root / name, COLOURS[name], count, seed + k)
    return root


@pytest.fixture(scope="session", autouse=True)
def private_cache(tmp_path_factory):
    """Embeddings and exported backbones go to a temporary cache, never the user's."""
    import os

    os.environ["EDGECL_CACHE"] = str(tmp_path_factory.mktemp("cache"))


@pytest.fixture(scope="session")
def base_images(tmp_path_factory) -> Path:
    return make_image_folder(tmp_path_factory.mktemp("base"), ["red", "green", "blue"])


@pytest.fixture(scope="session")
def new_images(tmp_path_factory) -> Path:
    """Two new classes: yellow/ and grey/."""
    return make_image_folder(tmp_path_factory.mktemp("new"), ["yellow", "grey"], seed=10)


@pytest.fixture(scope="session")
def trained_bundle(tmp_path_factory, base_images) -> Path:
    from edgecl.host.train import train

    path = tmp_path_factory.mktemp("bundles") / "base"
    train(
        base_images, path, backbone=PLUMBING_BACKBONE, random_init=True, method="tosca", epochs=2, show_progress=False
    )
    return path


@pytest.fixture
def bundle(trained_bundle, tmp_path) -> Path:
    """A private copy of the trained bundle that a test may change."""
    return Path(shutil.copytree(trained_bundle, tmp_path / "bundle"))


requires_fashion_mnist = pytest.mark.skipif(
    not (fashion_mnist.DEFAULT_ROOT / "t10k-labels-idx1-ubyte.gz").is_file(),
    reason="Fashion-MNIST not installed (apt-get install dataset-fashion-mnist; `make test` does it)",
)

requires_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
DEVICES = [
    "cpu",
    pytest.param("cuda", marks=requires_cuda),
]  # host training: CPU always, CUDA (bf16 autocast) where present
