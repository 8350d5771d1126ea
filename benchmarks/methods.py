"""Every merge method on zoo v2, at equal evaluation budgets, over seeds: the held-out score of each run's winner on
the composed task (addition posed and answered in the language) and its paired margin over a named reference row.

    EVOMERGE_HOME=/tmp/methods-home python benchmarks/methods.py                 # every method here, seeds 0,1,2
    EVOMERGE_HOME=/tmp/methods-home python benchmarks/methods.py --methods ps --seeds 0

Methods so far: `ps` (CMA-ES over one task-arithmetic weight per source and layer: experiments/zoo2_ps.yaml), its
reference row the best source (the base, the language expert or the math expert, whichever scores highest on the
held-out split). DFS, PS+DFS, M2N2 and black-box merging are not measured here yet: their summary lists stay empty.

Each (method, seed) record replaces its earlier one in benchmarks/results/methods.json, and the summary is
recomputed over all records there. The zoo is built once (seed 0); the seed is the search's. Ends with one JSON
line {"summary": {...}} (one value per seed in each list), also written to the results file under "summary".
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import common  # benchmarks/common.py (scripts run from benchmarks/)
import yaml
from rich.console import Console

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from evomerge.runner import Runner

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results" / "methods.json"
# method -> (its experiment file, the reference its margin is measured against)
METHODS = {"ps": (REPO / "experiments" / "zoo2_ps.yaml", "best_source")}
SUMMARY_KEYS = ("ps_minus_best_source", "psdfs_minus_ps", "psdfs_minus_ps_se", "m2n2_minus_cma", "m2n2_minus_cma_se",
                "blackbox_minus_best_adapter", "blackbox_minus_best_adapter_se")


def experiment(method: str, seed: int, out: Path, threads: int | None) -> Path:
    """The method's experiment with this seed, written to `out` with its presets spelled out (absolute paths)."""
    cfg = common.spelled_out(METHODS[method][0])
    cfg["name"], cfg["seed"] = f"methods_{method}_{seed}", seed
    if threads:
        cfg["threads"] = threads
    written = out / f"{method}_{seed}.yaml"
    written.write_text(yaml.safe_dump(cfg))
    return written


def run_one(method: str, seed: int, tmp: Path, threads: int | None) -> dict:
    exp = experiment(method, seed, tmp, threads)
    t = time.perf_counter()
    results = Runner(exp, tmp / f"run_{method}_{seed}", console=Console(quiet=True)).run()
    seconds = time.perf_counter() - t
    rows = results["rows"]
    evolved = rows[0]
    # the sources the merge starts from: the base and the experts
    reference = max((r for r in rows if r["kind"] in ("base", "source")), key=lambda r: r["average"])
    return {"method": method, "seed": seed, "heldout_examples": results["examples"],
            "heldout": evolved["average"], "winner": evolved["label"],
            "reference": {"name": METHODS[method][1], "label": reference["label"], "heldout": reference["average"]},
            "margin": reference["evolved_minus_this"], "margin_se": reference["evolved_minus_this_stderr"],
            "sources": {r["label"]: r["average"] for r in rows if r["kind"] in ("base", "source")},
            "search_evaluations": results["search"]["evaluations"], "seconds": round(seconds, 1)}


def summarize(records: list[dict]) -> dict:
    by = {m: sorted((r for r in records if r["method"] == m), key=lambda r: r["seed"]) for m in METHODS}
    out: dict[str, list[float]] = {k: [] for k in SUMMARY_KEYS}
    out["ps_minus_best_source"] = [round(r["margin"], 4) for r in by["ps"]]
    return out


def store_record(rec: dict, command: str) -> dict:
    return common.store_record(RESULTS, rec, list(METHODS), summarize, command)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--methods", default=",".join(METHODS), help=f"comma-separated, of {sorted(METHODS)}")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--threads", type=int, default=None, help="torch threads of each run (default: the experiment's)")
    args = ap.parse_args()
    methods, seeds = args.methods.split(","), [int(s) for s in args.seeds.split(",")]
    unknown = sorted(set(methods) - set(METHODS))
    if unknown:
        ap.error(f"--methods: unknown {unknown}; expected some of {sorted(METHODS)}")
    summary: dict = {}
    with tempfile.TemporaryDirectory() as d:
        for seed in seeds:
            for method in methods:
                rec = run_one(method, seed, Path(d), args.threads)
                print(json.dumps(rec), flush=True)
                summary = store_record(rec, "python benchmarks/methods.py " + " ".join(sys.argv[1:]))
    print(json.dumps({"summary": summary}))


if __name__ == "__main__":
    main()
