"""Forward passes per second of the M2N2 digits reproduction (evomerge.m2n2.digits), against the reference JAX code
(SakanaAI/natural_niches) run alternately in the same session, so that the ratio holds on a noisy shared machine;
and, with --curve, the learning curve of both (test accuracy of the best-train member, mean ± sd over seeds).

    python benchmarks/m2n2_digits_speed.py --passes 2000 --rounds 2 \
        --reference /path/to/natural_niches --reference-python /path/to/jax-venv/bin/python
    python benchmarks/m2n2_digits_speed.py --curve [--random numpy] [--reference ... --reference-python ...]

Both sides run M2N2 from scratch (population 20, mutation on), timed end to end inside the process (data loading
and JIT compilation included for both; the reference also scores the test split after every pass, evomerge every
250 — that is how each is run). evomerge is timed with both of its random streams: `threefry` (the reference's own
draws) and `numpy`. Without --reference only evomerge is timed, and --curve prints the reference's curve as
recorded (REFERENCE_CURVE below: measured with this script's --reference on 2026-11-30, jax 0.10.2).

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
res = run_variant(DigitsVariant(name="m2n2", init="scratch", forward_passes={n}), 42, 20, 250, load_digits_split(),
                  random="{random}")
print(time.perf_counter() - t0, res["test_acc"])
"""

CHECKPOINTS = (2000, 4000, 6000, 10000)

# test accuracy of the best-train member at CHECKPOINTS, seeds 42-46: SakanaAI/natural_niches (main at the time),
# jax 0.10.2 CPU, measured with --curve --reference on 2026-11-30 (identical to its run_natural_niches(runs=5))
REFERENCE_CURVE = {
    42: (0.5555555820465088, 0.7444444894790649, 0.819444477558136, 0.8444444537162781),
    43: (0.5166666507720947, 0.7638888955116272, 0.8222222328186035, 0.8611111044883728),
    44: (0.6027777791023254, 0.8027778267860413, 0.800000011920929, 0.8611111044883728),
    45: (0.3861111104488373, 0.6861111521720886, 0.7944444417953491, 0.8361111283302307),
    46: (0.36666667461395264, 0.7416666746139526, 0.8111111521720886, 0.8277778029441833),
}

OURS_CURVE = """
import json, torch
torch.set_num_threads(1)
from evomerge.m2n2.digits import DigitsVariant, load_digits_split, run_variant
res = run_variant(DigitsVariant(name="m2n2", init="scratch", forward_passes={n}), {seed}, 20, 2000, load_digits_split(),
                  random="{random}")
curve = dict(res["curve"])
print(json.dumps([curve[k] for k in {marks}]))
"""

