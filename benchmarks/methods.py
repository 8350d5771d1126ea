"""Every merge method on zoo v2, at equal evaluation budgets, over seeds: the held-out score of each run's winner on
the composed task (addition posed and answered in the language) and its paired margin over a named reference row.

    EVOMERGE_HOME=/tmp/methods-home python benchmarks/methods.py                 # every method, seeds 0,1,2
    EVOMERGE_HOME=/tmp/methods-home python benchmarks/methods.py --methods ps,m2n2 --seeds 0
    python benchmarks/methods.py --table          # benchmarks/README.md's tables, from the results file

Methods (each an experiment file; each search scores 195 candidates — populations of 13, 15 generations — on the
composed task's 200 search examples, exact match; black-box: 65 + 130 queries, population 13, the service's loss on
64 of them; each black-box ablation 130 more; all methods x 3 seeds: 25 CPU-minutes on 1 thread, measured):
  ps        CMA-ES over one task-arithmetic weight per source and layer (experiments/zoo2_ps.yaml);
            reference: the best source (base, language expert or math expert, best on the held-out split)
  dfs       data-flow merge of the language expert (A) and the math expert (B) (experiments/zoo2_dfs.yaml);
            reference: the better of A and B on their own
  psdfs     data-flow merge of the same seed's PS result (A) and the math expert (experiments/zoo2_ps_dfs.yaml);
            reference: the same seed's ps record
  m2n2      M2N2 over mosaics of the two experts' task vectors (experiments/zoo2_m2n2.yaml); reference: the same
            seed's ps record (CMA-ES PS at the same budget)
  m2n2_weights  the same over mosaics of the experts' weights, the paper's form (experiments/zoo2_m2n2_weights.yaml)
  blackbox  two-stage black-box Evo-Merging over LoRA versions of the experts (experiments/zoo2_blackbox.yaml);
            reference: the best single adapter (chosen on the validation examples); its ablations recorded beside
  blackbox_best_single  the same started at the best single adapter (experiments/zoo2_blackbox_best_single.yaml)

Margins are paired over the held-out examples (each record keeps its winner's per-example correctness, so margins
against another method's record are recomputed whenever either changes). Each (method, seed) record replaces its
earlier one in benchmarks/results/methods.json and the summary is recomputed over all records there. psdfs needs the
same seed's PS run: run with ps in the same call, or give --runs-dir where an earlier call kept it. The zoo is built
once (seed 0); the seed is the search's. Ends with one JSON line {"summary": {...}} (one value per seed in each
list), also written to the results file under "summary".
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import common  # benchmarks/common.py (scripts run from benchmarks/)
import yaml
from rich.console import Console

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from evomerge.heldout import flat_per_example, paired_margin
from evomerge.runner import open_run
from evomerge.store import RunDir

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results" / "methods.json"
# method -> (its experiment file, the reference its margin is measured against)
METHODS = {
    "ps": (REPO / "experiments" / "zoo2_ps.yaml", "best_source"),
    "dfs": (REPO / "experiments" / "zoo2_dfs.yaml", "best_source"),
    "psdfs": (REPO / "experiments" / "zoo2_ps_dfs.yaml", "ps"),
    "m2n2": (REPO / "experiments" / "zoo2_m2n2.yaml", "ps"),
    "m2n2_weights": (REPO / "experiments" / "zoo2_m2n2_weights.yaml", "ps"),
    "blackbox": (REPO / "experiments" / "zoo2_blackbox.yaml", "best_adapter"),
    "blackbox_best_single": (REPO / "experiments" / "zoo2_blackbox_best_single.yaml", "best_adapter"),
}
SUMMARY_KEYS = ("ps_minus_best_source", "psdfs_minus_ps", "psdfs_minus_ps_se", "m2n2_minus_cma", "m2n2_minus_cma_se",
                "blackbox_minus_best_adapter", "blackbox_minus_best_adapter_se")
SKILLS = ("add", "encode", "decode")  # the steps of the composed task, each a task of zoo v2 on its own prompt
BLACKBOX_WINNER, BEST_ADAPTER = "Evo-Merging (denoise + scale)", "best single adapter"


def experiment(method: str, seed: int, out: Path, runs: Path, threads: int | None) -> Path:
    """The method's experiment with this seed, written to `out` with its presets spelled out (absolute paths); PS+DFS's
    model A is this seed's PS run."""
    cfg = common.spelled_out(METHODS[method][0])
    cfg["name"], cfg["seed"] = f"methods_{method}_{seed}", seed
    if threads:
        cfg["threads"] = threads
    if method == "psdfs":
        ps_run = runs / f"ps_{seed}"
        if not (ps_run / "results.json").is_file():
            raise SystemExit(f"--methods psdfs: no finished PS run of seed {seed} in {runs}; run ps with it "
                             f"(--methods ps,psdfs) or give the --runs-dir of an earlier call")
        cfg["sources"]["models"][0] = f"run:{ps_run}"
    written = out / f"{method}_{seed}.yaml"
    written.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return written


