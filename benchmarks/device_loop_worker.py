"""One `learn` in a fresh process, timed in parts: python -m benchmarks.device_loop_worker BUNDLE IMAGES whole|journal.

`whole` writes the whole heads as every session did before the journal; `journal` is the default."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

START = time.perf_counter()


def written_bytes() -> int:
    for line in Path("/proc/self/io").read_text().splitlines():
        if line.startswith("wchar:"):
            return int(line.split()[1])
    return 0


def main() -> None:
    from edgecl.core import heads_journal
    from edgecl.runtime.service import learn

    bundle, images, how = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]
    if how == "whole":
        heads_journal.JOURNAL_LIMIT = 0
    startup = time.perf_counter() - START
    before = written_bytes()
    begin = time.perf_counter()
    result = learn(bundle, images, show_progress=False)
    seconds = time.perf_counter() - begin
    print(
        json.dumps(
            {
                "wall_s": time.perf_counter() - START,
                "startup_s": startup,
                "embedding_s": result.seconds_backbone,
                "heads_s": result.seconds_heads,
                "rest_s": seconds - result.seconds_backbone - result.seconds_heads,
                "written_mb": (written_bytes() - before) / 1e6,
            }
        )
    )


if __name__ == "__main__":
    main()