# the reference's loop (natural_niches_fn.run_natural_niches, from scratch) for one seed, scored at the checkpoints
# only: its per-pass test scoring does not touch the random key
REFERENCE_CURVE_CODE = """
import os, json
os.environ["JAX_PLATFORM_NAME"] = "cpu"
import jax, jax.numpy as jnp
from model import num_params, mlp, get_acc
from data import load_data
from helper_fn import crossover, mutate
from natural_niches_fn import update_archive, sample_parents
(x_train, y_train), (x_test, y_test) = load_data()
key = jax.random.PRNGKey({seed})
archive, scores = jnp.zeros([20, num_params]), jnp.zeros([20, len(x_train)], dtype=jnp.bool)
key, key1, key2 = jax.random.split(key, 3)
for m in (jax.random.normal(key1, (num_params,)) * 0.01, jax.random.normal(key2, (num_params,)) * 0.01):
    archive, scores = update_archive(jnp.argmax(mlp(m, x_train), axis=1) == y_train, m, archive, scores, 1.0)
out = []
for i in range({n}):
    k1, k2, k3, key = jax.random.split(key, 4)
    child = mutate(crossover(sample_parents(archive, scores, k1, 1.0, True), k2), k3)
    archive, scores = update_archive(jnp.argmax(mlp(child, x_train), axis=1) == y_train, child, archive, scores, 1.0)
    if i + 1 in {marks}:
        out.append(float(get_acc(mlp(archive[jnp.argmax(scores.mean(axis=1))], x_test), y_test)))
print(json.dumps(out))
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


def last_line(python: str, code: str, cwd: Path | None, env: dict) -> str:
    out = subprocess.run([python, "-c", code], cwd=cwd, env=env, capture_output=True, text=True, check=True)
    return out.stdout.strip().splitlines()[-1]


def timed(python: str, code: str, cwd: Path | None, env: dict) -> tuple[float, float]:
    wall, acc = last_line(python, code, cwd, env).split()
    return float(wall), float(acc)


def mean_sd(values: list[float]) -> str:
    return f"{statistics.mean(values):.3f} ± {statistics.stdev(values):.3f}"


def curves(args, env: dict) -> None:
    """Per seed and mean ± sd over seeds at CHECKPOINTS, evomerge and the reference (measured or recorded)."""
    marks = tuple(k for k in CHECKPOINTS if k <= args.passes)
    rows: dict[str, dict[int, list[float]]] = {f"evomerge ({args.random})": {}}
    ref_name = "SakanaAI/natural_niches (measured)" if args.reference else "SakanaAI/natural_niches (recorded)"
    rows[ref_name] = {}
    for seed in args.seeds:
        rows[f"evomerge ({args.random})"][seed] = json.loads(last_line(
            sys.executable, OURS_CURVE.format(n=args.passes, seed=seed, random=args.random, marks=marks), None, env))
        if args.reference:
            rows[ref_name][seed] = json.loads(last_line(
                args.reference_python, REFERENCE_CURVE_CODE.format(n=args.passes, seed=seed, marks=marks),
                args.reference, env))
        elif seed in REFERENCE_CURVE:
            rows[ref_name][seed] = [a for k, a in zip(CHECKPOINTS, REFERENCE_CURVE[seed], strict=True) if k in marks]
        for name, per_seed in rows.items():
            if seed in per_seed:
                print(json.dumps({"side": name, "seed": seed, **dict(zip(map(str, marks), per_seed[seed]))}))
    print("| passes | " + " | ".join(f"{k // 1000}k" for k in marks) + " |")
    print("|---|" + "---|" * len(marks))
    for name, per_seed in rows.items():
        if len(per_seed) >= 2:
            cols = [mean_sd([v[i] for v in per_seed.values()]) for i in range(len(marks))]
            print(f"| {name}, seeds {min(per_seed)}–{max(per_seed)} | " + " | ".join(cols) + " |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--passes", type=int, default=5000)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--reference", type=Path, help="a checkout of SakanaAI/natural_niches")
    ap.add_argument("--reference-python", default=sys.executable, help="a Python with jax, optax, sklearn, tqdm")
    ap.add_argument("--curve", action="store_true", help="learning curves over --seeds instead of speed")
    ap.add_argument("--seeds", type=lambda s: [int(x) for x in s.split(",")], default=[42, 43, 44, 45, 46])
    ap.add_argument("--random", choices=["threefry", "numpy"], default="threefry", help="evomerge's draws (--curve)")
    args = ap.parse_args()
    env = {**os.environ, "TQDM_DISABLE": "1", "OMP_NUM_THREADS": "1",
           "XLA_FLAGS": "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"}
    if args.curve:
        if args.passes == 5000:  # the speed default; a curve runs to the last checkpoint
            args.passes = CHECKPOINTS[-1]
        curves(args, env)
        return
    rates: dict[str, list[float]] = {"evomerge threefry": [], "evomerge numpy": [], "reference": []}
    for r in range(args.rounds):
        sides = [("evomerge threefry", sys.executable, OURS.replace("{random}", "threefry"), None),
                 ("evomerge numpy", sys.executable, OURS.replace("{random}", "numpy"), None)]
        if args.reference:
            sides.append(("reference", args.reference_python, REFERENCE, args.reference))
        for name, py, code, cwd in sides:
            wall, acc = timed(py, code.format(n=args.passes), cwd, env)
            rates[name].append(args.passes / wall)
            print(json.dumps({"round": r, "side": name, "passes": args.passes, "wall_s": round(wall, 2),
                              "passes_per_s": round(args.passes / wall, 1), "final_test_acc": round(acc, 4)}))
    summary = {k: round(statistics.median(v), 1) for k, v in rates.items() if v}
    if "reference" in summary:
        for side in ("evomerge threefry", "evomerge numpy"):
            summary[f"ratio {side.split()[1]}"] = round(summary[side] / summary["reference"], 2)
    print(json.dumps({"median_passes_per_s": summary}))


if __name__ == "__main__":
    main()
