"""Executors run evaluation jobs on workers: in this process, in a child process that can die or hang without
taking the run with it, or on a pool of Ray actors. Each has `submit(job)`, `next() -> the next evaluation to
complete`, `pending()`, `free_slots()`, `telemetry()`, `shape`, `streaming` and `close()` (see `base.Executor`)."""

from evomerge.executors.base import Executor, WorkerStats
from evomerge.executors.local import LocalExecutor
from evomerge.executors.process import ProcessExecutor
from evomerge.executors.worker import Job, Worker


def make_executor(cfg, worker_args: dict) -> Executor:
    if cfg.type == "local":
        return LocalExecutor(worker_args)
    if cfg.type == "process":
        return ProcessExecutor(worker_args, timeout_s=cfg.timeout_s, max_retries=cfg.max_retries)
    from evomerge.executors.ray_pool import RayExecutor  # imports ray only when asked for

    return RayExecutor(worker_args, workers=cfg.workers, gpus_per_worker=cfg.gpus_per_worker,
                       cpus_per_worker=cfg.cpus_per_worker, address=cfg.address, timeout_s=cfg.timeout_s,
                       max_retries=cfg.max_retries)


__all__ = ["Executor", "Job", "LocalExecutor", "ProcessExecutor", "Worker", "WorkerStats", "make_executor"]
