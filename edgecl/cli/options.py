"""Options several commands share, and the parsing of what only the command line types as text."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from edgecl.errors import EdgeclError

BundleOption = Annotated[
    Path,
    typer.Option(
        "--bundle",
        "-b",
        envvar="EDGECL_BUNDLE",
        help="Bundle directory (default: $EDGECL_BUNDLE, else ./edgecl-bundle).",
    ),
]
DEFAULT_BUNDLE = Path("edgecl-bundle")
QuietOption = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars.")]
SilentOption = Annotated[bool, typer.Option("--quiet", "-q", help="Print nothing on success.")]


def _known_runtime(value: Optional[str]) -> Optional[str]:
    if value is not None:
        from edgecl.runtime.embedders import RUNTIMES

        if value not in RUNTIMES:
            raise typer.BadParameter(f"{value!r} is not one of {', '.join(RUNTIMES)}")
    return value


RuntimeOption = Annotated[
    Optional[str],
    typer.Option(
        "--runtime",
        callback=_known_runtime,
        help="Force the backbone runtime: tensorrt, onnxruntime or torch (default: the best available).",
    ),
]
BackboneOption = Annotated[
    str,
    typer.Option("--backbone", help="Any timm model name, pretrained tag included (vit_small_patch14_dinov2.lvd142m)."),
]
WeightsOption = Annotated[
    Optional[Path],
    typer.Option(
        "--weights", help="Backbone weights file (safetensors or a state dict). Default: offline package, else the hub."
    ),
]
RandomInitOption = Annotated[
    bool, typer.Option("--random-init", help="Random backbone weights: for testing plumbing only.")
]
EpochsOption = Annotated[
    Optional[int],
    typer.Option(
        "--epochs",
        min=1,
        help="Epochs per session of the heads' training (TOSCA's modules, SAFE's fast learner, InfLoRA's heads).",
    ),
]
SetOption = Annotated[
    Optional[list[str]],
    typer.Option(
        "--set",
        metavar="KEY=VALUE",
        help="Override one method setting, e.g. --set safe.slow.epochs=5 or --set use_tosca=false "
        "(repeatable; `edgecl methods` lists them).",
    ),
]
DeviceOption = Annotated[
    Optional[str],
    typer.Option(
        "--device",
        help="Where the backbone trains (slow learner, InfLoRA): cpu, cuda, cuda:1 "
        "(default: cuda when there is a GPU).",
    ),
]
MinScoreOption = Annotated[
    Optional[float],
    typer.Option(
        "--min-score",
        metavar="S",
        help="Label an image `unknown` when its known score (0..1, how close it is to the class it is most "
        "like, relative to that class's own images) is under S; default: the threshold the bundle calibrated "
        "(keeps 95% of known images), 0: never unknown.",
    ),
]
LockTimeoutOption = Annotated[
    float, typer.Option("--lock-timeout", min=0, help="Seconds to wait for another process writing the bundle.")
]


def parse_settings(pairs: Optional[list[str]]) -> dict[str, str]:
    settings = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise EdgeclError(f"--set {pair}: expected KEY=VALUE")
        settings[key.strip()] = value.strip()
    return settings
