"""What every executor shares: a queue of jobs, evaluations handed back one at a time as they complete, and the
clock of each worker's busy and idle time (the scheduler's report card: a worker waiting on the driver is idle)."""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field

from evomerge.executors.worker import Job
from evomerge.store import Evaluation


@dataclass
class WorkerStats:
    """One worker's life, seen from the driver: busy from a job's hand-out to its result, idle otherwise."""

    name: str
    started: float = field(default_factory=time.time)
    jobs: int = 0
    failed: int = 0
    merge_s: float = 0.0
    eval_s: float = 0.0
    busy_s: float = 0.0
    idle_s: float = 0.0
    pid: int | None = None
    host: str | None = None
    device: str | None = None
    threads: int | None = None  # its CPU threads (torch, OpenMP, BLAS), as the worker reports them
    alive: bool = True
    ended: str | None = None  # why it stopped before the run's end (its death, a time-out); None: it did not
    _since: float | None = None  # when its current busy or idle stretch began
    _busy: bool = False

    def ready(self) -> None:
        self._since, self._busy = time.perf_counter(), False

    def handed(self) -> None:
        now = time.perf_counter()
        if self._since is not None and not self._busy:
            self.idle_s += now - self._since
        self._since, self._busy = now, True

    def returned(self, ev: Evaluation | None) -> None:
        now = time.perf_counter()
        if self._since is not None and self._busy:
            self.busy_s += now - self._since
        self._since, self._busy = now, False
        if ev is not None:
            self.jobs += 1
            self.failed += ev.status != "ok"
            self.merge_s += ev.merge_seconds
            self.eval_s += ev.eval_seconds

    def stop(self, reason: str | None = None) -> None:
        self.returned(None)
        self.alive = False
        self.ended = reason

    def report(self) -> dict:
        """The totals so far, the current busy or idle stretch included."""
        d = {k: v for k, v in asdict(self).items() if not k.startswith("_")}
        if self.alive and self._since is not None:
            d["busy_s" if self._busy else "idle_s"] += time.perf_counter() - self._since
        live = d["busy_s"] + d["idle_s"]
        d["utilization"] = d["busy_s"] / live if live else None
        d["evaluations_per_hour"] = self.jobs / live * 3600 if live else None
        return d


def failed_evaluation(job: Job, error: str, attempts: int, worker: str) -> Evaluation:
    """The record of a job no worker could finish."""
    return Evaluation(kind=job.kind, generation=job.generation, idx=job.idx, label=job.label, split=job.split,
                      status="failed", genome=job.genome, recipe=job.recipe.to_json(), cache_key=job.cache_key,
                      error=error, attempts=attempts, worker=worker)


class Executor:
    """`submit(job)` queues; `next()` blocks until some submitted job's evaluation is ready and returns it.

    The contract of every class in `evomerge.executors.EXECUTORS` (tests/test_contracts.py checks it per entry):
    `from_config(executor_cfg, worker_args)` starts its workers (`Worker(**worker_args)` each); every submitted job
    comes back from `next()` exactly once, as the evaluation a `Worker` in this process would have recorded for it
    (scores equal; timings and worker names aside), in any order; a worker that dies or hangs becomes a retry, then
    a failed evaluation, never an exception; `pending()`, `free_slots()`, `running()`, `telemetry()`, `shape`
    (what the search space needs to know of the models), `streaming` and `close()` as below. `can_stop`: whether it
    can stop a running evaluation (`executor.timeout_s` needs one that can).
    """

    n_workers = 1
    shape: tuple  # (sources, transformer blocks; a data flow: every model's layer count)
    streaming = False
    can_stop = False

    @classmethod
    def from_config(cls, cfg, worker_args: dict) -> Executor:
        """The executor for `cfg` (an `ExecutorConfig`), its workers started with `worker_args`."""
        raise NotImplementedError

    def __init__(self) -> None:
        self.queue: deque[tuple[Job, int]] = deque()  # (job, attempt)
        self.stats: dict[str, WorkerStats] = {}

    def submit(self, job: Job) -> None:
        self.queue.append((job, 1))

    def pending(self) -> int:
        """Jobs submitted and not yet returned by next()."""
        return len(self.queue)

    def free_slots(self) -> int:
        """Workers that would sit idle: nothing queued for them."""
        return 0

    def running(self) -> list[tuple[Job, float]]:
        """Jobs on a worker now, with the seconds since each was handed out (executors that run one job at a time
        while the driver waits report none)."""
        return []

    def next(self) -> Evaluation:
        raise NotImplementedError

    def run(self, jobs: Iterable[Job]) -> Iterator[Evaluation]:
        """Submit a batch and yield its evaluations as they complete."""
        jobs = list(jobs)
        for job in jobs:
            self.submit(job)
        for _ in jobs:
            yield self.next()

    def telemetry(self) -> list[dict]:
        return [s.report() for s in self.stats.values()]

    def close(self) -> None:
        for s in self.stats.values():
            if s.alive:
                s.stop()
