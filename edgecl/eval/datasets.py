"""Labelled train/test image sets for evaluation, and the class-incremental session split."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgecl.core.images import EXTENSIONS_TEXT, is_image_name, require_folder, scan_class_folders
from edgecl.errors import EdgeclError, name_list, param


@dataclass
class Split:
    paths: list[Path]
    labels: np.ndarray  # int64 index into TrainTest.classes


@dataclass
class TrainTest:
    classes: list[str]
    train: Split
    test: Split


def _split_from_folders(root: Path, exclude: set[str]) -> tuple[list[str], dict[str, list[Path]]]:
    folders = [c for c in scan_class_folders(root) if c.name not in exclude]
    return [c.name for c in folders], {c.name: list(c.images) for c in folders}


def _index(classes: list[str], by_class: dict[str, list[Path]]) -> Split:
    position = {name: i for i, name in enumerate(classes)}
    paths = [p for name in classes for p in by_class.get(name, [])]
    labels = np.array([position[name] for name in classes for _ in by_class.get(name, [])], dtype=np.int64)
    return Split(paths, labels)


def _read_list(root: Path, list_file: Path, flag: str, exclude: set[str], excluded: set[str]) -> dict[str, list[Path]]:
    """Images by class; the names of `exclude` met in the list are added to `excluded`."""
    if not Path(list_file).is_file():
        raise EdgeclError(f"{flag} {list_file}: no such file")
    by_class: dict[str, list[Path]] = {}
    missing, not_images = [], []
    for line in Path(list_file).read_text().splitlines():
        rel = line.strip()
        if not rel or rel.startswith("#"):
            continue
        name = Path(rel).parts[0]
        if name in exclude:
            excluded.add(name)
            continue
        if not (root / rel).is_file():  # a dangling link too
            missing.append(rel)
        elif not is_image_name(root / rel):  # what a folder's search would pass over
            not_images.append(rel)
        by_class.setdefault(name, []).append(root / rel)
    if missing:
        raise EdgeclError(f"{flag} {list_file}: {len(missing)} listed file(s) not under {root} (first: {missing[0]})")
    if not_images:
        raise EdgeclError(
            f"{flag} {list_file}: {len(not_images)} listed file(s) not images ({EXTENSIONS_TEXT}) "
            f"(first: {not_images[0]})"
        )
    if not by_class:
        raise EdgeclError(f"{flag} {list_file}: lists no images")
    return by_class


def load_train_test(
    root: Path, train_list: Path | None = None, test_list: Path | None = None, exclude: Sequence[str] = ()
) -> TrainTest:
    """ROOT/train/<class>/ and ROOT/test/<class>/, or ROOT/<class>/ split by two list files."""
    root = require_folder(root)
    skip = set(exclude)
    if (train_list is None) != (test_list is None):
        raise EdgeclError(f"{param('train_list')} and {param('test_list')} go together")
    excluded: set[str] = set()
    if train_list is not None:
        train = _read_list(root, train_list, param("train_list"), skip, excluded)
        test = _read_list(root, test_list, param("test_list"), skip, excluded)
        classes = sorted(train)
    else:
        for part in ("train", "test"):
            if not (root / part).is_dir():
                raise EdgeclError(
                    f"{root}: expected {root}/train/<class>/ and {root}/test/<class>/, "
                    f"or pass {param('train_list')} and {param('test_list')}"
                )
            excluded |= {d.name for d in (root / part).iterdir() if d.is_dir() and d.name in skip}
        classes, train = _split_from_folders(root / "train", skip)
        _, test = _split_from_folders(root / "test", skip)
    if skip - excluded:  # a misspelt name would silently change the protocol
        raise EdgeclError(
            f"{param('exclude_class', 'exclude')} {sorted(skip - excluded)[0]}: {root} has no class of that name"
        )
    for found, absent, which in (
        (test, classes, "test classes without training images"),
        (classes, test, "classes without test images"),
    ):
        unknown = sorted(set(found) - set(absent))
        if unknown:
            raise EdgeclError(f"{root}: {which}: {name_list(unknown, 5)}")
    return TrainTest(classes, _index(classes, train), _index(classes, test))


def class_order(num_classes: int, seed: int) -> list[int]:
    """The shuffled class order of the usual protocol (numpy's legacy permutation, as PILOT seeds it)."""
    return np.random.RandomState(seed).permutation(num_classes).tolist()


def session_sizes(num_classes: int, init: int, increment: int) -> list[int]:
    """B{init} Inc{increment}: `init` classes first, then `increment` per session (the last may be smaller)."""
    if init < 1 or increment < 1:
        raise EdgeclError(f"{param('init')} and {param('increment')} must be at least 1")
    if init > num_classes:
        raise EdgeclError(f"{param('init')} {init}: the data has only {num_classes} classes")
    sizes = [init]
    while sum(sizes) < num_classes:
        sizes.append(min(increment, num_classes - sum(sizes)))
    return sizes
