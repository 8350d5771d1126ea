"""The search loop: ask → decode → evaluate (durably stored) → tell, then the held-out comparison table."""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import math
import os
import pickle
import shutil
import time
from pathlib import Path

import numpy as np
from pydantic import ValidationError

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from evomerge.config import ExperimentConfig, format_validation_error, load_experiment
from evomerge.errors import ConfigError, RunError
from evomerge.executors import Job, make_executor
from evomerge.fitness.scorer import load_scorer_function
from evomerge.fitness.tasks import load_split
from evomerge.optim import OPTIMIZERS
from evomerge.optim.pareto import pareto_front
from evomerge.recipe import Recipe
from evomerge.spaces import SPACES
from evomerge.store import Evaluation, RunDir, RunStore, Snapshot
from evomerge.store.rundir import DB_FILE, normalize_url as sa_url
from evomerge.zoo.build import PROFILES, build_zoo

RESULTS_FILE = "results.json"
FRONT_HELDOUT = 20  # Pareto-front members re-scored on held-out data


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


def config_diff(old, new, path: str = "") -> list[tuple[str, object, object]]:
    """(field.path, old, new) for every leaf that differs between two config dicts."""
    if isinstance(old, dict) and isinstance(new, dict):
        out = []
        for key in sorted(set(old) | set(new)):
            out += config_diff(old.get(key), new.get(key), f"{path}.{key}" if path else key)
        return out
    return [] if old == new else [(path, old, new)]


# Changing these would make the stored evaluations or the optimizer's snapshot mean something else.
_SEARCH_DEFINING = ("seed", "zoo", "sources", "space", "optimizer", "fitness")


def _check_config(stored: str, cfg: ExperimentConfig, where: Path, force: bool) -> bool:
    """Whether the run's config must be updated; raises when the change is refused."""
    diff = config_diff(json.loads(stored), json.loads(cfg.model_dump_json()))
    if not diff:
        return False
    defining = [d for d in diff if d[0].split(".")[0] in _SEARCH_DEFINING]
    if force and not defining:
        return True
    shown = "; ".join(f"{p}: {a!r} → {b!r}" for p, a, b in (defining if force else diff))
    hint = ("these fields define the search, so use a new --run-dir" if force else
            "use a new --run-dir, or --force to continue with the new settings where they do not change the search")
    raise ConfigError(f"{where}: this run was started with a different experiment config ({shown}); {hint}")


def _stored_config(store: RunStore, where: Path) -> tuple[ExperimentConfig, Path]:
    """The config and base directory a run was started with (for `evomerge resume`)."""
    text, base_dir = store.get_meta("config"), store.get_meta("base_dir")
    if text is None or base_dir is None:
        raise ConfigError(f"{where}: the run store holds no experiment config (expected a run started by "
                          "`evomerge run`)")
    try:
        return ExperimentConfig.model_validate_json(text), Path(base_dir)
    except ValidationError as e:
        raise ConfigError(format_validation_error(e, f"{where}: stored experiment config")) from None


def _worst(values: list[float]) -> float:
    """What a failed candidate is told: no better than anything seen (0 for accuracies)."""
    return min([0.0, *values])


