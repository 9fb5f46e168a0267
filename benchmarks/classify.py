"""Classify cost on this machine's CPU, per image: the bare backbone in PyTorch eager and in
onnxruntime, and the full classify path (backbone + heads) through each (through onnxruntime both
with the heads in heads.onnx and with them in PyTorch), at batch 1 (latency) and batch 32
(throughput), for bundles of 3 and 9 sessions (the heads grow with sessions), and of 3
sessions with RanPAC's dense Gaussian projection instead of the Hadamard one. Each variant
runs in a fresh process; processes are interleaved over rounds and the median is kept. Inputs are
preprocessed Fashion-MNIST test images; decoding and preprocessing a file are timed on their own.
Where a CUDA GPU is present, the bare backbone also runs through PyTorch on it (eager float32,
float16 autocast, torch.compile) and through onnxruntime's CUDA provider when the installed build
has one; the PyTorch classify path then uses the GPU too."""

from __future__ import annotations

import json
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch

from benchmarks.timing import median_seconds
from edgecl.core.bundle import Bundle
from edgecl.core.images import load_image
from edgecl.core.preprocess import PreprocessConfig, preprocess
from edgecl.eval import fashion_mnist

VARIANTS = ("torch-backbone", "onnx-backbone", "onnxruntime", "onnxruntime-torch-heads", "torch")
GPU_VARIANTS = ("torch-cuda-backbone", "torch-cuda-fp16-backbone", "torch-cuda-compile-backbone", "onnx-cuda-backbone")
ROUNDS = 3


def machine_variants() -> tuple[tuple[str, ...], dict[str, str]]:
    """The variants this machine can run, and why the GPU ones it cannot are left out."""
    if not torch.cuda.is_available():
        return VARIANTS, {v: "no CUDA GPU" for v in GPU_VARIANTS}
    import onnxruntime

    if "CUDAExecutionProvider" in onnxruntime.get_available_providers():
        return VARIANTS + GPU_VARIANTS, {}
    return VARIANTS + GPU_VARIANTS[:-1], {
        GPU_VARIANTS[-1]: f"onnxruntime {onnxruntime.__version__} has no CUDA provider (onnxruntime-gpu)"
    }


def edgecl(*args: str) -> None:
    subprocess.run(
        [sys.executable, "-m", "edgecl", *args], check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )


# name -> (sessions' classes, extra `edgecl train` settings)
BUNDLES = {
    "3 sessions": ([[0, 1, 2, 3, 4, 5], [6, 7], [8, 9]], []),
    "3 sessions, Gaussian projection": (
        [[0, 1, 2, 3, 4, 5], [6, 7], [8, 9]],
        ["--set", "safe.projection_kind=gaussian"],
    ),
    "9 sessions": ([[0, 1]] + [[c] for c in range(2, 10)], []),
}


def make_bundle(out: Path, name: str, sessions: list[list[int]], settings: list[str]) -> Path:
    bundle = out / f"bundle-{name.replace(',', '').replace(' ', '-').lower()}"
    shutil.rmtree(bundle, ignore_errors=True)
    for index, classes in enumerate(sessions):
        fashion_mnist.write_image_folders(out / f"s{len(sessions)}-{index}", "train", 60, classes, seed=index)
    edgecl(
        "train", str(out / f"s{len(sessions)}-0"), "--out", str(bundle), "--set", "safe.slow.epochs=1", *settings, "-q"
    )
    edgecl("export", "--target", "cpu", "-b", str(bundle), "--images", str(out / f"s{len(sessions)}-0"))
    for index in range(1, len(sessions)):
        edgecl("learn", "--images", str(out / f"s{len(sessions)}-{index}"), "-b", str(bundle), "-q")
    return bundle


def timed(variant: str, bundle: Path, images: Path, batch: int) -> float:
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.worker", variant, str(bundle), str(images), str(batch)],
        check=True,
        capture_output=True,
        text=True,
    )
    return json.loads(done.stdout.strip().splitlines()[-1])["ms_per_image"]


def run(out: Path) -> dict:
    data = out / "classify"
    tests = fashion_mnist.write_image_folders(data / "test", "test", 4, seed=3)
    files = [p for group in tests.values() for p in group][:32]
    variants, left_out = machine_variants()
    results = {"gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None, "left_out": left_out}
    for variant, why in left_out.items():
        print(f"{variant}: not run ({why})")
    for name, (sessions, settings) in BUNDLES.items():
        bundle = make_bundle(data, name, sessions, settings)
        config = PreprocessConfig.from_dict(Bundle.open(bundle).manifest.preprocess)
        images = data / f"images-{len(sessions)}.npy"
        np.save(images, np.stack([preprocess(load_image(p), config) for p in files]))
        row = {}
        for batch in (1, 32):
            samples: dict[str, list[float]] = {v: [] for v in variants}
            for _ in range(ROUNDS):
                for v in variants:
                    samples[v].append(timed(v, bundle, images, batch))
            ms = {v: statistics.median(s) for v, s in samples.items()}
            row[f"batch{batch}"] = {
                **{f"{v}_ms": m for v, m in ms.items()},
                "onnx_speedup_over_torch_backbone": ms["torch-backbone"] / ms["onnx-backbone"],
                "onnxruntime_path_over_bare_onnx": ms["onnxruntime"] / ms["onnx-backbone"],
                "torch_heads_path_over_bare_onnx": ms["onnxruntime-torch-heads"] / ms["onnx-backbone"],
                "torch_path_over_onnxruntime_path": ms["torch"] / ms["onnxruntime"],
            }
            print(
                f"{name}, batch {batch:2d}: backbone torch {ms['torch-backbone']:.2f} ms/image, "
                f"onnx {ms['onnx-backbone']:.2f} "
                f"({ms['torch-backbone'] / ms['onnx-backbone']:.2f}x faster); "
                f"classify path onnxruntime {ms['onnxruntime']:.2f} "
                f"({ms['onnxruntime'] / ms['onnx-backbone']:.2f}x bare onnx; "
                f"heads in PyTorch {ms['onnxruntime-torch-heads']:.2f}, "
                f"{ms['onnxruntime-torch-heads'] / ms['onnx-backbone']:.2f}x), torch {ms['torch']:.2f}"
            )
            if len(ms) > len(VARIANTS):
                print(
                    f"{name}, batch {batch:2d} on {results['gpu']}: backbone "
                    + ", ".join(
                        f"{v.removesuffix('-backbone')} {ms[v]:.2f} ms/image "
                        f"({ms['onnx-backbone'] / ms[v]:.1f}x onnx on the CPU)"
                        for v in GPU_VARIANTS
                        if v in ms
                    )
                )
        decode_ms = (
            median_seconds(lambda config=config: [preprocess(load_image(p), config) for p in files], repeats=3)
            / len(files)
            * 1e3
        )
        row["decode_preprocess_ms"] = decode_ms
        print(f"{name}: decode + preprocess of a 28x28 PNG {decode_ms:.2f} ms/image")
        results[name] = row
    return results
