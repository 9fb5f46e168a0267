"""The analytic classifier on the device: what adding one class of 50 embeddings costs (the solve
with the first session's lambda, edgecl's default, and with lambda picked again by cross-validation
on the class's images, as RanPAC picks it every session; no gradient steps) and what its statistics weigh in the
bundle, for several projection sizes M (and what the first session, 1,000 embeddings with its
ridge pick, costs on the host), on 1280-d embeddings (EfficientNet-Lite0) of 10 known
classes. The embeddings are Gaussian clusters: the cost depends on the shapes, not the values."""

from __future__ import annotations

import time

import torch
from safetensors.torch import save

from edgecl.core.analytic import AnalyticClassifier

DIM, KNOWN, NEW = 1280, 10, 50


def _features(classes, per_class, offset, seed):
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(offset + classes, DIM, generator=torch.Generator().manual_seed(0)).abs()
    y = torch.arange(offset, offset + classes).repeat_interleave(per_class)
    return (centres[y] + 0.5 * torch.randn(len(y), DIM, generator=g)).relu(), y


def run(out) -> dict:
    results = {}
    for size in (1024, 2048, 4096):
        head = AnalyticClassifier(DIM, size, seed=0)
        x, y = _features(KNOWN, 100, 0, seed=1)
        start = time.perf_counter()
        head.add(x, y, KNOWN)
        first_seconds = time.perf_counter() - start
        new_x, new_y = _features(1, NEW, KNOWN, seed=2)
        repicking = AnalyticClassifier(DIM, size, seed=0, repick=True)  # keeps G, not the factor
        repicking.add(x, y, KNOWN)
        start = time.perf_counter()
        repicking.add(new_x, new_y, KNOWN + 1)
        repick_seconds = time.perf_counter() - start
        start = time.perf_counter()
        head.add(new_x, new_y, KNOWN + 1)
        add_seconds = time.perf_counter() - start
        factor = head.factor  # unpacked outside the timing: the two triangular solves alone
        start = time.perf_counter()
        head.solve(factor)
        solve_seconds = time.perf_counter() - start
        stored = len(save({k: v.contiguous() for k, v in head.state_dict().items()}))
        results[size] = {
            "first_session_s": round(first_seconds, 3),
            "add_one_class_s": round(add_seconds, 3),
            "add_one_class_repick_s": round(repick_seconds, 3),
            "solve_s": round(solve_seconds, 3),
            "stored_mb": round(stored / 1e6, 2),
        }
        print(
            f"M={size}: first session ({KNOWN} x 100, with the ridge pick) {first_seconds:.2f} s, "
            f"add one class of {NEW} {add_seconds:.2f} s (with a ridge pick, as RanPAC: {repick_seconds:.2f} s), "
            f"solve alone {solve_seconds:.2f} s, "
            f"stored {stored / 1e6:.1f} MB per classifier (SAFE/edgecl keep two)"
        )
    return results
