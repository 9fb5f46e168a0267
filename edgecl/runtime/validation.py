"""`edgecl val`: a bundle checked on labelled images, DIR/<class>/<images>: accuracy overall and per
class, what it confuses, and how often it says "unknown", for its own classes and for classes it was
never taught (folders whose name it does not know)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from edgecl.core.bundle import Bundle
from edgecl.core.images import UNKNOWN, paths_and_labels, scan_class_folders
from edgecl.core.progress import progress_bar
from edgecl.errors import EdgeclError, name_list, param
from edgecl.runtime.service import Classifier, Prediction


@dataclass
class ClassResult:
    images: int
    correct: int  # known classes: labelled right; classes the bundle does not know: labelled "unknown"
    unknown: int  # labelled "unknown"

    @property
    def rate(self) -> float:
        return self.correct / self.images if self.images else float("nan")


@dataclass
class ValidationReport:
    bundle_classes: list[str]
    min_score: float
    per_class: dict[str, ClassResult]  # by folder name, in folder order
    known: list[str]  # folder classes the bundle predicts
    unseen: list[str]  # folder classes it does not know
    labels: list[str]  # the confusion matrix's columns: the bundle's classes, then "unknown"
    confusion: list[list[int]]  # rows: the folder classes (per_class order); columns: labels
    skipped: list[str] = field(default_factory=list)

    @property
    def accuracy(self) -> float:
        """Over the known classes' images; an "unknown" answer counts as wrong."""
        results = [self.per_class[c] for c in self.known]
        total = sum(r.images for r in results)
        return sum(r.correct for r in results) / total if total else float("nan")

    @property
    def unknown_rate(self) -> float | None:
        """Of the images of classes the bundle does not know: the share it called "unknown"."""
        results = [self.per_class[c] for c in self.unseen]
        total = sum(r.images for r in results)
        return sum(r.unknown for r in results) / total if total else None

    def most_confused(self, n: int = 5) -> list[tuple[str, str, int]]:
        """(true class, predicted label, images) of the largest off-diagonal counts of the known classes."""
        rows = list(self.per_class)
        pairs = [
            (rows[i], self.labels[j], count)
            for i, row in enumerate(self.confusion)
            for j, count in enumerate(row)
            if count and rows[i] in self.known and self.labels[j] != rows[i]
        ]
        return sorted(pairs, key=lambda p: -p[2])[:n]

    def to_dict(self) -> dict:
        return {
            "bundle_classes": self.bundle_classes,
            "min_score": self.min_score,
            "accuracy": self.accuracy,
            "unknown_rate_of_unseen_classes": self.unknown_rate,
            "per_class": {name: {**asdict(r), "rate": r.rate} for name, r in self.per_class.items()},
            "known": self.known,
            "unseen": self.unseen,
            "confusion": {"rows": list(self.per_class), "columns": self.labels, "counts": self.confusion},
            "most_confused": [{"true": t, "predicted": p, "images": n} for t, p, n in self.most_confused(20)],
            "skipped": self.skipped,
        }


def validate(
    bundle_path: Path,
    folder: Path,
    *,
    runtime: str | None = None,
    min_score: float | None = None,
    show_progress: bool = True,
) -> ValidationReport:
    Bundle.open(bundle_path)  # a bad bundle is named before the images are searched
    classes = scan_class_folders(folder)
    classifier = Classifier(bundle_path, runtime, min_score=min_score)
    predicted = classifier.bundle.manifest.active_class_names
    known = [c.name for c in classes if c.name in predicted]
    if not known:
        raise EdgeclError(
            f"{param('folder')} {folder}: none of its class folders ({name_list([c.name for c in classes], 5)}) "
            f"is a class of the bundle ({name_list(predicted, 5)}); name the folders after the bundle's classes"
        )
    images, targets = paths_and_labels(classes)
    labels = [*predicted, UNKNOWN]
    column = {name: j for j, name in enumerate(labels)}
    confusion = np.zeros((len(classes), len(labels)), dtype=np.int64)
    skipped = []
    with progress_bar("checking", len(images), enabled=show_progress, unit="images") as advance:
        for index, item in enumerate(classifier.iter_classify(images)):
            if isinstance(item, Prediction):
                confusion[targets[index], column[item.label]] += 1
            else:
                skipped.append(item.reason)
            advance(1)
    per_class = {}
    for i, group in enumerate(classes):
        row, unknown = confusion[i], int(confusion[i, column[UNKNOWN]])
        right = int(row[column[group.name]]) if group.name in column and group.name != UNKNOWN else unknown
        per_class[group.name] = ClassResult(int(row.sum()), right, unknown)
    unseen = [c.name for c in classes if c.name not in predicted]
    return ValidationReport(
        predicted, classifier.min_score, per_class, known, unseen, labels, confusion.tolist(), skipped
    )
