"""`edgecl watch`: classify images dropped into a folder (by a camera pipeline, scp, ...) and append
one JSON line per image to a log. The bundle is reloaded when a `learn` changes it.

A file is classified again whenever it changes (a camera that rewrites latest.jpg). An unreadable
one is logged once it has failed and then stayed unchanged for a pass, so a frame caught while still
being written is simply read again; it stays where it is until it changes.

Retention, for a device that runs for months: `done` keeps the newest images by count and/or size (the
longest there go first), and the log is rotated to log.1, log.2, ... when it would pass a size."""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path

from edgecl.core import bundle as bundles
from edgecl.core.bundle import MANIFEST
from edgecl.core.images import is_image_file, list_images, require_folder
from edgecl.errors import EdgeclError, param
from edgecl.runtime.service import Classifier


def _version(path: Path) -> tuple[int, int] | None:
    try:
        stat = path.stat()
    except FileNotFoundError:
        return None
    return stat.st_mtime_ns, stat.st_size


def _settled(version: tuple[int, int], settle: float, now: float) -> bool:
    """Written completely, as far as we can tell: untouched for `settle` seconds."""
    return now - version[0] / 1e9 >= settle


def _free_path(folder: Path, name: str, taken: set[str] = frozenset()) -> Path:
    """folder/name, or folder/stem-1.ext, -2, ... when that is taken: `--done` never overwrites."""
    target, stem, suffix, n = folder / name, Path(name).stem, Path(name).suffix, 0
    while target.exists() or str(target) in taken:
        n += 1
        target = folder / f"{stem}-{n}{suffix}"
    return target


def _prune(done: Path, keep: int | None, keep_bytes: int | None) -> None:
    """Remove the images longest in `done` (ctime: when moved there) until at most `keep` and `keep_bytes` remain."""
    images = []
    for entry in os.scandir(done):
        if entry.is_file(follow_symlinks=False) and is_image_file(Path(entry.path)):
            stat = entry.stat(follow_symlinks=False)
            images.append((stat.st_ctime_ns, entry.name, stat.st_size))
    images.sort()
    left, size = len(images), sum(image[2] for image in images)
    for _, name, bytes_ in images:
        if (keep is None or left <= keep) and (keep_bytes is None or size <= keep_bytes):
            break
        (done / name).unlink(missing_ok=True)
        left, size = left - 1, size - bytes_


def _rotate(log: Path, keep: int) -> None:
    """log -> log.1 -> log.2 ... -> log.<keep>, the oldest dropped; keep 0: the log starts afresh."""
    if keep == 0:
        log.unlink(missing_ok=True)
        return
    for n in range(keep - 1, 0, -1):
        older = log.with_name(f"{log.name}.{n}")
        if older.exists():
            os.replace(older, log.with_name(f"{log.name}.{n + 1}"))
    os.replace(log, log.with_name(f"{log.name}.1"))


def _append(log: Path, lines: list[dict], max_bytes: int | None, keep: int) -> None:
    data = "".join(json.dumps(line) + "\n" for line in lines)
    if max_bytes is not None:
        size = log.stat().st_size if log.exists() else 0
        if size and size + len(data.encode()) > max_bytes:
            _rotate(log, keep)
    with open(log, "a") as handle:
        handle.write(data)


def _check_retention(
    done: Path | None, keep_done: int | None, keep_done_mb: float | None, log_max_mb: float | None, log_keep: int
) -> None:
    for name, value in (("keep_done", keep_done), ("keep_done_mb", keep_done_mb)):
        if value is not None and done is None:
            raise EdgeclError(f"{param(name)} bounds the images moved to {param('done')}; give {param('done')} too")
    if keep_done is not None and keep_done < 0:
        raise EdgeclError(f"{param('keep_done')} {keep_done}: give 0 or more images")
    for name, value in (("keep_done_mb", keep_done_mb), ("log_max_mb", log_max_mb)):
        if value is not None and not value > 0:
            raise EdgeclError(f"{param(name)} {value}: give a size above 0 (megabytes)")
    if log_keep < 0:
        raise EdgeclError(f"{param('log_keep')} {log_keep}: give 0 or more rotated logs")


