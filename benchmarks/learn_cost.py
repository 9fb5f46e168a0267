"""What `edgecl learn` costs on the device for one new class of 50 images: seconds in the backbone,
seconds in the heads, and the peak memory of the whole process (a fresh `edgecl learn`)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from edgecl import fashion_mnist


def _learn(bundle: Path, images: Path) -> tuple[dict, float]:
    command = [sys.executable, "-m", "edgecl", "learn", "--images", str(images), "--bundle", str(bundle), "--json", "-q"]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    output = process.stdout.read()
    _, status, usage = os.wait4(process.pid, 0)
    if status != 0:
        raise RuntimeError(f"edgecl learn failed: {status}")
    return json.loads(output), usage.ru_maxrss / 1024  # KiB -> MiB on Linux


def run(out: Path) -> dict:
    data = out / "learn"
    fashion_mnist.write_image_folders(data / "base", "train", 100, [0, 1, 2, 3, 4, 5], seed=0)
    new = fashion_mnist.write_image_folders(data / "new", "train", 50, [9], seed=1)
    bundle = data / "bundle"
    shutil.rmtree(bundle, ignore_errors=True)
    subprocess.run([sys.executable, "-m", "edgecl", "train", str(data / "base"), "--out", str(bundle), "-q"], check=True)
    record, peak_mib = _learn(bundle, Path(next(iter(new.values()))[0]).parent)
    results = {
        "images": record["images"], "runtime": record["runtime"],
        "seconds_backbone": record["seconds_backbone"], "seconds_heads": record["seconds_heads"], "peak_rss_mib": peak_mib,
    }
    print(f"learn 1 class x {record['images']} images on {record['runtime']}: backbone {record['seconds_backbone']:.2f} s, "
          f"heads {record['seconds_heads']:.2f} s, peak memory {peak_mib:.0f} MiB")
    return results