def correct_of(run_dir: Path, label: str) -> list[int]:
    """The per-example held-out correctness (0/1) of the row `label` of a run's table, from the run's store."""
    store = RunDir.open(run_dir).store()
    try:
        ev = next(e for e in store.evaluations("heldout") if e.label == label)
    finally:
        store.close()
    return [int(v) for v in flat_per_example(ev)]


def search_scores(run_dir: Path) -> dict:
    """How much the search had to go on: its candidates' scores on the search split (the best, and the share above
    zero: exact match on a task no candidate can do is a flat landscape)."""
    store = RunDir.open(run_dir).store()
    try:
        scores = [e.objective for e in store.evaluations("search") if e.status == "ok"]
    finally:
        store.close()
    return {"best": max(scores), "above_zero": round(sum(v > 0 for v in scores) / len(scores), 4)}


def winner_skills(run_dir: Path) -> dict[str, float]:
    """The winner's held-out accuracy on the composed task's steps, each on its own prompt (add, encode, decode):
    whether a merge that fails the composed task kept the skills it is made of."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from evomerge.fitness.native import encode_teacher_forced
    from evomerge.runner import run_best_model
    from evomerge.zoo.build import PROFILES, accuracy_per_task, task_splits

    path = run_best_model("winner", run_dir, Console(quiet=True))  # exported once into the run directory
    model, tok = AutoModelForCausalLM.from_pretrained(path), AutoTokenizer.from_pretrained(path)
    data = task_splits(PROFILES["zoo2"])
    enc = {t: encode_teacher_forced(tok, data[t]["heldout"]) for t in SKILLS}
    return {t: round(v, 4) for t, v in accuracy_per_task(model, enc).items()}


def _bits(correct: list[int]) -> str:
    return "".join(str(v) for v in correct)


def _versus(a: list[int], b: list[int]) -> dict:
    d, se = paired_margin(a, b)
    return {"margin": d, "margin_se": se}


def search_record(method: str, results: dict, run_dir: Path) -> dict:
    """A merge search's winner and, for a best_source reference, its margin over the best source on its own."""
    rows = results["rows"]
    evolved = rows[0]
    rec = {"heldout_examples": results["examples"], "heldout": evolved["average"], "winner": evolved["label"],
           "heldout_correct": _bits(correct_of(run_dir, evolved["label"])),
           "sources": {r["label"]: r["average"] for r in rows if r["kind"] in ("base", "source")},
           "search_evaluations": results["search"]["evaluations"], "search_scores": search_scores(run_dir),
           "winner_skills": winner_skills(run_dir)}
    best = max((r for r in rows if r["kind"] in ("base", "source")), key=lambda r: r["average"])
    within = {"label": best["label"], "heldout": best["average"], "margin": best["evolved_minus_this"],
              "margin_se": best["evolved_minus_this_stderr"]}
    if METHODS[method][1] == "best_source":
        rec.update(reference={"name": "best_source", **within}, margin=within["margin"],
                   margin_se=within["margin_se"])
    else:  # measured against the ps record in summarize(); here the best of this run's own sources (PS+DFS: A)
        rec.update(reference={"name": METHODS[method][1]}, margin=None, margin_se=None, best_own_source=within)
    return rec


