"""Device commands: learn a session, classify images, watch a folder, describe a bundle, build an engine."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.table import Table

from edgecl.cli.messages import (
    cli_message,
    count,
    err,
    listed,
    out,
    print_table,
    user_errors,
    warn_skipped,
    writes_bundle,
)
from edgecl.cli.options import (
    DEFAULT_BUNDLE,
    BundleOption,
    LockTimeoutOption,
    MinScoreOption,
    QuietOption,
    RuntimeOption,
)
from edgecl.errors import EdgeclError


@writes_bundle
def learn(
    images: Annotated[Path, typer.Option("--images", "-i", help="One class's images, or a folder of class folders.")],
    label: Annotated[Optional[str], typer.Option("--label", help="Class name (default: the folder's name).")] = None,
    bundle: BundleOption = DEFAULT_BUNDLE,
    runtime: RuntimeOption = None,
    lock_timeout: LockTimeoutOption = 60.0,
    json_out: Annotated[bool, typer.Option("--json", help="Print the result as JSON.")] = False,
    quiet: QuietOption = False,
) -> None:
    """Device: learn the classes in a folder as one new session."""
    from edgecl.runtime.service import learn as learn_session

    result = learn_session(
        bundle, images, label=label, runtime=runtime, lock_timeout=lock_timeout, show_progress=not quiet
    )
    warn_skipped(result.skipped)
    if json_out:
        out.print_json(
            json.dumps(
                {
                    **{k: v for k, v in asdict(result.session).items() if k != "known_histogram"},  # `info --json`
                    "lookalikes": {new: {"known": k, "closeness": c} for new, (k, c) in result.lookalikes.items()},
                    "skipped": result.skipped,
                    "runtime": result.runtime,
                    "seconds_backbone": result.seconds_backbone,
                    "seconds_heads": result.seconds_heads,
                }
            )
        )
        return
    s = result.session
    what = " and ".join(
        part
        for part in (
            f"learned {', '.join(s.classes)}" if s.classes else "",
            f"added to {', '.join(s.added_to)}" if s.added_to else "",
        )
        if part
    )
    out.print(
        f"{what} as session {s.index} of {bundle} from {count(s.images, 'image')} "
        f"(backbone {result.seconds_backbone:.1f} s on {result.runtime}, heads {result.seconds_heads:.1f} s)"
    )
    from edgecl.core.bundle import Bundle

    _export_hint(bundle, result.runtime, Bundle.open(bundle).manifest.export)


def _export_hint(bundle: Path, runtime: str, export: dict | None) -> None:
    """After a command that ran the backbone: say why it ran in PyTorch when the bundle was never exported (not
    said before the command ends, where a later error must stay the only line)."""
    if runtime == "torch" and not export:
        err.print(
            f"note: {bundle} is not exported, so PyTorch ran its backbone; `edgecl export --target cpu` "
            "(or the device's target) makes the ONNX graph that runs faster"
        )


def _plain(prediction, top_k: int) -> str:
    """path, label, score; for `unknown` the score is its known score (under the threshold), and the top-k
    columns then start at the best class, which the label does not name."""
    from edgecl.core.images import UNKNOWN

    unknown = prediction.label == UNKNOWN
    line = f"{_field(prediction.path)}\t{_field(prediction.label)}\t"
    line += f"{prediction.known:.4f}" if unknown else f"{prediction.score:.4f}"
    if top_k > 1:
        line += "".join(f"\t{_field(t['label'])}\t{t['score']:.4f}" for t in prediction.top_k[0 if unknown else 1 :])
    return line


def _field(text: str) -> str:
    """A tab-separated column: a tab or line break in a file name must not start a new column or line."""
    return text.replace("\\", "\\\\").replace("\t", "\\t").replace("\n", "\\n").replace("\r", "\\r")


@user_errors
def classify(
    paths: Annotated[list[Path], typer.Argument(metavar="PATH", help="Image files or folders (searched recursively).")],
    bundle: BundleOption = DEFAULT_BUNDLE,
    top_k: Annotated[
        int,
        typer.Option(
            "--top-k",
            "-k",
            min=1,
            metavar="K",
            help="Also print the next best labels, up to K classes in all, as label and score columns "
            "(all K after an `unknown`).",
        ),
    ] = 1,
    json_out: Annotated[
        bool,
        typer.Option(
            "--json",
            help="Print a JSON list of {path, label, score, top_k, known}: score is the top class's probability, "
            "unknown or not; known is what --min-score is compared with.",
        ),
    ] = False,
    runtime: RuntimeOption = None,
    min_score: MinScoreOption = None,
    quiet: QuietOption = False,
) -> None:
    """Device: label images; one line per image as soon as it is done: path <TAB> label <TAB> score.

    An image that looks like none of the bundle's classes is labelled `unknown` (--min-score); its score
    column is then its known score (0..1), not a class's probability."""
    from edgecl.core.bundle import Bundle
    from edgecl.core.images import find_images
    from edgecl.runtime.service import Classifier, Prediction

    Bundle.open(bundle)  # a bad --bundle is reported before the images are searched
    images = find_images(paths)
    classifier = Classifier(bundle, runtime, min_score=min_score)
    skipped, done = [], 0
    if json_out:
        out.file.write("[")
    for item in classifier.iter_classify(images, top_k=top_k):
        if not isinstance(item, Prediction):
            skipped.append(item.reason)
            continue
        if json_out:
            out.file.write(("," if done else "") + "\n " + json.dumps(asdict(item)))
        else:
            out.file.write(_plain(item, top_k) + "\n")
        out.file.flush()
        done += 1
    if json_out:
        out.file.write("\n]\n" if done else "]\n")
    if skipped and not done:
        raise EdgeclError(f"none of the {len(skipped)} image(s) could be read: {listed(skipped)}")
    warn_skipped(skipped)
    _export_hint(bundle, classifier.embedder.runtime, classifier.bundle.manifest.export)


