"""Ray actors, one per GPU (or a share of the CPUs): each loads the sources once and keeps its live model and task
vectors on its own device; recipes go in, evaluations come out — nothing model-sized crosses the object store.

The driver keeps exactly one job in flight per actor, handing the next one out the moment a result lands, so no
worker waits on a batch. An actor that dies (OOM, node loss, kill) is replaced and its job re-issued, up to
`max_retries` times; then the job is a FAILED evaluation and the run goes on.
"""

from __future__ import annotations

import math
import os
import socket
import time

from evomerge.errors import ConfigError, RunError
from evomerge.executors.base import Executor, WorkerStats, failed_evaluation
from evomerge.executors.worker import Job, Worker, threads_for
from evomerge.store import Evaluation


class RayWorker:
    """The actor. Lives in the package (not a script) so that every node can import it. Its threads follow the
    CPUs Ray gave it, not the experiment's `threads` (the local executor's setting): workers that share a machine's
    cores must not each run threads for all of them."""

    def __init__(self, worker_args: dict):
        import ray

        assigned = ray.get_runtime_context().get_assigned_resources()
        threads = threads_for(assigned.get("CPU", 1.0), gpu=assigned.get("GPU", 0) > 0)
        self.worker = Worker(**{**worker_args, "threads": threads})

    def info(self) -> dict:
        return {"pid": os.getpid(), "host": socket.gethostname(), **self.worker.info()}

    def evaluate(self, job: Job) -> Evaluation:
        return self.worker.evaluate(job)


def connect(address: str | None) -> dict:
    """Start a local Ray instance (no address) or attach to a cluster ('auto', 'ray://host:10001', 'host:6379');
    returns the cluster's resources."""
    import ray

    os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # a local instance needs no token; a cluster sets its own
    if not ray.is_initialized():
        try:
            if address is None:
                ray.init(address="local", include_dashboard=False, log_to_driver=False)
            else:
                ray.init(address=address, log_to_driver=False)
        except (ConnectionError, ValueError, RuntimeError) as e:
            raise ConfigError(f"--ray-address: cannot connect to Ray at {address!r}: {e}".replace("\n", " ")) from None
    return ray.cluster_resources()


def cpu_share(cpus: float, workers: int, node_cpus: float) -> float:
    """Each CPU worker's default share of the cluster's CPUs: whole CPUs where there are enough (a worker runs one
    thread per CPU, so a fraction above one would idle), no more than one node has, a fraction where workers
    outnumber the CPUs."""
    share = cpus / workers
    return min(math.floor(share), max(1, math.floor(node_cpus))) if share >= 1 else share


def _largest_node_cpus() -> float:
    import ray

    return max((n["Resources"].get("CPU", 0) for n in ray.nodes() if n["Alive"]), default=1)


def _started(refs: list) -> list[dict]:
    """The workers' info once they have loaded the sources; a worker that cannot start stops the run, named."""
    import ray
    from ray.exceptions import RayActorError

    try:
        return ray.get(refs)
    except RayActorError as e:
        reason = str(getattr(e, "error_msg", e)).strip().splitlines()
        raise RunError(f"a Ray worker could not start: {reason[-1] if reason else type(e).__name__}") from None


