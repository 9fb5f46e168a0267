"""Finding image files in folders (the ImageFolder convention) and decoding them safely.

Every command finds images with one walker (`_Search`): it follows symlinked files and folders,
counts each real file once, and names what it passes over (dangling links, symlink loops, files
reached twice) in a warning, so train, learn, classify, eval and export see the same images in
the same order."""

from __future__ import annotations

import errno
import logging
import os
import stat
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Union

import numpy as np
from PIL import Image, ImageOps

from edgecl.errors import EdgeclError, name_list, param

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".gif")
EXTENSIONS_TEXT = ", ".join(e[1:] for e in IMAGE_EXTENSIONS)
_SHOWN = 3  # passed-over paths a warning names before "and N more"


# an image file's path, a decoded PIL image, or an H x W x 3 (or H x W grey) uint8 RGB array: a camera frame
ImageLike = Union[str, os.PathLike, Image.Image, np.ndarray]


UNKNOWN = "unknown"  # the label of an image that looks like none of the known classes


class UnreadableImage(Exception):
    """An image file that cannot be decoded (truncated, corrupt, not an image)."""


@dataclass(frozen=True)
class ClassImages:
    """One class's images: files found in its folder, or frames handed over in memory."""

    name: str
    images: tuple[ImageLike, ...]


def paths_and_labels(classes: Sequence[ClassImages]) -> tuple[list[ImageLike], list[int]]:
    """Every image of the classes, and its class's index in `classes`."""
    return [p for c in classes for p in c.images], [i for i, c in enumerate(classes) for _ in c.images]


def is_image_name(path: Path) -> bool:
    """An accepted extension (any case): what a file named on its own must have."""
    return Path(path).suffix.lower() in IMAGE_EXTENSIONS


def is_image_file(path: Path) -> bool:
    """A file a folder's search takes: an accepted extension, not hidden, a file (a link to one counts)."""
    path = Path(path)
    return is_image_name(path) and not path.name.startswith(".") and path.is_file()


def require_folder(path: Path) -> Path:
    path = Path(path)
    if not path.exists():
        raise EdgeclError(f"{path}: no such folder")
    if not path.is_dir():
        raise EdgeclError(f"{path}: not a folder")
    return path


def _identity(st: os.stat_result, path: Path) -> object:
    """The real file or folder behind `path`, however it was reached (links, hard links)."""
    return (st.st_dev, st.st_ino) if st.st_ino else os.path.realpath(path)


def _broken_link(path: Path, error: OSError) -> str:
    if error.errno == errno.ELOOP:
        return f"{path} (a chain of links that never ends)"
    return f"{path} -> {os.readlink(path)}"


@dataclass
class _Search:
    """One search's state: the real files and folders met so far (each is taken once, under the path
    it was first met by), and what was passed over, for one warning per kind at the end."""

    files: dict[object, Path] = field(default_factory=dict)
    folders: dict[object, Path] = field(default_factory=dict)
    above: list[object] = field(default_factory=list)  # the folders being searched: a link to one is a loop
    dangling: list[str] = field(default_factory=list)
    loops: list[str] = field(default_factory=list)
    twice: list[str] = field(default_factory=list)

    def _entries(self, folder: Path) -> list[tuple[Path, os.stat_result]]:
        """`folder`'s entries by name, links followed; hidden names, broken links and vanished files left out."""
        entries = []
        for path in sorted(folder.iterdir(), key=lambda p: p.name):
            if path.name.startswith("."):
                continue
            try:
                entries.append((path, path.stat()))
            except OSError as error:
                if path.is_symlink():
                    (self.loops if error.errno == errno.ELOOP else self.dangling).append(_broken_link(path, error))
                elif not isinstance(error, FileNotFoundError):  # one that vanished since the listing is no longer there
                    raise
        return entries

    def _enter(self, folder: Path, st: os.stat_result) -> list[tuple[Path, os.stat_result]] | None:
        """`folder`'s entries, made an enclosing folder; None (and why, noted) when it was met before."""
        key = _identity(st, folder)
        first = self.folders.get(key)
        if first is not None:
            if key in self.above:
                self.loops.append(f"{folder} (back to {first})")
            elif first != folder:
                self.twice.append(f"{folder} (the same folder as {first})")
            return None
        self.folders[key] = folder
        self.above.append(key)
        return self._entries(folder)

    def first_path(self, folder: Path, st: os.stat_result) -> Path | None:
        return self.folders.get(_identity(st, folder))

    def take(self, path: Path, st: os.stat_result) -> bool:
        """Whether the file at `path` is one not met before."""
        key = _identity(st, path)
        first = self.files.get(key)
        if first is None:
            self.files[key] = path
            return True
        if first != path:
            self.twice.append(f"{path} (the same file as {first})")
        return False

    def _image(self, path: Path, st: os.stat_result) -> bool:
        return stat.S_ISREG(st.st_mode) and is_image_name(path) and self.take(path, st)

    def below(self, folder: Path, st: os.stat_result) -> list[Path]:
        """Every image file under `folder`, depth first, each folder's entries in name order."""
        entries = self._enter(folder, st)
        if entries is None:
            return []
        found = []
        for path, entry in entries:
            if stat.S_ISDIR(entry.st_mode):
                found += self.below(path, entry)
            elif self._image(path, entry):
                found.append(path)
        self.above.pop()
        return found

    def split(self, folder: Path) -> tuple[list[Path], list[tuple[Path, os.stat_result]]]:
        """The image files directly in `folder`, and its subfolders; `folder` stays an enclosing folder."""
        entries = self._enter(folder, folder.stat()) or []
        images = [path for path, st in entries if self._image(path, st)]
        return images, [(path, st) for path, st in entries if stat.S_ISDIR(st.st_mode)]

    def report(self) -> None:
        for items, what in (
            (self.dangling, "dangling link(s) skipped"),
            (self.loops, "symlink loop(s) not followed"),
            (self.twice, "path(s) reaching files found already, counted once"),
        ):
            if items:
                log.warning("%d %s: %s", len(items), what, name_list(items, _SHOWN))