def _settings_changed(name: str, config: dict) -> str:
    from edgecl.cli.eval_commands import flatten
    from edgecl.core.methods import method_config

    defaults = dict(flatten(method_config(name).to_dict()))
    # what the bundle runs with: a setting it predates reads as the value it had then, not today's default
    effective = flatten(method_config(name, config).to_dict())
    changed = [f"{key}={json.dumps(value)}" for key, value in effective if defaults[key] != value]
    return f"settings other than the defaults: {', '.join(changed)}" if changed else "default settings"


@user_errors
def info(
    bundle: BundleOption = DEFAULT_BUNDLE,
    runtime: RuntimeOption = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print the manifest and the runtime as JSON.")] = False,
) -> None:
    """Classes, sessions, backbone, sizes and the runtime a bundle runs on."""
    from edgecl.core.bundle import KEEP_KNOWN, Bundle, min_score_of
    from edgecl.core.methods.interface import ContinualMethod
    from edgecl.core.session import load_method
    from edgecl.runtime.embedders import open_embedder
    from edgecl.runtime.heads import open_heads

    b = Bundle.open(bundle)
    embedder = open_embedder(b, runtime)
    method = load_method(b)
    heads = open_heads(b, method, embedder.runtime)
    m = b.manifest
    sizes = b.size_bytes()
    if json_out:
        print(
            json.dumps(
                {
                    "manifest": json.loads(m.to_json()),
                    "files": sizes,
                    "runtime": embedder.runtime,
                    "runtime_reason": cli_message(embedder.reason),
                    "passed_over": [cli_message(r) for r in embedder.passed_over],
                    "heads_runtime": heads.runtime,
                    "heads_reason": cli_message(heads.reason),
                },
                indent=1,
            )
        )
        return
    out.print(
        f"bundle     {b.path}  (format {m.format} v{m.version}, {sum(filter(None, sizes.values())) / 1e6:.1f} MB)"
    )
    out.print(
        f"backbone   {m.backbone['name']}  {m.backbone['embedding_dim']}-d  "
        f"input {'x'.join(map(str, m.preprocess['input_size'][1:]))}"
        f"  weights {m.backbone['weights_source']}"
    )
    slow = m.backbone.get("slow_learner")
    if slow:
        kept = (
            "merged into the weights"
            if not m.backbone.get("tuner")
            else f"{m.backbone['tuner']['name']} adapters kept in the graph"
        )
        out.print(
            f"           slow learner {slow['tuner']}: {count(slow['epochs'], 'epoch')} on {slow['images']} images, "
            f"{slow['seconds']:.0f} s on {slow.get('device', 'cpu')}, {kept}"
        )
    adapted = m.backbone.get("inflora")
    if adapted:
        out.print(
            f"           inflora: {count(adapted['epochs'], 'epoch')} on {adapted['images']} images, "
            f"{adapted['seconds']:.0f} s on "
            f"{adapted.get('device', 'cpu')}, merged into the weights; "
            f"{adapted['protected_fraction']:.0%} of the adapted "
            "input space in memory"
        )
    out.print(f"method     {m.method['name']}  {_settings_changed(m.method['name'], m.method['config'])}")
    power = m.heads.get("structure", {}).get("feature_power")
    if power is not None:
        chosen = " (chosen at the first session)" if m.method["config"].get("feature_power", 1) is None else ""
        out.print(f"           the heads see the embedding to the power {power:g}{chosen}")
    if m.heads.get("structure", {}).get("whiten"):
        chosen = " (chosen at the first session)" if m.method["config"].get("whiten", False) is None else ""
        out.print(f"           whitened with the first session's mean and covariance{chosen}")
    out.print(f"runtime    {embedder.runtime}: {cli_message(embedder.reason)}")
    for reason in embedder.passed_over:
        out.print(f"           not {cli_message(reason)}")
    out.print(f"heads      {heads.runtime}: {cli_message(heads.reason)}")
    calibrated = sum(sum(x.known_histogram) for x in m.sessions)
    held_out = type(method).held_out_known_scores is not ContinualMethod.held_out_known_scores
    how = "each scored against its class's mean without it" if held_out else "each by its top probability"
    if calibrated:
        out.print(
            f"unknown    when the known score is under {min_score_of(m.sessions):.2f}, which {KEEP_KNOWN:.0%} of "
            f"the {calibrated} training images pass, {how}"
        )
    elif all(x.known_histogram for x in m.sessions):
        out.print("unknown    never (no session had a class of 2 images or more to calibrate on; pass --min-score)")
    else:
        out.print("unknown    never (the bundle's sessions predate the calibration; pass --min-score)")
    if m.export:
        parity = m.export["parity"]
        out.print(
            f"export     {m.export['file']} for {m.export['target']} (opset {m.export['opset']}, "
            f"parity {parity['max_abs_diff']:.1e} "
            f"on {parity['images']} {'real' if parity['real_images'] else 'random'} inputs)"
        )
    for key, engine in m.engines.items():
        out.print(f"engine     {key} ({engine['gpu']}, built {engine['built']})")
    table = Table("session", "classes", "images", "heads s", "created")
    for s in m.sessions:
        classes = ", ".join([*s.classes, *(f"+{name}" for name in s.added_to)])
        table.add_row(str(s.index), classes, str(s.images), f"{s.stats.get('seconds', 0):.2f}", s.created)
    print_table(table)
    forgotten = [c for c in m.classes if c.forgotten]
    if forgotten:
        out.print(f"forgotten  {', '.join(f'{c.name} (session {c.session})' for c in forgotten)}: never predicted")
    changes = [h.get("change", "a change") for h in reversed(m.history)]
    out.print(
        f"undo       {count(len(m.history), 'change')} can be taken back (the bundle keeps the last {m.history_limit})"
        + (f", the last first: {'; '.join(changes)}" if changes else "")
    )
    out.print(
        "files      "
        + ", ".join(
            f"{name} {size / 1e6:.2f} MB" if size is not None else f"{name} MISSING" for name, size in sizes.items()
        )
    )


