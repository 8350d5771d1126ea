"""The run's last word: the evolved merge against the base, every source, the standard merges and a tuned
single-weight merge, all on the held-out split (plus the Pareto front of a multi-objective search); printed and
returned as the body of results.json (written by the run lifecycle)."""

from __future__ import annotations

import dataclasses
import itertools
import json
import math
import statistics
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

from evomerge.config import ExperimentConfig
from evomerge.errors import RunError
from evomerge.executors import Job
from evomerge.fitness.estimators import SURROGATE_MAX, surrogate_means
from evomerge.optim.pareto import pareto_front
from evomerge.recipe import FlowRecipe, Recipe, parse_recipe
from evomerge.search import CHECKPOINT_KINDS, RECOMMENDATION_META, RECOMMENDED_LABEL, SEED_KIND, Evaluator
from evomerge.store import EvalKind, Evaluation, RunStore

FRONT_HELDOUT = 20  # Pareto-front members re-scored on held-out data


class FinalReport:
    def __init__(self, cfg: ExperimentConfig, evaluator: Evaluator, names: list[str], console: Console,
                 run_dir: Path, shape: tuple = ()):
        """`shape`: the executor's (sources, layers); a data flow's rows need every model's layer count."""
        self.cfg, self.evaluator, self.names, self.console, self.run_dir = cfg, evaluator, names, console, run_dir
        self.shape = shape

    def _rows(self, store: RunStore, best: Evaluation) -> list[tuple[str, str, Recipe | FlowRecipe]]:
        if self.cfg.space.type == "data_flow":  # against each model of the flow on its own
            return [("evolved", _evolved_label(best), parse_recipe(best.recipe)),
                    *(("source", name, FlowRecipe.identity(i, n))
                      for i, (name, n) in enumerate(zip(self.names, self.shape[1], strict=True)))]
        k, b = len(self.names), self.cfg.baselines
        rows: list[tuple[str, str, Recipe]] = []
        rows.append(("evolved", _evolved_label(best), Recipe.from_json(best.recipe)))
        own = store.best(EvalKind.SEARCH)
        if best.kind == SEED_KIND and own is not None:  # a known candidate won: the search's own best, for comparison
            rows.append(("search", f"search's best ({own.label})", Recipe.from_json(own.recipe)))
        rows.append(("base", "base", Recipe.uniform("task_arithmetic", k, 0.0)))
        for i, name in enumerate(self.names):
            w = tuple(1.0 if j == i else 0.0 for j in range(k))
            rows.append(("source", name, Recipe(operator="task_arithmetic", groups={"all": {"weights": w}})))
        if b.enabled:
            rows.append(("baseline", f"TA uniform 1/{k}", Recipe.uniform("task_arithmetic", k, 1 / k)))
            rows.append(("baseline", f"TIES d={b.ties_density}",
                         Recipe.uniform("ties", k, 1.0, b.ties_density)))
            rows.append(("baseline", f"DARE-TIES d={b.dare_density}",
                         Recipe.uniform("dare_ties", k, 1.0, b.dare_density, normalize=True, seed=self.cfg.seed)))
            if b.tuned_weights:
                w, _ = self._tune_single_weight(store)
                rows.append(("tuned", f"TA tuned w={w:g}",
                             Recipe.uniform("task_arithmetic", k, w)))
        return rows

    def _tune_single_weight(self, store: RunStore) -> tuple[float, float]:
        k, grid = len(self.names), self.cfg.baselines.tuned_weights
        jobs = [Job(EvalKind.TUNE, -1, i, f"ta-w{w:g}", self.cfg.fitness.search_split,
                    Recipe.uniform("task_arithmetic", k, w))
                for i, w in enumerate(grid) if store.get(EvalKind.TUNE, -1, i, f"ta-w{w:g}") is None]
        for _ in self.evaluator.evaluate(jobs):
            pass
        # the best weight on the search split; ties go to the smaller weight
        best = max(store.evaluations(EvalKind.TUNE), key=lambda ev: (ev.objective or 0.0, -ev.idx))
        return grid[best.idx], best.objective

    def _score_all(self, store: RunStore, kind: str, items: list[tuple[str, Recipe]],
                   split: str | None = None) -> list[Evaluation]:
        """Score (label, recipe) pairs on a split (default: held-out), once each across restarts; all must
        succeed."""
        split = split or self.cfg.fitness.heldout_split
        jobs = [Job(kind, -1, i, label, split, recipe) for i, (label, recipe) in enumerate(items)
                if store.get(kind, -1, i, label) is None]
        with self.console.status(f"scoring {len(items)} models on the {split!r} split"):
            for _ in self.evaluator.evaluate(jobs):
                pass
        evals = [store.get(kind, -1, i, label) for i, (label, _) in enumerate(items)]
        failed = [e for e in evals if e.status != "ok"]
        if failed:
            raise RunError(f"held-out scoring failed for {failed[0].label}: {failed[0].error.splitlines()[0]}")
        return evals

    def _pareto_front(self, store: RunStore) -> list[dict] | None:
        """With one objective per task: the search's non-dominated candidates, best mean first, re-scored on
        held-out data (at most FRONT_HELDOUT of them)."""
        if self.cfg.n_objectives == 1:
            return None
        tasks = list(self.cfg.fitness.tasks)
        ok = [e for e in store.evaluations(EvalKind.SEARCH) if e.status == "ok"]
        front = sorted((ok[i] for i in pareto_front([[e.per_task[t] for t in tasks] for e in ok])),
                       key=lambda e: -e.objective)
        held = self._score_all(store, EvalKind.FRONT,
                               [(e.label, parse_recipe(e.recipe)) for e in front[:FRONT_HELDOUT]])
        return [{"label": e.label, "search": e.per_task, "search_objective": e.objective,
                 "heldout": h.per_task if h else None, "heldout_objective": h.objective if h else None,
                 "recipe": json.loads(e.recipe)}
                for e, h in itertools.zip_longest(front, held)]

    def _rescore(self, store: RunStore) -> list[dict] | None:
        """After a search on fewer examples (a subset, racing, IRT, a sample): its best candidates on the whole
        search split, so that a lucky draw or an estimate does not pick the winner, and those scored in full on the
        held-out split. Best on the whole search split first; candidates stopped by the re-scoring's race last."""
        f = self.cfg.fitness
        if not f.cheap:
            return None
        top = sorted((e for e in _scored(store) if e.status == "ok"), key=lambda e: -e.objective)
        if f.estimator == "sample" and f.sample.rescore == "surrogate":
            # scores smoothed over neighbouring genomes: each candidate borrows its neighbours' examples and draws
            top = _by_surrogate(top)
        elif f.estimator == "irt":  # estimates and exact scores are not on one scale: the best exact, best estimated
            exact = [e for e in top if e.examples is None][:1]
            top = exact + [e for e in top if e.examples is not None][: f.rescore_top - len(exact)]
        elif f.estimator == "sample":  # rescore: generation — each generation has its own draw, and scores compare
            # within one only: the best of each generation, the latest (where the search has come furthest) first
            best_of = {}
            for e in top:
                best_of.setdefault(e.generation, e)
            top = [best_of[g] for g in sorted(best_of, reverse=True)]
        top = top[: f.rescore_top]
        items = [(e.label, parse_recipe(e.recipe)) for e in top]
        rec = store.get_meta(RECOMMENDATION_META) if f.rescore_mean else None
        if rec is not None:  # the optimizer's recommendation first: likely the best, the race's first incumbent
            items.insert(0, (RECOMMENDED_LABEL, parse_recipe(json.dumps(json.loads(rec)["recipe"]))))
            top.insert(0, None)
        if f.rescore_race:
            full = self._race_all(store, items)
        else:
            full = self._score_all(store, EvalKind.RESCORE, items, split=f.rescore_split)
        complete = [a for a in full if a.examples is None]
        held = self._score_all(store, EvalKind.RESCORE_HELDOUT, [(a.label, parse_recipe(a.recipe)) for a in complete])
        held_by = {a.label: h for a, h in zip(complete, held, strict=True)}
        rows = []
        for e, a in zip(top, full, strict=True):
            h = held_by.get(a.label)
            rows.append({"label": a.label, "subset": e and e.objective, "full_search": a.objective,
                         "heldout": h.objective if h else None, "subset_per_task": e and e.per_task,
                         "full_search_per_task": a.per_task, "heldout_per_task": h.per_task if h else None,
                         # None: every example; else how many the race scored before it stopped the candidate
                         "rescore_examples": None if a.examples is None else sum(map(len, a.examples.values()))})
        return sorted(rows, key=lambda r: (r["rescore_examples"] is not None, -r["full_search"]))

    def _race_all(self, store: RunStore, items: list[tuple[str, Recipe | FlowRecipe]]) -> list[Evaluation]:
        """The re-scoring raced: `items` (best first) a wave of as many as there are workers at a time, each raced
        against the best of the earlier waves scored on every example (the first wave in full), stopped once it is
        shown not to beat it (fitness.race). Once each across restarts, like `_score_all`: a resumed run races the
        rest against the same incumbent."""
        kind, split = EvalKind.RESCORE, self.cfg.fitness.rescore_split
        wave = max(1, self.evaluator.executor.n_workers)
        out: list[Evaluation] = []
        with self.console.status(f"re-scoring {len(items)} models on the {split!r} split (raced)"):
            for start in range(0, len(items), wave):
                ref = max((e for e in out if e.examples is None), key=lambda e: e.objective, default=None)
                race = None if ref is None else self.evaluator.fidelity.race_spec(ref)
                batch = list(enumerate(items[start : start + wave], start))
                jobs = [dataclasses.replace(Job(kind, -1, i, label, split, recipe), race=race)
                        for i, (label, recipe) in batch if store.get(kind, -1, i, label) is None]
                for _ in self.evaluator.evaluate(jobs):
                    pass
                out += [store.get(kind, -1, i, label) for i, (label, _) in batch]
        failed = [e for e in out if e.status != "ok"]
        if failed:
            raise RunError(f"re-scoring failed for {failed[0].label}: {failed[0].error.splitlines()[0]}")
        return out

    def _best(self, store: RunStore) -> tuple[Evaluation, list[str]]:
        """The best on the search split of everything scored there: the search's candidates and the known ones it
        started from (sources, baselines; the search's own on a tie); and a warning when the search's own best
        ended below a known one."""
        own, known = store.best(EvalKind.SEARCH), store.best(SEED_KIND)
        if own is None:
            raise RunError("no successful search evaluation to report")
        if known is None or known.objective <= own.objective:
            return own, []
        return known, [f"the search's own best ({own.label}, {own.objective:.4f}) ended below {known.label} "
                       f"({known.objective:.4f}) on the {self.cfg.fitness.search_split!r} split; the evolved row is "
                       f"{known.label}"]

    def run(self, store: RunStore) -> dict:
        best, warnings = self._best(store)
        rescored = self._rescore(store)
        if rescored:  # the winner is chosen on the whole search split, never on held-out data
            label = rescored[0]["label"]
            best = next((e for e in _scored(store) if e.label == label), None) or next(
                e for e in store.evaluations(EvalKind.RESCORE) if e.label == label)  # the optimizer's recommendation
        rows = self._rows(store, best)
        evals = self._score_all(store, EvalKind.HELDOUT, [(label, recipe) for _, label, recipe in rows])
        results = _results(self.cfg, self.cfg.fitness.heldout_split, rows, evals, store)
        results["best_candidate"] = best.label
        if warnings:
            results["warnings"] = warnings
        front = self._pareto_front(store)
        if front is not None:
            results["pareto_front"] = front
        if rescored is not None:
            results["rescored"] = rescored
        checkpoints = _checkpoints(store)
        if checkpoints:
            results["checkpoints"] = checkpoints
        self.console.print(render_table(results, self.cfg.name))
        for w in warnings:
            self.console.print(f"[yellow]warning: {w}[/]")
        if front is not None:
            self.console.print(render_front(results))
        if rescored is not None:
            self.console.print(render_rescored(results))
        self.console.print(f"written to {self.run_dir / 'results.json'}; every candidate: evomerge leaderboard "
                           f"{self.run_dir}; plots: evomerge report {self.run_dir}")
        return results


