"""Scheduler scaling on Ray: throughput and worker idle time for 1, 2, 4 and 8 workers, with a fitness of fixed,
known cost (a scorer that sleeps), so that it measures the scheduler and not this machine's two cores.

    python benchmarks/scaling.py --cost 1.0 --per-worker 16 --workers 1 2 4 8

Two modes: steady-state (random search; a new candidate the moment any result lands) and CMA-ES generations
(population 2N, so each generation is two rounds of N). Throughput is search evaluations per second between the
search's start and its last evaluation; idle is the workers' idle share over the search, from the driver's clock.
Prints a JSON list and a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import textwrap
from pathlib import Path

import yaml
from common import print_markdown_table  # benchmarks/common.py (scripts run from benchmarks/)
from rich.console import Console

from evomerge.runner import Runner
from evomerge.store import read_events
from evomerge.zoo.build import PROFILES, build_zoo, write_task_data

SCORER = textwrap.dedent('''
    import os
    import time

    def score(model, tokenizer, task, examples):
        time.sleep(float(os.environ["EVOMERGE_BENCH_COST"]))  # the fixed, known cost of one candidate
        return [1.0] * len(examples)
''')


def measure(workdir: Path, tasks: Path, mode: str, workers: int, cost: float, per_worker: int) -> dict:
    name = f"{mode}-{workers}"
    total = per_worker * workers
    if mode == "steady":
        optimizer = {"type": "random", "steady_state": True, "popsize": 4, "generations": total // 4}
    else:
        optimizer = {"type": "cma", "popsize": 2 * workers, "generations": total // (2 * workers)}
    exp = {
        "name": name, "seed": 0, "zoo": "tiny",
        "sources": {"base": "zoo:base", "models": ["zoo:add", "zoo:cipher", "zoo:reverse"]},
        "space": {"type": "layer_weights", "operator": "task_arithmetic", "granularity": "layer"},
        "optimizer": optimizer,
        "fitness": {"type": "python", "scorer": "fixed_cost:score", "tasks": {"add": str(tasks / "add")},
                    "max_examples": 4},
        "baselines": {"enabled": False},
        "executor": {"type": "ray", "workers": workers, "cpus_per_worker": min(1.0, 2 / workers)},
    }
    path = workdir / f"{name}.yaml"
    path.write_text(yaml.safe_dump(exp))
    Runner(path, workdir / name, console=Console(quiet=True)).run()
    events = read_events(workdir / name / "events.jsonl")
    t0 = next(e["t"] for e in events if e["event"] == "search_started")
    evals = [e for e in events if e["event"] == "evaluation" and e["kind"] == "search"]
    finished = next(e for e in events if e["event"] == "search_finished")
    busy = sum(w["busy_s"] for w in finished["workers"])
    idle = sum(w["idle_s"] for w in finished["workers"])
    seconds = evals[-1]["t"] - t0
    return {"mode": mode, "workers": workers, "evaluations": len(evals), "seconds": round(seconds, 2),
            "throughput": len(evals) / seconds, "idle_share": idle / (busy + idle)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cost", type=float, default=1.0, help="seconds per candidate")
    ap.add_argument("--per-worker", type=int, default=16, help="evaluations per worker")
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2, 4, 8])
    ap.add_argument("--modes", nargs="+", default=["steady", "cma"])
    args = ap.parse_args()
    os.environ["EVOMERGE_BENCH_COST"] = str(args.cost)
    build_zoo(PROFILES["tiny"], log=lambda *_: None)
    out = []
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        write_task_data(PROFILES["tiny"], workdir / "tasks")
        (workdir / "fixed_cost.py").write_text(SCORER)
        for mode in args.modes:
            base = None
            for n in args.workers:
                r = measure(workdir, workdir / "tasks", mode, n, args.cost, args.per_worker)
                base = base or r["throughput"] / n  # the single-worker throughput (the first N given)
                r["speedup_vs_n_x_single"] = r["throughput"] / (n * base)
                out.append(r)
                print(json.dumps(r), flush=True)
    print_markdown_table(
        ["mode", "workers", "evaluations", "seconds", "evaluations/s", "throughput / (N × single)", "idle share"],
        [[r["mode"], str(r["workers"]), str(r["evaluations"]), f"{r['seconds']:.1f}", f"{r['throughput']:.2f}",
          f"{r['speedup_vs_n_x_single']:.3f}", f"{100 * r['idle_share']:.1f}%"] for r in out])


if __name__ == "__main__":
    main()
