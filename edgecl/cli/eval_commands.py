"""Evaluation commands: the class-incremental protocol, the methods and their settings, the demo."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.table import Table

from edgecl.cli.host_commands import GlobalPoolOption, ImgSizeOption
from edgecl.cli.messages import count, out, print_table, user_errors, warn_skipped
from edgecl.cli.options import (
    BackboneOption,
    DeviceOption,
    EpochsOption,
    QuietOption,
    RandomInitOption,
    SetOption,
    WeightsOption,
    parse_settings,
)
from edgecl.errors import EdgeclError


@user_errors
def evaluate(
    data: Annotated[
        Path,
        typer.Argument(
            metavar="DATA",
            help="DATA/train/<class>/ and DATA/test/<class>/, or DATA/<class>/ with --train-list/--test-list.",
        ),
    ],
    init: Annotated[int, typer.Option("--init", help="Classes in the first session (B).")],
    increment: Annotated[int, typer.Option("--increment", help="Classes per later session (Inc).")],
    method: Annotated[
        str,
        typer.Option(
            "--method",
            help="Method(s), comma-separated: edgecl,tosca,tosca-paper,safe,simplecil,inflora "
            "(`edgecl methods` lists them).",
        ),
    ] = "edgecl",
    seed: Annotated[int, typer.Option("--seed", help="Shuffles the class order.")] = 1993,
    train_list: Annotated[
        Optional[Path], typer.Option("--train-list", help="Training images, one path relative to DATA per line.")
    ] = None,
    test_list: Annotated[
        Optional[Path], typer.Option("--test-list", help="Test images, one path relative to DATA per line.")
    ] = None,
    exclude_class: Annotated[
        Optional[list[str]], typer.Option("--exclude-class", metavar="NAME", help="Drop a class (repeatable).")
    ] = None,
    backbone: BackboneOption = "tf_efficientnet_lite0",
    weights: WeightsOption = None,
    random_init: RandomInitOption = False,
    img_size: ImgSizeOption = None,
    global_pool: GlobalPoolOption = None,
    epochs: EpochsOption = None,
    settings: SetOption = None,
    joint: Annotated[
        bool,
        typer.Option(
            "--joint",
            help="Also report classifiers trained on all classes at once on the frozen embeddings "
            "(NCM, logistic probe, analytic).",
        ),
    ] = False,
    plot: Annotated[
        Optional[Path],
        typer.Option("--plot", help="Draw accuracy after each session per method into this PNG (needs matplotlib)."),
    ] = None,
    device: DeviceOption = None,
    shots: Annotated[
        Optional[int],
        typer.Option(
            "--shots",
            metavar="K",
            help="Train each class of the sessions after the first on K images only, drawn by the seed (few-shot).",
        ),
    ] = None,
    cache_dir: Annotated[
        Optional[Path],
        typer.Option(
            "--cache-dir",
            help="Cache of embeddings and exported backbones (default: $EDGECL_CACHE or ~/.cache/edgecl).",
        ),
    ] = None,
    json_file: Annotated[Optional[Path], typer.Option("--json", help="Write the results to this JSON file.")] = None,
    quiet: QuietOption = False,
) -> None:
    """Host: the class-incremental protocol B{init} Inc{increment}; accuracy after every session."""
    from edgecl.eval.protocol import evaluate as run_protocol

    methods = list(dict.fromkeys(m.strip() for m in method.split(",") if m.strip()))
    if not methods:
        raise EdgeclError("--method: name at least one method")
    if plot is not None:
        from edgecl.eval.plot import require_matplotlib

        require_matplotlib(plot)
    if json_file is not None and not json_file.parent.is_dir():  # checked now: an evaluation can take hours
        raise EdgeclError(f"--json {json_file}: folder {json_file.parent} does not exist")
    report = run_protocol(
        data,
        init,
        increment,
        methods,
        seed=seed,
        train_list=train_list,
        test_list=test_list,
        exclude=exclude_class or [],
        backbone=backbone,
        weights=weights,
        random_init=random_init,
        img_size=img_size,
        global_pool=global_pool,
        epochs=epochs,
        settings=parse_settings(settings),
        joint=joint,
        device=device,
        shots=shots,
        cache_dir=cache_dir,
        show_progress=not quiet,
    )
    warn_skipped(report.skipped)
    p = report.protocol
    table = Table(title=f"B{init} Inc{increment}, {p['classes']} classes, seed {seed}, {p['backbone']}")
    table.add_column("method", no_wrap=True)
    for t in range(p["sessions"]):
        table.add_column(f"s{t}", justify="right", no_wrap=True)
    for column in ("A_last", "A_avg", "forgetting"):
        table.add_column(column, justify="right", no_wrap=True)
    for r in report.results:
        table.add_row(
            r.method,
            *(f"{a:.3f}" for a in r.accuracy_per_session),
            f"{r.A_last:.3f}",
            f"{r.A_avg:.3f}",
            f"{r.forgetting:.3f}",
        )
    for name, value in report.joint.items():
        table.add_row(f"joint {name}", *([""] * p["sessions"]), f"{value:.3f}", "", "", style="dim")
    print_table(table)
    if p["sessions"] > 1:
        unknown = Table(
            title="known vs not yet learned classes' test images, after each session: AUROC / FPR at 95% TPR"
        )
        unknown.add_column("method", no_wrap=True)
        for t in range(p["sessions"] - 1):
            unknown.add_column(f"s{t}", justify="right", no_wrap=True)
        unknown.add_column("mean AUROC", justify="right", no_wrap=True)
        unknown.add_column("top probability's", justify="right", no_wrap=True)
        for r in report.results:
            pairs = [(a, f) for a, f in zip(r.unknown_auroc, r.unknown_fpr95) if a is not None]
            top = [a for a in r.unknown_auroc_top_probability if a is not None]
            unknown.add_row(
                r.method,
                *(f"{a:.3f} / {f:.2f}" for a, f in pairs),
                f"{sum(a for a, _ in pairs) / len(pairs):.3f}",
                f"{sum(top) / len(top):.3f}",
            )
        print_table(unknown)
    for name, stats in report.backbones.items():
        if "sessions" in stats:
            runs = stats["sessions"]
            used = [
                str(r["directions"]) for r in runs if "directions" in r
            ]  # absent from sessions cached by older versions
            directions = (
                f", low-rank directions {' / '.join(used)} of {runs[0]['direction_slots']}"
                if len(used) == len(runs)
                else ""
            )
            out.print(
                f"{name}: backbone adapted in {len(runs)} sessions, {count(runs[0]['epochs'], 'epoch')} each, "
                f"{sum(r['seconds'] for r in runs):.0f} s{directions}, "
                f"{runs[-1]['protected_fraction']:.0%} of the adapted "
                f"layers' input space protected at the end{' (cached)' if all(r.get('cached') for r in runs) else ''}"
            )
            continue
        out.print(
            f"{name}: slow learner {stats['tuner']} on {stats['images']} images, {count(stats['epochs'], 'epoch')}, "
            f"{stats['seconds']:.0f} s{' (cached)' if stats.get('cached') else ''}"
        )
    if plot is not None:
        from edgecl.eval.plot import plot_sessions

        plot_sessions(report, plot)
        out.print(f"wrote {plot}")
    if json_file is not None:
        json_file.write_text(json.dumps(report.to_dict(), indent=1) + "\n")
        out.print(f"wrote {json_file}")


@user_errors
def methods(
    name: Annotated[Optional[str], typer.Argument(metavar="NAME", help="One method (default: all).")] = None,
) -> None:
    """The methods and every setting `--set KEY=VALUE` accepts, with its default."""
    from edgecl.core.methods import METHODS, method_class, method_config

    if name is not None and name not in METHODS:
        raise EdgeclError(f"{name}: unknown method (known: {', '.join(sorted(METHODS))})")
    for method in [name] if name else sorted(METHODS):
        cls = method_class(method)
        out.print(f"{method}: {cls.summary}")
        for key, value in flatten(method_config(method).to_dict()):
            out.print(f"  {key} = {'auto' if value is None else json.dumps(value)}")  # None: the method chooses


def flatten(config: dict, prefix: str = ""):
    for key, value in config.items():
        if isinstance(value, dict):
            yield from flatten(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", value


@user_errors
def demo(
    workdir: Annotated[Path, typer.Option("--workdir", help="Where the demo writes images and its bundle.")] = Path(
        "edgecl-demo"
    ),
    train_per_class: Annotated[
        int, typer.Option("--train-per-class", min=1, help="Fashion-MNIST training images per class.")
    ] = 300,
    test_per_class: Annotated[
        int, typer.Option("--test-per-class", min=1, help="Fashion-MNIST test images per class.")
    ] = 100,
    slow_epochs: Annotated[
        Optional[int],
        typer.Option(
            "--slow-epochs", min=0, help="Epochs of the slow learner (default: 20 on a GPU, 1 on a CPU; 0: off)."
        ),
    ] = None,
    backbone: Annotated[
        Optional[str],
        typer.Option(
            "--backbone",
            help="timm model (default: tf_efficientnet_lite0), e.g. "
            "vit_small_patch14_dinov2 with --weights FILE --img-size 224.",
        ),
    ] = None,
    weights: WeightsOption = None,
    img_size: ImgSizeOption = None,
    global_pool: GlobalPoolOption = None,
    quiet: QuietOption = False,
) -> None:
    """The whole loop on Fashion-MNIST: train on 6 classes, learn 2 + 2 more, classify, report."""
    from edgecl.eval.demo import run_demo

    run_demo(
        workdir,
        train_per_class=train_per_class,
        test_per_class=test_per_class,
        slow_epochs=slow_epochs,
        show_progress=not quiet,
        backbone=backbone,
        weights=weights,
        img_size=img_size,
        global_pool=global_pool,
    )
