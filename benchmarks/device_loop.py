"""The device loop as a camera node and a user live it, on an `edgecl` bundle at the defaults (M = 4096,
Fashion-MNIST, 6 base classes of 100 images, slow learner off: its quality does not change these costs):

- per-frame classify through the Python API (a 640 x 480 uint8 RGB frame in, a label out, batch 1)
  against the bare onnxruntime backbone on the same frame (the same preprocessing, then the session),
  interleaved; and `edgecl.load`'s start-up;
- one `learn` of 5 and of 50 images, whole heads written every session (as before the journal) against
  the journal: seconds in start-up (imports, opening the bundle), embedding, heads and the rest (reading
  and writing the bundle), and the bytes written; and one of 50 images into the bundle after three more
  one-class sessions, whose journal entries `learn` replays first (a journal holds up to four).

Each learn runs in a fresh process (python -m benchmarks.device_loop_worker)."""

from __future__ import annotations

import json
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

import numpy as np

from benchmarks.timing import compare, edgecl
from edgecl.eval import fashion_mnist

ROUNDS = 3


def _bundle(data: Path) -> Path:
    base = data / "bundle"
    if _stale(base):
        shutil.rmtree(data / "bundle-3-entries", ignore_errors=True)
        shutil.rmtree(base, ignore_errors=True)
        fashion_mnist.write_image_folders(data / "base", "train", 100, [0, 1, 2, 3, 4, 5], seed=0)
        edgecl("train", str(data / "base"), "--bundle", str(base), "--slow-epochs", "0", "-q")
        edgecl("export", "--target", "cpu", "-b", str(base), "--images", str(data / "base"))
    return base


def _stale(bundle: Path) -> bool:
    """No bundle, or one of an earlier run whose method settings are not today's defaults (a default changed)."""
    from edgecl.core.methods import method_config

    manifest = bundle / "manifest.json"
    if not manifest.exists():
        return True
    today = method_config("edgecl", settings={"safe.slow.epochs": "0"}).to_dict()
    return json.loads(manifest.read_text())["method"]["config"] != today


def frame_latency(bundle: Path) -> dict:
    import time

    from PIL import Image

    import edgecl
    from edgecl.core.bundle import Bundle
    from edgecl.core.preprocess import PreprocessConfig, preprocess
    from edgecl.runtime.ort import INPUT_NAME, ort_session

    start = time.perf_counter()
    model = edgecl.load(bundle)
    load_seconds = time.perf_counter() - start
    frame = np.random.default_rng(0).integers(0, 256, (480, 640, 3), dtype=np.uint8)
    b = Bundle.open(bundle)
    session = ort_session(b.path / b.manifest.export["file"], ["CPUExecutionProvider"])
    config = PreprocessConfig.from_dict(b.manifest.preprocess)

    def bare():
        session.run(None, {INPUT_NAME: preprocess(Image.fromarray(frame), config)[None]})

    ms = {
        k: v * 1e3
        for k, v in compare({"api": lambda: model.classify(frame), "bare": bare}, repeats=60, warmup=5).items()
    }
    pre = compare({"preprocess": lambda: preprocess(Image.fromarray(frame), config)}, repeats=30)["preprocess"] * 1e3
    return {
        "load_s": load_seconds,
        "api_ms": ms["api"],
        "bare_onnxruntime_ms": ms["bare"],
        "preprocess_ms": pre,
        "api_over_bare": ms["api"] / ms["bare"],
        "runtime": model.runtime,
    }


def _after_three_sessions(data: Path, base: Path) -> Path:
    """The base bundle with three more one-class sessions of 50 images (Shirt, Sneaker, Bag) in its journal."""
    deep = data / "bundle-3-entries"
    manifest = deep / "manifest.json"
    if not manifest.exists() or len(json.loads(manifest.read_text())["heads"].get("journal", [])) != 3:
        shutil.rmtree(deep, ignore_errors=True)
        shutil.copytree(base, deep)
        for paths in fashion_mnist.write_image_folders(data / "more", "train", 50, [6, 7, 8], seed=2).values():
            edgecl("learn", "--images", str(Path(paths[0]).parent), "--bundle", str(deep), "-q")
    return deep


def learn_costs(data: Path, base: Path) -> dict:
    new = fashion_mnist.write_image_folders(data / "new", "train", 50, [9], seed=1)
    folder50 = Path(next(iter(new.values()))[0]).parent
    folder5 = data / "new5" / folder50.name
    if not folder5.exists():
        folder5.mkdir(parents=True)
        for path in sorted(folder50.iterdir())[:5]:
            shutil.copy(path, folder5 / path.name)
    deep = _after_three_sessions(data, base)
    cases = [
        (f"{n} images, {how}", folder, how, base)
        for n, folder in (("5", folder5), ("50", folder50))
        for how in ("whole", "journal")
    ]
    cases.append(("50 images, journal, 3 entries replayed", folder50, "journal", deep))
    results: dict[str, list[dict]] = {}
    for _ in range(ROUNDS):
        for name, folder, how, start in cases:
            bundle = data / f"learn-{how}"
            shutil.rmtree(bundle, ignore_errors=True)
            shutil.copytree(start, bundle)
            done = subprocess.run(
                [sys.executable, "-m", "benchmarks.device_loop_worker", str(bundle), str(folder), how],
                capture_output=True,
                text=True,
                check=True,
            )
            results.setdefault(name, []).append(json.loads(done.stdout.strip().splitlines()[-1]))
    return {name: {key: statistics.median(r[key] for r in runs) for key in runs[0]} for name, runs in results.items()}


def run(out: Path) -> dict:
    data = out / "device-loop"
    base = _bundle(data)
    latency = frame_latency(base)
    print(
        f"classify a 640x480 frame through the API: {latency['api_ms']:.2f} ms, "
        f"bare onnxruntime backbone on the same frame "
        f"{latency['bare_onnxruntime_ms']:.2f} ms ({latency['api_over_bare']:.2f}x; "
        f"preprocessing {latency['preprocess_ms']:.2f} ms "
        f"of both); edgecl.load {latency['load_s']:.2f} s"
    )
    costs = learn_costs(data, base)
    for name, r in costs.items():
        print(
            f"learn {name}: {r['wall_s']:.2f} s in all: start-up {r['startup_s']:.2f}, "
            f"embedding {r['embedding_s']:.2f}, "
            f"heads {r['heads_s']:.2f}, bundle read/write {r['rest_s']:.2f}; {r['written_mb']:.1f} MB written"
        )
    return {"frame": latency, "learn": costs}
