"""`edgecl watch`: classify images dropped into a folder (by a camera pipeline, scp, ...) and append
one JSON line per image to a log. The bundle is reloaded when a `learn` changes it.

A file is classified again whenever it changes (a camera that rewrites latest.jpg). An unreadable
one is logged once it has failed and then stayed unchanged for a pass, so a frame caught while still
being written is simply read again; it stays where it is until it changes."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Callable

from edgecl.core import bundle as bundles
from edgecl.core.bundle import MANIFEST
from edgecl.errors import EdgeclError
from edgecl.core.images import is_image_file, require_folder
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


def _free_path(folder: Path, name: str) -> Path:
    """folder/name, or folder/stem-1.ext, -2, ... when that is taken: `--done` never overwrites."""
    target, stem, suffix, n = folder / name, Path(name).stem, Path(name).suffix, 0
    while target.exists():
        n += 1
        target = folder / f"{stem}-{n}{suffix}"
    return target


def watch_folder(
    bundle_path: Path,
    folder: Path,
    log: Path,
    *,
    runtime: str | None = None,
    interval: float = 1.0,
    settle: float = 0.5,
    done: Path | None = None,
    top_k: int = 1,
    once: bool = False,
    should_stop: Callable[[], bool] = lambda: False,
) -> int:
    """Poll `folder`; returns the number of images classified when stopped (or after one pass with once)."""
    folder = require_folder(folder)
    if log.is_dir():
        raise EdgeclError(f"--log {log}: is a folder; give the file to append to")
    if done is not None and done.exists() and not done.is_dir():
        raise EdgeclError(f"--done {done}: exists and is not a folder")
    if done is not None and done.resolve() == folder.resolve():  # each move would be a new file to classify, forever
        raise EdgeclError(f"--done {done}: is the watched folder; give another folder (a subfolder of it is fine)")
    if done is not None:
        done.mkdir(parents=True, exist_ok=True)
    log.parent.mkdir(parents=True, exist_ok=True)
    manifest = Path(bundle_path) / MANIFEST
    # The manifest's version is read before the bundle: a learn committing during the load is seen next pass.
    version = _version(manifest)
    classifier = Classifier(bundle_path, runtime)
    seen: dict[Path, tuple[int, int]] = {}  # what each file was when last read
    failed: dict[Path, tuple[tuple[int, int], str]] = {}  # unreadable last pass, not logged yet
    count = 0
    while not should_stop():
        latest = _version(manifest)
        if latest is not None and latest != version:  # None: `train --force` is swapping the bundle in
            version, classifier = latest, Classifier(bundle_path, runtime)
        now = time.time()
        current = {p: _version(p) for p in sorted(folder.iterdir()) if is_image_file(p)}
        seen = {p: v for p, v in seen.items() if p in current}
        unreadable = {p: reason for p, (v, reason) in failed.items() if current.get(p) == v}
        seen.update((p, current[p]) for p in unreadable)
        failed = {}
        ready = [p for p, v in current.items() if v is not None and seen.get(p) != v and (once or _settled(v, settle, now))]
        lines, classified = [], set()
        stamp = bundles.now()
        if ready:
            predictions, skipped = classifier.classify(ready, top_k=top_k, show_progress=False)
            lines = [{"time": stamp, "path": p.path, "label": p.label, "score": p.score, "top_k": p.top_k,
                      "runtime": classifier.embedder.runtime, "classes": len(classifier.classes)} for p in predictions]
            classified = {p.path for p in predictions}
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
            with open(log, "a") as handle:
                handle.writelines(json.dumps(line) + "\n" for line in lines)
        for path in (p for p in ready if str(p) in classified):
            if done is not None and path.exists():
                shutil.move(str(path), _free_path(done, path.name))
            else:
                seen[path] = current[path]
        if once:
            break
        time.sleep(interval)
    return count
