"""A run from start to end: check the experiment and the run directory, start the workers, search, report."""

from __future__ import annotations

import json
import random
import shutil
import time
from pathlib import Path

from pydantic import ValidationError
from rich.console import Console

from evomerge.config import ExecutorConfig, ExperimentConfig, format_validation_error, load_experiment
from evomerge.errors import ConfigError
from evomerge.executors import make_executor
from evomerge.fitness.scorer import load_scorer_function
from evomerge.fitness.tasks import check_disjoint, load_split, shared_prompts
from evomerge.heldout import FinalReport
from evomerge.optim.state import check_snapshot
from evomerge.search import Evaluator, Search
from evomerge.sources import preflight
from evomerge.spaces import SPACES
from evomerge.store import RunDir, RunStore, Snapshot
from evomerge.store.rundir import DB_FILE, normalize_url
from evomerge.zoo.build import PROFILES, build_zoo, zoo_dir


def resolve_models(cfg: ExperimentConfig, base_dir: Path, console: Console,
                   build: bool = True) -> tuple[Path | None, list[Path]]:
    """`zoo:NAME` → the cached zoo's model; `run:DIR` → that finished run's best model (exported once); anything
    else → a directory relative to the experiment file.

    Every reference is checked before the zoo is built (on first use), so a typo fails in a second, not minutes.
    With build=False an unbuilt zoo is a ConfigError instead.
    """
    refs = [(f"sources.models[{i}]", m) for i, m in enumerate(cfg.sources.models)]
    if cfg.sources.base is not None:
        refs.insert(0, ("sources.base", cfg.sources.base))
    spec = PROFILES[cfg.zoo]
    known = ("base", *spec.tasks)
    paths: list[Path | str] = []
    for field, ref in refs:
        if ref.startswith("zoo:"):
            if ref.removeprefix("zoo:") not in known:
                raise ConfigError(f"{field}: unknown zoo model {ref!r}; expected one of {['zoo:' + k for k in known]}")
            paths.append(ref.removeprefix("zoo:"))
            continue
        if ref.startswith("run:"):
            paths.append(run_best_model(field, (base_dir / ref.removeprefix("run:")).resolve(), console))
            continue
        path = (base_dir / ref).resolve()
        if not path.is_dir():
            raise ConfigError(f"{field}: model directory {str(path)!r} does not exist (expected a Hugging Face "
                              "model directory, zoo:NAME or run:RUN_DIR)")
        paths.append(path)
    if any(isinstance(p, str) for p in paths):
        if not build and not (zoo_dir(spec) / "zoo.json").is_file():
            raise ConfigError(f"zoo: the {cfg.zoo!r} zoo is not built yet (it is on the first run, or with "
                              f"`evomerge zoo build --profile {cfg.zoo}`)")
        zoo = build_zoo(spec, log=lambda msg: console.print(f"[dim]zoo: {msg}[/]"))
        paths = [zoo / p if isinstance(p, str) else p for p in paths]
    if cfg.sources.base is None:
        return None, paths
    return paths[0], paths[1:]


def model_name(path: Path) -> str:
    """How a source is called in tables: its directory's name, or 'RUN CANDIDATE' for a run's exported best."""
    return f"{path.parent.parent.name} {path.name}" if path.parent.name == "exported" else path.name


def run_best_model(field: str, run_dir: Path, console: Console) -> Path:
    """The best model of a finished run (the winner of its results.json) as a model directory, exported into
    RUN_DIR/exported/<label> the first time it is asked for: a PS result can become a data flow's model A."""
    from evomerge.heldout import RESULTS_FILE
    from evomerge.reporting.export import export_from_run

    results = run_dir / RESULTS_FILE
    if not RunDir.exists(run_dir):
        raise ConfigError(f"{field}: {str(run_dir)!r} is not a run directory (expected run:RUN_DIR of a finished run)")
    if not results.is_file():
        raise ConfigError(f"{field}: the run {run_dir} has not finished (no {RESULTS_FILE}); finish it first with "
                          f"`evomerge resume {run_dir}`")
    data = json.loads(results.read_text())
    # runs finished before results.json named its winner: the evolved row's label is "evolved (LABEL)"
    label = data.get("best_candidate") or data["rows"][0]["label"].removeprefix("evolved (").removesuffix(")")
    out = run_dir / "exported" / label
    if not (out / "config.json").is_file():
        with console.status(f"exporting {label} of {run_dir} for {field}"):
            partial = out.with_name(out.name + ".partial")
            shutil.rmtree(partial, ignore_errors=True)
            export_from_run(run_dir, partial, candidate=label)
            partial.rename(out)  # complete or absent: a crash mid-export leaves only the .partial
    return out


