"""The search loop: ask → decode → evaluate (durably stored) → tell, then the held-out comparison table."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import shutil
import time
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from evomerge.config import ExperimentConfig, load_experiment
from evomerge.errors import ConfigError, RunError
from evomerge.executors import Job, LocalExecutor, Worker
from evomerge.fitness.tasks import load_split
from evomerge.optim import OPTIMIZERS
from evomerge.recipe import Recipe
from evomerge.spaces import SPACES
from evomerge.store import Evaluation, RunStore
from evomerge.zoo.build import PROFILES, build_zoo

RESULTS_FILE = "results.json"


def resolve_models(cfg: ExperimentConfig, base_dir: Path, console: Console) -> tuple[Path, list[Path]]:
    """`zoo:NAME` → the cached zoo's model; anything else → a directory relative to the experiment file.

    Every reference is checked before the zoo is built (on first use), so a typo fails in a second, not minutes.
    """
    refs = [("sources.base", cfg.sources.base)] + [(f"sources.models[{i}]", m) for i, m in enumerate(cfg.sources.models)]
    spec = PROFILES[cfg.zoo]
    known = ("base", *spec.tasks)
    paths: list[Path | str] = []
    for field, ref in refs:
        if ref.startswith("zoo:"):
            if ref.removeprefix("zoo:") not in known:
                raise ConfigError(f"{field}: unknown zoo model {ref!r}; expected one of {['zoo:' + k for k in known]}")
            paths.append(ref.removeprefix("zoo:"))
            continue
        path = (base_dir / ref).resolve()
        if not path.is_dir():
            raise ConfigError(f"{field}: model directory {str(path)!r} does not exist (expected a Hugging Face "
                              "model directory or zoo:NAME)")
        paths.append(path)
    if any(isinstance(p, str) for p in paths):
        zoo = build_zoo(spec, log=lambda msg: console.print(f"[dim]zoo: {msg}[/]"))
        paths = [zoo / p if isinstance(p, str) else p for p in paths]
    return paths[0], paths[1:]


def resolve_device(name: str) -> str:
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device: 'cuda' was asked for but torch sees no GPU (expected auto or cpu here)")
    return name


def resolve_tasks(cfg: ExperimentConfig, base_dir: Path) -> dict[str, dict[str, list[dict]]]:
    """{split: {task: examples}} for the search and held-out splits."""
    f = cfg.fitness
    out: dict[str, dict[str, list[dict]]] = {f.search_split: {}, f.heldout_split: {}}
    for task, rel in f.tasks.items():
        d = (base_dir / rel).resolve()
        field = f"fitness.tasks.{task}"
        if not d.is_dir():
            raise ConfigError(f"{field}: task directory {str(d)!r} does not exist")
        search = load_split(d, f.search_split, field)
        out[f.search_split][task] = search[: f.max_examples] if f.max_examples else search
        out[f.heldout_split][task] = load_split(d, f.heldout_split, field)
        overlap = {r["prompt"] for r in search} & {r["prompt"] for r in out[f.heldout_split][task]}
        if overlap:
            raise ConfigError(f"{field}: {len(overlap)} prompts appear in both the {f.search_split!r} and "
                              f"{f.heldout_split!r} splits; held-out numbers would not be held out")
    return out


def config_diff(old, new, path: str = "") -> list[str]:
    """'field.path: old → new' for every leaf that differs between two config dicts."""
    if isinstance(old, dict) and isinstance(new, dict):
        out = []
        for key in sorted(set(old) | set(new)):
            out += config_diff(old.get(key), new.get(key), f"{path}.{key}" if path else key)
        return out
    return [] if old == new else [f"{path}: {old!r} → {new!r}"]


# Changing these would make the stored evaluations or the optimizer's snapshot mean something else.
_SEARCH_DEFINING = ("seed", "zoo", "sources", "space", "optimizer", "fitness")


def _open_store(run_dir: Path, cfg: ExperimentConfig, experiment: Path, force: bool = False) -> RunStore:
    store = RunStore(run_dir / "run.db")
    stored = store.get_meta("config")
    current = cfg.model_dump_json()
    if stored is None:
        store.set_meta("config", current)
        store.set_meta("created", str(time.time()))
        shutil.copyfile(experiment, run_dir / "experiment.yaml")
    elif stored != current:
        diff = config_diff(json.loads(stored), json.loads(current))
        defining = [d for d in diff if d.split(".")[0].split(":")[0] in _SEARCH_DEFINING]
        if not force or defining:
            store.close()
            hint = ("these fields define the search, so use a new --run-dir" if force else
                    "use a new --run-dir, or --force to continue with the new settings where they do not change "
                    "the search")
            raise ConfigError(f"{run_dir}: this run was started with a different experiment config "
                              f"({'; '.join(defining if force else diff)}); {hint}")
        store.set_meta("config", current)
        shutil.copyfile(experiment, run_dir / "experiment.yaml")
    return store


class Runner:
    def __init__(self, experiment: str | Path, run_dir: str | Path | None = None, console: Console | None = None,
                 force: bool = False):
        self.console = console or Console()
        self.force = force
        self.experiment = Path(experiment)
        self.cfg, self.base_dir = load_experiment(self.experiment)
        self.run_dir = Path(run_dir) if run_dir else Path("runs") / self.cfg.name

    def run(self) -> dict:
        cfg, console = self.cfg, self.console
        tasks = resolve_tasks(cfg, self.base_dir)
        base, models = resolve_models(cfg, self.base_dir, console)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        store = _open_store(self.run_dir, cfg, self.experiment, self.force)
        # absolute source paths, so that `evomerge export RUN` needs nothing but the run directory
        store.set_meta("sources", json.dumps({"base": str(base), "models": [str(m) for m in models]}))
        try:
            stream = None if cfg.sources.stream == "auto" else cfg.sources.stream
            worker = Worker(base, models, tasks, cfg.fitness, threads=cfg.threads, stream=stream,
                            device=resolve_device(cfg.device))
            if worker.pool.streaming:
                console.print("[yellow]task vectors do not fit in memory: reading sources from memory-mapped files "
                              "for every merge (slower)[/]")
            self.executor = LocalExecutor(worker)
            self.names = [Path(m).name for m in models]
            space = SPACES[cfg.space.type](cfg.space, worker.pool.n_sources, worker.pool.n_blocks)
            self._search(store, space)
            results = self._final_table(store)
        finally:
            store.close()
        return results

    # -- evaluation, with the cache ------------------------------------------------------------------------------
    def _cache_key(self, recipe: Recipe, split: str) -> str:
        blob = f"{recipe.to_json()}|{split}|{self.cfg.fitness.model_dump_json()}"
        return hashlib.sha256(blob.encode()).hexdigest()

    def _evaluate(self, store: RunStore, jobs: list[Job]):
        """Yield each job's evaluation, stored before it is yielded. A recipe already scored on the same split with
        the same fitness settings is not scored again: its evaluation is copied under the new candidate's id."""
        todo = []
        for job in jobs:
            job = dataclasses.replace(job, cache_key=self._cache_key(job.recipe, job.split))
            hit = store.cached(job.cache_key)
            if hit is None:
                todo.append(job)
                continue
            ev = dataclasses.replace(hit, kind=job.kind, generation=job.generation, idx=job.idx, label=job.label,
                                     genome=job.genome, merge_seconds=0.0, eval_seconds=0.0)
            store.add(ev)
            yield ev
        for ev in self.executor.run(todo):
            store.add(ev)  # durable before anyone hears of it
            yield ev

    # -- search -------------------------------------------------------------------------------------------------
    def _search(self, store: RunStore, space) -> None:
        cfg, oc = self.cfg, self.cfg.optimizer
        opt = OPTIMIZERS[oc.type](oc, space.dim, seed=cfg.seed)
        start = 0
        snap = store.last_snapshot()
        if snap is not None:
            opt.load_state(snap[1])
            start = snap[0] + 1
        total = oc.generations * opt.popsize
        done = len(store.evaluations("search"))
        if start >= oc.generations:
            self.console.print(f"search already complete ({done} evaluations stored)")
            return
        if start or done:
            self.console.print(f"continuing {self.run_dir} at generation {start + 1} ({done} evaluations stored)")
        best = store.best("search")
        with _progress(self.console) as progress:
            bar = progress.add_task("search", total=total, completed=min(done, total),
                                    best=best.objective if best else float("nan"), gen=f"{start}/{oc.generations}")
            for gen in range(start, oc.generations):
                genomes = opt.ask()
                values = []
                jobs = []
                evals: dict[int, Evaluation] = {}
                for i, x in enumerate(genomes):
                    prior = store.get("search", gen, i, f"g{gen}-{i}")
                    if prior is not None:  # completed before a stop: reuse, never recompute
                        evals[i] = prior
                    else:
                        recipe = space.decode(x, seed=cfg.seed * 1_000_003 + gen * 1000 + i)
                        jobs.append(Job("search", gen, i, f"g{gen}-{i}", cfg.fitness.search_split, recipe,
                                        [float(v) for v in x]))
                progress.update(bar, gen=f"{gen + 1}/{oc.generations}")
                for ev in self._evaluate(store, jobs):
                    evals[ev.idx] = ev
                    if ev.status == "ok" and (best is None or ev.objective > best.objective):
                        best = ev
                    progress.update(bar, advance=1, best=best.objective if best else float("nan"))
                    if ev.status != "ok":
                        self.console.print(f"[yellow]candidate {ev.label} failed: {ev.error.splitlines()[0]}[/]")
                values = [evals[i].objective if evals[i].status == "ok" else 0.0 for i in range(len(genomes))]
                if all(evals[i].status != "ok" for i in evals):
                    raise RunError(f"every candidate of generation {gen + 1} failed; first error: "
                                       f"{evals[0].error.splitlines()[0]}")
                opt.tell(genomes, values)
                store.save_snapshot(gen, opt.state())

    # -- final comparison on held-out data ----------------------------------------------------------------------
    def _baseline_recipes(self, store: RunStore) -> list[tuple[str, str, Recipe]]:
        k, b = len(self.names), self.cfg.baselines
        rows: list[tuple[str, str, Recipe]] = []
        best = store.best("search")
        if best is None:
            raise RunError("no successful search evaluation to report")
        rows.append(("evolved", f"evolved ({best.label})", Recipe.from_json(best.recipe)))
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
        jobs = [Job("tune", -1, i, f"ta-w{w:g}", self.cfg.fitness.search_split, Recipe.uniform("task_arithmetic", k, w))
                for i, w in enumerate(grid) if store.get("tune", -1, i, f"ta-w{w:g}") is None]
        for _ in self._evaluate(store, jobs):
            pass
        # the best weight on the search split; ties go to the smaller weight
        best = max(store.evaluations("tune"), key=lambda ev: (ev.objective or 0.0, -ev.idx))
        return grid[best.idx], best.objective

    def _final_table(self, store: RunStore) -> dict:
        split = self.cfg.fitness.heldout_split
        rows = self._baseline_recipes(store)
        jobs = [Job("heldout", -1, i, label, split, recipe) for i, (_, label, recipe) in enumerate(rows)
                if store.get("heldout", -1, i, label) is None]
        with self.console.status(f"scoring {len(rows)} models on the {split!r} split"):
            for _ in self._evaluate(store, jobs):
                pass
        evals = [store.get("heldout", -1, i, label) for i, (_, label, _) in enumerate(rows)]
        failed = [e for e in evals if e.status != "ok"]
        if failed:
            raise RunError(f"held-out scoring failed for {failed[0].label}: {failed[0].error.splitlines()[0]}")
        results = _results(self.cfg, split, rows, evals, store)
        (self.run_dir / RESULTS_FILE).write_text(json.dumps(results, indent=2))
        self.console.print(render_table(results))
        self.console.print(f"written to {self.run_dir / RESULTS_FILE}")
        return results


