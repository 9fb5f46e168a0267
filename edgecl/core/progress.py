"""Progress bars on stderr (stdout stays clean for --json and classify output)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

Advance = Callable[..., None]


def stderr_console() -> Console:
    return Console(stderr=True)


@contextmanager
def progress_bar(description: str, total: int | None, *, enabled: bool = True, unit: str = "") -> Iterator[Advance]:
    """Yields `advance(n=1, **fields)`; fields such as loss= show after the bar."""
    if not enabled:
        yield lambda n=1, **fields: None
        return
    columns = [
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn(unit),
        TimeElapsedColumn(),
        TextColumn("eta"),
        TimeRemainingColumn(),
        TextColumn("{task.fields[info]}"),
    ]
    with Progress(*columns, console=stderr_console(), transient=False) as bar:
        task = bar.add_task(description, total=total, info="")

        def advance(n: int = 1, **fields: float) -> None:
            info = "  ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in fields.items())
            bar.update(task, advance=n, **({"info": info} if fields else {}))

        try:
            yield advance
        except BaseException:
            bar.live.transient = True  # a failed step's error line stands alone, with no half bar above it
            raise