def resolve_device(name: str) -> str:
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device: 'cuda' was asked for but torch sees no GPU (expected auto or cpu here)")
    return name


def resolve_tasks(cfg: ExperimentConfig, base_dir: Path) -> dict[str, dict[str, list[dict]]]:
    """{split: {task: examples}} for the search and held-out splits ({split: {task: lm-eval task config}} for
    lm_eval fitness). A task's `splits` maps the experiment's split names onto its dataset's."""
    f = cfg.fitness
    out: dict[str, dict[str, list[dict]]] = {f.search_split: {}, f.heldout_split: {}}
    if f.type == "lm_eval":
        from evomerge.fitness.lm_eval_scorer import SAMPLES_KEY, TaskSource, overlap

        include = (base_dir / f.lm_eval.include_path).resolve() if f.lm_eval.include_path else None
        for task in f.tasks:
            spec, field = f.task_spec(task), f"fitness.tasks.{task}"
            source = TaskSource(spec.source, base_dir, include, field)
            for split in (f.search_split, f.heldout_split):
                out[split][task] = source.config(spec.splits.get(split, split), f.lm_eval)
            if source.test_split() == spec.splits.get(f.search_split, f.search_split) and not f.allow_test_split:
                _refuse_test_split(field, f"{source} calls {source.test_split()!r} its test split")
            shared, n_search = overlap(out[f.search_split][task], out[f.heldout_split][task])
            check_disjoint(field, shared, "documents", f.search_split, f.heldout_split)
            if f.search_subset:
                out.setdefault(f.full_search_split, {})[task] = out[f.search_split][task]
                out[f.search_split][task] = {**out[f.search_split][task],
                                             SAMPLES_KEY: subset_indices(n_search, f.search_subset, cfg.seed, task)}
        return out
    for task in f.tasks:
        spec, field = f.task_spec(task), f"fitness.tasks.{task}"
        search_name = spec.splits.get(f.search_split, f.search_split)
        if search_name == "test" and not f.allow_test_split:
            _refuse_test_split(field if spec.splits else "fitness.search_split", "'test' is a benchmark's test split")
        d = (base_dir / spec.source).resolve()
        if not d.is_dir():
            raise ConfigError(f"{field}: task directory {str(d)!r} does not exist")
        search = load_split(d, search_name, field)
        out[f.search_split][task] = search[: f.max_examples] if f.max_examples else search
        if f.search_subset:
            out.setdefault(f.full_search_split, {})[task] = search
            subset = subset_indices(len(search), f.search_subset, cfg.seed, task)
            out[f.search_split][task] = [search[i] for i in subset]
        out[f.heldout_split][task] = load_split(d, spec.splits.get(f.heldout_split, f.heldout_split), field)
        check_disjoint(field, shared_prompts(search, out[f.heldout_split][task]), "prompts", f.search_split,
                       f.heldout_split)
    return out


def subset_indices(n: int, size: int, seed: int, task: str) -> list[int]:
    """A fixed random subset of a task's n examples (all of them when size >= n), the same for every candidate."""
    rng = random.Random(f"{seed}:{task}")  # per task: each task contributes its own `size` (stratified)
    return sorted(rng.sample(range(n), min(size, n)))


def _refuse_test_split(field: str, why: str) -> None:
    raise ConfigError(f"{field}: {why}; searching on it would leak into the numbers a benchmark reports — search on "
                      "another split, or set fitness.allow_test_split: true if you mean it")


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


