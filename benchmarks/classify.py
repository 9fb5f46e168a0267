"""Classify cost on this machine's CPU: the bare ONNX backbone vs the full classify path through
onnxruntime vs through PyTorch eager, at batch 1 (latency) and batch 32 (throughput), for bundles
of 3 and 9 sessions (heads grow with sessions). Inputs are preprocessed Fashion-MNIST test images;
decoding and preprocessing a file are timed on their own."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np

from benchmarks.timing import median_seconds
from edgecl import fashion_mnist
from edgecl.bundle import Bundle
from edgecl.images import load_image
from edgecl.preprocess import PreprocessConfig, preprocess
from edgecl.runtime.onnx import INPUT_NAME, ort_session
from edgecl.runtime.service import Classifier


def edgecl(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "edgecl", *args, "-q"], check=True, stdout=subprocess.DEVNULL)


def make_bundle(out: Path, sessions: list[list[int]]) -> Path:
    bundle = out / f"bundle-{len(sessions)}-sessions"
    shutil.rmtree(bundle, ignore_errors=True)
    for index, classes in enumerate(sessions):
        fashion_mnist.write_image_folders(out / f"s{len(sessions)}-{index}", "train", 60, classes, seed=index)
    edgecl("train", str(out / f"s{len(sessions)}-0"), "--out", str(bundle))
    subprocess.run([sys.executable, "-m", "edgecl", "export", "--target", "cpu", "-b", str(bundle), "--images", str(out / f"s{len(sessions)}-0")],
                   check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for index in range(1, len(sessions)):
        edgecl("learn", "--images", str(out / f"s{len(sessions)}-{index}"), "-b", str(bundle))
    return bundle


def per_image_ms(fn, images: np.ndarray, batch: int) -> float:
    if batch == 1:
        return median_seconds(lambda: [fn(images[i : i + 1]) for i in range(8)], repeats=5) / 8 * 1e3
    return median_seconds(lambda: fn(images[:batch]), repeats=5) / batch * 1e3


def run(out: Path) -> dict:
    data = out / "classify"
    tests = fashion_mnist.write_image_folders(data / "test", "test", 8, seed=3)
    files = [p for group in tests.values() for p in group][:32]
    results = {}
    for sessions in ([[0, 1, 2, 3, 4, 5], [6, 7], [8, 9]], [[0, 1]] + [[c] for c in range(2, 10)]):
        bundle = make_bundle(data, sessions)
        config = PreprocessConfig.from_dict(Bundle.open(bundle).manifest.preprocess)
        images = np.stack([preprocess(load_image(p), config) for p in files])
        bare = ort_session(bundle / "backbone.onnx", ["CPUExecutionProvider"])
        via_ort, via_torch = Classifier(bundle, "onnxruntime"), Classifier(bundle, "torch")
        row = {}
        for batch in (1, 32):
            bare_ms = per_image_ms(lambda x: bare.run(None, {INPUT_NAME: x}), images, batch)
            ort_ms = per_image_ms(via_ort.predict_arrays, images, batch)
            torch_ms = per_image_ms(via_torch.predict_arrays, images, batch)
            row[f"batch{batch}"] = {
                "bare_onnx_ms": bare_ms, "onnxruntime_path_ms": ort_ms, "torch_path_ms": torch_ms,
                "onnxruntime_path_over_bare": ort_ms / bare_ms, "torch_over_onnxruntime_path": torch_ms / ort_ms,
            }
            print(f"{len(sessions)} sessions, batch {batch:2d}: bare ONNX {bare_ms:.2f} ms/image, onnxruntime path {ort_ms:.2f} "
                  f"({ort_ms / bare_ms:.2f}x bare), PyTorch path {torch_ms:.2f} ({torch_ms / ort_ms:.2f}x onnxruntime)")
        decode_ms = median_seconds(lambda: [preprocess(load_image(p), config) for p in files], repeats=3) / len(files) * 1e3
        files_ms = median_seconds(lambda: via_ort.classify(files, show_progress=False), repeats=3) / len(files) * 1e3
        row["decode_preprocess_ms"], row["files_end_to_end_ms"] = decode_ms, files_ms
        print(f"{len(sessions)} sessions: decode + preprocess {decode_ms:.2f} ms/image; files end to end (onnxruntime) {files_ms:.2f} ms/image")
        results[f"sessions{len(sessions)}"] = row
    return results
