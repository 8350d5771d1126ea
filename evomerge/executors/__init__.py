"""Executors run evaluation jobs on workers: in this process, or in a child process that can die or hang without
taking the run with it. Each has `run(jobs) -> evaluations as they complete`, `shape`, `streaming` and `close()`."""

from evomerge.executors.local import LocalExecutor
from evomerge.executors.process import ProcessExecutor
from evomerge.executors.worker import Job, Worker

EXECUTORS = {"local": LocalExecutor, "process": ProcessExecutor}


def make_executor(cfg, worker_args: dict):
    if cfg.type == "local":
        return LocalExecutor(worker_args)
    return ProcessExecutor(worker_args, timeout_s=cfg.timeout_s, max_retries=cfg.max_retries)


__all__ = ["EXECUTORS", "Job", "LocalExecutor", "ProcessExecutor", "Worker", "make_executor"]
