"""The device's services: learn new classes into a bundle, classify images with it.

Both work on embeddings from whichever runtime serves the backbone; only the heads train, on
cached embeddings, so a session costs one backbone pass per image plus milliseconds of SGD.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from edgecl import __version__
from edgecl.core import bundle as bundles
from edgecl.core.bundle import Bundle, ClassEntry, Manifest, SessionEntry
from edgecl.core.embedding import CPU_BATCH_SIZE, EmbedBatch, embed_paths
from edgecl.errors import EdgeclError
from edgecl.core.images import ClassFolder, find_images, paths_and_labels, scan_new_classes
from edgecl.core.methods import METHODS, ContinualMethod, MethodConfig, method_config, restore_method
from edgecl.core.preprocess import PreprocessConfig
from edgecl.runtime.embedders import Embedder, open_embedder
from edgecl.runtime.heads import Heads, open_heads

@dataclass
class LabeledEmbeddings:
    features: torch.Tensor
    targets: torch.Tensor  # 0.. within the session, one per class folder
    skipped: list[str] = field(default_factory=list)


def session_generator(seed: int, session: int) -> torch.Generator:
    """Every random choice of session `session` of a bundle seeded `seed` comes from this."""
    state = np.random.SeedSequence([seed, session]).generate_state(1)[0]
    return torch.Generator().manual_seed(int(state))


def embed_classes(
    classes: Sequence[ClassFolder], embed: EmbedBatch, preprocess: PreprocessConfig, *, batch_size: int = CPU_BATCH_SIZE, show_progress: bool = True
) -> LabeledEmbeddings:
    paths, indices = paths_and_labels(classes)
    labels = torch.tensor(indices)
    result = embed_paths(paths, embed, preprocess, batch_size=batch_size, show_progress=show_progress)
    targets = labels[result.kept]
    for i, folder in enumerate(classes):
        if not bool((targets == i).any()):
            raise EdgeclError(f"class {folder.name}: none of its {len(folder.images)} images could be read")
    return LabeledEmbeddings(result.features, targets, result.skipped)


def stored_config(bundle: Bundle) -> MethodConfig:
    """The config of the bundle's method; a method this edgecl does not know is named as such."""
    m = bundle.manifest
    if m.method["name"] not in METHODS:
        raise EdgeclError(f"{bundle.path / bundles.MANIFEST}: method {m.method['name']!r} is not one edgecl {__version__} knows "
                          f"({', '.join(sorted(METHODS))}); a newer edgecl wrote it, or the manifest is damaged")
    return method_config(m.method["name"], m.method["config"])


def load_method(bundle: Bundle) -> ContinualMethod:
    m = bundle.manifest
    stored_config(bundle)  # names a method this edgecl does not know, before its heads are read
    method = restore_method(m.method["name"], m.backbone["embedding_dim"], m.method["config"], m.heads["structure"], bundle.heads())
    if method.num_classes != len(m.classes):  # a hand-edited class list would shift or drop labels
        raise EdgeclError(f"{bundle.path / bundles.MANIFEST}: lists {len(m.classes)} classes but the heads have {method.num_classes}; "
                          "the bundle is damaged")
    return method


def run_session(
    method: ContinualMethod, data: LabeledEmbeddings, names: Sequence[str], seed: int, index: int, *, show_progress: bool = True
) -> SessionEntry:
    empty = [name for i, name in enumerate(names) if not bool((data.targets == i).any())]
    if empty:  # eval's splits reach here unchecked: a class whose every training image was unreadable
        raise EdgeclError(f"class {empty[0]!r}: no readable training image, so the session cannot learn it")
    method.config.check_session(len(names))
    start = time.perf_counter()
    stats = method.learn(data.features, data.targets + method.num_classes, session_generator(seed, index), show_progress=show_progress)
    stats["seconds"] = round(time.perf_counter() - start, 3)
    return SessionEntry(index, list(names), len(data.targets), len(data.skipped), seed, bundles.now(), stats)


def record_session(manifest: Manifest, method: ContinualMethod, heads: dict[str, str], session: SessionEntry) -> None:
    manifest.heads = {**heads, "structure": method.structure()}
    manifest.classes.extend(ClassEntry(name, session.index) for name in session.classes)
    manifest.sessions.append(session)