def _evolved_label(best: Evaluation) -> str:
    """'evolved (g3-2)', or where no search candidate beat a known one: 'evolved (= source add, known before the
    search)'."""
    return f"evolved (= {best.label}, known before the search)" if best.kind == SEED_KIND else f"evolved ({best.label})"


def _scored(store: RunStore) -> list[Evaluation]:
    """Every candidate scored on the search split: the known ones the search started from, then its own."""
    return [*store.evaluations(SEED_KIND), *store.evaluations(EvalKind.SEARCH)]


def _by_surrogate(evals: list[Evaluation]) -> list[Evaluation]:
    """Candidates best first by their surrogate score (estimators.surrogate_means over the latest SURROGATE_MAX with
    a genome of the search's length; any other keeps its own score)."""
    dims = {len(e.genome) for e in evals if e.kind == EvalKind.SEARCH and e.genome is not None}
    with_genome = sorted((e for e in evals if e.genome is not None and {len(e.genome)} == dims),
                         key=lambda e: (e.generation, e.idx))[-SURROGATE_MAX:]
    smooth = {}
    if with_genome:
        means, _ = surrogate_means(np.array([e.genome for e in with_genome]),
                                   np.array([e.objective for e in with_genome]))
        smooth = {id(e): float(m) for e, m in zip(with_genome, means, strict=True)}
    return sorted(evals, key=lambda e: -smooth.get(id(e), e.objective))


