"""The `edgecl` command line. Host-only code (timm, training, export) is imported inside the
commands that need it, so `learn` and `classify` on a device import only the runtime."""

from __future__ import annotations

import functools
import json
import os
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Annotated, Callable, Optional

import typer
from rich.console import Console
from rich.table import Table

from edgecl import __version__
from edgecl.errors import EdgeclError

app = typer.Typer(
    help="Edge continual learning: train a base model on the host, teach the device new classes from folders of images.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)
out = Console(highlight=False, soft_wrap=True, markup=False)  # class names and paths are printed as given: bolt[m6] stays bolt[m6]
err = Console(stderr=True, highlight=False, soft_wrap=True, markup=False)

BundleOption = Annotated[
    Path,
    typer.Option("--bundle", "-b", envvar="EDGECL_BUNDLE", help="Bundle directory (default: $EDGECL_BUNDLE, else ./edgecl-bundle)."),
]
QuietOption = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars.")]


def _known_runtime(value: Optional[str]) -> Optional[str]:
    if value is not None:
        from edgecl.runtime.embedders import RUNTIMES

        if value not in RUNTIMES:
            raise typer.BadParameter(f"{value!r} is not one of {', '.join(RUNTIMES)}")
    return value


RuntimeOption = Annotated[
    Optional[str], typer.Option("--runtime", callback=_known_runtime,
                                help="Force the backbone runtime: tensorrt, onnxruntime or torch (default: the best available).")
]
BackboneOption = Annotated[str, typer.Option("--backbone", help="Any timm model name.")]
WeightsOption = Annotated[
    Optional[Path],
    typer.Option("--weights", help="Backbone weights file (safetensors or a state dict). Default: offline package, else the hub."),
]
RandomInitOption = Annotated[bool, typer.Option("--random-init", help="Random backbone weights: for testing plumbing only.")]
EpochsOption = Annotated[Optional[int], typer.Option("--epochs", min=1, help="Override the method's epochs per session.")]
SetOption = Annotated[
    Optional[list[str]],
    typer.Option("--set", metavar="KEY=VALUE", help="Override one method setting, e.g. --set safe.slow.epochs=5 or --set use_tosca=false (repeatable; `edgecl methods` lists them)."),
]
DeviceOption = Annotated[str, typer.Option("--device", help="Where the backbone trains (slow learner, InfLoRA): cpu, cuda, cuda:1.")]


def parse_settings(pairs: Optional[list[str]]) -> dict[str, str]:
    settings = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise EdgeclError(f"--set {pair}: expected KEY=VALUE")
        settings[key.strip()] = value.strip()
    return settings


def check_device(device: str) -> str:
    import torch

    try:
        parsed = torch.device(device)
    except RuntimeError as error:
        raise EdgeclError(f"--device {device}: not a device ({error})") from None
    if parsed.type == "cuda" and not torch.cuda.is_available():
        raise EdgeclError(f"--device {device}: CUDA is not available on this machine (use --device cpu)")
    if parsed.type == "cuda" and parsed.index is not None and parsed.index >= torch.cuda.device_count():
        raise EdgeclError(f"--device {device}: this machine has {torch.cuda.device_count()} CUDA device(s), cuda:0 to cuda:{torch.cuda.device_count() - 1}")
    return device


def _count(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}{'es' if word.endswith('s') else 's'}"


def _print_table(table: Table) -> None:
    Console(highlight=False, markup=False, width=max(out.width, 1000)).print(table)  # the table's own width, never cut at 80 columns


def _os_error(error: OSError) -> str:
    names = [str(n) for n in (error.filename, error.filename2) if n is not None]
    return f"{' -> '.join(names)}: {error.strerror}" if names and error.strerror else str(error)


def user_errors(command: Callable, interrupted: str = "interrupted") -> Callable:
    """EdgeclError, or an OSError (a folder that is a file, a full disk, no permission) ->
    'error: <message>' on stderr, exit 1; Ctrl-C -> exit 130."""

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except EdgeclError as error:
            err.print(f"error: {error}")
            raise typer.Exit(1) from None
        except BrokenPipeError:  # `edgecl classify dir | head`: the reader has all it wanted
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            raise typer.Exit(1) from None
        except OSError as error:
            err.print(f"error: {_os_error(error)}")
            raise typer.Exit(1) from None
        except KeyboardInterrupt:
            err.print(interrupted)
            raise typer.Exit(130) from None

    return wrapper


def writes_bundle(command: Callable) -> Callable:
    return user_errors(command, "interrupted; the bundle is unchanged")


def _listed(reasons: list[str]) -> str:
    return "; ".join(reasons[:5]) + ("; ..." if len(reasons) > 5 else "")


def warn_skipped(skipped: list[str]) -> None:
    if skipped:
        err.print(f"warning: skipped {len(skipped)} unreadable image(s): {_listed(skipped)}")


def version_callback(value: bool) -> None:
    if value:
        out.print(f"edgecl {__version__}")
        raise typer.Exit()


@app.callback()
def root(
    version: Annotated[bool, typer.Option("--version", callback=version_callback, is_eager=True, help="Print the version.")] = False,
) -> None:
    """Edge continual learning: train a base model on the host, teach the device new classes."""


@app.command()
@writes_bundle
def train(
    data: Annotated[Path, typer.Argument(metavar="DATA", help="Image folder: DATA/<class name>/<images>.")],
    out_dir: Annotated[Path, typer.Option("--out", "-o", help="Bundle directory to create.")],
    backbone: BackboneOption = "tf_efficientnet_lite0",
    weights: WeightsOption = None,
    random_init: RandomInitOption = False,
    method: Annotated[str, typer.Option("--method", help="Continual-learning method: edgecl, tosca, safe, simplecil, tosca-paper, inflora.")] = "edgecl",
    epochs: EpochsOption = None,
    settings: SetOption = None,
    device: DeviceOption = "cpu",
    seed: Annotated[int, typer.Option("--seed", help="Seed of every random choice (recorded in the bundle).")] = 0,
    force: Annotated[bool, typer.Option("--force", help="Replace an existing bundle.")] = False,
    lock_timeout: Annotated[float, typer.Option("--lock-timeout", min=0, help="With --force: seconds to wait for a learn on the old bundle.")] = 60.0,
    quiet: QuietOption = False,
) -> None:
    """Host: create a bundle from a folder of class folders (session 0).

    With edgecl or safe this first tunes the backbone on the images (SAFE's slow learner; use
    --device cuda on a GPU host) and merges the tuning into its weights; inflora adapts it as its
    first session and keeps its subspace memory for later `edgecl adapt` sessions."""
    from edgecl.host.train import train as run_train

    bundle, skipped = run_train(
        data, out_dir, backbone=backbone, weights=weights, random_init=random_init, method=method,
        epochs=epochs, settings=parse_settings(settings), device=check_device(device), seed=seed, force=force,
        lock_timeout=lock_timeout, show_progress=not quiet,
    )
    warn_skipped(skipped)
    m = bundle.manifest
    session = m.sessions[0]
    out.print(
        f"created {bundle.path}: {_count(len(m.classes), 'class')} from {_count(session.images, 'image')}, "
        f"{m.backbone['name']} ({m.backbone['embedding_dim']}-d), method {m.method['name']} "
        f"(heads trained in {session.stats['seconds']:.1f} s)"
    )


@app.command()
@writes_bundle
def learn(
    images: Annotated[Path, typer.Option("--images", "-i", help="One class's images, or a folder of class folders.")],
    label: Annotated[Optional[str], typer.Option("--label", help="Class name (default: the folder's name).")] = None,
    bundle: BundleOption = Path("edgecl-bundle"),
    runtime: RuntimeOption = None,
    lock_timeout: Annotated[float, typer.Option("--lock-timeout", min=0, help="Seconds to wait for another learner.")] = 60.0,
    json_out: Annotated[bool, typer.Option("--json", help="Print the result as JSON.")] = False,
    quiet: QuietOption = False,
) -> None:
    """Device: learn the classes in a folder as one new session."""
    from edgecl.runtime.service import learn as run_learn

    result = run_learn(bundle, images, label=label, runtime=runtime, lock_timeout=lock_timeout, show_progress=not quiet)
    warn_skipped(result.skipped)
    if json_out:
        out.print_json(json.dumps({**asdict(result.session), "skipped": result.skipped, "runtime": result.runtime,
                                   "seconds_backbone": result.seconds_backbone, "seconds_heads": result.seconds_heads}))
        return
    s = result.session
    out.print(
        f"learned {', '.join(s.classes)} as session {s.index} of {bundle} from {s.images} images "
        f"(backbone {result.seconds_backbone:.1f} s on {result.runtime}, heads {result.seconds_heads:.1f} s)"
    )


@app.command()
@writes_bundle
def adapt(
    images: Annotated[Path, typer.Option("--images", "-i", help="One class's images, or a folder of class folders.")],
    label: Annotated[Optional[str], typer.Option("--label", help="Class name (default: the folder's name).")] = None,
    bundle: BundleOption = Path("edgecl-bundle"),
    device: DeviceOption = "cpu",
    lock_timeout: Annotated[float, typer.Option("--lock-timeout", min=0, help="Seconds to wait for another writer.")] = 60.0,
    quiet: QuietOption = False,
) -> None:
    """Host: a new session that also adapts the backbone (InfLoRA bundles), then learns the heads.

    The backbone is adapted outside the input subspace of the bundle's earlier sessions and merged;
    the bundle's export is dropped (it describes the old backbone): run `edgecl export` again.
    """
    from edgecl.host.adapt import adapt as run_adapt

    result = run_adapt(bundle, images, label=label, device=check_device(device), lock_timeout=lock_timeout, show_progress=not quiet)
    warn_skipped(result.skipped)
    s, info = result.session, result.backbone["inflora"]
    if info["final_loss"] is None:
        how = f"backbone left as it was (no direction free of the earlier sessions' inputs, backbone.max_leak) in {info['seconds']:.0f} s"
    else:
        how = f"backbone adapted in {info['seconds']:.0f} s along {info['directions']} of {info['direction_slots']} low-rank directions"
    out.print(f"learned {', '.join(s.classes)} as session {s.index} of {bundle} from {s.images} images; {how}, "
              f"{info['protected_fraction']:.0%} of its adapted input space now in memory")
    if result.dropped_export:
        out.print("the export described the old backbone and was dropped: run `edgecl export` again")


@app.command()
@user_errors
def classify(
    paths: Annotated[list[Path], typer.Argument(metavar="PATH", help="Image files or folders (searched recursively).")],
    bundle: BundleOption = Path("edgecl-bundle"),
    top_k: Annotated[int, typer.Option("--top-k", "-k", min=1, help="Also list the K best labels.")] = 1,
    json_out: Annotated[bool, typer.Option("--json", help="Print a JSON list of {path, label, score, top_k}.")] = False,
    runtime: RuntimeOption = None,
    quiet: QuietOption = False,
) -> None:
    """Device: label images; one line per image: path, label, score."""
    from edgecl.runtime.service import classify as run_classify

    predictions, skipped = run_classify(bundle, paths, top_k=top_k, runtime=runtime, show_progress=not quiet)
    if skipped and not predictions:
        raise EdgeclError(f"none of the {len(skipped)} image(s) could be read: {_listed(skipped)}")
    warn_skipped(skipped)
    if json_out:
        print(json.dumps([asdict(p) for p in predictions], indent=1))
        return
    for p in predictions:
        line = f"{p.path}\t{p.label}\t{p.score:.4f}"
        if top_k > 1:
            line += "\t" + ", ".join(f"{t['label']}:{t['score']:.4f}" for t in p.top_k)
        print(line)


@app.command()
@user_errors
def info(
    bundle: BundleOption = Path("edgecl-bundle"),
    runtime: RuntimeOption = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print the manifest and the runtime as JSON.")] = False,
) -> None:
    """Classes, sessions, backbone, sizes and the runtime a bundle runs on."""
    from edgecl.core.bundle import Bundle
    from edgecl.runtime.embedders import open_embedder
    from edgecl.runtime.heads import open_heads
    from edgecl.runtime.service import load_method

    b = Bundle.open(bundle)
    embedder = open_embedder(b, runtime)
    heads = open_heads(b, load_method(b), embedder.runtime)
    m = b.manifest
    sizes = b.size_bytes()
    if json_out:
        print(json.dumps({"manifest": json.loads(m.to_json()), "files": sizes, "runtime": embedder.runtime,
                          "runtime_reason": embedder.reason, "passed_over": embedder.passed_over,
                          "heads_runtime": heads.runtime, "heads_reason": heads.reason}, indent=1))
        return
    out.print(f"bundle     {b.path}  (format {m.format} v{m.version}, {sum(filter(None, sizes.values())) / 1e6:.1f} MB)")
    out.print(f"backbone   {m.backbone['name']}  {m.backbone['embedding_dim']}-d  weights {m.backbone['weights_source']}")
    slow = m.backbone.get("slow_learner")
    if slow:
        kept = "merged into the weights" if not m.backbone.get("tuner") else f"{m.backbone['tuner']['name']} adapters kept in the graph"
        out.print(f"           slow learner {slow['tuner']}: {_count(slow['epochs'], 'epoch')} on {slow['images']} images, "
                  f"{slow['seconds']:.0f} s on {slow.get('device', 'cpu')}, {kept}")
    adapted = m.backbone.get("inflora")
    if adapted:
        out.print(f"           inflora: {_count(adapted['epochs'], 'epoch')} on {adapted['images']} images, {adapted['seconds']:.0f} s on "
                  f"{adapted.get('device', 'cpu')}, merged into the weights; {adapted['protected_fraction']:.0%} of the adapted input space in memory")
    out.print(f"method     {m.method['name']}  {_settings_changed(m.method['name'], m.method['config'])}")
    out.print(f"runtime    {embedder.runtime}: {embedder.reason}")
    for reason in embedder.passed_over:
        out.print(f"           not {reason}")
    out.print(f"heads      {heads.runtime}: {heads.reason}")
    if m.export:
        parity = m.export["parity"]
        out.print(f"export     {m.export['file']} for {m.export['target']} (opset {m.export['opset']}, parity {parity['max_abs_diff']:.1e} "
                  f"on {parity['images']} {'real' if parity['real_images'] else 'random'} inputs)")
    for key, engine in m.engines.items():
        out.print(f"engine     {key} ({engine['gpu']}, built {engine['built']})")
    table = Table("session", "classes", "images", "heads s", "created")
    for s in m.sessions:
        table.add_row(str(s.index), ", ".join(s.classes), str(s.images), f"{s.stats.get('seconds', 0):.2f}", s.created)
    _print_table(table)
    out.print("files      " + ", ".join(f"{name} {size / 1e6:.2f} MB" if size is not None else f"{name} MISSING" for name, size in sizes.items()))


def _targets_help() -> str:
    from edgecl.host.targets import available_targets

    return "Target profile: " + ", ".join(p.name + "".join(f" ({a})" for a in p.aliases) for p in available_targets().values()) + "."


@app.command("export")
@writes_bundle
def export_command(
    target: Annotated[str, typer.Option("--target", "-t", help=_targets_help())],
    bundle: BundleOption = Path("edgecl-bundle"),
    images: Annotated[Optional[list[Path]], typer.Option("--images", metavar="PATH", help="Real images (files or folders) for the parity check (repeatable).")] = None,
    lock_timeout: Annotated[float, typer.Option("--lock-timeout", min=0, help="Seconds to wait for another writer.")] = 60.0,
) -> None:
    """Host: the bundle's backbone -> backbone.onnx for a target, checked against PyTorch."""
    from edgecl.host.export import PARITY_ATOL, export_bundle

    report = export_bundle(bundle, target, images or [], lock_timeout=lock_timeout)
    if not report.real_images:
        fix = "none of the --images could be read" if images else "pass --images DIR to check on real images"
        err.print(f"warning: parity checked on random inputs; {fix}")
    out.print(
        f"exported {report.file} ({report.size_bytes / 1e6:.1f} MB) for {report.target}: max |PyTorch - onnxruntime| "
        f"{report.max_abs_diff:.1e} on {report.parity_images} {'real' if report.real_images else 'random'} inputs "
        f"(limit {PARITY_ATOL:g}), {report.seconds:.1f} s; the TensorRT engine is built on the target (`edgecl engine build`)"
    )
    if report.heads.data is None:
        err.print(f"warning: no heads.onnx, the heads will run in PyTorch on the device: {report.heads.error}")
    else:
        out.print(f"exported heads.onnx ({len(report.heads.data) / 1e3:.0f} kB): max |PyTorch - onnxruntime| {report.heads.max_abs_diff:.1e} "
                  f"on the probabilities, {report.heads.seconds:.1f} s")


engine_app = typer.Typer(help="TensorRT engines, built on the target from backbone.onnx.", no_args_is_help=True)
app.add_typer(engine_app, name="engine")


@engine_app.command("build")
@writes_bundle
def engine_build(
    bundle: BundleOption = Path("edgecl-bundle"),
    lock_timeout: Annotated[float, typer.Option("--lock-timeout", min=0, help="Seconds to wait for another writer.")] = 600.0,
) -> None:
    """Device: build and store the engine for this GPU and TensorRT version."""
    from edgecl.runtime.tensorrt_engines import build_into_bundle

    report = build_into_bundle(bundle, lock_timeout=lock_timeout)
    out.print(f"built engine {report.key} in {report.seconds:.0f} s: {report.entry['file']}")


@app.command()
@user_errors
def watch(
    folder: Annotated[Path, typer.Argument(metavar="FOLDER", help="Folder to watch for new images.")],
    log: Annotated[Path, typer.Option("--log", help="JSON-lines file to append predictions to.")],
    bundle: BundleOption = Path("edgecl-bundle"),
    runtime: RuntimeOption = None,
    done: Annotated[Optional[Path], typer.Option("--done", help="Move classified images here, never overwriting (default: leave them); unreadable ones stay.")] = None,
    interval: Annotated[float, typer.Option("--interval", min=0.05, help="Seconds between polls.")] = 1.0,
    top_k: Annotated[int, typer.Option("--top-k", "-k", min=1, help="Also log the K best labels.")] = 1,
    once: Annotated[bool, typer.Option("--once", help="Classify what is there now, then exit.")] = False,
) -> None:
    """Device service: classify images dropped into FOLDER, one JSON line each in --log."""
    from edgecl.runtime.watch import watch_folder

    count = watch_folder(bundle, folder, log, runtime=runtime, interval=interval, done=done, top_k=top_k, once=once)
    err.print(f"classified {count} image(s) into {log}")


@app.command("eval")
@user_errors
def eval_command(
    data: Annotated[Path, typer.Argument(metavar="DATA", help="DATA/train/<class>/ and DATA/test/<class>/, or DATA/<class>/ with --train-list/--test-list.")],
    init: Annotated[int, typer.Option("--init", help="Classes in the first session (B).")],
    increment: Annotated[int, typer.Option("--increment", help="Classes per later session (Inc).")],
    method: Annotated[str, typer.Option("--method", help="Method(s), comma-separated: edgecl,tosca,tosca-paper,safe,simplecil,inflora (`edgecl methods` lists them).")] = "edgecl",
    seed: Annotated[int, typer.Option("--seed", help="Shuffles the class order.")] = 1993,
    train_list: Annotated[Optional[Path], typer.Option("--train-list", help="Training images, one path relative to DATA per line.")] = None,
    test_list: Annotated[Optional[Path], typer.Option("--test-list", help="Test images, one path relative to DATA per line.")] = None,
    exclude_class: Annotated[Optional[list[str]], typer.Option("--exclude-class", metavar="NAME", help="Drop a class (repeatable).")] = None,
    backbone: BackboneOption = "tf_efficientnet_lite0",
    weights: WeightsOption = None,
    random_init: RandomInitOption = False,
    epochs: EpochsOption = None,
    settings: SetOption = None,
    joint: Annotated[bool, typer.Option("--joint", help="Also report classifiers trained on all classes at once on the frozen embeddings (NCM, logistic probe, analytic).")] = False,
    plot: Annotated[Optional[Path], typer.Option("--plot", help="Draw accuracy after each session per method into this PNG (needs matplotlib).")] = None,
    device: DeviceOption = "cpu",
    cache_dir: Annotated[Optional[Path], typer.Option("--cache-dir", help="Cache of embeddings and exported backbones (default: $EDGECL_CACHE or ~/.cache/edgecl).")] = None,
    json_file: Annotated[Optional[Path], typer.Option("--json", help="Write the results to this JSON file.")] = None,
    quiet: QuietOption = False,
) -> None:
    """Host: the class-incremental protocol B{init} Inc{increment}; accuracy after every session."""
    from edgecl.eval.protocol import evaluate

    methods = list(dict.fromkeys(m.strip() for m in method.split(",") if m.strip()))
    if not methods:
        raise EdgeclError("--method: name at least one method")
    if plot is not None:
        from edgecl.eval.plot import require_matplotlib

        require_matplotlib(plot)
    if json_file is not None and not json_file.parent.is_dir():  # checked now: an evaluation can take hours
        raise EdgeclError(f"--json {json_file}: folder {json_file.parent} does not exist")
    report = evaluate(
        data, init, increment, methods, seed=seed, train_list=train_list, test_list=test_list,
        exclude=exclude_class or [], backbone=backbone, weights=weights, random_init=random_init,
        epochs=epochs, settings=parse_settings(settings), joint=joint, device=check_device(device),
        cache_dir=cache_dir, show_progress=not quiet,
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
        table.add_row(r.method, *(f"{a:.3f}" for a in r.accuracy_per_session), f"{r.A_last:.3f}", f"{r.A_avg:.3f}", f"{r.forgetting:.3f}")
    for name, value in report.joint.items():
        table.add_row(f"joint {name}", *([""] * p["sessions"]), f"{value:.3f}", "", "", style="dim")
    _print_table(table)
    for name, stats in report.backbones.items():
        if "sessions" in stats:
            runs = stats["sessions"]
            used = [str(r["directions"]) for r in runs if "directions" in r]  # absent from sessions cached by older versions
            directions = f", low-rank directions {' / '.join(used)} of {runs[0]['direction_slots']}" if len(used) == len(runs) else ""
            out.print(f"{name}: backbone adapted in {len(runs)} sessions, {_count(runs[0]['epochs'], 'epoch')} each, "
                      f"{sum(r['seconds'] for r in runs):.0f} s{directions}, {runs[-1]['protected_fraction']:.0%} of the adapted "
                      f"layers' input space protected at the end{' (cached)' if all(r.get('cached') for r in runs) else ''}")
            continue
        out.print(f"{name}: slow learner {stats['tuner']} on {stats['images']} images, {_count(stats['epochs'], 'epoch')}, "
                  f"{stats['seconds']:.0f} s{' (cached)' if stats.get('cached') else ''}")
    if plot is not None:
        from edgecl.eval.plot import plot_sessions

        plot_sessions(report, plot)
        out.print(f"wrote {plot}")
    if json_file is not None:
        json_file.write_text(json.dumps(report.to_dict(), indent=1) + "\n")
        out.print(f"wrote {json_file}")


@app.command()
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
        for key, value in _flatten(method_config(method).to_dict()):
            out.print(f"  {key} = {json.dumps(value)}")


def _settings_changed(name: str, config: dict) -> str:
    from edgecl.core.methods import method_config

    defaults = dict(_flatten(method_config(name).to_dict()))
    changed = [f"{key}={json.dumps(value)}" for key, value in _flatten(config) if key not in defaults or defaults[key] != value]
    return f"settings other than the defaults: {', '.join(changed)}" if changed else "default settings"


def _flatten(config: dict, prefix: str = ""):
    for key, value in config.items():
        if isinstance(value, dict):
            yield from _flatten(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", value


@app.command()
@user_errors
def demo(
    workdir: Annotated[Path, typer.Option("--workdir", help="Where the demo writes images and its bundle.")] = Path("edgecl-demo"),
    train_per_class: Annotated[int, typer.Option("--train-per-class", min=1, help="Fashion-MNIST training images per class.")] = 300,
    test_per_class: Annotated[int, typer.Option("--test-per-class", min=1, help="Fashion-MNIST test images per class.")] = 100,
    slow_epochs: Annotated[Optional[int], typer.Option("--slow-epochs", min=0, help="Epochs of the slow learner (default: 20 on a GPU, 1 on a CPU; 0: off).")] = None,
    quiet: QuietOption = False,
) -> None:
    """The whole loop on Fashion-MNIST: train on 6 classes, learn 2 + 2 more, classify, report."""
    from edgecl.eval.demo import run_demo

    run_demo(workdir, train_per_class=train_per_class, test_per_class=test_per_class, slow_epochs=slow_epochs, show_progress=not quiet)


def main() -> None:
    app(prog_name="edgecl")


if __name__ == "__main__":
    sys.exit(main())