class RayExecutor(Executor):
    can_stop = True

    @classmethod
    def from_config(cls, cfg, worker_args: dict) -> RayExecutor:
        return cls(worker_args, workers=cfg.workers, gpus_per_worker=cfg.gpus_per_worker,
                   cpus_per_worker=cfg.cpus_per_worker, address=cfg.address, timeout_s=cfg.timeout_s,
                   max_retries=cfg.max_retries)

    def __init__(self, worker_args: dict, workers: int | None = None, gpus_per_worker: float | None = None,
                 cpus_per_worker: float | None = None, address: str | None = None, timeout_s: float | None = None,
                 max_retries: int = 1):
        import ray

        super().__init__()
        resources = connect(address)
        self._owns_ray = address is None
        gpus, cpus = resources.get("GPU", 0), resources.get("CPU", 1)
        if worker_args.get("device") == "cpu":
            gpus = 0
        if gpus_per_worker is None:
            gpus_per_worker = 1 if gpus else 0
        if workers is None:
            workers = int(gpus // gpus_per_worker) if gpus_per_worker else max(1, int(cpus))
        if cpus_per_worker is None:
            cpus_per_worker = 1 if gpus_per_worker else cpu_share(cpus, workers, _largest_node_cpus())
        if gpus_per_worker > 0 and workers * gpus_per_worker > gpus:
            raise ConfigError(f"executor.workers: {workers} workers × {gpus_per_worker:g} GPU need "
                              f"{workers * gpus_per_worker:g} GPUs; the Ray cluster has {gpus:g}")
        if gpus_per_worker > 0:
            worker_args = {**worker_args, "device": "cuda"}  # Ray sets CUDA_VISIBLE_DEVICES to the actor's GPU
        self.n_workers, self.timeout_s, self.max_retries = workers, timeout_s, max_retries
        self._actor_cls = ray.remote(num_cpus=cpus_per_worker, num_gpus=gpus_per_worker, max_restarts=0)(RayWorker)
        self._worker_args = ray.put(worker_args)  # once, not per actor
        self._actors: dict[str, object] = {}
        self._inflight: dict[object, tuple[str, Job, int, float]] = {}  # ref -> (actor, job, attempt, handed at)
        self._idle: list[str] = []
        self._started = 0
        for _ in range(workers):
            self._spawn()
        try:
            infos = _started([a.info.remote() for a in self._actors.values()])  # wait until every worker has loaded
        except RunError:
            self.close()  # the actors, and the local Ray instance if it is ours
            raise
        self.shape, self.streaming = infos[0]["shape"], infos[0]["streaming"]
        for name, info in zip(self._actors, infos, strict=True):
            self._ready(name, info)

    def _spawn(self) -> str:
        self._started += 1
        name = f"ray-{self._started - 1}"
        self._actors[name] = self._actor_cls.remote(self._worker_args)
        self.stats[name] = WorkerStats(name)
        return name

    def _ready(self, name: str, info: dict) -> None:
        s = self.stats[name]
        s.pid, s.host, s.device, s.threads = info["pid"], info["host"], info["device"], info["threads"]
        s.ready()
        self._idle.append(name)

    def actor_pids(self) -> dict[str, int]:
        return {n: s.pid for n, s in self.stats.items() if s.alive and s.pid is not None}

    # -- scheduling ------------------------------------------------------------------------------------------------
    def submit(self, job: Job) -> None:
        super().submit(job)
        self._dispatch()

    def pending(self) -> int:
        return len(self.queue) + len(self._inflight)

    def free_slots(self) -> int:
        return max(0, len(self._idle) - len(self.queue))

    def running(self) -> list[tuple[Job, float]]:
        now = time.monotonic()
        return [(job, now - t0) for _, job, _, t0 in self._inflight.values()]

    def _dispatch(self) -> None:
        while self._idle and self.queue:
            name = self._idle.pop(0)
            job, attempt = self.queue.popleft()
            self.stats[name].handed()
            ref = self._actors[name].evaluate.remote(job)
            self._inflight[ref] = (name, job, attempt, time.monotonic())

    def _replace(self, name: str, reason: str) -> None:
        """A dead (or hung) actor out, a fresh one in; it joins the idle list once it has loaded."""
        import ray

        self.stats[name].stop(reason)
        ray.kill(self._actors.pop(name), no_restart=True)
        if self._started > self.n_workers * (self.max_retries + 3):
            raise RunError(f"Ray workers keep dying ({self._started - self.n_workers} replaced); see the Ray logs")
        new = self._spawn()
        self._ready(new, _started([self._actors[new].info.remote()])[0])

    def _overdue(self) -> tuple[object, float] | None:
        if self.timeout_s is None or not self._inflight:
            return None
        ref, (_, _, _, t0) = min(self._inflight.items(), key=lambda kv: kv[1][3])
        return ref, t0 + self.timeout_s - time.monotonic()

    def next(self) -> Evaluation:
        import ray
        from ray.exceptions import RayActorError

        while True:
            if not self._inflight:
                raise RuntimeError("next() with no job in flight")
            overdue = self._overdue()
            wait = None if overdue is None else max(overdue[1], 0)
            ready, _ = ray.wait(list(self._inflight), num_returns=1, timeout=wait)
            if not ready:  # the oldest job ran past the time-out: its actor is stopped, the job is not re-issued
                name, job, attempt, t0 = self._inflight.pop(overdue[0])
                reason = f"timed out after {time.monotonic() - t0:.0f} s (executor.timeout_s = {self.timeout_s:g})"
                self._replace(name, reason)
                self._dispatch()
                return failed_evaluation(job, reason, attempt, name)
            name, job, attempt, _ = self._inflight.pop(ready[0])
            try:
                ev = ray.get(ready[0])
            except RayActorError as e:
                reason = f"Ray worker {name} died ({type(e).__name__})"
                self._replace(name, reason)
                if attempt <= self.max_retries:
                    self.queue.appendleft((job, attempt + 1))  # first in line: the run waits on it
                    self._dispatch()
                    continue
                self._dispatch()
                return failed_evaluation(job, f"{reason}, on all {attempt} attempts", attempt, name)
            ev.attempts, ev.worker = attempt, name
            self.stats[name].returned(ev)
            self._idle.append(name)
            self._dispatch()
            return ev

    def close(self) -> None:
        import ray

        super().close()
        for actor in self._actors.values():
            ray.kill(actor, no_restart=True)
        self._actors.clear()
        if self._owns_ray:
            ray.shutdown()