def list_images(folder: Path, *, warn: bool = True) -> list[Path]:
    """The image files directly inside `folder`, sorted by name (links followed, each real file once);
    `warn=False` for a caller that polls the folder and would repeat the same warnings."""
    search = _Search()
    try:
        return search.split(Path(folder))[0]
    finally:
        if warn:
            search.report()


def check_class_name(name: str, source: str) -> str:
    """Class names are printed as tab-separated columns and compared as given: no blank names, no tabs or
    line breaks."""
    if not name.strip() or any(ch in name for ch in "\t\n\r"):
        raise EdgeclError(f"{source}: {name!r} is not a usable class name (empty, or holds a tab or a line break)")
    if name == UNKNOWN:
        raise EdgeclError(
            f"{source}: {UNKNOWN!r} is what edgecl answers for an image of no class it knows; name the class otherwise"
        )
    return name


def _classes(search: _Search, walked: list[tuple[Path, os.stat_result, list[Path]]]) -> list[ClassImages]:
    classes = []
    for folder, st, images in walked:
        if not images:
            if _identity(st, folder) in search.above:  # a link back to the root: no class, named as a loop
                continue
            first = search.first_path(folder, st)
            if first is not None and first != folder:
                raise EdgeclError(f"{folder}: leads to {first}, which is searched already; link each class folder once")
            raise EdgeclError(f"{folder}: no images ({EXTENSIONS_TEXT})")
        classes.append(ClassImages(check_class_name(folder.name, str(folder)), tuple(images)))
    return classes


def scan_class_folders(root: Path) -> list[ClassImages]:
    """`root/<class>/<images, in subfolders too>`: one ClassImages per subfolder, sorted by class name."""
    root = require_folder(root)
    search = _Search()
    try:
        loose, folders = search.split(root)
        if not folders:
            raise EdgeclError(f"{root}: no class folders (expected {root}/<class name>/<images>)")
        if loose:  # they would belong to no class
            raise EdgeclError(
                f"{root}: holds {len(loose)} image(s) beside its class folders (first: {loose[0].name}); "
                "move them into a class folder"
            )
        classes = _classes(search, [(folder, st, search.below(folder, st)) for folder, st in folders])
        if not classes:
            raise EdgeclError(f"{root}: no class folders (expected {root}/<class name>/<images>)")
        return classes
    finally:
        search.report()


def scan_new_classes(folder: Path, label: str | None = None) -> list[ClassImages]:
    """A folder of images is one class (named `label` or after the folder); a folder of class folders is several."""
    folder = require_folder(folder)
    search = _Search()
    try:
        images, folders = search.split(folder)
        walked = [(sub, st, search.below(sub, st)) for sub, st in folders]
        classes = [w for w in walked if w[2]]
        if images and classes:
            raise EdgeclError(
                f"{folder}: holds both images and class folders; give one class's images or only class folders"
            )
        if images:  # named as the user sees the folder: a link's name, not its target's
            if label is not None:
                return [ClassImages(check_class_name(label, param("label")), tuple(images))]
            return [ClassImages(check_class_name(Path(os.path.abspath(folder)).name, str(folder)), tuple(images))]
        if not classes:
            raise EdgeclError(f"{folder}: no images ({EXTENSIONS_TEXT})")
        if label is not None:
            raise EdgeclError(f"{param('label')} names one class, but {folder} holds {len(classes)} class folders")
        return _classes(search, walked)
    finally:
        search.report()