def _checkpoints(store: RunStore) -> list[dict]:
    """The periodic re-scores (fitness.rescore_every), oldest first: per checkpoint, the best candidates then, with
    their search-split (subset) score, whole-search-split score (subset runs) and held-out score."""
    full_kind, held_kind = CHECKPOINT_KINDS
    search = {e.label: e.objective for e in store.evaluations(EvalKind.SEARCH)}
    full = {(e.generation, e.label): e.objective for e in store.evaluations(full_kind)}
    out: dict[int, list[dict]] = {}
    for e in sorted(store.evaluations(held_kind), key=lambda e: (e.generation, e.idx)):
        out.setdefault(e.generation, []).append({"label": e.label, "search": search.get(e.label),
                                                 "full_search": full.get((e.generation, e.label)),
                                                 "heldout": e.objective})
    return [{"evaluations": n, "top": rows} for n, rows in sorted(out.items())]


def flat_per_example(ev: Evaluation) -> list[int]:
    """An evaluation's per-example scores, task by task in name order (the order every row of a table shares)."""
    return [v for task in sorted(ev.per_example) for v in ev.per_example[task]]


def paired_margin(a: list[int], b: list[int]) -> tuple[float, float]:
    """mean(a − b) over the same examples and that mean's standard error (a paired comparison of two models)."""
    diff = [x - y for x, y in zip(a, b, strict=True)]
    n = len(diff)
    mean_d = sum(diff) / n
    var_d = sum((d - mean_d) ** 2 for d in diff) / max(n - 1, 1)
    return mean_d, math.sqrt(var_d / n)


