"""Executor scaling: the quickstart's real scoring on 1 local worker against N Ray workers on the same cores, and
the scheduler alone on Ray with a fitness of fixed, known cost (a scorer that sleeps).

    python benchmarks/scaling.py                                   # both, the defaults below
    python benchmarks/scaling.py --modes real --generations 4 --repeats 2
    python benchmarks/scaling.py --modes real --zoo tiny --generations 1 --ray-workers 2  # minutes when loaded
    python benchmarks/scaling.py --modes steady cma --cost 1.0 --per-worker 16 --workers 1 2 4 8

real: the quickstart experiment (CMA-ES, merge + exact match over the search split of the default zoo), baselines
off, on the local executor with `threads` = the core count, then on a local Ray instance with N = 1, 2 and the core
count workers, each worker given its share of the cores (so its threads). Configurations alternate within each
repeat, and each keeps its median over repeats, so that a change in the machine's load hits all of them.

steady / cma (fixed cost): steady-state random search (a new candidate the moment any result lands) and CMA-ES
generations of 2N (two rounds of N), N workers at min(1, cores / N) CPUs each; the scorer sleeps `--cost` s, so the
figures measure the scheduler, not the cores.

Throughput is search evaluations per second from the search's start to its last evaluation; idle is the workers'
idle share over the search, from the driver's clock. Prints a JSON line per measurement, Markdown tables, and last
one JSON line {"summary": {"real_ray_over_local": r, "fixed_cost_min_efficiency": e}} (r: the best Ray throughput
over the local executor's; e: the lowest throughput / (N × single-worker throughput)), also written with the rows
to benchmarks/results/scaling.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import yaml
from common import print_markdown_table, spelled_out  # benchmarks/common.py (scripts run from benchmarks/)
from rich.console import Console

from evomerge.runner import Runner
from evomerge.store import read_events
from evomerge.zoo.build import PROFILES, build_zoo, write_task_data

QUICKSTART = Path(__file__).resolve().parents[1] / "experiments" / "quickstart.yaml"
RESULTS = Path(__file__).resolve().parent / "results" / "scaling.json"

SCORER = textwrap.dedent('''
    import os
    import time

    def score(model, tokenizer, task, examples):
        time.sleep(float(os.environ["EVOMERGE_BENCH_COST"]))  # the fixed, known cost of one candidate
        return [1.0] * len(examples)
''')


def timed_run(workdir: Path, name: str, exp: dict) -> dict:
    """Run the experiment; its search's evaluations, seconds, throughput, idle share and workers' threads."""
    path = workdir / f"{name}.yaml"
    path.write_text(yaml.safe_dump({**exp, "name": name}))
    Runner(path, workdir / name, console=Console(quiet=True)).run()
    events = read_events(workdir / name / "events.jsonl")
    t0 = next(e["t"] for e in events if e["event"] == "search_started")
    evals = [e for e in events if e["event"] == "evaluation" and e["kind"] == "search"]
    finished = next(e for e in events if e["event"] == "search_finished")
    busy = sum(w["busy_s"] for w in finished["workers"])
    idle = sum(w["idle_s"] for w in finished["workers"])
    seconds = evals[-1]["t"] - t0
    return {"evaluations": len(evals), "seconds": round(seconds, 2), "throughput": len(evals) / seconds,
            "idle_share": idle / (busy + idle), "threads": [w.get("threads") for w in finished["workers"]]}


# -- real scoring: the local executor against Ray on the same cores -------------------------------------------------
def quickstart(executor: dict, threads: int, generations: int, zoo: str) -> dict:
    exp = {**spelled_out(QUICKSTART), "zoo": zoo}  # written elsewhere: presets and task paths made absolute
    exp["optimizer"]["generations"] = generations
    return {**exp, "threads": threads, "baselines": {"enabled": False}, "executor": executor}


def real_mode(workdir: Path, cores: int, generations: int, repeats: int, zoo: str,
              ray_workers: list[int]) -> list[dict]:
    build_zoo(PROFILES[zoo], log=lambda *_: None)  # the quickstart's zoo, built once (~2 min on 2 cores)
    configs = [("local", 1, {"type": "local"})]
    configs += [("ray", n, {"type": "ray", "workers": n}) for n in ray_workers]
    runs: dict[tuple[str, int], list[dict]] = {}
    for rep in range(repeats):
        for executor, n, section in configs:
            r = timed_run(workdir, f"real-{executor}-{n}-{rep}", quickstart(section, cores, generations, zoo))
            runs.setdefault((executor, n), []).append(r)
            print(json.dumps({"mode": "real", "executor": executor, "workers": n, "repeat": rep, **r}), flush=True)
    rows = []
    for (executor, n), rs in runs.items():
        rows.append({"mode": "real", "executor": executor, "workers": n, "evaluations": rs[0]["evaluations"],
                     "seconds": statistics.median(r["seconds"] for r in rs),
                     "throughput": statistics.median(r["throughput"] for r in rs),
                     "idle_share": statistics.median(r["idle_share"] for r in rs), "threads": rs[0]["threads"],
                     "repeats": len(rs)})
    local = rows[0]["throughput"]
    for r in rows:
        r["over_local"] = r["throughput"] / local
    return rows


# -- fixed cost: the scheduler alone --------------------------------------------------------------------------------
def fixed_cost_experiment(tasks: Path, mode: str, workers: int, cores: int, per_worker: int) -> dict:
    total = per_worker * workers
    if mode == "steady":
        optimizer = {"type": "random", "steady_state": True, "popsize": 4, "generations": total // 4}
    else:
        optimizer = {"type": "cma", "popsize": 2 * workers, "generations": total // (2 * workers)}
    return {
        "seed": 0, "zoo": "tiny",
        "sources": {"base": "zoo:base", "models": ["zoo:add", "zoo:cipher", "zoo:reverse"]},
        "space": {"type": "layer_weights", "operator": "task_arithmetic", "granularity": "layer"},
        "optimizer": optimizer,
        "fitness": {"type": "python", "scorer": "fixed_cost:score", "tasks": {"add": str(tasks / "add")},
                    "max_examples": 4},
        "baselines": {"enabled": False},
        "executor": {"type": "ray", "workers": workers, "cpus_per_worker": min(1.0, cores / workers)},
    }


def fixed_cost_mode(workdir: Path, modes: list[str], workers: list[int], cores: int, per_worker: int) -> list[dict]:
    build_zoo(PROFILES["tiny"], log=lambda *_: None)
    write_task_data(PROFILES["tiny"], workdir / "tasks")
    (workdir / "fixed_cost.py").write_text(SCORER)
    rows = []
    for mode in modes:
        single = None
        for n in workers:
            exp = fixed_cost_experiment(workdir / "tasks", mode, n, cores, per_worker)
            r = {"mode": mode, "workers": n, **timed_run(workdir, f"{mode}-{n}", exp)}
            single = single or r["throughput"] / n  # the single-worker throughput (the first N given)
            r["speedup_vs_n_x_single"] = r["throughput"] / (n * single)
            rows.append(r)
            print(json.dumps(r), flush=True)
    return rows


def machine() -> str:
    lscpu = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout
    model = next((ln.split(":", 1)[1].strip() for ln in lscpu.splitlines() if ln.startswith("Model name")),
                 platform.processor())
    return f"{model}, {len(os.sched_getaffinity(0))} cores, load average {os.getloadavg()[0]:.1f} at the start"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--modes", nargs="+", default=["real", "steady", "cma"], choices=["real", "steady", "cma"])
    ap.add_argument("--generations", type=int, default=4, help="real: CMA-ES generations (12 candidates each)")
    ap.add_argument("--zoo", default="default", choices=sorted(PROFILES), help="real: the models (tiny: faster)")
    ap.add_argument("--ray-workers", type=int, nargs="+", help="real: Ray worker counts (default: 1, 2, the cores)")
    ap.add_argument("--repeats", type=int, default=1, help="real: rounds over the configurations (medians kept)")
    ap.add_argument("--cost", type=float, default=1.0, help="fixed cost: seconds per candidate")
    ap.add_argument("--per-worker", type=int, default=16, help="fixed cost: evaluations per worker")
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2, 4, 8], help="fixed cost: worker counts")
    args = ap.parse_args()
    os.environ["EVOMERGE_BENCH_COST"] = str(args.cost)
    cores = len(os.sched_getaffinity(0))
    info = {"machine": machine(), "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            "command": "python benchmarks/scaling.py " + " ".join(sys.argv[1:])}
    real, fixed = [], []
    with tempfile.TemporaryDirectory() as tmp:
        if "real" in args.modes:
            real = real_mode(Path(tmp), cores, args.generations, args.repeats, args.zoo,
                             args.ray_workers or sorted({1, 2, cores}))
        fixed_modes = [m for m in args.modes if m != "real"]
        if fixed_modes:
            fixed = fixed_cost_mode(Path(tmp), fixed_modes, args.workers, cores, args.per_worker)
    if real:
        print_markdown_table(
            ["executor", "workers", "threads per worker", "evaluations", "seconds", "evaluations/s",
             "throughput / local", "idle share"],
            [[r["executor"], str(r["workers"]), "/".join(map(str, r["threads"])), str(r["evaluations"]),
              f"{r['seconds']:.1f}", f"{r['throughput']:.2f}", f"{r['over_local']:.3f}",
              f"{100 * r['idle_share']:.1f}%"] for r in real])
    if fixed:
        print_markdown_table(
            ["mode", "workers", "evaluations", "seconds", "evaluations/s", "throughput / (N × single)", "idle share"],
            [[r["mode"], str(r["workers"]), str(r["evaluations"]), f"{r['seconds']:.1f}", f"{r['throughput']:.2f}",
              f"{r['speedup_vs_n_x_single']:.3f}", f"{100 * r['idle_share']:.1f}%"] for r in fixed])
    summary = {
        "real_ray_over_local": max((r["over_local"] for r in real if r["executor"] == "ray"), default=None),
        "fixed_cost_min_efficiency": min((r["speedup_vs_n_x_single"] for r in fixed), default=None),
    }
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps({"summary": summary, **info, "real": real, "fixed_cost": fixed}, indent=1) + "\n")
    print(json.dumps({"summary": summary}))


if __name__ == "__main__":
    main()
