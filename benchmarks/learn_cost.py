"""What `edgecl learn` costs on the device for one new class of 50 images, per method and through
each runtime: seconds in the backbone, seconds in the heads, and the peak memory of the whole
process. The base bundle's slow learner trains one epoch (its quality does not change the cost).
`edgecl` learns once more beside a process that keeps one core busy, as a camera pipeline would on
a device: many small parallel ops suffer most from a core taken away."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

from benchmarks.timing import edgecl
from edgecl.eval import fashion_mnist

# A forked child's peak RSS starts at its parent's size, so a small wrapper process forks the learner.
PEAK = (
    "import resource, subprocess, sys; done = subprocess.run(sys.argv[1:]); "
    "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, file=sys.stderr); sys.exit(done.returncode)"
)


def _learn(bundle: Path, images: Path, runtime: str) -> tuple[dict, float]:
    command = [
        sys.executable,
        "-m",
        "edgecl",
        "learn",
        "--images",
        str(images),
        "--bundle",
        str(bundle),
        "--runtime",
        runtime,
        "--json",
        "-q",
    ]
    done = subprocess.run([sys.executable, "-c", PEAK, *command], capture_output=True, text=True, check=True)
    return json.loads(done.stdout), int(done.stderr.strip().splitlines()[-1]) / 1024  # KiB -> MiB


def run(out: Path) -> dict:
    data = out / "learn"
    fashion_mnist.write_image_folders(data / "base", "train", 100, [0, 1, 2, 3, 4, 5], seed=0)
    new = fashion_mnist.write_image_folders(data / "new", "train", 50, [9], seed=1)
    new_class = Path(next(iter(new.values()))[0]).parent
    results = {}
    for method in ("edgecl", "tosca"):
        base = data / f"bundle-{method}"
        shutil.rmtree(base, ignore_errors=True)
        slow = ["--set", "safe.slow.epochs=1"] if method == "edgecl" else []
        edgecl("train", str(data / "base"), "--bundle", str(base), "--method", method, "-q", *slow)
        edgecl("export", "--target", "cpu", "-b", str(base), "--images", str(data / "base"))
        for runtime in ("onnxruntime", "torch"):
            results[f"{method}/{runtime}"] = _measure(base, data / f"bundle-{method}-{runtime}", new_class, runtime)
            print(f"{method}: learn 1 class on {runtime}: {_summary(results[f'{method}/{runtime}'])}")
    busy = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        beside = results["edgecl/onnxruntime, one core busy"] = _measure(
            data / "bundle-edgecl", data / "bundle-edgecl-busy", new_class, "onnxruntime"
        )
    finally:
        busy.kill()
    ratio = beside["seconds_heads"] / results["edgecl/onnxruntime"]["seconds_heads"]
    print(f"edgecl: learn 1 class on onnxruntime, one core busy: {_summary(beside)}; heads {ratio:.2f}x the idle run")
    return results


def _measure(base: Path, bundle: Path, images: Path, runtime: str) -> dict:
    shutil.rmtree(bundle, ignore_errors=True)
    shutil.copytree(base, bundle)
    record, peak_mib = _learn(bundle, images, runtime)
    return {
        "images": record["images"],
        "seconds_backbone": record["seconds_backbone"],
        "seconds_heads": record["seconds_heads"],
        "peak_rss_mib": peak_mib,
    }


def _summary(result: dict) -> str:
    return (
        f"{result['images']} images, backbone {result['seconds_backbone']:.2f} s, "
        f"heads {result['seconds_heads']:.2f} s, "
        f"peak memory {result['peak_rss_mib']:.0f} MiB"
    )
