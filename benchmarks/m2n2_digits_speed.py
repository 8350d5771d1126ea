"""Forward passes per second of the M2N2 digits reproduction (evomerge.m2n2.digits), against the reference JAX code
(SakanaAI/natural_niches) run alternately in the same session, so that the ratio holds on a noisy shared machine.

    python benchmarks/m2n2_digits_speed.py --passes 5000 --rounds 2 \
        --reference /path/to/natural_niches --reference-python /path/to/jax-venv/bin/python

Both sides run M2N2 from scratch (population 20, mutation on), one run of `--passes` forward passes each, timed
end to end inside the process (data loading and JIT compilation included for both; the reference also scores the
test split after every pass, evomerge every 250 — that is how each is run). Without --reference only evomerge is
timed. Prints one JSON line per timing and a summary with the ratio of medians.

The reference is not part of this repository: check out github.com/SakanaAI/natural_niches and install jax, optax,
scikit-learn and tqdm in a separate environment.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

OURS = """
import time, torch
t0 = time.perf_counter()
torch.set_num_threads(1)
from evomerge.m2n2.digits import DigitsVariant, load_digits_split, run_variant
res = run_variant(DigitsVariant(name="m2n2", init="scratch", forward_passes={n}), 42, 20, 250, load_digits_split())
print(time.perf_counter() - t0, res["test_acc"])
"""

REFERENCE = """
import os, time
os.environ["JAX_PLATFORM_NAME"] = "cpu"
t0 = time.perf_counter()
from natural_niches_fn import run_natural_niches
res = run_natural_niches(runs=1, pop_size=20, total_forward_passes={n}, store_train_results=False,
                         no_matchmaker=False, no_crossover=False, no_splitpoint=False, use_pre_trained=False)
print(time.perf_counter() - t0, float(res[0]["test_values"][-1]))
"""


def timed(python: str, code: str, cwd: Path | None, env: dict) -> tuple[float, float]:
    out = subprocess.run([python, "-c", code], cwd=cwd, env=env, capture_output=True, text=True, check=True)
    wall, acc = out.stdout.strip().splitlines()[-1].split()
    return float(wall), float(acc)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--passes", type=int, default=5000)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--reference", type=Path, help="a checkout of SakanaAI/natural_niches")
    ap.add_argument("--reference-python", default=sys.executable, help="a Python with jax, optax, sklearn, tqdm")
    args = ap.parse_args()
    env = {**os.environ, "TQDM_DISABLE": "1"}
    rates: dict[str, list[float]] = {"evomerge": [], "reference": []}
    for r in range(args.rounds):
        sides = [("evomerge", sys.executable, OURS, None)]
        if args.reference:
            sides.append(("reference", args.reference_python, REFERENCE, args.reference))
        for name, py, code, cwd in sides:
            wall, acc = timed(py, code.format(n=args.passes), cwd, env)
            rates[name].append(args.passes / wall)
            print(json.dumps({"round": r, "side": name, "passes": args.passes, "wall_s": round(wall, 2),
                              "passes_per_s": round(args.passes / wall, 1), "final_test_acc": round(acc, 4)}))
    summary = {k: round(statistics.median(v), 1) for k, v in rates.items() if v}
    if len(summary) == 2:
        summary["ratio"] = round(summary["evomerge"] / summary["reference"], 2)
    print(json.dumps({"median_passes_per_s": summary}))


if __name__ == "__main__":
    main()
