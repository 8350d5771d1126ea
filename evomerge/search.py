"""The search: jobs out to the executor (through the evaluation cache), evaluations back into the store, the
optimizer told — in whole generations (exactly reproducible) or steady-state (no worker ever waits on a batch).

Workers that would sit idle at a generation's tail score the search's leaders on the held-out split instead
('leader' evaluations); the final table then finds those scores in the cache.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from collections.abc import Iterator

import numpy as np
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from evomerge.config import ExperimentConfig
from evomerge.errors import ConfigError, RunError
from evomerge.executors import Executor, Job
from evomerge.fitness.fidelity import Fidelity
from evomerge.optim import OPTIMIZERS
from evomerge.optim.base import snap_to_grid
from evomerge.optim.state import StateError
from evomerge.recipe import FlowRecipe, Recipe, parse_recipe
from evomerge.store import EvalKind, Evaluation, EventLog, RunStore, Snapshot

SEED_KIND = EvalKind.SEED  # known candidates (start point, sources, baselines) scored before the search
# periodic re-scores: whole search split, held-out split
CHECKPOINT_KINDS = (EvalKind.CHECKPOINT, EvalKind.CHECKPOINT_HELDOUT)
RECOMMENDATION_META = "recommendation"  # the optimizer's last recommendation (Search._recommend)
RECOMMENDED_LABEL = "final-mean"  # its label when the end re-scores it
LEADERS = 5  # how many of the best search candidates idle workers re-score on held-out data
TELEMETRY_EVERY_S = 10.0


def label(gen: int, idx: int) -> str:
    return f"g{gen}-{idx}"


class FailedValue:
    """The one rule for what an optimizer is told of a failed candidate (every kind of search uses it): a worst
    case, the lowest value seen so far per objective and never above 0 (0 for accuracies), so that a failure ranks
    below every real result without a magic number."""

    def __init__(self, n_objectives: int = 1):
        self.floor = [0.0] * n_objectives

    def see(self, values: list[float]) -> None:
        """Lower the floor by the objectives of a successful evaluation."""
        self.floor = [min(f, v) for f, v in zip(self.floor, values, strict=True)]

    def told(self, values: list[float] | None) -> list[float]:
        """What to tell for an evaluation: its objectives, or the floor when it failed (None)."""
        return list(self.floor) if values is None else values


class Evaluator:
    """Issues jobs (a recipe scored before with the same fitness settings is copied, not scored again), records
    every evaluation before anyone hears of it, and keeps idle workers busy with leaders."""

    def __init__(self, cfg: ExperimentConfig, store: RunStore, executor: Executor, events: EventLog,
                 sizes: dict[str, int] | None = None):
        """`sizes`: each task's number of search examples, where the fidelity needs it before any full score."""
        self.cfg, self.store, self.executor, self.events = cfg, store, executor, events
        self._fillers: set[str] = set()  # cache keys of leader jobs in flight
        self._announced: set[str] = set()
        self._ended: set[str] = set()  # workers whose early stop is logged
        # the best search candidates so far, kept here: the store is not re-read on every result
        self.leaders: list[Evaluation] = []
        self._seconds: dict[str, tuple[int, float]] = {}  # split -> (evaluations, seconds): how long one takes
        self.fidelity = Fidelity(cfg, store, sizes)  # how many examples a search candidate is scored on
        for ev in store.evaluations(EvalKind.SEARCH):
            self._rank(ev)
        self._telemetry_at = 0.0
        self.announce_workers()

    def cache_key(self, recipe: Recipe | FlowRecipe, split: str, examples: dict | None = None) -> str:
        """Equal keys, equal scores: the recipe, the split, the fitness settings and which examples were scored."""
        blob = f"{recipe.to_json()}|{split}|{self.cfg.fitness.model_dump_json()}"
        if examples is not None:
            blob += "|" + json.dumps(examples, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()

    def _rank(self, ev: Evaluation) -> None:
        if ev.kind == EvalKind.SEARCH and ev.status == "ok":
            self.leaders = sorted([*self.leaders, ev], key=lambda e: -e.objective)[:LEADERS]

    def record(self, ev: Evaluation) -> Evaluation:
        ev = self.fidelity.finish(ev)  # an estimate from a few examples becomes the candidate's score
        self.store.add(ev)  # durable before anyone hears of it
        self._rank(ev)
        if ev.status == "ok" and ev.worker != "cache":
            n, t = self._seconds.get(ev.split, (0, 0.0))
            self._seconds[ev.split] = (n + 1, t + ev.merge_seconds + ev.eval_seconds)
        self.events.emit("evaluation", kind=ev.kind, generation=ev.generation, idx=ev.idx, label=ev.label,
                         status=ev.status, objective=ev.objective, merge_s=round(ev.merge_seconds, 4),
                         eval_s=round(ev.eval_seconds, 4), attempts=ev.attempts, worker=ev.worker,
                         **({"error": ev.error.splitlines()[0]} if ev.error else {}))
        return ev

    def issue(self, job: Job) -> Evaluation | None:
        """The evaluation at once when the cache has it; otherwise the job goes to a worker (None)."""
        job = dataclasses.replace(job, cache_key=self.cache_key(job.recipe, job.split, job.examples))
        hit = self.store.cached(job.cache_key)
        if hit is None:
            self.executor.submit(job)
            return None
        return self.record(dataclasses.replace(hit, kind=job.kind, generation=job.generation, idx=job.idx,
                                               label=job.label, genome=job.genome, merge_seconds=0.0,
                                               eval_seconds=0.0, attempts=1, worker="cache"))

    def _take(self) -> Evaluation:
        """The next evaluation any worker finishes, recorded."""
        ev = self.record(self.executor.next())
        if ev.kind == EvalKind.LEADER:
            self._fillers.discard(ev.cache_key)
        self.after_result()
        return ev

    def collect(self) -> Evaluation:
        """The next evaluation of an issued job (leader evaluations are recorded on the way, not returned)."""
        while (ev := self._take()).kind == EvalKind.LEADER:
            pass
        return ev

    def evaluate(self, jobs: list[Job]) -> Iterator[Evaluation]:
        """Each job's evaluation, cache hits first, then as workers finish. While the batch's last jobs run, workers
        left without work score leaders; once the batch is done nothing is started that the next one would wait on."""
        issued = 0
        for job in jobs:
            hit = self.issue(job)
            if hit is None:
                issued += 1
            else:
                yield hit
        for left in range(issued - 1, -1, -1):
            if left:
                self.fill()
            yield self.collect()

    def drain(self) -> None:
        """Wait for every job in flight, leaders included."""
        while self.executor.pending():
            self._take()

    def _mean_seconds(self, split: str) -> float | None:
        n, t = self._seconds.get(split, (0, 0.0))
        return t / n if n else None

    def _room(self) -> bool:
        """Whether a leader started now would end before the search jobs on the other workers do (expected), so
        that the next batch never waits on it."""
        running = [elapsed for job, elapsed in self.executor.running() if job.kind == EvalKind.SEARCH]
        search = self._mean_seconds(self.cfg.fitness.search_split)
        if not running or search is None:
            return False
        leader = self._mean_seconds(self.cfg.fitness.heldout_split) or search  # before any: like a search job
        return search - min(running) >= leader

    def fill(self) -> None:
        """Hand idle workers the best search candidates not yet scored on held-out data, where there is room."""
        if not self.executor.free_slots() or not self._room():
            return
        split = self.cfg.fitness.heldout_split
        for ev in self.leaders:
            if not self.executor.free_slots():
                return
            recipe = parse_recipe(ev.recipe)
            key = self.cache_key(recipe, split)
            if key in self._fillers or self.store.cached(key) is not None:
                continue
            self._fillers.add(key)
            self.executor.submit(Job(EvalKind.LEADER, -1, 0, ev.label, split, recipe, cache_key=key))

    def after_result(self) -> None:
        self.announce_workers()
        if time.monotonic() - self._telemetry_at > TELEMETRY_EVERY_S:
            self.save_telemetry()

    def announce_workers(self) -> None:
        """Log each worker's start, and its stop when it ended before the run did (its death, a time-out)."""
        for s in self.executor.stats.values():
            if s.name not in self._announced and s.pid is not None:
                self._announced.add(s.name)
                self.events.emit("worker_started", worker=s.name, pid=s.pid, host=s.host, device=s.device,
                                 threads=s.threads)
            if s.ended is not None and s.name not in self._ended:
                self._ended.add(s.name)
                self.events.emit("worker_stopped", worker=s.name, pid=s.pid, reason=s.ended)

    def save_telemetry(self) -> None:
        self._telemetry_at = time.monotonic()
        self.store.set_meta("workers", json.dumps(self.executor.telemetry()))


def make_optimizer(cfg: ExperimentConfig, space):
    """The experiment's optimizer over `space`'s genome."""
    cls = OPTIMIZERS[cfg.optimizer.type]
    extra = {"space": space} if cls.needs_space else {}
    # a space may know where a search should start (x0) and which genes are discrete (steps)
    return cls(cfg.optimizer, space.dim, seed=cfg.seed, n_objectives=cfg.n_objectives, steps=space.steps,
               x0=space.x0, **extra)


class Search:
    def __init__(self, cfg: ExperimentConfig, store: RunStore, evaluator: Evaluator, space, console: Console,
                 events: EventLog, run_dir, names: list[str] | None = None):
        """`names`: the sources' names, for the labels of the known candidates the search starts from."""
        self.cfg, self.store, self.evaluator, self.space = cfg, store, evaluator, space
        self.console, self.events, self.run_dir = console, events, run_dir
        self.names = names or [f"model {i}" for i in range(getattr(space, "k", 0))]
        oc = cfg.optimizer
        self.opt = make_optimizer(cfg, space)
        self.total = oc.generations * self.opt.popsize
        steady = oc.steady_state
        if steady is None:
            # an IRT estimate is refitted, a sample's strata drawn, between generations, from the generations before:
            # whole generations keep them the same on resume
            steady = (self.opt.steady_state and evaluator.executor.n_workers > 1
                      and cfg.fitness.estimator not in ("irt", "sample"))
        self.steady = steady
        if steady and cfg.fitness.rescore_every:
            console.print("[yellow]fitness.rescore_every: a steady-state search re-scores its best candidates at "
                          "the end only[/]")
        store.set_meta("search_total", str(self.total))
        stored = store.evaluations(EvalKind.SEARCH)  # read once: best so far, floor and count come from it
        self.done = len(stored)
        self.best = max((e for e in stored if e.status == "ok"), key=lambda e: e.objective, default=None)
        self._failed = FailedValue(cfg.n_objectives)  # what a failed candidate is told
        for ev in stored:
            self._lower_floor(ev)
        self._checkpoints = {ev.generation for ev in store.evaluations(CHECKPOINT_KINDS[-1])}
        # optimizers that keep an archive (M2N2): its members by candidate label, over time, for the report
        self._archive_every = self.opt.popsize if self.opt.keeps_archive else 0
        self._labels = {np.asarray(ev.genome, dtype=float).tobytes(): ev.label for ev in stored if ev.genome}
        self._parents: dict[str, list[str]] = {}  # label -> its parents' labels, for breeding optimizers

    # -- shared ----------------------------------------------------------------------------------------------------
    def _job(self, n: int, x: np.ndarray) -> Job:
        gen, idx = divmod(n, self.opt.popsize)
        recipe = self.space.decode(x, seed=self.cfg.seed * 1_000_003 + gen * 1000 + idx)
        if self._archive_every:
            key = np.asarray(x, dtype=float).tobytes()
            self._labels[key] = label(gen, idx)
            bred = self.opt.parents(x)
            if bred is not None:
                self._parents[label(gen, idx)] = [self._labels.get(np.asarray(p, dtype=float).tobytes(), "?")
                                                  for p in bred]
        job = Job(EvalKind.SEARCH, gen, idx, label(gen, idx), self.cfg.fitness.search_split, recipe,
                  [float(v) for v in x])
        return self.evaluator.fidelity.job(job)

    def _record_archive(self, told: int) -> None:
        """Every `popsize` candidates told: which candidates the optimizer's archive holds (meta
        `archive_history`, a list of {"evaluation": n, "members": [labels]}), for the report's diversity plot."""
        if not self._archive_every or told % self._archive_every:
            return
        members = [self._labels.get(np.asarray(m, dtype=float).reshape(-1).tobytes()) for m, _ in self.opt.archive()]
        history = json.loads(self.store.get_meta("archive_history") or "[]")
        history = [h for h in history if h["evaluation"] < told]  # a resumed run writes its checkpoint again
        history.append({"evaluation": told, "members": [m for m in members if m is not None]})
        self.store.set_meta("archive_history", json.dumps(history))
        if self._parents:  # the children named since the last write join the stored ones
            self.store.set_meta("parents", json.dumps({**json.loads(self.store.get_meta("parents") or "{}"),
                                                       **self._parents}))
            self._parents = {}

    def _prior(self, n: int) -> Evaluation | None:
        gen, idx = divmod(n, self.opt.popsize)
        return self.store.get(EvalKind.SEARCH, gen, idx, label(gen, idx))

    def _objectives(self, ev: Evaluation) -> list[float]:
        if self.cfg.n_objectives == 1:
            return [ev.objective]
        return [ev.per_task[t] for t in self.cfg.fitness.tasks]

    def _lower_floor(self, ev: Evaluation) -> None:
        if ev.status == "ok":
            self._failed.see(self._objectives(ev))

    def _seen(self, ev: Evaluation, progress, bar) -> None:
        self._lower_floor(ev)
        if ev.status == "ok" and (self.best is None or ev.objective > self.best.objective):
            self.best = ev
        progress.update(bar, advance=1, best=self.best.objective if self.best else float("nan"))
        if ev.status != "ok":
            self.console.print(f"[yellow]candidate {ev.label} failed: {ev.error.splitlines()[0]}[/]")

    def _values(self, evals: list[Evaluation]) -> list:
        """What the optimizer is told: the objective (or one per task); for a failure, a worst case — no better
        than anything seen (0 for accuracies)."""
        out = [self._failed.told(self._objectives(e) if e.status == "ok" else None) for e in evals]
        return [v[0] for v in out] if self.cfg.n_objectives == 1 else [tuple(v) for v in out]

    def _example_row(self, ev: Evaluation) -> list[float] | None:
        """The per-example scores of an evaluation, task after task in the config's order (None: it failed, or the
        optimizer does not learn from them)."""
        if ev.status != "ok" or not self.opt.wants_examples:
            return None
        return [float(v) for t in self.cfg.fitness.tasks for v in ev.per_example[t]]

    def seeds(self) -> list[tuple[str, np.ndarray]]:
        """The known candidates: the optimizer's start point, then what the space can express of the sources and
        the baselines (`space.seeds`), on the optimizer's grid, each genome once (the first label kept)."""
        if not self.cfg.optimizer.warm_start or not hasattr(self.space, "seeds"):
            return []
        out: list[tuple[str, np.ndarray]] = []
        for name, x in [(self.space.start_name(self.names), self.opt.x0),
                        *self.space.seeds(self.names, self.cfg.baselines)]:
            x = snap_to_grid(x, self.opt.steps)
            if not any(np.array_equal(x, y) for _, y in out):
                out.append((name, x))
        return out

    def _seed(self) -> None:
        """Before the first ask: the known candidates are scored on the search split (once across restarts) and
        told to the optimizer (`Optimizer.seed`), so that the search starts from the best of what it was given and
        the final table can pick the best of everything scored."""
        known = self.seeds()
        if not known:
            return
        jobs = [self.evaluator.fidelity.job(
                    Job(SEED_KIND, -1, i, name, self.cfg.fitness.search_split,
                        self.space.decode(x, seed=self.cfg.seed * 1_000_003 + 999_999 - i), [float(v) for v in x]))
                for i, (name, x) in enumerate(known) if self.store.get(SEED_KIND, -1, i, name) is None]
        with self.console.status(f"scoring {len(known)} known candidates (start, sources, baselines) first"):
            for _ in self.evaluator.evaluate(jobs):
                pass
        evals = [self.store.get(SEED_KIND, -1, i, name) for i, (name, _) in enumerate(known)]
        ok = [(x, e) for (_, x), e in zip(known, evals, strict=True) if e.status == "ok"]
        for e in evals:
            self._lower_floor(e)
        if not ok:
            return
        genomes, told = [x for x, _ in ok], [e for _, e in ok]
        self.opt.seed(genomes, self._values(told), [self._example_row(e) for e in told])
        top = max(told, key=lambda e: e.objective)
        self.console.print(f"known candidates on the search split: best {top.label} {top.objective:.3f} "
                           f"({len(told)} scored)")
        self.events.emit("seeded", candidates=len(told), best=top.objective, best_label=top.label)

    def run(self, snap: Snapshot | None) -> None:
        if snap is not None:
            try:
                self.opt.load_state(snap.state)
            except StateError as e:  # readable data, but not this optimizer's: refused before anything is asked
                raise ConfigError(f"the optimizer snapshot of generation {snap.generation + 1} does not fit this "
                                  f"run ({e}); start the search again in a new --run-dir") from None
            self.steady = snap.phase == "steady"  # a run goes on the way it started, whatever the workers now
        done = self.done
        if done >= self.total and (snap is None or snap.phase != "asked"):
            self.console.print(f"search already complete ({done} evaluations stored)")
            return
        if done:
            self.console.print(f"continuing {self.run_dir} ({done} evaluations stored)")
        if snap is None:  # nothing asked yet: the optimizer has not heard of the known candidates
            self._seed()
        self.events.emit("search_started", workers=self.evaluator.executor.n_workers, steady_state=self.steady,
                         total=self.total)
        with _progress(self.console) as progress:
            bar = progress.add_task("search", total=self.total, completed=min(done, self.total),
                                    best=self.best.objective if self.best else float("nan"), gen="")
            if self.steady:
                self._steady(snap, progress, bar)
            else:
                self._generations(snap, progress, bar)
        self.evaluator.drain()
        self.evaluator.save_telemetry()
        self.events.emit("search_finished", best=self.best.objective if self.best else None,
                         workers=self.evaluator.executor.telemetry())

    # -- whole generations -----------------------------------------------------------------------------------------
    def _generations(self, snap: Snapshot | None, progress, bar) -> None:
        generations = self.cfg.optimizer.generations
        start, pending = 0, None
        if snap is not None:
            start = snap.generation + (snap.phase == "told")
            if snap.phase == "asked":  # asked but not told: the same genomes go out again
                pending = [np.asarray(g, dtype=float) for g in snap.genomes]
        for gen in range(start, generations):
            if pending is not None:
                genomes, pending = pending, None
            else:
                genomes = self.opt.ask()
                self.store.save_snapshot(gen, "asked", self.opt.state(), genomes)
            self.events.emit("generation_asked", generation=gen, candidates=len(genomes))
            progress.update(bar, gen=f"generation {gen + 1}/{generations}")
            evals: dict[int, Evaluation] = {}
            jobs = []
            for i, x in enumerate(genomes):
                prior = self._prior(gen * self.opt.popsize + i)
                if prior is not None:  # completed before a stop: reuse, never recompute
                    evals[i] = prior
                else:
                    jobs.append(self._job(gen * self.opt.popsize + i, x))
            for ev in self.evaluator.evaluate(jobs):
                evals[ev.idx] = ev
                self._seen(ev, progress, bar)
            if all(evals[i].status != "ok" for i in evals):
                raise RunError(f"every candidate of generation {gen + 1} failed; first error: "
                               f"{evals[0].error.splitlines()[0]}")
            told = [evals[i] for i in range(len(genomes))]
            self.opt.tell(genomes, self._values(told), [self._example_row(e) for e in told])
            self.store.save_snapshot(gen, "told", self.opt.state())
            self._recommend(gen)
            self._record_archive((gen + 1) * self.opt.popsize)
            self.events.emit("generation_told", generation=gen, best=self.best.objective, best_label=self.best.label)
            self._checkpoint((gen + 1) * self.opt.popsize)

    def _recommend(self, gen: int) -> None:
        """After a generation of a cheaper fitness: the optimizer's recommendation (CMA-ES: its mean), as a recipe in
        the run's meta (`recommendation`), for the end's re-scoring."""
        if not self.cfg.fitness.cheap or not self.cfg.fitness.rescore_mean:
            return
        x = self.opt.recommendation()
        if x is None:
            return
        recipe = self.space.decode(x, seed=self.cfg.seed * 1_000_003 + (gen + 1) * 1000 + 999)
        self.store.set_meta(RECOMMENDATION_META, json.dumps({"generation": gen, "genome": [float(v) for v in x],
                                                             "recipe": json.loads(recipe.to_json())}))

    def _checkpoint(self, done: int) -> None:
        """Every `fitness.rescore_every` evaluations: the best candidates so far on the whole search split (after a
        subset search) and on the held-out split, so that a run's record shows when the subset started to fool
        the search. Stored under the evaluation count reached; scores repeat from the cache, never recomputed."""
        f = self.cfg.fitness
        if not f.rescore_every or done // f.rescore_every <= max(self._checkpoints, default=0) // f.rescore_every:
            return  # no multiple of rescore_every passed since the last checkpoint
        self._checkpoints.add(done)
        top = sorted((e for e in self.store.evaluations(EvalKind.SEARCH) if e.status == "ok"),
                     key=lambda e: -e.objective)
        splits = dict(zip(CHECKPOINT_KINDS, (f.rescore_split, f.heldout_split), strict=True))
        if not f.cheap:
            splits.pop(CHECKPOINT_KINDS[0])
        jobs = [Job(kind, done, i, e.label, split, parse_recipe(e.recipe))
                for kind, split in splits.items() for i, e in enumerate(top[: f.rescore_top])
                if self.store.get(kind, done, i, e.label) is None]
        with self.console.status(f"re-scoring the {len(top[: f.rescore_top])} best after {done} evaluations"):
            for _ in self.evaluator.evaluate(jobs):
                pass
        self.events.emit("checkpoint", evaluations=done, candidates=[e.label for e in top[: f.rescore_top]])

    # -- steady-state ----------------------------------------------------------------------------------------------
    def _save_steady(self, asked: int, inflight: dict[int, np.ndarray]) -> None:
        self.store.save_snapshot(asked, "steady", self.opt.state(),
                                 [[n, *map(float, x)] for n, x in sorted(inflight.items())])

    def _steady(self, snap: Snapshot | None, progress, bar) -> None:
        """Keep every worker busy: the moment a result lands, the optimizer is told and asked for one more."""
        workers = self.evaluator.executor.n_workers
        asked, inflight = 0, {}
        if snap is not None:
            asked = snap.generation
            inflight = {int(row[0]): np.asarray(row[1:], dtype=float) for row in snap.genomes}
        self._told = asked - len(inflight)  # candidates the optimizer had heard of before this start
        progress.update(bar, gen="steady-state")
        issued: dict[str, int] = {}
        # candidates asked before a stop: a stored result is told now, the others go out again
        for n, x in list(inflight.items()):
            prior = self._prior(n)
            if prior is not None:
                self._tell(n, prior, inflight, asked)
            else:
                self._issue(n, x, issued, progress, bar, inflight, asked)
        recent: list[str] = []
        while True:
            while len(issued) < workers and asked < self.total:
                x = self.opt.ask_one()
                n, asked = asked, asked + 1
                inflight[n] = x
                self._save_steady(asked, inflight)
                self._issue(n, x, issued, progress, bar, inflight, asked)
            if not issued:
                break
            if asked >= self.total:  # the last candidates are running: workers without one score leaders
                self.evaluator.fill()
            ev = self.evaluator.collect()
            n = issued.pop(ev.label)
            self._seen(ev, progress, bar)
            self._tell(n, ev, inflight, asked)
            recent = (recent + [ev.status])[-self.opt.popsize:]
            if len(recent) == self.opt.popsize and "ok" not in recent:
                raise RunError(f"the last {len(recent)} candidates all failed; last error: "
                               f"{ev.error.splitlines()[0]}")

    def _issue(self, n, x, issued, progress, bar, inflight, asked) -> None:
        job = self._job(n, x)
        hit = self.evaluator.issue(job)
        if hit is None:
            issued[job.label] = n
        else:  # a cached recipe: told at once
            self._seen(hit, progress, bar)
            self._tell(n, hit, inflight, asked)

    def _tell(self, n: int, ev: Evaluation, inflight: dict[int, np.ndarray], asked: int) -> None:
        self.opt.tell_one(inflight.pop(n), self._values([ev])[0], self._example_row(ev))
        self._save_steady(asked, inflight)
        self._told += 1
        self._record_archive(self._told)


def _progress(console: Console) -> Progress:
    return Progress(
        TextColumn("{task.fields[gen]}"), BarColumn(), MofNCompleteColumn(), TextColumn("evaluations"),
        TextColumn("best {task.fields[best]:.3f}"), TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(),
        console=console,
    )
