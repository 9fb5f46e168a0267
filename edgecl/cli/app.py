"""The `edgecl` command line, one module per group of commands. Host-only code (timm, training,
export) is imported inside the commands that need it, so `learn` and `classify` on a device import
only the runtime."""

from __future__ import annotations

import sys
from typing import Annotated

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


def main() -> None:
    app(prog_name="edgecl")


if __name__ == "__main__":
    sys.exit(main())
