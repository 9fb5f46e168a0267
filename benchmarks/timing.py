"""Timing helpers shared by the benchmarks. Variants that are compared run interleaved, round by
round, so that a machine whose speed drifts (shared cores, frequency scaling) biases none of them."""

from __future__ import annotations

import statistics
import subprocess
import sys
import time
from collections.abc import Callable


def median_seconds(fn: Callable[[], object], repeats: int = 7, warmup: int = 2) -> float:
    return compare({"only": fn}, repeats, warmup)["only"]


def compare(variants: dict[str, Callable[[], object]], repeats: int = 15, warmup: int = 2) -> dict[str, float]:
    """Median seconds per call of each variant, measured in interleaved rounds."""
    for fn in variants.values():
        for _ in range(warmup):
            fn()
    samples: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(repeats):
        for name, fn in variants.items():
            start = time.perf_counter()
            fn()
            samples[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in samples.items()}


def edgecl(*args: str) -> None:
    """The command line in a fresh process, quietly; a failure raises with the end of its stderr."""
    done = subprocess.run([sys.executable, "-m", "edgecl", *args], capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"edgecl {' '.join(args[:2])} failed (exit {done.returncode}): {done.stderr[-2000:]}")
