"""Which run lifecycle runs an experiment (`KINDS`, by the experiment file's `kind:`; `open_run`, `resume_run`), and
the search kind (parameter-space, data-flow, M2N2 mosaics over Hugging Face models): resolve its sources and tasks,
start the workers, search, score the final comparison on held-out data. The lifecycle every kind shares is
`evomerge.run.lifecycle`; the other kinds live with their code (`blackbox.runner`, `m2n2.digits`)."""

from __future__ import annotations

import json
import random
import shutil
import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from pydantic import ValidationError
from rich.console import Console

from evomerge.config import ExecutorConfig, ExperimentConfig, experiment_kind, format_validation_error, load_experiment
from evomerge.errors import ConfigError
from evomerge.executors import make_executor
from evomerge.fitness.scorer import load_scorer_function
from evomerge.fitness.tasks import check_disjoint, load_split, shared_prompts
from evomerge.heldout import FinalReport
from evomerge.merge.flow import preflight_flow
from evomerge.run.digits import DigitsRunner
from evomerge.run.lifecycle import RESULTS_FILE, RunLifecycle, RunSettings, stored_kind
from evomerge.search import Evaluator, Search
from evomerge.sources import preflight
from evomerge.spaces import SPACES
from evomerge.store import RunDir, RunStore, Snapshot
from evomerge.zoo.build import PROFILES, build_zoo, zoo_dir

if TYPE_CHECKING:
    from evomerge.merge.memory import MemoryPlan


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
    known = ("base", *spec.expert_tasks())
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
    if cfg.sources.base is not None:  # merging a model with itself, or the base with a zero task vector, says nothing
        for i, p in enumerate(paths):
            if p in paths[:i]:
                raise ConfigError(f"{refs[i][0]}: {refs[i][1]!r} is the same model as {refs[paths.index(p)][0]}; "
                                  "expected each source once, and none of them the base")
    if cfg.sources.base is None:
        return None, paths
    return paths[0], paths[1:]


def model_name(path: Path) -> str:
    """How a source is called in tables: its directory's name, or 'RUN CANDIDATE' for a run's exported best."""
    return f"{path.parent.parent.name} {path.name}" if path.parent.name == "exported" else path.name


def model_names(paths: list[Path]) -> list[str]:
    """Each source's name in tables, unique: where two directories share a name (`a/final`, `b/final`), as many of
    their parent directories as tell them apart, else two rows called 'final' would not say which is which."""
    names = [model_name(p) for p in paths]
    for depth in range(2, max((len(p.parts) for p in paths), default=0) + 1):
        clash = {n for n in names if names.count(n) > 1}
        if not clash:
            break
        names = ["/".join(p.parts[-depth:]).lstrip("/") if n in clash else n for n, p in zip(names, paths, strict=True)]
    return names


def run_best_model(field: str, run_dir: Path, console: Console) -> Path:
    """The best model of a finished run (the winner of its results.json) as a model directory, exported into
    RUN_DIR/exported/<label> the first time it is asked for: a PS result can become a data flow's model A."""
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


def search_sizes(cfg: ExperimentConfig, tasks: dict) -> dict[str, int] | None:
    """Each task's number of search examples, for an estimator that draws examples before anything is scored in
    full (sample; None for the others, which read it from their first full evaluation)."""
    f = cfg.fitness
    if f.estimator != "sample":
        return None
    if f.type == "lm_eval":
        from evomerge.fitness.lm_eval_scorer import doc_count

        counts = {t: doc_count(c) for t, c in tasks[f.search_split].items()}
        return {t: min(n, f.max_examples) if f.max_examples else n for t, n in counts.items()}
    return {t: len(v) for t, v in tasks[f.search_split].items()}


def subset_indices(n: int, size: int, seed: int, task: str) -> list[int]:
    """A fixed random subset of a task's n examples (all of them when size >= n), the same for every candidate."""
    rng = random.Random(f"{seed}:{task}")  # per task: each task contributes its own `size` (stratified)
    return sorted(rng.sample(range(n), min(size, n)))


def _refuse_test_split(field: str, why: str) -> None:
    raise ConfigError(f"{field}: {why}; searching on it would leak into the numbers a benchmark reports — search on "
                      "another split, or set fitness.allow_test_split: true if you mean it")


# Changing these would make the stored evaluations or the optimizer's snapshot mean something else.
SEARCH_DEFINING = ("seed", "zoo", "sources", "space", "optimizer", "fitness")


