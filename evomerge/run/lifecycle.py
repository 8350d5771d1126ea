"""The run lifecycle every experiment kind goes through: open or create the run directory, lock it, check the
experiment against the stored one, record what the run needs, open an event-log session, run the kind's work, write
`results.json`, mark the run finished.

A kind subclasses `RunLifecycle` and supplies `load` (experiment file -> config), `config_model`, `defining` (the
top-level config fields that define the search: changing one would make stored evaluations or snapshots mean
something else, so --force cannot change them) and `execute` (the work; returns the results body). `check` runs
before anything is written, so a bad input leaves no run directory behind.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, ClassVar

from pydantic import BaseModel, ValidationError
from rich.console import Console

from evomerge.errors import ConfigError, EvomergeError, format_validation_error
from evomerge.optim.state import check_snapshot
from evomerge.store import EventLog, RunDir, RunStore, Snapshot
from evomerge.store.rundir import DB_FILE, normalize_url

RESULTS_FILE = "results.json"
# 2: every kind's results.json has `schema_version`, `kind`, `experiment`, `best_candidate` and `rows` (one dict per
# compared model, each with a `label`), plus the kind's own fields. 1: the search kind's layout before that.
RESULTS_SCHEMA_VERSION = 2


def config_diff(old, new, path: str = "") -> list[tuple[str, object, object]]:
    """(field.path, old, new) for every leaf that differs between two config dicts."""
    if isinstance(old, dict) and isinstance(new, dict):
        out = []
        for key in sorted(set(old) | set(new)):
            out += config_diff(old.get(key), new.get(key), f"{path}.{key}" if path else key)
        return out
    return [] if old == new else [(path, old, new)]


def check_config(stored: str, cfg: BaseModel, defining: tuple[str, ...], where: Path, force: bool) -> bool:
    """Whether the run's stored config must be updated to `cfg`; raises when the change is refused."""
    diff = config_diff(json.loads(stored), json.loads(cfg.model_dump_json()))
    if not diff:
        return False
    search = [d for d in diff if d[0].split(".")[0] in defining]
    if force and not search:
        return True
    shown = "; ".join(f"{p}: {a!r} → {b!r}" for p, a, b in (search if force else diff))
    hint = ("these fields define the search, so use a new --run-dir" if force else
            "use a new --run-dir, or --force to continue with the new settings where they do not change the search")
    raise ConfigError(f"{where}: this run was started with a different experiment config ({shown}); {hint}")


def write_results(run_dir: Path, kind: str, name: str, body: dict) -> dict:
    """The one writer of `results.json`: the versioned envelope around a kind's results, replaced atomically."""
    results = {"schema_version": RESULTS_SCHEMA_VERSION, "kind": kind, "experiment": name,
               "best_candidate": None, **body}
    if not isinstance(results.get("rows"), list):
        raise TypeError(f"results of kind {kind!r} have no rows")
    tmp = run_dir / (RESULTS_FILE + ".tmp")
    tmp.write_text(json.dumps(results, indent=2))
    os.replace(tmp, run_dir / RESULTS_FILE)
    return results


def read_results(run_dir: Path) -> dict | None:
    """A finished run's results.json (None when there is none yet)."""
    f = Path(run_dir) / RESULTS_FILE
    return json.loads(f.read_text()) if f.is_file() else None


