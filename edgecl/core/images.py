"""Finding image files in folders (the ImageFolder convention) and decoding them safely."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
from PIL import Image, ImageOps

from edgecl.errors import EdgeclError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
_EXTENSIONS_TEXT = ", ".join(e[1:] for e in IMAGE_EXTENSIONS)


class UnreadableImage(Exception):
    """An image file that cannot be decoded (truncated, corrupt, not an image)."""


@dataclass(frozen=True)
class ClassFolder:
    name: str
    images: tuple[Path, ...]


def paths_and_labels(classes: Sequence[ClassFolder]) -> tuple[list[Path], list[int]]:
    """Every image of the class folders, and its class's index in `classes`."""
    return [p for c in classes for p in c.images], [i for i, c in enumerate(classes) for _ in c.images]


def is_image_file(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_EXTENSIONS and not path.name.startswith(".") and path.is_file()


def require_folder(path: Path) -> Path:
    path = Path(path)
    if not path.exists():
        raise EdgeclError(f"{path}: no such folder")
    if not path.is_dir():
        raise EdgeclError(f"{path}: not a folder")
    return path


def list_images(folder: Path) -> list[Path]:
    """The image files directly inside `folder`, sorted by name."""
    return sorted(p for p in Path(folder).iterdir() if is_image_file(p))


def _subfolders(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def check_class_name(name: str, source: str) -> str:
    """Class names are printed as tab-separated columns and compared as given: no blank names, no tabs or line breaks."""
    if not name.strip() or any(ch in name for ch in "\t\n\r"):
        raise EdgeclError(f"{source}: {name!r} is not a usable class name (empty, or holds a tab or a line break)")
    return name


def scan_class_folders(root: Path) -> list[ClassFolder]:
    """`root/<class>/<image>`: one ClassFolder per subfolder, sorted by class name."""
    root = require_folder(root)
    folders = _subfolders(root)
    if not folders:
        raise EdgeclError(f"{root}: no class folders (expected {root}/<class name>/<images>)")
    loose = list_images(root)
    if loose:  # they would belong to no class
        raise EdgeclError(f"{root}: holds {len(loose)} image(s) beside its class folders (first: {loose[0].name}); move them into a class folder")
    classes = []
    for folder in folders:
        images = list_images(folder)
        if not images:
            raise EdgeclError(f"{folder}: no images ({_EXTENSIONS_TEXT})")
        classes.append(ClassFolder(check_class_name(folder.name, str(folder)), tuple(images)))
    return classes


def scan_new_classes(folder: Path, label: str | None = None) -> list[ClassFolder]:
    """A folder of images is one class (named `label` or after the folder); a folder of class folders is several."""
    folder = require_folder(folder)
    images = list_images(folder)
    subfolders = [p for p in _subfolders(folder) if list_images(p)]
    if images and subfolders:
        raise EdgeclError(
            f"{folder}: holds both images and class folders; give one class's images or only class folders"
        )
    if images:
        name = check_class_name(label, "--label") if label is not None else check_class_name(folder.resolve().name, str(folder))
        return [ClassFolder(name, tuple(images))]
    if not subfolders:
        raise EdgeclError(f"{folder}: no images ({_EXTENSIONS_TEXT})")
    if label is not None:
        raise EdgeclError(f"--label names one class, but {folder} holds {len(subfolders)} class folders")
    return scan_class_folders(folder)


def find_images(paths: Iterable[Path]) -> list[Path]:
    """Image files named directly, and every image below named folders (sorted), in the order given."""
    found: list[Path] = []
    for path in map(Path, paths):
        if path.is_dir():
            found.extend(sorted(p for p in path.rglob("*") if is_image_file(p)))
        elif path.is_file():
            if path.suffix.lower() not in IMAGE_EXTENSIONS:
                raise EdgeclError(f"{path}: not an image file ({_EXTENSIONS_TEXT})")
            found.append(path)
        else:
            raise EdgeclError(f"{path}: no such file or folder")
    if not found:
        raise EdgeclError(f"no images ({_EXTENSIONS_TEXT}) in {', '.join(map(str, paths))}")
    return list(dict.fromkeys(found))  # a file named twice, or also inside a named folder, is one image


def _to_rgb(image: Image.Image) -> Image.Image:
    # PIL's convert("RGB") clips 16-bit values at 255, which turns a 16-bit mono camera's frame white
    if image.mode.startswith("I;16") or (image.mode == "I" and image.getextrema()[1] > 255):
        image = Image.fromarray((np.asarray(image).astype(np.int64).clip(0, 65535) >> 8).astype(np.uint8))
    return image.convert("RGB")


def load_image(path: Path) -> Image.Image:
    """Decode fully (so truncation is caught here), apply EXIF orientation, convert to RGB (16-bit
    grey scaled to 8 bits)."""
    try:
        with Image.open(path) as image:
            image.load()
            return _to_rgb(ImageOps.exif_transpose(image))
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as err:
        raise UnreadableImage(f"{path}: {err}") from err