def blackbox_record(results: dict, run_dir: Path) -> dict:
    """The two-stage search's merge against the best single adapter, and every other row (ablations, white-box
    baselines) with its paired margin where the row was scored through the API (white-box rows: score only)."""
    rows = {r["label"]: r for r in results["rows"]}
    single = next(label for label in rows if label.startswith(BEST_ADAPTER))
    won = correct_of(run_dir, BLACKBOX_WINNER)
    ref = correct_of(run_dir, single)
    others = {}
    for label, r in rows.items():
        if label in (BLACKBOX_WINNER, single):
            continue
        others[label] = {"heldout": r.get("average"), "validation_loss": r.get("validation_loss")}
        if not label.startswith("white-box"):
            others[label].update(_versus(won, correct_of(run_dir, label)))
    return {"heldout_examples": len(won), "heldout": rows[BLACKBOX_WINNER]["average"], "winner": BLACKBOX_WINNER,
            "heldout_correct": _bits(won), "validation_loss": rows[BLACKBOX_WINNER]["validation_loss"],
            "reference": {"name": "best_adapter", "label": single, "heldout": rows[single]["average"],
                          "validation_loss": rows[single]["validation_loss"]},
            **_versus(won, ref), "others": others, "adapters": len(results["adapters"]),
            # the winner's two stages (the ablations' stages come on top: queries_all_stages)
            "search_evaluations": rows[BLACKBOX_WINNER]["queries"], "queries_all_stages": results["queries"]["search"]}


def run_one(method: str, seed: int, tmp: Path, runs: Path, threads: int | None) -> dict:
    exp = experiment(method, seed, tmp, runs, threads)
    run_dir = runs / f"{method}_{seed}"
    shutil.rmtree(run_dir, ignore_errors=True)  # a fresh run, never a resumed one
    t = time.perf_counter()
    results = open_run(exp, run_dir, console=Console(quiet=True)).run()
    seconds = round(time.perf_counter() - t, 1)
    body = (blackbox_record(results, run_dir) if METHODS[method][1] == "best_adapter"
            else search_record(method, results, run_dir))
    return {"method": method, "seed": seed, **body, "seconds": seconds}


def link(records: list[dict]) -> None:
    """Margins against another method's record of the same seed (psdfs and m2n2 against ps), paired over the
    held-out examples; None where that record is missing."""
    ps = {r["seed"]: r for r in records if r["method"] == "ps"}
    for r in records:
        if r["reference"]["name"] != "ps":
            continue
        ref = ps.get(r["seed"])
        if ref is None or "heldout_correct" not in ref:  # (records written before the per-example scores were)
            r["reference"] = {"name": "ps"}
            r["margin"] = r["margin_se"] = None
            continue
        bits = [[int(c) for c in x["heldout_correct"]] for x in (r, ref)]
        r["reference"] = {"name": "ps", "label": ref["winner"], "heldout": ref["heldout"]}
        r.update(_versus(*bits))


def summarize(records: list[dict]) -> dict:
    link(records)  # before the file is written: the records carry these margins too
    by = {m: sorted((r for r in records if r["method"] == m and r["margin"] is not None), key=lambda r: r["seed"])
          for m in METHODS}
    out: dict[str, list[float]] = {}
    for key, method, field in (("ps_minus_best_source", "ps", "margin"), ("psdfs_minus_ps", "psdfs", "margin"),
                               ("psdfs_minus_ps_se", "psdfs", "margin_se"), ("m2n2_minus_cma", "m2n2", "margin"),
                               ("m2n2_minus_cma_se", "m2n2", "margin_se"),
                               ("blackbox_minus_best_adapter", "blackbox", "margin"),
                               ("blackbox_minus_best_adapter_se", "blackbox", "margin_se")):
        out[key] = [round(r[field], 4) for r in by[method]]
    assert tuple(out) == SUMMARY_KEYS
    return out


def store_record(rec: dict, command: str) -> dict:
    return common.store_record(RESULTS, rec, list(METHODS), summarize, command)


def _cell(heldout: float | None, margin: float | None = None, se: float | None = None) -> str:
    score = "—" if heldout is None else f"{heldout:.3f}"
    return score if margin is None else f"{score} ({margin:+.3f} ± {se:.3f})"


