"""What a cheaper fitness costs and what it keeps: the quickstart's search with every candidate scored on every
example (full), on a fixed random subset, with racing, with IRT-estimated accuracy, and on a stratified sample
redrawn each generation — same zoo, same candidate count, 3 seeds each, each estimator with its defaults (the end's
re-scoring raced and led by CMA-ES's final mean; sample's chosen by its surrogate over the genomes).

For each run: the held-out score of its winner, the gain over uniform task arithmetic (held-out), and the examples
scored on the search split (the warm start's known candidates, the search, and the end's re-scoring, raced or not;
held-out scoring, the same few rows for every method, is not counted). Then, from the full runs' stored scores,
the IRT estimator's error on candidates it was not fitted on (fitted on the generations before, estimated from the
anchors alone).

    python benchmarks/eval_cost.py                      # everything: 5 methods x 3 seeds (~15 min on 2 cores)
    python benchmarks/eval_cost.py --methods full,irt --seeds 0   # some; the file keeps the others' records
    python benchmarks/eval_cost.py --seeds 3,4,5,6,7,8  # more seeds: summarized apart, under "other_seeds"
    python benchmarks/eval_cost.py --methods full,sample --seeds 9,10 --results /tmp/more.json   # another file

Each (method, seed) record replaces its earlier one in the results file, and the summary is recomputed over all
records there (each method against full evaluation on the seeds both ran), so seeds can run in separate processes
(one per core, with threads: 1).

Ends with one JSON line {"summary": {"racing_ratio", "racing_gain_share", "irt_ratio", "irt_gain_share",
"sample_ratio", "sample_gain_share", "subset_ratio", ...}}, also written to benchmarks/results/eval_cost.json (a
ratio: full evaluation's examples over the method's; a gain share: the method's held-out gain over uniform task
arithmetic divided by full evaluation's; means over seeds).
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import common  # benchmarks/common.py (scripts run from benchmarks/)
import numpy as np
import yaml
from rich.console import Console

from evomerge.runner import Runner
from evomerge.store import RunDir

REPO = Path(__file__).resolve().parents[1]
QUICKSTART = REPO / "experiments" / "quickstart.yaml"
RESULTS = REPO / "benchmarks" / "results" / "eval_cost.json"
METHODS = {
    "full": {},
    "subset": {"search_subset": 30},
    "race": {"estimator": "race"},
    "irt": {"estimator": "irt"},
    "sample": {"estimator": "sample"},
}
SEARCH_KINDS = ("seed", "search", "rescore", "checkpoint")  # evaluations on the search split (seed: the warm start)


def experiment(method: str, seed: int, out: Path, threads: int | None = None) -> Path:
    cfg = common.spelled_out(QUICKSTART)  # the file is written elsewhere
    cfg["name"], cfg["seed"] = f"eval_cost_{method}_{seed}", seed
    if threads:
        cfg["threads"] = threads
    fitness = cfg["fitness"]
    fitness.update(METHODS[method])
    cfg["baselines"] = {"tuned_weights": []}  # the uniform merges only: the gain is measured against TA uniform
    path = out / f"{method}_{seed}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def examples_scored(run_dir: Path) -> int:
    store = RunDir.open(run_dir).store()
    try:
        n = 0
        for e in store.evaluations():
            if e.kind not in SEARCH_KINDS or e.worker == "cache" or not e.per_example:
                continue
            n += sum(len(v) for v in e.per_example.values())
        return n
    finally:
        store.close()


def run_one(method: str, seed: int, tmp: Path, threads: int | None = None) -> dict:
    exp = experiment(method, seed, tmp, threads)
    t = time.perf_counter()
    results = Runner(exp, tmp / f"run_{method}_{seed}", console=Console(quiet=True)).run()
    seconds = time.perf_counter() - t
    rows = {r["label"].split(" (")[0]: r for r in results["rows"]}
    evolved, uniform = results["rows"][0], next(r for r in results["rows"] if r["label"].startswith("TA uniform"))
    record = {"method": method, "seed": seed, "heldout": evolved["average"], "ta_uniform": uniform["average"],
              "gain": evolved["average"] - uniform["average"], "examples": examples_scored(tmp / f"run_{method}_{seed}"),
              "winner": results["best_candidate"], "seconds": round(seconds, 1)}
    assert "evolved" in rows
    return record


def irt_error(run_dir: Path, anchors: int = 30, dim: int = 2, warmup: int = 1) -> dict:
    """From a full run: for each generation g ≥ warmup, fit on generations < g, estimate g's candidates from their
    anchors alone, compare with their full scores (mean absolute error; Spearman rank correlation within the
    generation, which is what CMA-ES uses), against the anchors' plain mean and a random subset of equal size."""
    from evomerge.fitness.estimators import choose_anchors, fit_irt

    store = RunDir.open(run_dir).store()
    try:
        rows = [e for e in store.evaluations("search") if e.status == "ok"]
    finally:
        store.close()
    tasks = list(rows[0].per_example)
    y = np.array([[v for t in tasks for v in e.per_example[t]] for e in rows], dtype=float)
    sizes = [len(rows[0].per_example[t]) for t in tasks]
    bounds = np.cumsum([0, *sizes])
    gens = np.array([e.generation for e in rows])
    model, _ = fit_irt(y[gens < warmup], dim=dim)
    feats = np.concatenate([model.a.numpy(), model.b.numpy()[:, None]], axis=1)
    picked = np.concatenate([lo + choose_anchors(feats[lo:hi], anchors)[0] for lo, hi in zip(bounds, bounds[1:])])
    rng = np.random.default_rng(0)
    rand = np.concatenate([lo + rng.choice(hi - lo, anchors, replace=False) for lo, hi in zip(bounds, bounds[1:])])
    err = {"irt": [], "anchor_mean": [], "random_subset": []}
    rho = {k: [] for k in err}
    for g in range(warmup, gens.max() + 1):
        model, _ = fit_irt(y[gens < g], dim=dim)
        truth = y[gens == g].mean(1)
        est = {"irt": [], "anchor_mean": y[gens == g][:, picked].mean(1), "random_subset": y[gens == g][:, rand].mean(1)}
        for row in y[gens == g]:
            theta = model.ability(picked, row[picked])
            p = model.probabilities(theta[None])[0].numpy()
            full = p.copy()
            full[picked] = row[picked]
            est["irt"].append(float(np.mean([full[lo:hi].mean() for lo, hi in zip(bounds, bounds[1:])])))
        for k, v in est.items():
            v = np.asarray(v)
            err[k] += list(np.abs(v - truth))
            rho[k].append(_spearman(v, truth))
    return {k: {"mae": float(np.mean(err[k])), "spearman_within_generation": float(np.nanmean(rho[k]))} for k in err}


