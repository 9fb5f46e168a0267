"""One timing in a fresh process: python -m benchmarks.worker VARIANT BUNDLE IMAGES.npy BATCH.

Variants: torch-backbone and onnx-backbone (the bare backbone), onnxruntime and torch (the full
classify path: backbone + heads, as `edgecl classify` runs it). A process of its own per variant
keeps thread pools of different runtimes from disturbing each other's timings."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import torch

from benchmarks.timing import median_seconds


def make(variant: str, bundle: Path):
    if variant == "torch-backbone":
        from edgecl.backbones import rebuild
        from edgecl.bundle import Bundle

        b = Bundle.open(bundle)
        model = rebuild(b.manifest.backbone, b.backbone_weights())

        def run(x):
            with torch.no_grad():
                return model(torch.from_numpy(x))

        return run
    if variant == "onnx-backbone":
        from edgecl.runtime.onnx import INPUT_NAME, ort_session

        session = ort_session(bundle / "backbone.onnx", ["CPUExecutionProvider"])
        return lambda x: session.run(None, {INPUT_NAME: x})
    from edgecl.runtime.service import Classifier

    return Classifier(bundle, variant).predict_arrays


def main() -> None:
    variant, bundle, images, batch = sys.argv[1], Path(sys.argv[2]), np.load(sys.argv[3]), int(sys.argv[4])
    run = make(variant, bundle)
    if batch == 1:
        seconds = median_seconds(lambda: [run(images[i : i + 1]) for i in range(len(images))], repeats=7) / len(images)
    else:
        seconds = median_seconds(lambda: run(images[:batch]), repeats=5) / batch
    print(json.dumps({"ms_per_image": seconds * 1e3}))


if __name__ == "__main__":
    main()
