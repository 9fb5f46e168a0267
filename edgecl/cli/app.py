"""The `edgecl` command line, one module per group of commands. Host-only code (timm, training,
export) is imported inside the commands that need it, so `learn` and `classify` on a device import
only the runtime."""

from __future__ import annotations

import inspect
import sys
from typing import Annotated, get_args

import typer

from edgecl import __version__
from edgecl.cli import device_commands, eval_commands, host_commands, review_commands
from edgecl.cli.messages import out

app = typer.Typer(
    help="Edge continual learning: train a base model on the host, "
    "teach the device new classes from folders of images.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)


def _version(value: bool) -> None:
    if value:
        out.print(f"edgecl {__version__}")
        raise typer.Exit()


@app.callback()
def root(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version.")
    ] = False,
) -> None:
    """Edge continual learning: train a base model on the host, teach the device new classes."""


for name, command in [
    ("train", host_commands.train),
    ("learn", device_commands.learn),
    ("adapt", host_commands.adapt),
    ("classify", device_commands.classify),
    ("val", review_commands.val),
    ("forget", review_commands.forget),
    ("rename", review_commands.rename),
    ("undo", review_commands.undo),
    ("info", device_commands.info),
    ("export", host_commands.export),
    ("watch", device_commands.watch),
    ("eval", eval_commands.evaluate),
    ("methods", eval_commands.methods),
    ("demo", eval_commands.demo),
]:
    app.command(name)(command)

engine_app = typer.Typer(help="TensorRT engines, built on the target from backbone.onnx.", no_args_is_help=True)
engine_app.command("build")(device_commands.engine_build)
app.add_typer(engine_app, name="engine")


METAVARS = {
    **dict.fromkeys(["bundle", "images", "out", "done", "workdir", "cache_dir"], "DIR"),
    **dict.fromkeys(["weights", "plot", "json", "json_file", "log", "train_list", "test_list"], "FILE"),
    **dict.fromkeys(["seed", "epochs", "slow_epochs", "init", "increment", "train_per_class", "test_per_class"], "N"),
    **dict.fromkeys(["lock_timeout", "interval"], "SECONDS"),
    "method": "NAMES",
    "top_k": "K",
}


def _name_metavars(typer_app: typer.Typer) -> None:
    """Typer's default metavars read as types (<float range>); a user reads what to type."""
    for info in typer_app.registered_commands:
        original = inspect.unwrap(info.callback)
        parameters = inspect.signature(original, eval_str=True).parameters  # never wraps in Optional
        hints = {name: p.annotation for name, p in parameters.items() if p.annotation is not inspect.Parameter.empty}
        for function in (info.callback, original):
            function.__annotations__ = hints  # evaluated once, so typer reads the options named here
        for name, hint in hints.items():
            options = [m for m in getattr(hint, "__metadata__", ()) if isinstance(m, typer.models.OptionInfo)]
            flag = get_args(hint)[:1] == (bool,)
            for option in options:
                if option.metavar is None and not flag:
                    option.metavar = METAVARS.get(name, "NAME")
    for group in typer_app.registered_groups:
        _name_metavars(group.typer_instance)


_name_metavars(app)


def main() -> None:
    app(prog_name="edgecl")


if __name__ == "__main__":
    sys.exit(main())
