"""Where a run's time went: per-candidate merge and scoring seconds, read from a run's store.

    python benchmarks/run_cost.py runs/quickstart
"""

from __future__ import annotations

import statistics
import sys
from pathlib import Path

from evomerge.store import RunDir


def main(run_dir: str) -> None:
    store = RunDir.open(Path(run_dir)).store()
    evs = [e for e in store.evaluations("search") if e.status == "ok"]
    store.close()
    if not evs:
        sys.exit(f"{run_dir}: no successful search evaluations")
    merge = [e.merge_seconds for e in evs]
    score = [e.eval_seconds for e in evs]
    per = [m + s for m, s in zip(merge, score, strict=True)]
    print(f"{len(evs)} search evaluations")
    print(f"merge   median {statistics.median(merge) * 1000:7.1f} ms")
    print(f"score   median {statistics.median(score) * 1000:7.1f} ms")
    print(f"merge share of candidate time: {sum(merge) / sum(per):.1%}")
    print(f"candidates per minute: {60 / statistics.mean(per):.1f}")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "runs/quickstart")