class Runner(RunLifecycle):
    """Parameter-space, data-flow and M2N2 mosaic searches over Hugging Face models (experiments without `kind:`)."""

    kind = "search"
    config_model = ExperimentConfig
    defining = SEARCH_DEFINING

    @classmethod
    def load(cls, path: Path) -> tuple[ExperimentConfig, Path]:
        return load_experiment(path)

    def _executor_config(self) -> ExecutorConfig:
        if not self.executor_overrides:
            return self.cfg.executor
        merged = {**self.cfg.executor.model_dump(), "type": "ray", **self.executor_overrides}
        try:
            return ExecutorConfig.model_validate(merged)
        except ValidationError as e:
            raise ConfigError(format_validation_error(e, "command line")) from None

    def check(self) -> None:
        self.executor_cfg = self._executor_config()
        self.tasks = resolve_tasks(self.cfg, self.base_dir)
        if self.cfg.fitness.type == "python":  # fails here, before the run directory exists, not in a worker
            load_scorer_function(self.cfg.fitness.scorer, self.base_dir)
        self.base, self.models = resolve_models(self.cfg, self.base_dir, self.console)
        # sources and tokenizer, before the run directory is created or touched
        preflight(self.base, self.models, self.cfg.dtype != "auto")
        if self.cfg.space.type == "data_flow":
            preflight_flow(self.models, self.cfg.dtype != "auto")

    def settings(self) -> RunSettings:
        return RunSettings.of_search(self.cfg)

    def record(self, store: RunStore) -> None:
        # absolute source paths, so that `evomerge export RUN` needs nothing but the run directory
        store.set_meta("sources", json.dumps({"base": self.base and str(self.base),
                                              "models": [str(m) for m in self.models],
                                              "space": self.cfg.space.type, "dtype": self.cfg.dtype}))

    def summary(self, results: dict) -> dict:
        return {"best": results["rows"][0]["label"], "heldout": results["rows"][0]["average"]}

    def execute(self, store: RunStore, snapshot: Snapshot | None) -> dict:
        return self._run(store, self.base, self.models, self.tasks, snapshot)

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
            self.evaluator = Evaluator(cfg, store, executor, self.events, search_sizes(cfg, tasks))
            if executor.streaming:
                self.console.print("[yellow]task vectors do not fit in memory: reading sources from memory-mapped "
                                   "files for every merge (slower)[/]")
            self.names = model_names([Path(m) for m in models])
            space_cls = SPACES[cfg.space.type]
            # the mosaic space: the sources' tensors and Gram matrices (of task vectors over the base, if so set)
            extra = {"sources": models, "base": base} if getattr(space_cls, "needs_sources", False) else {}
            space = space_cls(cfg.space, *executor.shape, **extra)
            Search(cfg, store, self.evaluator, space, self.console, self.events, self.run_dir,
                   self.names).run(snapshot)
            results = FinalReport(cfg, self.evaluator, self.names, self.console, self.run_dir,
                                  executor.shape).run(store)
        finally:
            executor.close()
            self.evaluator.save_telemetry()
        return results

    # -- final comparison on held-out data ----------------------------------------------------------------------


# -- the kinds of run ----------------------------------------------------------------------------------------------
KINDS: dict[str, type[RunLifecycle]] = {cls.kind: cls for cls in (Runner, DigitsRunner)}
FILE_KINDS = {None: "search", "blackbox": "blackbox", "m2n2_digits": "m2n2_digits"}  # `kind:` -> a kind


def kind_class(kind: str) -> type[RunLifecycle]:
    """The lifecycle of a kind of run. Black-box merging is imported when asked for: its client needs the
    'blackbox' extra, and a missing extra is one line naming it, not a failure of every other kind."""
    if kind == "blackbox":
        from evomerge.blackbox.runner import BlackboxRunner

        return BlackboxRunner
    return KINDS[kind]


def lifecycle_class(experiment: Path) -> type[RunLifecycle]:
    kind = experiment_kind(Path(experiment))
    if kind not in FILE_KINDS:
        raise ConfigError(f"{experiment}: kind: unknown experiment kind {kind!r}; expected none (a merge search), "
                          "blackbox or m2n2_digits")
    return kind_class(FILE_KINDS[kind])


def open_run(experiment: Path, run_dir: Path | None = None, **kwargs) -> RunLifecycle:
    """The lifecycle for `evomerge run EXPERIMENT` (a new run, or the existing one in run_dir continued)."""
    return lifecycle_class(experiment)(experiment, run_dir, **kwargs)


def resume_run(run_dir: Path, **kwargs) -> RunLifecycle:
    """The lifecycle for `evomerge resume RUN_DIR`, of the kind the run was started as."""
    store = RunDir.open(run_dir).store()
    try:
        kind = stored_kind(store)
    finally:
        store.close()
    if kind not in set(FILE_KINDS.values()):
        raise ConfigError(f"{run_dir}: a run of unknown kind {kind!r} (expected one of "
                          f"{sorted(set(FILE_KINDS.values()))})")
    return kind_class(kind).resume(run_dir, **kwargs)


# -- `evomerge validate` as a dry run: what `evomerge run` would do first, on a few examples, in seconds: load the
# sources, build the search's first candidate (the optimizer's start point), score a few examples of every task on
# every split. What would fail in a run fails here, as one line.
EXAMPLES = 3  # per task and split