def watch_folder(
    bundle_path: Path,
    folder: Path,
    log: Path,
    *,
    runtime: str | None = None,
    min_score: float | None = None,
    interval: float = 1.0,
    settle: float = 0.5,
    done: Path | None = None,
    top_k: int = 1,
    once: bool = False,
    keep_done: int | None = None,
    keep_done_mb: float | None = None,
    log_max_mb: float | None = None,
    log_keep: int = 3,
    should_stop: Callable[[], bool] = lambda: False,
    on_start: Callable[[Classifier], None] = lambda classifier: None,
) -> int:
    """Poll `folder`; returns the number of images classified when stopped (or after one pass with once).
    Retention: `keep_done` images and `keep_done_mb` megabytes at most in `done`; the log rotated past
    `log_max_mb` megabytes, `log_keep` rotated logs kept. None: unbounded."""
    folder = require_folder(folder)
    _check_retention(done, keep_done, keep_done_mb, log_max_mb, log_keep)
    if log.is_dir():
        raise EdgeclError(f"{param('log')} {log}: is a folder; give the file to append to")
    if done is not None and done.exists() and not done.is_dir():
        raise EdgeclError(f"{param('done')} {done}: exists and is not a folder")
    if done is not None and done.resolve() == folder.resolve():  # each move would be a new file to classify, forever
        raise EdgeclError(
            f"{param('done')} {done}: is the watched folder; give another folder (a subfolder of it is fine)"
        )
    if done is not None:
        done.mkdir(parents=True, exist_ok=True)
    log.parent.mkdir(parents=True, exist_ok=True)
    manifest = Path(bundle_path) / MANIFEST
    # The manifest's version is read before the bundle: a learn committing during the load is seen next pass.
    version = _version(manifest)
    classifier = Classifier(bundle_path, runtime, min_score=min_score)
    on_start(classifier)
    keep_done_bytes = None if keep_done_mb is None else int(keep_done_mb * 1e6)
    log_max_bytes = None if log_max_mb is None else int(log_max_mb * 1e6)
    prune = done is not None and (keep_done is not None or keep_done_bytes is not None)
    if prune:
        _prune(done, keep_done, keep_done_bytes)
    seen: dict[Path, tuple[int, int]] = {}  # what each file was when last read
    failed: dict[Path, tuple[tuple[int, int], str]] = {}  # unreadable last pass, not logged yet
    count, first_pass = 0, True
    while not should_stop():
        latest = _version(manifest)
        if latest is not None and latest != version:  # None: `train --force` is swapping the bundle in
            version, classifier = latest, Classifier(bundle_path, runtime, reuse=classifier)
        now = time.time()
        # the same finder as classify's (links followed, each real file once); its warnings once, not every poll
        current = {p: _version(p) for p in list_images(folder, warn=first_pass)}
        first_pass = False
        seen = {p: v for p, v in seen.items() if p in current}
        unreadable = {p: reason for p, (v, reason) in failed.items() if current.get(p) == v}
        seen.update((p, current[p]) for p in unreadable)
        failed = {}
        ready = [
            p for p, v in current.items() if v is not None and seen.get(p) != v and (once or _settled(v, settle, now))
        ]
        lines, classified = [], set()
        stamp = bundles.now()
        if ready:
            predictions, skipped = classifier.classify(ready, top_k=top_k, show_progress=False)
            lines = [
                {
                    "time": stamp,
                    "path": p.path,
                    "label": p.label,
                    "score": p.score,
                    "top_k": p.top_k,
                    "known": p.known,
                    "runtime": classifier.embedder.runtime,
                    "classes": len(classifier.classes),
                }
                for p in predictions
            ]
            classified = {p.path for p in predictions}
            if done is not None:  # where each file goes, logged before it moves: a kill in between loses no prediction
                moves = {}
                for line in lines:
                    moves[line["path"]] = line["moved_to"] = str(
                        _free_path(done, Path(line["path"]).name, taken=set(moves.values()))
                    )
            count += len(predictions)
            for path in ready:
                if str(path) not in classified:
                    reason = next((r for r in skipped if r.startswith(f"{path}:")), f"{path}: unreadable")
                    if once:
                        unreadable[path] = reason
                    else:
                        failed[path] = current[path], reason
        lines += [{"time": stamp, "path": str(path), "error": reason} for path, reason in unreadable.items()]
        if lines:
            _append(log, lines, log_max_bytes, log_keep)
        for path in (p for p in ready if str(p) in classified):
            if done is not None and path.exists():
                shutil.move(str(path), moves[str(path)])
            else:
                seen[path] = current[path]
        if prune and classified:
            _prune(done, keep_done, keep_done_bytes)
        if once:
            break
        time.sleep(interval)
    return count
