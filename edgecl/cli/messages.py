"""What the command line prints: results on stdout, progress, warnings and one-line errors on stderr.

The library's errors mark the parameter they are about (edgecl.errors.param); FLAGS is the one table
that spells each parameter as the flag or argument a user typed."""

from __future__ import annotations

import functools
import logging
import os
import sys
from collections.abc import Callable

import typer
from rich.console import Console
from rich.table import Table

from edgecl.errors import EdgeclError, render

out = Console(
    highlight=False, soft_wrap=True, markup=False
)  # class names and paths are printed as given: bolt[m6] stays bolt[m6]
err = Console(stderr=True, highlight=False, soft_wrap=True, markup=False)

FLAGS = {
    "backbone": "--backbone",
    "bundle": "--bundle or $EDGECL_BUNDLE",
    "device": "--device",
    "done": "--done",
    "epochs": "--epochs",
    "exclude_class": "--exclude-class",
    "force": "--force",
    "images": "--images",
    "increment": "--increment",
    "init": "--init",
    "label": "--label",
    "lock_timeout": "--lock-timeout",
    "log": "--log",
    "method": "--method",
    "out": "--bundle",
    "plot": "--plot",
    "runtime": "--runtime",
    "settings": "--set",
    "target": "--target",
    "test_list": "--test-list",
    "top_k": "--top-k",
    "train_list": "--train-list",
    "weights": "--weights",
    "examples": "--images",
    "slow_epochs": "--slow-epochs",
    "img_size": "--img-size",
    "global_pool": "--global-pool",
    "min_score": "--min-score",
    "shots": "--shots",
    "name": "CLASS",
    "old": "OLD",
    "new": "NEW",
    "folder": "DIR",
    "keep_done": "--keep-done",
    "keep_done_mb": "--keep-done-mb",
    "log_max_mb": "--log-max-mb",
    "log_keep": "--log-keep",
}


def _flag(name: str, python: str) -> str:
    return FLAGS.get(name, "--" + name.replace("_", "-"))


def cli_message(error: EdgeclError | str) -> str:
    """The library's message with its parameters spelt as flags (a reason carried in a string too)."""
    return error.render(_flag) if isinstance(error, EdgeclError) else render(error, _flag)


def count(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}{'es' if word.endswith('s') else 's'}"


def print_table(table: Table) -> None:
    Console(highlight=False, markup=False, width=max(out.width, 1000)).print(
        table
    )  # the table's own width, never cut at 80 columns


def _os_error(error: OSError) -> str:
    names = [str(n) for n in (error.filename, error.filename2) if n is not None]
    return f"{' -> '.join(names)}: {error.strerror}" if names and error.strerror else str(error)


class _Diagnostics(logging.Handler):
    """The library's log lines (edgecl.*) on stderr: info as they are, warnings as `warning: ...`."""

    def emit(self, record: logging.LogRecord) -> None:
        text = record.getMessage()
        err.print(f"warning: {text}" if record.levelno >= logging.WARNING else text)


def show_diagnostics() -> None:
    logger = logging.getLogger("edgecl")
    if not any(isinstance(h, _Diagnostics) for h in logger.handlers):
        logger.addHandler(_Diagnostics())
        logger.setLevel(logging.INFO)
        logger.propagate = False


def user_errors(command: Callable, interrupted: str = "interrupted") -> Callable:
    """EdgeclError, or an OSError (a folder that is a file, a full disk, no permission) ->
    'error: <message>' on stderr, exit 1; Ctrl-C -> exit 130."""

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        show_diagnostics()
        try:
            return command(*args, **kwargs)
        except EdgeclError as error:
            err.print(f"error: {cli_message(error)}")
            raise typer.Exit(1) from None
        except BrokenPipeError:  # `edgecl classify dir | head`: the reader has all it wanted
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            raise typer.Exit(1) from None
        except OSError as error:
            err.print(f"error: {_os_error(error)}")
            raise typer.Exit(1) from None
        except MemoryError:
            err.print("error: out of memory")
            raise typer.Exit(1) from None
        except KeyboardInterrupt:
            err.print(interrupted)
            raise typer.Exit(130) from None

    return wrapper


def writes_bundle(command: Callable) -> Callable:
    return user_errors(command, "interrupted; the bundle is unchanged")


def listed(reasons: list[str]) -> str:
    return "; ".join(reasons[:5]) + ("; ..." if len(reasons) > 5 else "")


def warn_skipped(skipped: list[str]) -> None:
    if skipped:
        err.print(f"warning: skipped {len(skipped)} unreadable image(s): {listed(skipped)}")
