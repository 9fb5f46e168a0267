"""Host commands: train a bundle, export it for a target, adapt its backbone (InfLoRA)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from edgecl.cli.messages import count, err, out, warn_skipped, writes_bundle
from edgecl.cli.options import (
    DEFAULT_BUNDLE,
    BackboneOption,
    BundleOption,
    DeviceOption,
    EpochsOption,
    LockTimeoutOption,
    QuietOption,
    RandomInitOption,
    SetOption,
    WeightsOption,
    parse_settings,
)

ImgSizeOption = Annotated[
    Optional[int],
    typer.Option(
        "--img-size",
        metavar="N",
        help="Input size in pixels the backbone is built at (a ViT: a multiple of its patch "
        "size, its position embeddings resampled; a CNN: the preprocessing's size). Default: timm's (518 for DINOv2).",
    ),
]
GlobalPoolOption = Annotated[
    Optional[str],
    typer.Option(
        "--global-pool",
        metavar="POOL",
        help="The embedding: token (a ViT's [CLS]), avg (the mean of its normed patch "
        "tokens), max, avgmax. Default: the model's own.",
    ),
]


@writes_bundle
def train(
    data: Annotated[Path, typer.Argument(metavar="DATA", help="Image folder: DATA/<class name>/<images>.")],
    bundle: Annotated[Path, typer.Option("--bundle", "-b", "--out", "-o", help="Bundle directory to create.")],
    backbone: BackboneOption = "tf_efficientnet_lite0",
    weights: WeightsOption = None,
    random_init: RandomInitOption = False,
    img_size: ImgSizeOption = None,
    global_pool: GlobalPoolOption = None,
    method: Annotated[
        str,
        typer.Option(
            "--method",
            help="Continual-learning method: edgecl, tosca, safe, simplecil, tosca-paper, inflora (`edgecl methods`).",
        ),
    ] = "edgecl",
    epochs: EpochsOption = None,
    slow_epochs: Annotated[
        Optional[int],
        typer.Option(
            "--slow-epochs",
            min=0,
            help="Epochs of SAFE's slow learner, which tunes the backbone on DATA (edgecl, safe; default 20; 0: off). "
            "On a 2-core CPU an epoch over 600 images takes about 70 s with Lite0, 300 s with a ViT-S at 224 px.",
        ),
    ] = None,
    settings: SetOption = None,
    device: DeviceOption = None,
    seed: Annotated[int, typer.Option("--seed", help="Seed of every random choice (recorded in the bundle).")] = 0,
    force: Annotated[bool, typer.Option("--force", help="Replace an existing bundle.")] = False,
    lock_timeout: LockTimeoutOption = 60.0,
    quiet: QuietOption = False,
) -> None:
    """Host: create a bundle from a folder of class folders (session 0).

    With edgecl or safe this first tunes the backbone on the images (SAFE's slow learner, on a GPU
    when there is one) and merges the tuning into its weights; inflora adapts it as its first
    session and keeps its subspace memory for later `edgecl adapt` sessions."""
    import edgecl

    report = edgecl.train(
        data,
        bundle,
        backbone=backbone,
        weights=weights,
        random_init=random_init,
        img_size=img_size,
        global_pool=global_pool,
        method=method,
        epochs=epochs,
        slow_epochs=slow_epochs,
        settings=parse_settings(settings),
        device=device,
        seed=seed,
        force=force,
        lock_timeout=lock_timeout,
        show_progress=not quiet,
    )
    warn_skipped(report.skipped)
    slow = report.slow_learner
    tuned = (
        f"; slow learner {slow['tuner']} {count(slow['epochs'], 'epoch')} in {slow['seconds']:.0f} s"
        f" on {slow['device']}"
        if slow
        else ""
    )
    out.print(
        f"created {report.bundle}: {count(len(report.classes), 'class')} from {count(report.images, 'image')}, "
        f"{report.backbone} ({report.embedding_dim}-d), method {report.method} "
        f"(heads trained in {report.seconds_heads:.1f} s){tuned}"
    )


def _targets_help() -> str:
    from edgecl.host.targets import available_targets

    return (
        "Target profile: "
        + ", ".join(p.name + "".join(f" ({a})" for a in p.aliases) for p in available_targets().values())
        + "."
    )


@writes_bundle
def export(
    target: Annotated[str, typer.Option("--target", "-t", help=_targets_help())],
    bundle: BundleOption = DEFAULT_BUNDLE,
    images: Annotated[
        Optional[list[Path]],
        typer.Option(
            "--images", metavar="PATH", help="Real images (files or folders) for the parity check (repeatable)."
        ),
    ] = None,
    lock_timeout: LockTimeoutOption = 60.0,
    quiet: QuietOption = False,
) -> None:
    """Host: the bundle's backbone -> backbone.onnx and its heads -> heads.onnx for a target, each checked
    against PyTorch."""
    import edgecl
    from edgecl.host.backbone_onnx import BACKBONE_PARITY_ATOL
    from edgecl.runtime.tensorrt_engines import for_tensorrt

    report = edgecl.export(bundle, target, images or [], lock_timeout=lock_timeout, show_progress=not quiet)
    if not report.real_images:
        fix = "none of the --images could be read" if images else "pass --images DIR to check on real images"
        err.print(f"warning: parity checked on random inputs; {fix}")
    out.print(
        f"exported {report.file} ({report.size_bytes / 1e6:.1f} MB) for {report.target} in {report.seconds:.1f} s "
        f"(heads included): max |PyTorch - onnxruntime| {report.max_abs_diff:.1e} on {report.parity_images} "
        f"{'real' if report.real_images else 'random'} inputs (limit {BACKBONE_PARITY_ATOL:g})"
        + (
            "; the TensorRT engine is built on the target (`edgecl engine build`, or on first use)"
            if for_tensorrt(report.profile)
            else "; onnxruntime runs it on the target"
        )
    )
    if report.heads.data is None:
        err.print(f"warning: no heads.onnx, the heads will run in PyTorch on the device: {report.heads.error}")
    else:
        out.print(
            f"exported heads.onnx ({len(report.heads.data) / 1e3:.0f} kB): max |PyTorch - onnxruntime| "
            f"{report.heads.max_abs_diff:.1e} on the probabilities, {report.heads.seconds:.1f} s"
        )


@writes_bundle
def adapt(
    images: Annotated[Path, typer.Option("--images", "-i", help="One class's images, or a folder of class folders.")],
    label: Annotated[Optional[str], typer.Option("--label", help="Class name (default: the folder's name).")] = None,
    bundle: BundleOption = DEFAULT_BUNDLE,
    device: DeviceOption = None,
    lock_timeout: LockTimeoutOption = 60.0,
    quiet: QuietOption = False,
) -> None:
    """Host: a new session that also adapts the backbone (InfLoRA bundles), then learns the heads.

    The backbone is adapted outside the input subspace of the bundle's earlier sessions and merged;
    the bundle's export is dropped (it describes the old backbone): run `edgecl export` again.
    """
    from edgecl.host.adapt import adapt as adapt_bundle

    result = adapt_bundle(
        bundle, images, label=label, device=device, lock_timeout=lock_timeout, show_progress=not quiet
    )
    warn_skipped(result.skipped)
    s, info = result.session, result.backbone["inflora"]
    if info["final_loss"] is None:
        how = (
            f"backbone left as it was (no direction free of the earlier sessions' inputs, backbone.max_leak) "
            f"in {info['seconds']:.0f} s"
        )
    else:
        how = (
            f"backbone adapted in {info['seconds']:.0f} s along {info['directions']} of {info['direction_slots']}"
            " low-rank directions"
        )
    out.print(
        f"learned {', '.join(s.classes)} as session {s.index} of {bundle} from {count(s.images, 'image')}; {how}, "
        f"{info['protected_fraction']:.0%} of its adapted input space now in memory"
    )
    if result.dropped_export:
        out.print("the export described the old backbone and was dropped: run `edgecl export` again")
