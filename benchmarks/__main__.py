"""python -m benchmarks [--out DIR] [--only NAME]: run the benchmarks, print them, write results.json."""

from __future__ import annotations

import argparse
import json
import platform
from pathlib import Path

from benchmarks import analytic, classify, device_loop, interference, learn_cost, training, vit

BENCHMARKS = {
    "classify": classify.run,
    "device-loop": device_loop.run,
    "learn": learn_cost.run,
    "analytic": analytic.run,
    "interference": interference.run,
    "training": training.run,
    "vit": vit.run,
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=Path("build/bench"), help="Where data and results go.")
    parser.add_argument("--only", choices=sorted(BENCHMARKS), action="append", help="Run only these (repeatable).")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    results = {"machine": {"cpu": platform.processor() or platform.machine(), "python": platform.python_version()}}
    for name in args.only or BENCHMARKS:
        print(f"\n== {name}")
        results[name] = BENCHMARKS[name](args.out)
        (args.out / "results.json").write_text(json.dumps(results, indent=1) + "\n")  # kept if a later one fails
    print(f"\nwrote {args.out / 'results.json'}")


main()