def _spearman(a: np.ndarray, b: np.ndarray) -> float:
    ra, rb = np.argsort(np.argsort(a)), np.argsort(np.argsort(b))
    if ra.std() == 0 or rb.std() == 0:
        return float("nan")
    return float(np.corrcoef(ra, rb)[0, 1])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--threads", type=int, default=None, help="torch threads of each run (default: the quickstart's)")
    ap.add_argument("--results", type=Path, default=RESULTS, help="the results file (default: %(default)s)")
    args = ap.parse_args()
    methods, seeds = args.methods.split(","), [int(s) for s in args.seeds.split(",")]
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        for seed in seeds:
            for method in methods:
                rec = run_one(method, seed, tmp, args.threads)
                if method == "full":
                    rec["irt_error"] = irt_error(tmp / f"run_full_{seed}")
                print(json.dumps(rec), flush=True)
                summary = store_record(rec, args.results)
    print(json.dumps({"summary": summary}))


def store_record(rec: dict, results: Path = RESULTS) -> dict:
    return common.store_record(results, rec, list(METHODS), summarize, "python benchmarks/eval_cost.py")


MAIN_SEEDS = (0, 1, 2)  # the summary's seeds; records of other seeds (a check on the noise) get a summary of their own


def summarize(records: list[dict]) -> dict:
    out = _summary([r for r in records if r["seed"] in MAIN_SEEDS])
    others = [r for r in records if r["seed"] not in MAIN_SEEDS]
    if others:
        out["other_seeds"] = {"seeds": sorted({r["seed"] for r in others}), **_summary(others)}
    return out


def _summary(records: list[dict]) -> dict:
    by = {}
    for r in records:
        by.setdefault(r["method"], []).append(r)
    if "full" not in by:
        return {}
    full = {r["seed"]: r for r in by["full"]}
    out = {}
    for method, name in (("race", "racing"), ("irt", "irt"), ("subset", "subset"), ("sample", "sample")):
        mine = [r for r in by.get(method, []) if r["seed"] in full]  # against full evaluation on the same seeds
        if mine:
            full_examples = statistics.mean(full[r["seed"]]["examples"] for r in mine)
            full_gain = statistics.mean(full[r["seed"]]["gain"] for r in mine)
            out[f"{name}_ratio"] = round(full_examples / statistics.mean(r["examples"] for r in mine), 2)
            out[f"{name}_gain_share"] = round(statistics.mean(r["gain"] for r in mine) / full_gain, 3)
    errs = [r["irt_error"] for r in by["full"] if "irt_error" in r]
    if errs:
        for k in errs[0]:
            out[f"estimator_mae_{k}"] = round(statistics.mean(e[k]["mae"] for e in errs), 4)
            out[f"estimator_spearman_{k}"] = round(statistics.mean(e[k]["spearman_within_generation"] for e in errs), 3)
    return out


if __name__ == "__main__":
    main()