def _loss(loss: float | None) -> str:
    return "" if loss is None else f", loss {loss:.3f}"


def print_tables(results: dict) -> None:
    """benchmarks/README.md's tables from a results file: each method's held-out score and margin per seed; what
    its search had to go on and what its winner kept; the black-box rows."""
    records = results["records"]
    seeds = sorted({r["seed"] for r in records})
    rec = {(r["method"], r["seed"]): r for r in records}
    rows = []
    for m in METHODS:
        ref = next((rec[m, s]["reference"] for s in seeds if (m, s) in rec), {"name": METHODS[m][1]})
        rows.append([m, ref["name"], *(_cell(rec[m, s]["heldout"], rec[m, s]["margin"], rec[m, s]["margin_se"])
                                       if (m, s) in rec else "—" for s in seeds)])
    common.print_markdown_table(["method", "reference", *(f"seed {s}: held-out (− reference ± SE)" for s in seeds)],
                                rows)
    rows = []
    for m in METHODS:
        for s in seeds:
            r = rec.get((m, s))
            if r and "winner_skills" in r:
                k = r["winner_skills"]
                rows.append([m, str(s), r["winner"], f"{r['search_scores']['best']:.3f}",
                             f"{r['search_scores']['above_zero']:.2f}", *(f"{k[t]:.3f}" for t in SKILLS)])
    common.print_markdown_table(["method", "seed", "winner", "best search score", "share of candidates > 0",
                                 *SKILLS], rows)
    bb = [rec["blackbox", s] for s in seeds if ("blackbox", s) in rec]
    if bb:
        labels = [bb[0]["winner"], bb[0]["reference"]["label"].split(" (")[0], *bb[0]["others"]]
        rows = []
        for label in labels:
            cells = []
            for r in bb:
                if label == r["winner"]:
                    cells.append(_cell(r["heldout"]) + _loss(r.get("validation_loss")))
                elif r["reference"]["label"].startswith(label):
                    cells.append(f"{_cell(r['reference']['heldout'])}{_loss(r['reference'].get('validation_loss'))} "
                                 f"({r['reference']['label'].split('(')[1].rstrip(')')}; Evo-Merging − it: "
                                 f"{r['margin']:+.3f} ± {r['margin_se']:.3f})")
                else:
                    o = r["others"].get(label, {})
                    cell = _cell(o.get("heldout")) + _loss(o.get("validation_loss"))
                    if o.get("margin") is not None:
                        cell += f" (Evo-Merging − it: {o['margin']:+.3f} ± {o['margin_se']:.3f})"
                    cells.append(cell)
            rows.append([label, *cells])
        common.print_markdown_table(["black-box row", *(f"seed {r['seed']}" for r in bb)], rows)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--methods", default=",".join(METHODS), help=f"comma-separated, of {list(METHODS)}")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--threads", type=int, default=None, help="torch threads of each run (default: the experiment's)")
    ap.add_argument("--runs-dir", type=Path, default=None,
                    help="keep the runs here (default: a temporary directory, removed at the end)")
    ap.add_argument("--table", action="store_true", help="print README's tables from the results file and stop")
    args = ap.parse_args()
    if args.table:
        print_tables(json.loads(RESULTS.read_text()))
        return
    methods, seeds = args.methods.split(","), [int(s) for s in args.seeds.split(",")]
    unknown = sorted(set(methods) - set(METHODS))
    if unknown:
        ap.error(f"--methods: unknown {unknown}; expected some of {list(METHODS)}")
    methods = [m for m in METHODS if m in methods]  # ps before the methods measured against it
    command = "python benchmarks/methods.py " + " ".join(sys.argv[1:])
    summary: dict = {}
    with tempfile.TemporaryDirectory() as d:
        runs = (args.runs_dir or Path(d) / "runs").resolve()
        runs.mkdir(parents=True, exist_ok=True)
        for seed in seeds:
            for method in methods:
                rec = run_one(method, seed, Path(d), runs, args.threads)
                summary = store_record(rec, command)  # fills in margins against other records (link)
                print(json.dumps({k: v for k, v in rec.items() if k != "heldout_correct"}), flush=True)
    print(json.dumps({"summary": summary}))


if __name__ == "__main__":
    main()