def check_new_names(classes: Sequence[ClassFolder], manifest: Manifest, label: str | None = None) -> None:
    known = {c.name: c.session for c in manifest.classes}
    for folder in classes:
        if folder.name in known:
            fix = ("choose another --label" if label is not None else
                   "use --label to give the new class another name" if len(classes) == 1 else "rename its folder")
            raise EdgeclError(f"class {folder.name!r} already exists (learned in session {known[folder.name]}); {fix}")


@dataclass
class LearnResult:
    session: SessionEntry
    skipped: list[str]
    runtime: str
    seconds_backbone: float
    seconds_heads: float


def learn(
    bundle_path: Path,
    folder: Path,
    *,
    label: str | None = None,
    runtime: str | None = None,
    lock_timeout: float = 60.0,
    show_progress: bool = True,
) -> LearnResult:
    """One session: the classes in `folder` become new classes of the bundle, or nothing changes."""
    bundle = Bundle.open(bundle_path)
    classes = scan_new_classes(folder, label)
    check_new_names(classes, bundle.manifest, label)
    stored_config(bundle).check_session(len(classes))  # before the backbone runs
    embedder = open_embedder(bundle, runtime)
    start = time.perf_counter()
    data = embed_classes(
        classes, embedder, PreprocessConfig.from_dict(bundle.manifest.preprocess), batch_size=embedder.batch_size, show_progress=show_progress
    )
    seconds_backbone = time.perf_counter() - start
    used = embedder.runtime
    del embedder  # an idle onnxruntime thread pool slows the heads' training down (benchmarks/learn_cost.py)
    with bundles.update(bundle_path, lock_timeout) as change:
        if change.manifest.backbone != bundle.manifest.backbone:
            raise EdgeclError(f"{bundle_path}: its backbone changed while embedding; run learn again")
        check_new_names(classes, change.manifest, label)
        method = load_method(change.bundle)
        index = len(change.manifest.sessions)
        session = run_session(method, data, [c.name for c in classes], change.manifest.seed, index, show_progress=show_progress)
        record_session(change.manifest, method, change.write_tensors(bundles.HEADS_STEM, method.state_dict()), session)
    return LearnResult(session, data.skipped, used, seconds_backbone, session.stats["seconds"])


@dataclass
class Prediction:
    path: str
    label: str
    score: float
    top_k: list[dict[str, float | str]]


class Classifier:
    """A bundle loaded once for classifying many images."""

    def __init__(self, bundle_path: Path, runtime: str | None = None, heads: str | None = None) -> None:
        self.bundle, self.method = bundles.open_consistent(bundle_path, load_method)
        self.classes = self.bundle.manifest.class_names
        self.preprocess = PreprocessConfig.from_dict(self.bundle.manifest.preprocess)
        self.embedder: Embedder = open_embedder(self.bundle, runtime)
        self.embedder.claim_threads()
        self.heads: Heads = open_heads(self.bundle, self.method, self.embedder.runtime, heads)

    def predict_features(self, features: torch.Tensor) -> torch.Tensor:
        return self.heads.predict(features)

    def predict_arrays(self, images: np.ndarray) -> torch.Tensor:
        """Preprocessed float32 (N, 3, H, W) -> class probabilities (N, classes)."""
        return self.heads.predict(self.embedder(images))

    def classify(self, paths: Sequence[Path], *, top_k: int = 1, show_progress: bool = True) -> tuple[list[Prediction], list[str]]:
        result = embed_paths(
            paths, self.embedder, self.preprocess, batch_size=self.embedder.batch_size, description="classifying", show_progress=show_progress
        )
        if not result.kept:  # nothing readable: no embedding width to give the heads
            return [], result.skipped
        probs = self.predict_features(result.features)
        scores, indices = probs.topk(min(max(top_k, 1), len(self.classes)), dim=1)
        predictions = []
        for row, path_index in enumerate(result.kept):
            ranked = [{"label": self.classes[i], "score": float(s)} for s, i in zip(scores[row].tolist(), indices[row].tolist())]
            predictions.append(Prediction(str(paths[path_index]), ranked[0]["label"], ranked[0]["score"], ranked))
        return predictions, result.skipped


def classify(bundle_path: Path, targets: Sequence[Path], *, top_k: int = 1, runtime: str | None = None, show_progress: bool = True) -> tuple[list[Prediction], list[str]]:
    Bundle.open(bundle_path)  # a bad --bundle is reported before the images are searched
    paths = find_images(targets)
    return Classifier(bundle_path, runtime).classify(paths, top_k=top_k, show_progress=show_progress)
