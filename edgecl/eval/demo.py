"""`edgecl demo`: the whole loop on Fashion-MNIST through the real command line.

Base session on 6 classes (`edgecl train`, then `edgecl export` so the backbone runs in
onnxruntime), then two `edgecl learn` sessions of 2 classes each from image folders, classifying
the test images of every class seen so far after each step.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from edgecl.errors import EdgeclError
from edgecl.eval import fashion_mnist

SESSIONS = ([0, 1, 2, 3, 4, 5], [6, 7], [8, 9])


def _edgecl(*args: str, quiet: bool, capture: bool = False) -> str:
    command = [sys.executable, "-m", "edgecl", *args, *(["--quiet"] if quiet else [])]
    done = subprocess.run(command, stdout=subprocess.PIPE if capture else None, text=True)
    if done.returncode != 0:
        raise EdgeclError(f"demo step failed (exit {done.returncode}): edgecl {' '.join(args)}")
    return done.stdout or ""


def run_demo(
    workdir: Path,
    *,
    train_per_class: int = 300,
    test_per_class: int = 100,
    slow_epochs: int | None = None,
    show_progress: bool = True,
    backbone: str | None = None,
    weights: Path | None = None,
    img_size: int | None = None,
    global_pool: str | None = None,
) -> list[list[float]]:
    import torch

    console = Console(highlight=False, width=max(Console().width, 100))
    quiet = not show_progress
    device = "cuda" if torch.cuda.is_available() else "cpu"
    if slow_epochs is None:  # SAFE's 20 epochs on a GPU; one on a CPU, where an epoch here takes minutes
        slow_epochs = 20 if device == "cuda" else 1
    workdir = Path(workdir)
    bundle = workdir / "bundle"
    choices = {"--backbone": backbone, "--weights": weights, "--img-size": img_size, "--global-pool": global_pool}
    model = [str(v) for flag, value in choices.items() if value is not None for v in (flag, value)]
    console.print(
        f"[bold]edgecl demo[/]: Fashion-MNIST, {train_per_class} training / {test_per_class} test images "
        f"per class, {backbone or 'tf_efficientnet_lite0'}, in {workdir}"
    )
    folders = []
    for index, classes in enumerate(SESSIONS):
        folder = workdir / f"session{index}"
        fashion_mnist.write_image_folders(folder, "train", train_per_class, classes, seed=index)
        folders.append(folder)
    tests = fashion_mnist.write_image_folders(workdir / "test", "test", test_per_class, seed=99)
    names = fashion_mnist.CLASSES
    rows: list[list[float]] = []
    timings: list[float] = []
    for index in range(len(SESSIONS)):
        start = time.perf_counter()
        if index == 0:
            settings = [*model, "--slow-epochs", str(slow_epochs), "--device", device]
            console.print(
                f"\n[bold]session 0[/] (host): edgecl train {folders[0]} --bundle {bundle} {' '.join(settings)}; "
                "edgecl export --target cpu"
            )
            _edgecl("train", str(folders[0]), "--bundle", str(bundle), "--force", *settings, quiet=quiet)
            _edgecl("export", "--target", "cpu", "--bundle", str(bundle), "--images", str(folders[0]), quiet=quiet)
        else:
            console.print(f"\n[bold]session {index}[/] (device): edgecl learn --images {folders[index]}")
            _edgecl("learn", "--images", str(folders[index]), "--bundle", str(bundle), quiet=quiet)
        timings.append(time.perf_counter() - start)
        seen = [names[c] for s in SESSIONS[: index + 1] for c in s]
        paths = [str(p) for name in seen for p in tests[name]]
        closed_set = ["--bundle", str(bundle), "--min-score", "0", "--json"]
        predictions = json.loads(_edgecl("classify", *paths, *closed_set, quiet=quiet, capture=True))
        correct = {p["path"]: p["label"] == Path(p["path"]).parent.name for p in predictions}
        row = []
        for s in SESSIONS[: index + 1]:
            group = [str(p) for c in s for p in tests[names[c]]]
            row.append(sum(correct[p] for p in group) / len(group))
        row.append(sum(correct.values()) / len(correct))
        rows.append(row)
    table = Table(title="accuracy on the test images of the classes seen so far (never 'unknown': --min-score 0)")
    table.add_column("after", no_wrap=True)
    for index in range(len(SESSIONS)):
        table.add_column(f"s{index} classes", justify="right", no_wrap=True)
    table.add_column("all seen", justify="right", no_wrap=True)
    table.add_column("step time", justify="right", no_wrap=True)
    for index, row in enumerate(rows):
        cells = [f"{a:.3f}" for a in row[:-1]] + [""] * (len(SESSIONS) - len(row) + 1)
        table.add_row(f"session {index}", *cells, f"{row[-1]:.3f}", f"{timings[index]:.1f} s")
    console.print(table)
    for index, classes in enumerate(SESSIONS):
        console.print(f"  s{index}: {', '.join(sorted(names[c] for c in classes))}")  # as `learn` names them
    return rows