@dataclass(frozen=True)
class RunSettings:
    """What a reader of a run (status, leaderboard, report) needs to know of its search, whatever its kind: kept in
    the store's meta `settings` by the lifecycle, so that reporting never parses a kind's config."""

    name: str
    optimizer: str
    generations: int
    space: str  # the space's type
    space_detail: str  # and what distinguishes it, one line
    fitness: str  # how a candidate is scored, one line
    tasks: tuple[str, ...]  # the keys of a search evaluation's per_task
    search_split: str
    heldout_split: str
    n_objectives: int = 1
    search_subset: int | None = None
    full_search_split: str | None = None
    estimator: str = "full"  # fitness.estimator: full, race, irt or sample

    @property
    def cheap(self) -> bool:
        """Whether search scores may come from fewer than every example of the search split."""
        return bool(self.search_subset) or self.estimator != "full"

    @property
    def rescore_split(self) -> str:
        """Where the best candidates of a search on fewer examples are scored in full."""
        return (self.full_search_split or self.search_split) if self.search_subset else self.search_split

    @classmethod
    def of_search(cls, cfg) -> RunSettings:
        """A merge search's settings (`ExperimentConfig`)."""
        sp, f = cfg.space, cfg.fitness
        space = (f"{sp.type}: {sp.operator}, granularity {sp.granularity}" if sp.flow is None else
                 f"{sp.type}: {sp.flow.repeats} repeats, {sp.flow.scaling} scaling, {sp.flow.indicator} indicators")
        return cls(cfg.name, cfg.optimizer.type, cfg.optimizer.generations, sp.type, space,
                   f"{f.type}, objective {f.objective}", tuple(f.tasks), f.search_split, f.heldout_split,
                   cfg.n_objectives, f.search_subset, f.full_search_split, f.estimator)


def read_settings(store: RunStore) -> RunSettings | None:
    """A run's settings (None for a run started before they were kept: a merge search)."""
    text = store.get_meta("settings")
    if text is None:
        return None
    try:
        d = json.loads(text)
        return RunSettings(**{**d, "tasks": tuple(d["tasks"])})
    except (ValueError, TypeError, KeyError) as e:
        raise ConfigError(f"{store.url}: stored run settings are unreadable ({type(e).__name__}: {e}); expected "
                          "those of this evomerge version") from None


def stored_kind(store: RunStore) -> str:
    """The experiment kind a run was started as (runs from before kinds were recorded are searches)."""
    return store.get_meta("kind") or "search"