@writes_bundle
def engine_build(
    bundle: BundleOption = DEFAULT_BUNDLE,
    lock_timeout: Annotated[
        float, typer.Option("--lock-timeout", min=0, help="Seconds to wait for another writer.")
    ] = 600.0,
) -> None:
    """Device: build and store the engine for this GPU and TensorRT version."""
    from edgecl.runtime.tensorrt_engines import build_into_bundle

    report = build_into_bundle(bundle, lock_timeout=lock_timeout)
    out.print(f"built engine {report.key} in {report.seconds:.0f} s: {report.entry['file']}")


@user_errors
def watch(
    folder: Annotated[Path, typer.Argument(metavar="FOLDER", help="Folder to watch for new images.")],
    log: Annotated[Path, typer.Option("--log", help="JSON-lines file to append predictions to.")],
    bundle: BundleOption = DEFAULT_BUNDLE,
    runtime: RuntimeOption = None,
    min_score: MinScoreOption = None,
    done: Annotated[
        Optional[Path],
        typer.Option(
            "--done", help="Move classified images here, never overwriting (default: leave them); unreadable ones stay."
        ),
    ] = None,
    interval: Annotated[float, typer.Option("--interval", min=0.05, help="Seconds between polls.")] = 1.0,
    top_k: Annotated[int, typer.Option("--top-k", "-k", min=1, help="Also log the K best labels.")] = 1,
    once: Annotated[bool, typer.Option("--once", help="Classify what is there now, then exit.")] = False,
    keep_done: Annotated[
        Optional[int],
        typer.Option(
            "--keep-done",
            metavar="N",
            help="Keep at most N images in --done; the first moved there go first (default: all; 0: keep none).",
        ),
    ] = None,
    keep_done_mb: Annotated[
        Optional[float],
        typer.Option(
            "--keep-done-mb",
            metavar="MB",
            help="Keep at most MB megabytes (10^6 bytes) of images in --done; the first moved there go first.",
        ),
    ] = None,
    log_max_mb: Annotated[
        Optional[float],
        typer.Option(
            "--log-max-mb",
            metavar="MB",
            help="Rotate --log to LOG.1, LOG.2, ... before it grows past MB megabytes (default: never).",
        ),
    ] = None,
    log_keep: Annotated[
        int,
        typer.Option(
            "--log-keep",
            metavar="K",
            help="Rotated logs kept with --log-max-mb, the oldest removed (0: the log starts afresh).",
        ),
    ] = 3,
) -> None:
    """Device service: classify images dropped into FOLDER, one JSON line each in --log."""
    from edgecl.runtime.watch import watch_folder

    def started(classifier) -> None:
        err.print(
            f"watching {folder} with {bundle} ({count(len(classifier.classes), 'class')}, backbone on "
            f"{classifier.embedder.runtime}, unknown under {classifier.min_score:.2f}); predictions to {log}"
            + (f", images then moved to {done}" if done else "")
        )

    total = watch_folder(
        bundle,
        folder,
        log,
        runtime=runtime,
        min_score=min_score,
        interval=interval,
        done=done,
        top_k=top_k,
        once=once,
        keep_done=keep_done,
        keep_done_mb=keep_done_mb,
        log_max_mb=log_max_mb,
        log_keep=log_keep,
        on_start=started,
    )
    err.print(f"classified {count(total, 'image')} into {log}")