class Runner:
    def __init__(self, experiment: str | Path | None, run_dir: str | Path | None = None,
                 console: Console | None = None, force: bool = False, db: str | None = None):
        self.console = console or Console()
        self.force, self.db = force, db
        if experiment is not None:
            self.experiment_text = Path(experiment).read_text() if Path(experiment).is_file() else None
            self.cfg, self.base_dir = load_experiment(experiment)
            self.run_dir = Path(run_dir) if run_dir else Path("runs") / self.cfg.name
        else:
            self.run_dir = Path(run_dir)

    @classmethod
    def resume(cls, run_dir: str | Path, console: Console | None = None) -> Runner:
        """A runner for an existing run, with the config it was started with."""
        self = cls(None, run_dir, console)
        rundir = RunDir.open(self.run_dir)
        store = rundir.store()
        try:
            self.cfg, self.base_dir = _stored_config(store, rundir.path / DB_FILE)
            self.experiment_text = store.get_meta("experiment")
        finally:
            store.close()
        return self

    def _open(self) -> tuple[RunDir, bool]:
        """The run's directory and store, created or checked; nothing is written until every check passed."""
        if RunDir.exists(self.run_dir):
            rundir = RunDir.open(self.run_dir)
            if self.db is not None and sa_url(self.db) != rundir.db:
                raise ConfigError(f"--db: this run keeps its evaluations in {rundir.url} ({self.run_dir / 'run.json'})"
                                  "; a run's store cannot be changed")
            return rundir, False
        return RunDir.new(self.run_dir, self.db), True

    def _store(self, rundir: RunDir, fresh: bool) -> RunStore:
        if not fresh:
            return rundir.store()
        try:
            store = rundir.store(self.cfg.name, create=True)
        except ConfigError:
            shutil.rmtree(rundir.path)  # ours, and empty but for the lock and maybe run.db: nothing is lost
            raise
        rundir.save()
        return store

    def run(self) -> dict:
        tasks = resolve_tasks(self.cfg, self.base_dir)
        if self.cfg.fitness.type == "python":  # fails here, before the run directory exists, not in a worker
            load_scorer_function(self.cfg.fitness.scorer, self.base_dir)
        base, models = resolve_models(self.cfg, self.base_dir, self.console)
        rundir, fresh = self._open()
        with rundir.lock():
            store = self._store(rundir, fresh)
            try:
                snapshot = self._prepare(store, rundir, base, models)
                self.events = rundir.events()
                self.events.emit("run_started", resumed=not fresh, pid=os.getpid(),
                                 stored=len(store.evaluations("search")))
                try:
                    return self._run(store, base, models, tasks, snapshot)
                except BaseException as e:
                    self.events.emit("run_stopped", reason=f"{type(e).__name__}: {e}".splitlines()[0])
                    raise
                finally:
                    self.events.close()
            finally:
                store.close()

    def _prepare(self, store: RunStore, rundir: RunDir, base: Path, models: list[Path]) -> Snapshot | None:
        """Check the stored run against this config, then record what the run needs; returns its snapshot."""
        cfg = self.cfg
        stored = store.get_meta("config")
        if stored is None:  # a new run (or one killed before its first write)
            for key, value in (("config", cfg.model_dump_json()), ("base_dir", str(self.base_dir)),
                               ("experiment", self.experiment_text or ""), ("created", str(time.time()))):
                store.set_meta(key, value)
        elif _check_config(stored, cfg, rundir.path / DB_FILE, self.force):
            store.set_meta("config", cfg.model_dump_json())
        snapshot = self._load_snapshot(store, rundir)
        if self.experiment_text:
            (rundir.path / "experiment.yaml").write_text(self.experiment_text)
        # absolute source paths, so that `evomerge export RUN` needs nothing but the run directory
        store.set_meta("sources", json.dumps({"base": str(base), "models": [str(m) for m in models]}))
        return snapshot

    def _run(self, store, base, models, tasks, snapshot) -> dict:
        cfg = self.cfg
        stream = None if cfg.sources.stream == "auto" else cfg.sources.stream
        worker_args = {"base": base, "sources": models, "tasks": tasks, "fitness_cfg": cfg.fitness,
                       "threads": cfg.threads, "stream": stream, "device": resolve_device(cfg.device),
                       "base_dir": self.base_dir}
        self.executor = make_executor(cfg.executor, worker_args)
        try:
            if self.executor.streaming:
                self.console.print("[yellow]task vectors do not fit in memory: reading sources from memory-mapped "
                                   "files for every merge (slower)[/]")
            self.names = [Path(m).name for m in models]
            self._search(store, snapshot)
            results = self._final_table(store)
        finally:
            self.executor.close()
        store.set_meta("finished", str(time.time()))
        self.events.emit("run_finished", best=results["rows"][0]["label"], heldout=results["rows"][0]["average"])
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
                                     genome=job.genome, merge_seconds=0.0, eval_seconds=0.0, worker="cache")
            yield self._record(store, ev)
        for ev in self.executor.run(todo):
            yield self._record(store, ev)

    def _record(self, store: RunStore, ev: Evaluation) -> Evaluation:
        store.add(ev)  # durable before anyone hears of it
        self.events.emit("evaluation", kind=ev.kind, generation=ev.generation, idx=ev.idx, label=ev.label,
                         status=ev.status, objective=ev.objective, merge_s=round(ev.merge_seconds, 4),
                         eval_s=round(ev.eval_seconds, 4), attempts=ev.attempts, worker=ev.worker,
                         **({"error": ev.error.splitlines()[0]} if ev.error else {}))
        return ev

    # -- search -------------------------------------------------------------------------------------------------
    def _optimizer(self, space):
        oc = self.cfg.optimizer
        return OPTIMIZERS[oc.type](oc, space.dim, seed=self.cfg.seed, n_objectives=self.cfg.n_objectives,
                                   steps=getattr(space, "steps", None))

    def _space(self):
        n_sources, n_blocks = self.executor.shape
        return SPACES[self.cfg.space.type](self.cfg.space, n_sources, n_blocks)

    def _load_snapshot(self, store: RunStore, rundir: RunDir) -> Snapshot | None:
        """The newest optimizer snapshot, checked to load before the run writes anything."""
        snap = store.last_snapshot()
        if snap is None:
            return None
        try:
            pickle.loads(snap.state)
        except Exception as e:  # noqa: BLE001 — any unpickling failure means the same thing
            raise ConfigError(f"{rundir.path / DB_FILE}: the optimizer snapshot of generation {snap.generation + 1} "
                              f"is unreadable ({type(e).__name__}); the run cannot continue exactly") from None
        return snap

    def _search(self, store: RunStore, snap: Snapshot | None) -> None:
        cfg, oc = self.cfg, self.cfg.optimizer
        space = self._space()
        opt = self._optimizer(space)
        start, pending = 0, None
        if snap is not None:
            opt.load_state(snap.state)
            start = snap.generation + (snap.phase == "told")
            if snap.phase == "asked":  # asked but not told: the same genomes go out again
                pending = [np.asarray(g, dtype=float) for g in snap.genomes]
        total = oc.generations * opt.popsize
        store.set_meta("search_total", str(total))
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
                if pending is not None:
                    genomes, pending = pending, None
                else:
                    genomes = opt.ask()
                    store.save_snapshot(gen, "asked", opt.state(), genomes)
                self.events.emit("generation_asked", generation=gen, candidates=len(genomes))
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
                if all(evals[i].status != "ok" for i in evals):
                    raise RunError(f"every candidate of generation {gen + 1} failed; first error: "
                                   f"{evals[0].error.splitlines()[0]}")
                opt.tell(genomes, self._values(store, [evals[i] for i in range(len(genomes))]))
                store.save_snapshot(gen, "told", opt.state())
                self.events.emit("generation_told", generation=gen, best=best.objective, best_label=best.label)

    def _values(self, store: RunStore, evals: list[Evaluation]) -> list:
        """What the optimizer is told: the objective (or one per task), a worst-case value for failures."""
        ok = [e for e in store.evaluations("search") if e.status == "ok"]
        if self.cfg.n_objectives == 1:
            worst = _worst([e.objective for e in ok])
            return [e.objective if e.status == "ok" else worst for e in evals]
        tasks = list(self.cfg.fitness.tasks)
        worst = [_worst([e.per_task[t] for e in ok]) for t in tasks]
        return [tuple(e.per_task[t] for t in tasks) if e.status == "ok" else tuple(worst) for e in evals]

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

    def _score_all(self, store: RunStore, kind: str, items: list[tuple[str, Recipe]]) -> list[Evaluation]:
        """Score (label, recipe) pairs on the held-out split, once each across restarts; all must succeed."""
        split = self.cfg.fitness.heldout_split
        jobs = [Job(kind, -1, i, label, split, recipe) for i, (label, recipe) in enumerate(items)
                if store.get(kind, -1, i, label) is None]
        with self.console.status(f"scoring {len(items)} models on the {split!r} split"):
            for _ in self._evaluate(store, jobs):
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
        ok = [e for e in store.evaluations("search") if e.status == "ok"]
        front = sorted((ok[i] for i in pareto_front([[e.per_task[t] for t in tasks] for e in ok])),
                       key=lambda e: -e.objective)
        held = self._score_all(store, "front", [(e.label, Recipe.from_json(e.recipe)) for e in front[:FRONT_HELDOUT]])
        return [{"label": e.label, "search": e.per_task, "search_objective": e.objective,
                 "heldout": h.per_task if h else None, "heldout_objective": h.objective if h else None,
                 "recipe": json.loads(e.recipe)}
                for e, h in itertools.zip_longest(front, held)]

    def _final_table(self, store: RunStore) -> dict:
        rows = self._baseline_recipes(store)
        evals = self._score_all(store, "heldout", [(label, recipe) for _, label, recipe in rows])
        results = _results(self.cfg, self.cfg.fitness.heldout_split, rows, evals, store)
        front = self._pareto_front(store)
        if front is not None:
            results["pareto_front"] = front
        (self.run_dir / RESULTS_FILE).write_text(json.dumps(results, indent=2))
        self.console.print(render_table(results))
        if front is not None:
            self.console.print(render_front(results))
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


def _progress(console: Console) -> Progress:
    return Progress(
        TextColumn("generation {task.fields[gen]}"), BarColumn(), MofNCompleteColumn(), TextColumn("evaluations"),
        TextColumn("best {task.fields[best]:.3f}"), TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(),
        console=console,
    )