def find_images(paths: Iterable[Path]) -> list[Path]:
    """Image files named directly, and every image below named folders (as a folder's search finds
    them), in the order given; each real file once."""
    paths = [Path(p) for p in paths]
    search = _Search()
    found: list[Path] = []
    try:
        for path in paths:
            try:
                st = path.stat()
            except OSError as error:
                if path.is_symlink() and error.errno == errno.ELOOP:
                    raise EdgeclError(f"{path}: a symlink loop (a chain of links that never ends)") from error
                if path.is_symlink():
                    raise EdgeclError(f"{path}: a dangling link (to {os.readlink(path)})") from error
                raise EdgeclError(f"{path}: no such file or folder") from error
            if stat.S_ISDIR(st.st_mode):
                found += search.below(path, st)
            elif not stat.S_ISREG(st.st_mode):
                raise EdgeclError(f"{path}: not a file or folder")
            elif not is_image_name(path):
                raise EdgeclError(f"{path}: not an image file ({EXTENSIONS_TEXT})")
            elif search.take(path, st):
                found.append(path)
    finally:
        search.report()
    if not found:
        raise EdgeclError(f"no images ({EXTENSIONS_TEXT}) in {', '.join(map(str, paths))}")
    return found


def _high_byte(values: np.ndarray) -> np.ndarray:
    """16-bit grey (or 32-bit, clipped to 16) -> its top 8 bits as uint8; no copy wider than the input."""
    if values.dtype.itemsize > 2:
        values = np.clip(values, 0, 65535)
    out = np.empty(values.shape, np.uint8)
    np.right_shift(values, 8, out=out, casting="unsafe")
    return out


def _to_rgb(image: Image.Image) -> Image.Image:
    # PIL's convert("RGB") clips 16-bit values at 255, which turns a 16-bit mono camera's frame white
    if image.mode.startswith("I;16") or (image.mode == "I" and image.getextrema()[1] > 255):
        image = Image.fromarray(_high_byte(np.asarray(image)))
    return image.convert("RGB")


DEFAULT_MAX_PIXELS = 50_000_000  # a 7000 x 7000 frame; a 13000 x 13000 PNG of 331 KB is refused unread
# edgecl refuses such an image itself, in one line; PIL's warning, issued on opening, would only repeat it
warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)


def max_pixels() -> int:
    """The most pixels an image may have to be decoded: $EDGECL_MAX_IMAGE_PIXELS, else DEFAULT_MAX_PIXELS."""
    try:
        return max(int(os.environ.get("EDGECL_MAX_IMAGE_PIXELS", DEFAULT_MAX_PIXELS)), 1)
    except ValueError:
        return DEFAULT_MAX_PIXELS


def load_image(path: Path) -> Image.Image:
    """Decode fully (so truncation is caught here), apply EXIF orientation, convert to RGB (16-bit
    grey scaled to 8 bits). An animated GIF or WebP, or a multi-page TIFF, gives its first frame.
    An image of more than max_pixels() is refused before it is decoded (and PIL's own limit on
    decompression bombs, Image.MAX_IMAGE_PIXELS, stays in force)."""
    try:
        with Image.open(path) as image:
            width, height = image.size
            if width * height > max_pixels():
                raise UnreadableImage(
                    f"{path}: {width} x {height} pixels, more than the {max_pixels():,} edgecl decodes "
                    "(EDGECL_MAX_IMAGE_PIXELS sets the limit)"
                )
            image.load()
            ImageOps.exif_transpose(image, in_place=True)
            return _to_rgb(image)
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as err:
        raise UnreadableImage(f"{path}: {err}") from err


def check_frame(array: np.ndarray, where: str) -> None:
    """An array the library is handed must be a uint8 RGB (or grey) image; anything else is a caller's mistake."""
    if array.dtype != np.uint8 or not (array.ndim == 2 or (array.ndim == 3 and array.shape[2] in (1, 3, 4))):
        raise EdgeclError(
            f"{where}: an image array must be H x W x 3 (RGB), H x W x 4 (RGBA) or H x W (x 1) (grey), "
            f"dtype uint8; got shape {tuple(array.shape)}, dtype {array.dtype}"
        )
    if 0 in array.shape[:2]:
        raise EdgeclError(f"{where}: an empty image ({tuple(array.shape)})")


def describe(image: ImageLike, index: int) -> str:
    """How a message names an image: its path, or its place in the list it came in."""
    return str(image) if isinstance(image, (str, os.PathLike)) else f"image {index}"


def to_rgb(image: ImageLike) -> Image.Image:
    """Any ImageLike as an RGB PIL image: files are decoded by load_image, frames converted as files are."""
    if isinstance(image, np.ndarray):
        check_frame(image, "image")
        return _to_rgb(Image.fromarray(image[:, :, 0] if image.ndim == 3 and image.shape[2] == 1 else image))
    if isinstance(image, Image.Image):
        return _to_rgb(image)
    return load_image(Path(image))