class RunLifecycle:
    """One run of one experiment kind, from the experiment file (or the stored config) to results.json."""

    kind: ClassVar[str]
    config_model: ClassVar[type[BaseModel]]
    defining: ClassVar[tuple[str, ...]]

    def __init__(self, experiment: str | Path | None, run_dir: str | Path | None = None,
                 console: Console | None = None, force: bool = False, db: str | None = None,
                 executor: dict | None = None):
        """`executor`: settings that override the experiment's executor for this process only (the command line's
        --workers and --ray-address); they are not part of the run's config."""
        self.console = console or Console()
        self.force, self.db, self.executor_overrides = force, db, executor or {}
        self.events: EventLog | None = None
        if experiment is not None:
            path = Path(experiment)
            self.cfg, self.base_dir = self.load(path)  # checks the file first (size, encoding, YAML)
            self.experiment_text = path.read_text(encoding="utf-8") if path.is_file() else None
            self.run_dir = Path(run_dir) if run_dir else Path("runs") / self.cfg.name
        elif run_dir is not None:
            self.run_dir = Path(run_dir)
        else:
            raise ValueError("a run needs an experiment file or a run directory")

    # -- what a kind supplies ------------------------------------------------------------------------------------
    @classmethod
    def load(cls, path: Path) -> tuple[Any, Path]:
        """The experiment file's config and the directory its paths are relative to (ConfigError when bad)."""
        raise NotImplementedError

    def check(self) -> None:
        """Everything that can be checked before the run directory is written (data, sources, references)."""
        if self.executor_overrides:
            raise ConfigError(f"--workers/--ray-address: a {self.kind} run has no worker pool")

    def settings(self) -> RunSettings:
        """What readers of the run need to know of its search (kept in the store's meta)."""
        raise NotImplementedError

    def record(self, store: RunStore) -> None:
        """What the kind keeps in the store's meta beyond the config and settings (written on every start)."""

    def execute(self, store: RunStore, snapshot: Snapshot | None) -> dict:
        """The kind's work: evaluations into `store`, events into `self.events`; returns the results body (with
        `rows` and `best_candidate`) that `results.json` wraps."""
        raise NotImplementedError

    def summary(self, results: dict) -> dict:
        """The fields of the `run_finished` event."""
        return {"best": results.get("best_candidate")}

    # -- resume --------------------------------------------------------------------------------------------------
    @classmethod
    def resume(cls, run_dir: str | Path, console: Console | None = None, **kwargs) -> RunLifecycle:
        """This kind's lifecycle for an existing run, with the config and base directory it was started with."""
        self = cls(None, run_dir, console, **kwargs)
        rundir = RunDir.open(self.run_dir)
        store = rundir.store()
        where = rundir.path / DB_FILE
        try:
            text, base_dir = store.get_meta("config"), store.get_meta("base_dir")
            if text is None or base_dir is None:
                raise ConfigError(f"{where}: the run store holds no experiment config (expected a run started by "
                                  "`evomerge run`)")
            if stored_kind(store) != cls.kind:
                raise ConfigError(f"{where}: a {stored_kind(store)} run, not a {cls.kind} run")
            try:
                self.cfg = cls.config_model.model_validate_json(text)
            except ValidationError as e:
                raise ConfigError(format_validation_error(e, f"{where}: stored experiment config")) from None
            self.base_dir = Path(base_dir)
            self.experiment_text = store.get_meta("experiment")
        finally:
            store.close()
        return self

    # -- the run -------------------------------------------------------------------------------------------------
    def run(self) -> dict:
        self.check()
        rundir, fresh = self._open()
        with rundir.lock(defer_pid=True) as claim:
            store = self._store(rundir, fresh)
            try:
                snapshot = self._prepare(store, rundir)
                claim()  # the pid goes into the lock file only once every check passed
                stored = len(store.evaluations("search"))
                with rundir.session(kind=self.kind, resumed=not fresh, stored=stored) as self.events:
                    body = self.execute(store, snapshot)
                    results = write_results(self.run_dir, self.kind, self.cfg.name, body)
                    store.set_meta("finished", str(time.time()))
                    self.events.emit("run_finished", **self.summary(results))
            except EvomergeError:
                # refused before its first evaluation (a source that does not load in a worker, a task the
                # tokenizer cannot encode): a new run's directory holds nothing yet, and kept, it would refuse the
                # corrected experiment as a changed config
                if fresh and not store.evaluations():
                    store.close()
                    shutil.rmtree(rundir.path, ignore_errors=True)
                raise
            finally:
                store.close()
        return results

    def _open(self) -> tuple[RunDir, bool]:
        """The run's directory, existing or new; nothing is written until every check passed."""
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

    def _prepare(self, store: RunStore, rundir: RunDir) -> Snapshot | None:
        """Check the stored run against this config, then record what the run needs; returns its snapshot."""
        where = rundir.path / DB_FILE
        stored = store.get_meta("config")
        if stored is None:  # a new run (or one killed before its first write)
            for key, value in (("config", self.cfg.model_dump_json()), ("kind", self.kind),
                               ("base_dir", str(self.base_dir)), ("experiment", self.experiment_text or ""),
                               ("created", str(time.time()))):
                store.set_meta(key, value)
        else:
            if stored_kind(store) != self.kind:
                raise ConfigError(f"{where}: this run is a {stored_kind(store)} run; the experiment is a {self.kind} "
                                  "one (use a new --run-dir)")
            if check_config(stored, self.cfg, self.defining, where, self.force):
                store.set_meta("config", self.cfg.model_dump_json())
        snapshot = self._load_snapshot(store, where)
        store.evaluations()  # every stored row read and checked: a damaged one is refused before anything is written
        if self.experiment_text:
            (rundir.path / "experiment.yaml").write_text(self.experiment_text)
        store.set_meta("settings", json.dumps(asdict(self.settings())))
        self.record(store)
        return snapshot

    def _load_snapshot(self, store: RunStore, where: Path) -> Snapshot | None:
        """The newest optimizer snapshot, checked to load before the run writes anything."""
        snap = store.last_snapshot()
        if snap is None:
            return None
        check_snapshot(snap.state, str(where), snap.generation)  # data only: never unpickled
        return snap