def _flat(ev: Evaluation) -> list[int]:
    return [v for task in sorted(ev.per_example) for v in ev.per_example[task]]


def _results(cfg, split, rows, evals, store) -> dict:
    evolved = _flat(evals[0])
    n = len(evolved)
    out_rows = []
    for (kind, label, recipe), ev in zip(rows, evals, strict=True):
        flat = _flat(ev)
        diff = [a - b for a, b in zip(evolved, flat, strict=True)]
        mean_d = sum(diff) / n
        var_d = sum((d - mean_d) ** 2 for d in diff) / max(n - 1, 1)
        out_rows.append({
            "kind": kind, "label": label, "average": ev.objective, "per_task": ev.per_task,
            "stderr": math.sqrt(ev.objective * (1 - ev.objective) / n),
            # paired over the same examples: how far the evolved merge is above this row, and that gap's stderr
            "evolved_minus_this": mean_d, "evolved_minus_this_stderr": math.sqrt(var_d / n),
            "recipe": json.loads(recipe.to_json()),
        })
    search = store.evaluations("search")
    return {
        "schema_version": 1,
        "experiment": cfg.name,
        "split": split,
        "examples": n,
        "search": {"evaluations": len(search), "failed": sum(e.status != "ok" for e in search),
                   "best_search_objective": store.best("search").objective,
                   "seconds": sum(e.merge_seconds + e.eval_seconds for e in search)},
        "rows": out_rows,
    }


def render_table(results: dict) -> Table:
    tasks = list(results["rows"][0]["per_task"])
    table = Table(title=f"{results['experiment']}: accuracy on the {results['split']!r} split "
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


def _progress(console: Console) -> Progress:
    return Progress(
        TextColumn("generation {task.fields[gen]}"), BarColumn(), MofNCompleteColumn(), TextColumn("evaluations"),
        TextColumn("best {task.fields[best]:.3f}"), TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(),
        console=console,
    )