def _results(cfg, split, rows, evals, store) -> dict:
    evolved = flat_per_example(evals[0])
    n = len(evolved)
    out_rows = []
    for (kind, label, recipe), ev in zip(rows, evals, strict=True):
        scores = flat_per_example(ev)
        mean_d, se_d = paired_margin(evolved, scores)
        out_rows.append({
            "kind": kind, "label": label, "average": ev.objective, "per_task": ev.per_task,
            # of the per-example scores (for exact match, sqrt(p(1 - p) / n)); a custom scorer's may lie outside [0, 1]
            "stderr": statistics.pstdev(scores) / math.sqrt(n) if n else 0.0,
            # paired over the same examples: how far the evolved merge is above this row, and that gap's stderr
            "evolved_minus_this": mean_d, "evolved_minus_this_stderr": se_d,
            "recipe": json.loads(recipe.to_json()),
        })
    search = store.evaluations(EvalKind.SEARCH)
    return {
        "split": split,
        "examples": n,
        "search": {"evaluations": len(search), "failed": sum(e.status != "ok" for e in search),
                   "best_search_objective": store.best(EvalKind.SEARCH).objective,
                   # the best of the known candidates scored first (start point, sources, baselines)
                   "best_known": ({"label": k.label, "objective": k.objective}
                                  if (k := store.best(SEED_KIND)) is not None else None),
                   "seconds": sum(e.merge_seconds + e.eval_seconds for e in search)},
        "rows": out_rows,
    }


def render_table(results: dict, name: str) -> Table:
    tasks = list(results["rows"][0]["per_task"])
    table = Table(title=f"{name}: accuracy on the {results['split']!r} split "
                        f"({results['examples']} examples)")
    table.add_column("model", no_wrap=True)
    for t in tasks:
        table.add_column(t, justify="right")
    table.add_column("average", justify="right")
    table.add_column("evolved − this", justify="right", no_wrap=True)
    for r in sorted(results["rows"], key=lambda r: -r["average"]):
        gap = "" if r["kind"] == "evolved" else f"{r['evolved_minus_this']:+.3f}±{r['evolved_minus_this_stderr']:.3f}"
        style = "bold green" if r["kind"] == "evolved" else None
        table.add_row(r["label"], *(f"{r['per_task'][t]:.3f}" for t in tasks), f"{r['average']:.3f}", gap, style=style)
    return table


def render_front(results: dict) -> Table:
    front = results["pareto_front"]
    tasks = list(front[0]["search"])
    table = Table(title=f"Pareto front of the search ({len(front)} candidates): search split / held-out split")
    table.add_column("candidate", no_wrap=True)
    for t in tasks:
        table.add_column(t, justify="right")
    for r in front:
        held = r["heldout"] or {}
        table.add_row(r["label"], *(f"{r['search'][t]:.3f} / " + (f"{held[t]:.3f}" if t in held else "–")
                                    for t in tasks))
    return table


def render_rescored(results: dict) -> Table:
    table = Table(title="The search's best candidates as the search scored them (fewer examples), on the whole "
                        "search split and on the held-out split")
    for col in ("candidate", "search score", "whole search split", "held-out"):
        table.add_column(col, justify="left" if col == "candidate" else "right", no_wrap=True)
    for r in results["rescored"]:
        whole = f"{r['full_search']:.3f}" if r.get("rescore_examples") is None else (
            f"< best, stopped after {r['rescore_examples']}")  # the race's paired estimate is not a score to show
        held = "–" if r["heldout"] is None else f"{r['heldout']:.3f}"
        table.add_row(r["label"], "–" if r["subset"] is None else f"{r['subset']:.3f}", whole, held)
    return table
