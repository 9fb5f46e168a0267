"""Class-incremental metrics: accuracy after each session, A_last, A_avg, forgetting."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np


@dataclass
class IncrementalResult:
    method: str
    accuracy_per_session: list[float]  # on all classes seen so far, after each session
    accuracy_matrix: list[list[float]]  # [t][j]: on session j's classes after session t (j <= t)
    A_last: float
    A_avg: float
    forgetting: float
    seconds: dict[str, float] = field(default_factory=dict)
    # known vs not yet learned classes after each session (None after the last: nothing unseen is left)
    unknown_auroc: list[float | None] = field(default_factory=list)
    unknown_fpr95: list[float | None] = field(default_factory=list)
    unknown_auroc_top_probability: list[float | None] = field(default_factory=list)  # the same with the top probability

    def to_dict(self) -> dict:
        return asdict(self)


def forgetting(matrix: list[list[float]]) -> float:
    """Mean over earlier sessions j of (best accuracy on j before the last session - final accuracy on j)."""
    last = len(matrix) - 1
    if last < 1:
        return 0.0
    drops = [max(matrix[t][j] for t in range(j, last)) - matrix[last][j] for j in range(last)]
    return float(np.mean(drops))


def summarize(
    method: str, per_session: list[float], matrix: list[list[float]], seconds: dict[str, float] | None = None
) -> IncrementalResult:
    return IncrementalResult(
        method=method,
        accuracy_per_session=per_session,
        accuracy_matrix=matrix,
        A_last=per_session[-1],
        A_avg=float(np.mean(per_session)),
        forgetting=forgetting(matrix),
        seconds=seconds or {},
    )


def accuracy(predicted: np.ndarray, labels: np.ndarray) -> float:
    return float((predicted == labels).mean()) if len(labels) else float("nan")


def auroc(known: np.ndarray, unknown: np.ndarray) -> float:
    """The probability that a known sample scores above an unknown one (ties count a half): AUROC."""
    scores = np.concatenate([known, unknown])
    order = np.argsort(scores, kind="mergesort")
    ranks = np.empty(len(scores))
    ranks[order] = np.arange(1, len(scores) + 1)
    for value in np.unique(scores[order][np.r_[False, np.diff(scores[order]) == 0]]):  # ties: their mean rank
        tied = scores == value
        ranks[tied] = ranks[tied].mean()
    return float((ranks[: len(known)].sum() - len(known) * (len(known) + 1) / 2) / (len(known) * len(unknown)))


def fpr_at_tpr(known: np.ndarray, unknown: np.ndarray, tpr: float = 0.95) -> float:
    """The fraction of unknown samples still taken as known at the threshold that keeps `tpr` of the known."""
    return float((unknown >= np.quantile(known, 1 - tpr)).mean())
