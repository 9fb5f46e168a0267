"""The Python API: a bundle loaded once, classifying camera frames and learning from them in process.

    model = edgecl.load("bundle/")
    prediction = model.classify(frame)            # frame: H x W x 3 uint8 RGB (a camera's), PIL image or path
    model.learn({"bolt": [frame1, frame2, ...]})  # one session, committed as `edgecl learn` commits it
    model.forget("bolt"); model.undo()            # the device verbs, each one atomic commit

Device side: imports no timm and no onnx (the PyTorch runtime, asked for or fallen back to, does).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Union

import numpy as np
from PIL import Image

from edgecl.core.bundle import MANIFEST, SessionEntry
from edgecl.core.images import ClassImages, ImageLike, check_class_name, check_frame
from edgecl.errors import EdgeclError, param
from edgecl.runtime import corrections
from edgecl.runtime.corrections import Correction
from edgecl.runtime.service import Classifier, LearnResult, Prediction, Skipped, learn

Images = Union[ImageLike, Sequence[ImageLike]]


def _manifest_version(path: Path) -> tuple[int, int] | None:
    try:
        stat = (path / MANIFEST).stat()
    except FileNotFoundError:
        return None
    return stat.st_mtime_ns, stat.st_ino


def _checked(image: object, where: str) -> ImageLike:
    if isinstance(image, np.ndarray):
        check_frame(image, where)
    elif isinstance(image, (str, os.PathLike)):
        if not Path(image).is_file():
            raise EdgeclError(f"{where}: {image}: no such file")
    elif not isinstance(image, Image.Image):
        raise EdgeclError(
            f"{where}: {type(image).__name__} is not an image (a path, a PIL image or an H x W x 3 uint8 array)"
        )
    return image


class Model:
    """A bundle ready to classify; `learn` adds a session to it, `reload` picks up another process's."""

    def __init__(self, bundle: str | os.PathLike, runtime: str | None = None, min_score: float | None = None) -> None:
        self.path = Path(bundle)
        self._runtime = runtime
        self._version = _manifest_version(self.path)  # read before the bundle: a commit meanwhile is seen by reload()
        self._classifier = Classifier(self.path, runtime, min_score=min_score)

    @property
    def classes(self) -> list[str]:
        """The classes the model predicts, in the order they were learned (forgotten ones left out)."""
        return self._classifier.bundle.manifest.active_class_names

    @property
    def sessions(self) -> list[SessionEntry]:
        """The sessions the bundle has learned, the first (train's) first: classes, images, when."""
        return list(self._classifier.bundle.manifest.sessions)

    @property
    def min_score(self) -> float:
        """Under this `known` score a prediction's label is "unknown" (the bundle's calibrated default, or
        what load() was given; 0: never)."""
        return self._classifier.min_score

    @property
    def runtime(self) -> str:
        """What serves the backbone: tensorrt, onnxruntime or torch."""
        return self._classifier.embedder.runtime

    def __repr__(self) -> str:
        return (
            f"edgecl.Model({str(self.path)!r}: {len(self.classes)} classes, "
            f"{len(self.sessions)} sessions, {self.runtime})"
        )

    def classify(self, images: Images, top_k: int = 1) -> Prediction | list[Prediction]:
        """One image (an H x W x 3 uint8 RGB array, a PIL image, a path) -> its Prediction; a list of
        them (or an N x H x W x 3 array) -> a list, in order. Each prediction depends on its image alone.
        An image that cannot be read is an EdgeclError naming it."""
        if not isinstance(top_k, int) or top_k < 1:
            raise EdgeclError(f"{param('top_k')} {top_k!r}: must be a whole number of at least 1")
        single = not isinstance(images, (list, tuple)) and not (isinstance(images, np.ndarray) and images.ndim == 4)
        items = [images] if single else list(images)
        checked = [
            _checked(image, f"{param('images')}[{i}]" if not single else param("images"))
            for i, image in enumerate(items)
        ]
        results = list(self._classifier.iter_classify(checked, top_k=top_k))
        failed = next((r for r in results if isinstance(r, Skipped)), None)
        if failed is not None:
            raise EdgeclError(f"{param('images')}[{failed.index}]: cannot be read ({failed.reason})")
        return results[0] if single else results

    def learn(
        self, examples: Mapping[str, Sequence[ImageLike]], *, lock_timeout: float = 60.0, show_progress: bool = False
    ) -> LearnResult:
        """One new session: {class name: its images}; a known name adds the images to its class. Committed
        exactly as `edgecl learn` commits it (the bundle's lock, one atomic commit), after which this model
        predicts with it. The result's `lookalikes` names new classes the model already took for a known one."""
        if not isinstance(examples, Mapping) or not examples:
            raise EdgeclError(f"{param('examples')}: give {{class name: [images]}} with at least one class")
        classes = []
        for name, images in examples.items():
            where = f"{param('examples')}[{name!r}]"
            check_class_name(name if isinstance(name, str) else "", where)
            if isinstance(images, np.ndarray) and images.ndim == 4:  # N x H x W x 3, as classify takes
                images = list(images)
            if isinstance(images, (str, os.PathLike, np.ndarray, Image.Image)) or not len(images):
                raise EdgeclError(f"{where}: give a list of at least one image")
            classes.append(ClassImages(name, tuple(_checked(image, f"{where}[{i}]") for i, image in enumerate(images))))
        result = learn(
            self.path,
            classes,
            embedder=self._classifier.embedder,
            lock_timeout=lock_timeout,
            show_progress=show_progress,
        )
        self.reload()
        return result

    def forget(self, name: str, *, lock_timeout: float = 60.0) -> Correction:
        """Never predict class `name` again (as `edgecl forget`; `undo` takes it back)."""
        return self._corrected(corrections.forget(self.path, name, lock_timeout=lock_timeout))

    def rename(self, old: str, new: str, *, lock_timeout: float = 60.0) -> Correction:
        """Call class `old` `new` from now on (as `edgecl rename`)."""
        return self._corrected(corrections.rename(self.path, old, new, lock_timeout=lock_timeout))

    def undo(self, *, lock_timeout: float = 60.0) -> Correction:
        """Take back the bundle's last learn, adapt, forget or rename (as `edgecl undo`)."""
        return self._corrected(corrections.undo(self.path, lock_timeout=lock_timeout))

    def _corrected(self, correction: Correction) -> Correction:
        self.reload()
        return correction

    def reload(self) -> bool:
        """Load the bundle again if another process (or `learn`) changed it; True when it did."""
        version = _manifest_version(self.path)
        if version is None or version == self._version:  # None: `train --force` is swapping it in
            return False
        self._classifier = Classifier(self.path, self._runtime, reuse=self._classifier)
        self._version = version
        return True


def load(bundle: str | os.PathLike, runtime: str | None = None, min_score: float | None = None) -> Model:
    """Open a bundle for classifying and learning; `runtime` forces tensorrt, onnxruntime or torch;
    `min_score` (0..1) sets when a prediction says "unknown" (default: the bundle's calibration; 0: never)."""
    return Model(bundle, runtime, min_score)
