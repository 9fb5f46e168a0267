"""One timing in a fresh process: python -m benchmarks.worker VARIANT BUNDLE IMAGES.npy BATCH.

Variants: the bare backbone (TORCH_BACKBONES, ORT_BACKBONES) in PyTorch eager or onnxruntime
on the CPU, and, where a CUDA GPU is present, PyTorch eager in float32 and float16 autocast,
torch.compile, and onnxruntime's CUDA provider; the full classify path (backbone + heads, as
`edgecl classify` runs it; variant = runtime name) through onnxruntime (heads through heads.onnx)
or PyTorch (which uses the GPU when there is one), and through onnxruntime with the heads in
PyTorch.
A process of its own per variant keeps thread pools of different runtimes from disturbing each
other's timings."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import torch

from benchmarks.timing import median_seconds

# name -> (device, mode) for the bare PyTorch backbone
TORCH_BACKBONES = {
    "torch-backbone": ("cpu", "eager"),
    "torch-cuda-backbone": ("cuda", "eager"),
    "torch-cuda-fp16-backbone": ("cuda", "fp16"),
    "torch-cuda-compile-backbone": ("cuda", "compile"),
}
ORT_BACKBONES = {"onnx-backbone": "CPUExecutionProvider", "onnx-cuda-backbone": "CUDAExecutionProvider"}
TORCH_HEADS = {"onnxruntime-torch-heads": "onnxruntime"}  # classify path with the heads in PyTorch


def _torch_backbone(bundle: Path, device: str, mode: str):
    from edgecl.core.bundle import Bundle
    from edgecl.host.backbones import rebuild

    b = Bundle.open(bundle)
    model = rebuild(b.manifest.backbone, b.backbone_weights()).to(device).eval()
    if mode == "compile":
        model = torch.compile(model)
    autocast = torch.autocast(torch.device(device).type, dtype=torch.float16, enabled=mode == "fp16")

    def run(x):
        with torch.no_grad(), autocast:
            return model(torch.from_numpy(x).to(device)).float().cpu()  # .cpu() waits for the GPU

    return run


def _ort_backbone(bundle: Path, provider: str):
    from edgecl.core.bundle import Bundle
    from edgecl.runtime.ort import INPUT_NAME, ort_session

    session = ort_session(bundle / Bundle.open(bundle).manifest.export["file"], [provider])
    if session.get_providers()[0] != provider:
        raise SystemExit(f"{provider} did not start (got {session.get_providers()})")
    return lambda x: session.run(None, {INPUT_NAME: x})


def make(variant: str, bundle: Path):
    if variant in TORCH_BACKBONES:
        return _torch_backbone(bundle, *TORCH_BACKBONES[variant])
    if variant in ORT_BACKBONES:
        return _ort_backbone(bundle, ORT_BACKBONES[variant])
    from edgecl.runtime.service import Classifier

    if variant in TORCH_HEADS:
        return Classifier(bundle, TORCH_HEADS[variant], heads="torch").predict_arrays
    return Classifier(bundle, variant, heads="onnxruntime" if variant != "torch" else None).predict_arrays


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
