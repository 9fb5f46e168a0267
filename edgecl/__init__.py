"""edgecl: a frozen backbone as the inference engine, tiny heads that keep learning on the device.

Device:
    model = edgecl.load("bundle/")                 # edgecl.Model
    model.classify(frame)                          # edgecl.Prediction: label, score, top_k
    model.learn({"bolt": [frame, ...]})            # a new session, committed atomically
Host:
    edgecl.train("images/", "bundle/")             # session 0: backbone, slow learner, heads
    edgecl.export("bundle/", target="jetson")      # backbone.onnx + heads.onnx, checked against PyTorch

Importing edgecl is cheap: each function imports what it needs when it is called, and the device
side never imports timm or onnx.
"""

from __future__ import annotations

import operator
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgecl.errors import EdgeclError, param

__version__ = "0.1.0"

if TYPE_CHECKING:
    from edgecl.api import Model
    from edgecl.host.export import ExportReport
    from edgecl.host.train import TrainReport
    from edgecl.runtime.service import LearnResult, Prediction

__all__ = ["EdgeclError", "LearnResult", "Model", "Prediction", "__version__", "export", "load", "train"]


def load(bundle: str | os.PathLike, runtime: str | None = None, min_score: float | None = None) -> Model:
    """Open a bundle for classifying and learning; `runtime` forces tensorrt, onnxruntime or torch;
    `min_score` (0..1) sets when a prediction says "unknown" (default: the bundle's calibration; 0: never)."""
    from edgecl.api import load as load_model

    return load_model(bundle, runtime, min_score)


def train(
    data: str | os.PathLike,
    bundle: str | os.PathLike,
    *,
    backbone: str = "tf_efficientnet_lite0",
    weights: str | os.PathLike | None = None,
    random_init: bool = False,
    img_size: int | None = None,
    global_pool: str | None = None,
    method: str = "edgecl",
    epochs: int | None = None,
    slow_epochs: int | None = None,
    settings: dict[str, Any] | None = None,
    device: str | None = None,
    seed: int = 0,
    force: bool = False,
    lock_timeout: float = 60.0,
    show_progress: bool = False,
) -> TrainReport:
    """Host: a new bundle at `bundle` from DATA/<class>/<images> (session 0). `settings` sets method
    settings by dotted name ({"tosca.epochs": 10}; `edgecl methods` lists them); `slow_epochs` the epochs
    of SAFE's slow learner (edgecl, safe; 0: off); `device` defaults to CUDA when there is a GPU. `img_size`
    builds the backbone at that input size (default: timm's), `global_pool` chooses its embedding (a ViT's
    "token" [CLS] or "avg" of its patch tokens)."""
    from edgecl.core.methods import METHODS, method_class
    from edgecl.host.train import train as train_bundle

    if slow_epochs is not None:
        if isinstance(slow_epochs, bool) or not hasattr(slow_epochs, "__index__") or slow_epochs < 0:
            raise EdgeclError(f"{param('slow_epochs')} {slow_epochs!r}: give a whole number, 0 or more (0: off)")
        setting = method_class(method).slow_epochs_setting
        if setting is None:
            having = " and ".join(sorted(n for n, c in METHODS.items() if c.slow_epochs_setting))
            raise EdgeclError(f"{param('slow_epochs')}: method {method} has no slow learner ({having} have)")
        settings = {**(settings or {}), setting: operator.index(slow_epochs)}
    return train_bundle(
        Path(data),
        Path(bundle),
        backbone=backbone,
        weights=None if weights is None else Path(weights),
        random_init=random_init,
        img_size=img_size,
        global_pool=global_pool,
        method=method,
        epochs=epochs,
        settings=settings,
        device=device,
        seed=seed,
        force=force,
        lock_timeout=lock_timeout,
        show_progress=show_progress,
    )


def export(
    bundle: str | os.PathLike,
    target: str,
    images: str | os.PathLike | Sequence[str | os.PathLike] = (),
    *,
    lock_timeout: float = 60.0,
    show_progress: bool = False,
) -> ExportReport:
    """Host: the bundle's backbone -> backbone.onnx (and its heads -> heads.onnx) for a target
    profile, checked against PyTorch on `images` (a file or folder, or a list of them) when given."""
    from edgecl.host.export import export_bundle

    paths = [images] if isinstance(images, (str, os.PathLike)) else images
    return export_bundle(
        Path(bundle), target, [Path(p) for p in paths], lock_timeout=lock_timeout, show_progress=show_progress
    )


def __dir__() -> list[str]:
    return sorted(__all__)


def __getattr__(name: str):
    if name == "Model":
        from edgecl.api import Model

        return Model
    if name in ("Prediction", "LearnResult"):
        from edgecl.runtime import service

        return getattr(service, name)
    raise AttributeError(f"module 'edgecl' has no attribute {name!r}")
