"""Device commands that check and correct a bundle: val, forget, rename, undo."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.table import Table

from edgecl.cli.messages import out, print_table, user_errors, warn_skipped, writes_bundle
from edgecl.cli.options import (
    DEFAULT_BUNDLE,
    BundleOption,
    LockTimeoutOption,
    MinScoreOption,
    QuietOption,
    RuntimeOption,
    SilentOption,
)
from edgecl.errors import EdgeclError


@user_errors
def val(
    folder: Annotated[Path, typer.Argument(metavar="DIR", help="Labelled images: DIR/<class name>/<images>.")],
    bundle: BundleOption = DEFAULT_BUNDLE,
    runtime: RuntimeOption = None,
    min_score: MinScoreOption = None,
    json_file: Annotated[
        Optional[Path],
        typer.Option("--json", help="Write everything, the full confusion matrix too, to this JSON file."),
    ] = None,
    plot: Annotated[
        Optional[Path], typer.Option("--plot", help="Draw the confusion matrix into this PNG (needs matplotlib).")
    ] = None,
    quiet: QuietOption = False,
) -> None:
    """Device: check the bundle on labelled images: accuracy per class, what it confuses, "unknown" rates.

    A folder named after none of the bundle's classes counts as a class it was never taught: the share of
    its images it calls `unknown` is reported."""
    from edgecl.runtime.validation import validate

    for target in (json_file, plot):
        if target is not None and not target.parent.is_dir():
            raise EdgeclError(f"{target}: folder {target.parent} does not exist")
    if plot is not None:
        from edgecl.eval.plot import require_matplotlib

        require_matplotlib(plot)
    report = validate(bundle, folder, runtime=runtime, min_score=min_score, show_progress=not quiet)
    warn_skipped(report.skipped)
    table = Table(
        "class",
        "images",
        "right",
        "unknown",
        "rate",
        title=f"{folder} with {bundle} (unknown under {report.min_score:.2f})",
    )
    for name, r in report.per_class.items():
        table.add_row(
            name + ("" if name in report.known else " (not a class of the bundle)"),
            str(r.images),
            str(r.correct),
            str(r.unknown),
            f"{r.rate:.3f}",
        )
    print_table(table)
    out.print(
        f"accuracy {report.accuracy:.3f} on the bundle's classes ({len(report.known)} of them)"
        + (
            f"; {report.unknown_rate:.3f} of the other classes' images called unknown"
            if report.unknown_rate is not None
            else ""
        )
    )
    confused = report.most_confused()
    if confused:
        out.print("most confused: " + "; ".join(f"{t} -> {p} ({n})" for t, p, n in confused))
    if json_file is not None:
        json_file.write_text(json.dumps(report.to_dict(), indent=1) + "\n")
        out.print(f"wrote {json_file}")
    if plot is not None:
        from edgecl.eval.plot import plot_confusion

        plot_confusion(report, plot)
        out.print(f"wrote {plot}")


@writes_bundle
def forget(
    name: Annotated[str, typer.Argument(metavar="CLASS", help="The class to forget.")],
    bundle: BundleOption = DEFAULT_BUNDLE,
    lock_timeout: LockTimeoutOption = 60.0,
    quiet: SilentOption = False,
) -> None:
    """Device: never predict CLASS again (`edgecl undo` takes it back)."""
    from edgecl.runtime.corrections import forget as forget_class

    change = forget_class(bundle, name, lock_timeout=lock_timeout)
    if not quiet:
        out.print(change.description)


@writes_bundle
def rename(
    old: Annotated[str, typer.Argument(metavar="OLD", help="A class of the bundle.")],
    new: Annotated[str, typer.Argument(metavar="NEW", help="Its new name.")],
    bundle: BundleOption = DEFAULT_BUNDLE,
    lock_timeout: LockTimeoutOption = 60.0,
    quiet: SilentOption = False,
) -> None:
    """Device: rename a class."""
    from edgecl.runtime.corrections import rename as rename_class

    change = rename_class(bundle, old, new, lock_timeout=lock_timeout)
    if not quiet:
        out.print(change.description)


@writes_bundle
def undo(
    bundle: BundleOption = DEFAULT_BUNDLE,
    lock_timeout: LockTimeoutOption = 60.0,
    quiet: SilentOption = False,
) -> None:
    """Device: take back the last learn, adapt, forget or rename (the bundle keeps the last few; `edgecl info`)."""
    from edgecl.runtime.corrections import undo as undo_change

    change = undo_change(bundle, lock_timeout=lock_timeout)
    if not quiet:
        out.print(change.description)