def dry_run(experiment: Path, console: Console) -> None:
    from evomerge.config import load_experiment
    from evomerge.executors import Job
    from evomerge.executors.worker import Worker
    from evomerge.fitness import make_scorer
    from evomerge.fitness.scorer import load_scorer_function
    from evomerge.merge.grouping import grouping, render_grouping
    from evomerge.search import make_optimizer
    from evomerge.spaces import SPACES

    t0 = time.perf_counter()
    cfg, base_dir = load_experiment(experiment)
    f = cfg.fitness
    tasks = resolve_tasks(cfg, base_dir)
    if f.type == "python":
        load_scorer_function(f.scorer, base_dir)
    if f.type != "lm_eval":  # lm-eval task configs are capped by the scorer's limit below
        tasks = {split: {t: ex[:EXAMPLES] for t, ex in by_task.items()} for split, by_task in tasks.items()}
    base, models = resolve_models(cfg, base_dir, console)
    # what `run` checks before it writes anything, so that validate refuses it too
    preflight(base, models, cfg.dtype != "auto")
    flow = cfg.space.type == "data_flow"
    if flow:
        preflight_flow(models, cfg.dtype != "auto")
    for line in render_grouping(grouping(models[0] if flow else base, "layer" if flow else cfg.space.granularity),
                                models[0] if flow else base):
        console.print(line, highlight=False, soft_wrap=True)
    try:
        worker = Worker(base, models, tasks, f, threads=cfg.threads, device="cpu", base_dir=base_dir, flow=flow,
                        dtype=cfg.dtype)
    except ConfigError:
        raise
    except Exception as e:  # noqa: BLE001 — whatever stops a worker from starting stops a run: one line
        raise ConfigError(f"dry run: the sources or tasks do not load: {type(e).__name__}: {e}") from None
    if f.type == "lm_eval":
        worker.scorers = {s: make_scorer(worker.tokenizer, t, f, base_dir, limit=EXAMPLES) for s, t in tasks.items()}
    space_cls = SPACES[cfg.space.type]
    extra = {"sources": models, "base": base} if getattr(space_cls, "needs_sources", False) else {}
    space = space_cls(cfg.space, *worker.builder.shape, **extra)
    try:
        opt = make_optimizer(cfg, space)
    except ValueError as e:
        raise ConfigError(f"optimizer: {e}") from None
    recipe = space.decode(np.asarray(opt.x0, dtype=float), seed=cfg.seed)
    scores = []
    for split in tasks:
        ev = worker.evaluate(Job("dry_run", -1, 0, "start", split, recipe))
        if ev.status != "ok":
            raise ConfigError(f"dry run: the first candidate fails on the {split!r} split: "
                              f"{ev.error.splitlines()[0]}")
        scores.append(f"{split} {ev.objective:.3f}")
    console.print(f"dry run: {len(models)} sources loaded, the first candidate built and scored on {EXAMPLES} "
                  f"examples per task ({', '.join(scores)}) in {time.perf_counter() - t0:.1f} s", highlight=False)


# -- `evomerge plan`: what a run will hold in memory, from the sources' headers ------------------------------------
def plan_experiment(experiment: Path, *, capacity: int | None = None, workers: int | None = None,
                    device: str | None = None) -> MemoryPlan:
    """`evomerge plan`: the memory plan of an experiment file (parameter-space runs; sizes from the sources'
    headers; the zoo must be built)."""
    from transformers import AutoTokenizer

    from evomerge.merge.memory import config_of, device_capacity, has_cuda, plan_memory, token_length


    cfg, base_dir = load_experiment(experiment)
    if cfg.space.type == "data_flow":
        raise ConfigError("space.type: the memory plan covers parameter-space merges; a data flow holds its "
                          "models as they are")
    base, models = resolve_models(cfg, base_dir, Console(quiet=True), build=False)
    if base is None:  # a parameter space names one (config validation); a clear line if it ever does not
        raise ConfigError("sources.base: the memory plan needs the base model")
    # headers and configs: a broken source is one line, not a traceback from the plan
    preflight(base, models, cfg.dtype != "auto")
    f = cfg.fitness
    if f.type == "lm_eval":
        batch = f.lm_eval.batch_size
        seq = f.lm_eval.max_length or config_of(base).get("max_position_embeddings", 2048)
        gen = 0
    else:
        batch = f.batch_size
        seq = token_length(AutoTokenizer.from_pretrained(base), resolve_tasks(cfg, base_dir))
        gen = f.max_new_tokens if f.mode == "generate" else 0
    operators = {cfg.space.operator}
    if cfg.baselines.enabled:
        operators |= {"task_arithmetic", "ties", "dare_ties"}
    if device is None:
        device = cfg.device if cfg.device != "auto" else ("cuda" if has_cuda() else "cpu")
    if workers is None:
        workers = (cfg.executor.workers or 1) if cfg.executor.type == "ray" and device == "cpu" else 1
    stream = None if cfg.sources.stream == "auto" else cfg.sources.stream
    if capacity is None:
        capacity = device_capacity(device) // workers
    threads = max(1, int(cfg.executor.cpus_per_worker or 1)) if cfg.executor.type == "ray" else cfg.threads
    width = {"float32": 4, "bfloat16": 2, "float16": 2}.get(cfg.dtype)  # None for auto: the sources' own
    return plan_memory(base, models, operators=operators, batch=batch, seq=seq, generate_tokens=gen, device=device,
                       capacity=capacity, workers=workers, stream=stream, threads=threads, dtype_bytes=width)
