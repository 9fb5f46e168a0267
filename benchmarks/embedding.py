"""Backbone throughput on this machine: PyTorch eager vs onnxruntime (CPU), batch 1 and 8."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from benchmarks.timing import median_seconds
from edgecl.backbones import create_backbone, preprocess_config
from edgecl.export import export_onnx, parity
from edgecl.runtime.onnx import INPUT_NAME, ort_session


def run(out: Path) -> dict:
    model, spec = create_backbone()
    size = preprocess_config(model).input_size
    onnx_path = export_onnx(model, size, out / f"{spec.name}.onnx")
    session = ort_session(onnx_path, ["CPUExecutionProvider"])
    images = np.random.default_rng(0).standard_normal((8, *size)).astype(np.float32)
    results = {"backbone": spec.name, "threads": torch.get_num_threads(), "max_abs_diff": parity(model, onnx_path, images)}
    for batch in (1, 8):
        x = images[:batch]
        with torch.no_grad():
            eager = median_seconds(lambda: model(torch.from_numpy(x))) / batch
        ort = median_seconds(lambda: session.run(None, {INPUT_NAME: x})) / batch
        results[f"batch{batch}"] = {"torch_ms_per_image": eager * 1e3, "onnxruntime_ms_per_image": ort * 1e3, "onnxruntime_speedup": eager / ort}
        print(f"batch {batch}: torch {eager * 1e3:.1f} ms/image, onnxruntime {ort * 1e3:.1f} ms/image, speed-up {eager / ort:.2f}x")
    print(f"max |torch - onnxruntime| = {results['max_abs_diff']:.2e}")
    return results
