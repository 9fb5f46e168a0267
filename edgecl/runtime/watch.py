"""`edgecl watch`: classify images dropped into a folder (by a camera pipeline, scp, ...) and append
one JSON line per image to a log. The bundle is reloaded when a `learn` changes it."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Callable

from edgecl.bundle import MANIFEST
from edgecl.images import is_image_file, require_folder
from edgecl.runtime.service import Classifier


def _settled(path: Path, settle: float, now: float) -> bool:
    """Written completely, as far as we can tell: untouched for `settle` seconds."""
    try:
        return now - path.stat().st_mtime >= settle
    except FileNotFoundError:
        return False


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
    if done is not None:
        done.mkdir(parents=True, exist_ok=True)
    log.parent.mkdir(parents=True, exist_ok=True)
    manifest = Path(bundle_path) / MANIFEST
    classifier, version = Classifier(bundle_path, runtime), manifest.stat().st_mtime_ns
    seen: set[Path] = set()
    count = 0
    while not should_stop():
        if manifest.stat().st_mtime_ns != version:
            classifier, version = Classifier(bundle_path, runtime), manifest.stat().st_mtime_ns
        now = time.time()
        ready = [p for p in sorted(folder.iterdir()) if p not in seen and is_image_file(p) and (once or _settled(p, settle, now))]
        if ready:
            predictions, skipped = classifier.classify(ready, top_k=top_k, show_progress=False)
            stamp = time.strftime("%Y-%m-%dT%H:%M:%S%z")
            lines = [{"time": stamp, "path": p.path, "label": p.label, "score": p.score, "top_k": p.top_k,
                      "runtime": classifier.embedder.runtime, "classes": len(classifier.classes)} for p in predictions]
            lines += [{"time": stamp, "error": reason} for reason in skipped]
            with open(log, "a") as handle:
                handle.writelines(json.dumps(line) + "\n" for line in lines)
            count += len(predictions)
            for path in ready:
                if done is not None and path.exists():
                    shutil.move(str(path), done / path.name)
                else:
                    seen.add(path)
        if once:
            break
        time.sleep(interval)
    return count