class Runner:
    def __init__(self, experiment: str | Path | None, run_dir: str | Path | None = None,
                 console: Console | None = None, force: bool = False, db: str | None = None,
                 executor: dict | None = None):
        """`executor`: settings that override the experiment's `executor` section for this process only (the
        command line's --workers and --ray-address); they are not part of the run's config."""
        self.console = console or Console()
        self.force, self.db, self.executor_overrides = force, db, executor or {}
        if experiment is not None:
            self.cfg, self.base_dir = load_experiment(experiment)  # checks the file first (size, encoding, YAML)
            self.experiment_text = Path(experiment).read_text(encoding="utf-8")
            self.run_dir = Path(run_dir) if run_dir else Path("runs") / self.cfg.name
            self._executor_config()
        else:
            self.run_dir = Path(run_dir)

    def _executor_config(self) -> None:
        if not self.executor_overrides:
            self.executor_cfg = self.cfg.executor
            return
        merged = {**self.cfg.executor.model_dump(), "type": "ray", **self.executor_overrides}
        try:
            self.executor_cfg = ExecutorConfig.model_validate(merged)
        except ValidationError as e:
            raise ConfigError(format_validation_error(e, "command line")) from None

    @classmethod
    def resume(cls, run_dir: str | Path, console: Console | None = None, executor: dict | None = None) -> Runner:
        """A runner for an existing run, with the config it was started with."""
        self = cls(None, run_dir, console, executor=executor)
        rundir = RunDir.open(self.run_dir)
        store = rundir.store()
        try:
            self.cfg, self.base_dir = _stored_config(store, rundir.path / DB_FILE)
            self.experiment_text = store.get_meta("experiment")
        finally:
            store.close()
        self._executor_config()
        return self

    def _open(self) -> tuple[RunDir, bool]:
        """The run's directory and store, created or checked; nothing is written until every check passed."""
        if RunDir.exists(self.run_dir):
            rundir = RunDir.open(self.run_dir)
            if self.db is not None and normalize_url(self.db) != rundir.db:
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
        preflight(base, models)  # sources and tokenizer, before the run directory is created or touched
        rundir, fresh = self._open()
        with rundir.lock(defer_pid=True) as claim:
            store = self._store(rundir, fresh)
            try:
                snapshot = self._prepare(store, rundir, base, models)
                claim()
                with rundir.session(resumed=not fresh, stored=len(store.evaluations("search"))) as self.events:
                    return self._run(store, base, models, tasks, snapshot)
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
        store.set_meta("sources", json.dumps({"base": base and str(base), "models": [str(m) for m in models],
                                              "space": self.cfg.space.type, "dtype": self.cfg.dtype}))
        return snapshot

    def _run(self, store, base, models, tasks, snapshot) -> dict:
        cfg = self.cfg
        stream = None if cfg.sources.stream == "auto" else cfg.sources.stream
        device = cfg.device if self.executor_cfg.type == "ray" else resolve_device(cfg.device)
        worker_args = {"base": base, "sources": models, "tasks": tasks, "fitness_cfg": cfg.fitness,
                       "threads": cfg.threads, "stream": stream, "device": device, "base_dir": self.base_dir,
                       "flow": cfg.space.type == "data_flow", "dtype": cfg.dtype}
        with self.console.status(f"starting the {self.executor_cfg.type} executor (workers load the sources)"):
            executor = make_executor(self.executor_cfg, worker_args)
        try:
            self.evaluator = Evaluator(cfg, store, executor, self.events)
            if executor.streaming:
                self.console.print("[yellow]task vectors do not fit in memory: reading sources from memory-mapped "
                                   "files for every merge (slower)[/]")
            self.names = [model_name(Path(m)) for m in models]
            space_cls = SPACES[cfg.space.type]
            extra = {"sources": models} if getattr(space_cls, "needs_sources", False) else {}  # the mosaic space
            space = space_cls(cfg.space, *executor.shape, **extra)
            Search(cfg, store, self.evaluator, space, self.console, self.events, self.run_dir,
                   self.names).run(snapshot)
            results = FinalReport(cfg, self.evaluator, self.names, self.console, self.run_dir,
                                  executor.shape).run(store)
        finally:
            executor.close()
            self.evaluator.save_telemetry()
        store.set_meta("finished", str(time.time()))
        self.events.emit("run_finished", best=results["rows"][0]["label"], heldout=results["rows"][0]["average"])
        return results

    def _load_snapshot(self, store: RunStore, rundir: RunDir) -> Snapshot | None:
        """The newest optimizer snapshot, checked to load before the run writes anything."""
        snap = store.last_snapshot()
        if snap is None:
            return None
        check_snapshot(snap.state, str(rundir.path / DB_FILE), snap.generation)  # data only: never unpickled
        return snap

    # -- final comparison on held-out data ----------------------------------------------------------------------
