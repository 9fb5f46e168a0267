"""The device's services: learn new classes into a bundle, classify images with it.

Both work on embeddings from whichever runtime serves the backbone; only the heads train, on
cached embeddings, so a session costs one backbone pass per image plus milliseconds of SGD.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from edgecl.core import bundle as bundles
from edgecl.core import heads_journal
from edgecl.core.bundle import Bundle, SessionEntry
from edgecl.core.embedding import iter_embedded
from edgecl.core.images import UNKNOWN, ClassImages, ImageLike, scan_new_classes
from edgecl.core.methods import METHODS
from edgecl.core.methods.interface import restrict
from edgecl.core.preprocess import PreprocessConfig
from edgecl.core.progress import progress_bar
from edgecl.core.session import (
    LabeledEmbeddings,
    embed_classes,
    load_method,
    record_session,
    run_session,
    stored_config,
    write_heads,
)
from edgecl.errors import EdgeclError, param
from edgecl.runtime.embedders import Embedder, open_embedder
from edgecl.runtime.heads import Heads, open_heads

log = logging.getLogger(__name__)

# a new class whose images' mean is this close to a known class's, relative to other images of that class
# (layers.resemblance), is most likely that class again: the same class taught again read 0.97 to 1.03 on Lite0
# and 0.74 to 1.34 on the ViT, other classes at most 0.94 and 0.44, but for Fashion-MNIST's Shirt as Coat (0.98;
# docs/methods.md, section 10)
LOOKALIKE = 0.96
LOOKALIKE_MIN_IMAGES = 3  # fewer say little of their mean


@dataclass
class LearnResult:
    session: SessionEntry
    skipped: list[str]
    runtime: str
    seconds_backbone: float
    seconds_heads: float
    # new classes that looked like a class the bundle knew, taught again: {new: (known class, closeness)}
    lookalikes: dict[str, tuple[str, float]] = field(default_factory=dict)


def learn(
    bundle_path: Path,
    images: Path | Sequence[ClassImages],
    *,
    label: str | None = None,
    runtime: str | None = None,
    embedder: Embedder | None = None,
    lock_timeout: float = 60.0,
    show_progress: bool = True,
) -> LearnResult:
    """One session: the classes in `images` (a folder: one class's images, or class folders; or the
    classes' images given) become new classes of the bundle, or nothing changes. `label` names a
    folder's one class; `embedder` reuses a backbone already open."""
    bundle = Bundle.open(bundle_path)
    classes = scan_new_classes(images, label) if isinstance(images, (str, os.PathLike)) else list(images)
    if not classes:
        raise EdgeclError("a session needs at least one class with images")
    check_session_classes(bundle, classes)  # before the backbone runs
    own = embedder is None
    embedder = embedder or open_embedder(bundle, runtime)
    if embedder.backbone_sha256 != bundle.manifest.backbone["sha256"]:
        raise EdgeclError(f"{bundle_path}: its backbone changed since it was loaded; reload it and learn again")
    start = time.perf_counter()
    data = embed_classes(
        classes,
        embedder,
        PreprocessConfig.from_dict(bundle.manifest.preprocess),
        batch_size=embedder.batch_size,
        show_progress=show_progress,
    )
    seconds_backbone = time.perf_counter() - start
    used = embedder.runtime
    if own:
        del embedder  # its onnxruntime threads would compete with the heads' training for the same cores
    with bundles.update(bundle_path, lock_timeout) as change:
        if change.manifest.backbone != bundle.manifest.backbone:
            raise EdgeclError(f"{bundle_path}: its backbone changed while embedding; run learn again")
        method = load_method(change.bundle, learning=True)
        before = heads_journal.start(method)
        index = len(change.manifest.sessions)
        resembling = lookalikes(method, data, [c.name for c in classes], change.manifest)
        for name, (known, closeness) in resembling.items():
            log.warning(
                "%r looks like the known class %r taught again (closeness %.2f; another sample of it reads about "
                "1); if its images show the same thing, undo this session and add them to %r instead",
                name,
                known,
                closeness,
                known,
            )
        session = run_session(
            method,
            data,
            [c.name for c in classes],
            change.manifest.seed,
            index,
            known_classes=active_positions(change.manifest),
            show_progress=show_progress,
        )
        change.manifest.remember(f"learn of session {index} ({describe_session(session)})")  # for `undo`
        record_session(change.manifest, method, write_heads(change, method, before), session)
    return LearnResult(session, data.skipped, used, seconds_backbone, session.stats["seconds"], resembling)


def lookalikes(method, data: LabeledEmbeddings, names: list[str], manifest) -> dict[str, tuple[str, float]]:
    """The session's new classes (of LOOKALIKE_MIN_IMAGES images or more) that look like a class the bundle
    knows taught again, as the method sees them before it learns them: {new: (known class, closeness)}."""
    positions = active_positions(manifest)
    active = torch.tensor([name is not None for name in positions])
    found = {}
    for i, name in enumerate(names):
        rows = data.targets == i
        if name in positions or int(rows.sum()) < LOOKALIKE_MIN_IMAGES:
            continue
        nearest = method.resemblance(data.features[rows], active)
        # where another known class already reads as that class taught again, the reading tells nothing
        if nearest is not None and nearest.closeness >= LOOKALIKE > nearest.rival:
            found[name] = (positions[nearest.known], nearest.closeness)
    return found


def describe_session(session: SessionEntry) -> str:
    parts = [", ".join(session.classes), ", ".join(f"+{c}" for c in session.added_to)]
    return ", ".join(p for p in parts if p)


def active_positions(manifest) -> list[str | None]:
    """The manifest's classes in the heads' order, a forgotten one as None: a new class may take its name."""
    return [None if c.forgotten else c.name for c in manifest.classes]


def check_session_classes(bundle: Bundle, classes: Sequence[ClassImages]) -> None:
    """A class the bundle knows gets more images, if its method can add to a class; the new ones must be a
    session the method can learn."""
    known = set(bundle.manifest.active_class_names)
    added = [c.name for c in classes if c.name in known]
    if added and not METHODS[bundle.manifest.method["name"]].adds_to_classes:
        raise EdgeclError(
            f"class {added[0]!r} exists already, and this bundle's method ({bundle.manifest.method['name']}) cannot "
            f"add images to a class; give the new class another name ({param('label')})"
        )
    stored_config(bundle).check_session(len(classes) - len(added))


@dataclass
class Prediction:
    """What the model says of one image. `score` is the top class's probability among the classes the
    bundle knows (it is high even for an image of none of them); `known` says how much the image looks
    like that class at all, and under the threshold (min_score) the label is "unknown"."""

    path: str | None  # the image's file, None for an image handed over in memory
    label: str  # the class, or "unknown" when `known` is under the threshold
    score: float  # the top class's probability
    top_k: list[dict[str, float | str]]  # [{"label", "score"}], best first, whatever `known` is
    known: float = 1.0  # 0..1: how much the image looks like the class it is most like (edgecl.Model: min_score)


def check_min_score(min_score: float | None) -> float | None:
    if min_score is not None and not (isinstance(min_score, (int, float)) and 0 <= min_score <= 1):
        given = f"{min_score:g}" if isinstance(min_score, float) else repr(min_score)
        raise EdgeclError(f"{param('min_score')} {given}: must be a number from 0 to 1 (0: never unknown)")
    return min_score


@dataclass
class Skipped:
    index: int  # in the images given
    reason: str  # "path: why"


class Classifier:
    """A bundle loaded once for classifying many images."""

    def __init__(
        self,
        bundle_path: Path,
        runtime: str | None = None,
        heads: str | None = None,
        *,
        reuse: Classifier | None = None,
        min_score: float | None = None,
    ) -> None:
        """`reuse`: a Classifier of an earlier version of this bundle whose backbone runtime serves this
        one too (same backbone and export): its engine is kept instead of opened again. `min_score`: under
        it an image is "unknown" (None: the threshold the bundle calibrated, 0: never)."""
        if min_score is None and reuse is not None:  # a reload keeps the threshold its caller asked for
            min_score = reuse.requested_min_score
        self.requested_min_score = check_min_score(min_score)
        self.bundle, self.method = bundles.open_consistent(bundle_path, load_method)
        self.min_score = bundles.min_score_of(self.bundle.manifest.sessions) if min_score is None else float(min_score)
        self.classes = self.bundle.manifest.class_names
        entries = self.bundle.manifest.classes
        self.active = (
            None if not any(c.forgotten for c in entries) else torch.tensor([not c.forgotten for c in entries])
        )
        self.preprocess = PreprocessConfig.from_dict(self.bundle.manifest.preprocess)
        m = self.bundle.manifest
        if (
            reuse is not None
            and (reuse.bundle.manifest.backbone, reuse.bundle.manifest.export, reuse.bundle.manifest.engines)
            == (m.backbone, m.export, m.engines)
            and reuse.requested == (runtime, heads)
        ):
            self.embedder = reuse.embedder
        else:
            self.embedder = open_embedder(self.bundle, runtime)
        self.requested = (runtime, heads)
        self.embedder.claim_threads()
        self.heads: Heads = open_heads(self.bundle, self.method, self.embedder.runtime, heads)

    def predict_features(self, features: torch.Tensor) -> torch.Tensor:
        return restrict(self.heads.predict(features), self.active)  # a forgotten class: never predicted

    def predict_arrays(self, images: np.ndarray) -> torch.Tensor:
        """Preprocessed float32 (N, 3, H, W) -> class probabilities (N, classes)."""
        return self.predict_features(self.embedder(images))

    def iter_classify(self, images: Sequence[ImageLike], *, top_k: int = 1) -> Iterator[Prediction | Skipped]:
        """Each image's prediction (or why it was skipped), in order, one batch at a time: memory stays
        constant in the number of images."""
        k = min(max(top_k, 1), len(self.classes) if self.active is None else int(self.active.sum()))
        for chunk in iter_embedded(images, self.embedder, self.preprocess, batch_size=self.embedder.batch_size):
            results: dict[int, Prediction | Skipped] = {i: Skipped(i, reason) for i, reason in chunk.skipped}
            if chunk.features is not None:
                scores, indices = self.predict_features(chunk.features).topk(k, dim=1)
                known = self.method.known_scores(chunk.features, self.active).tolist()
                for index, row_scores, row_indices, sure in zip(chunk.kept, scores.tolist(), indices.tolist(), known):
                    top = [{"label": self.classes[i], "score": float(s)} for s, i in zip(row_scores, row_indices)]
                    source = images[index]
                    path = str(source) if isinstance(source, (str, os.PathLike)) else None
                    label = UNKNOWN if sure < self.min_score else top[0]["label"]
                    results[index] = Prediction(path, label, top[0]["score"], top, float(sure))
            yield from (results[i] for i in sorted(results))

    def classify(
        self, images: Sequence[ImageLike], *, top_k: int = 1, show_progress: bool = True
    ) -> tuple[list[Prediction], list[str]]:
        predictions, skipped = [], []
        with progress_bar("classifying", len(images), enabled=show_progress, unit="images") as advance:
            for item in self.iter_classify(images, top_k=top_k):
                if isinstance(item, Prediction):
                    predictions.append(item)
                else:
                    skipped.append(item.reason)
                advance(1)
        return predictions, skipped
