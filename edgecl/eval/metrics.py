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

    def to_dict(self) -> dict:
        return asdict(self)


def forgetting(matrix: list[list[float]]) -> float:
    """Mean over earlier sessions j of (best accuracy on j before the last session - final accuracy on j)."""
    last = len(matrix) - 1
    if last < 1:
        return 0.0
    drops = [max(matrix[t][j] for t in range(j, last)) - matrix[last][j] for j in range(last)]
    return float(np.mean(drops))


def summarize(method: str, per_session: list[float], matrix: list[list[float]], seconds: dict[str, float] | None = None) -> IncrementalResult:
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
