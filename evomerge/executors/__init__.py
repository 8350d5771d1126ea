"""Executors run evaluation jobs on workers: in this process, in a child process that can die or hang without
taking the run with it, or on a pool of Ray actors.

`EXECUTORS` is the one registry (name -> `Executor` class; `executor.type` names one). The contract is in
`evomerge.executors.base`; tests/test_contracts.py checks that every entry returns the same evaluations as the
local executor.
"""

from __future__ import annotations

from evomerge.executors.base import Executor, WorkerStats
from evomerge.executors.local import LocalExecutor
from evomerge.executors.process import ProcessExecutor
from evomerge.executors.ray_pool import RayExecutor  # imports ray only when one is started
from evomerge.executors.worker import Job, Worker

EXECUTORS: dict[str, type[Executor]] = {"local": LocalExecutor, "process": ProcessExecutor, "ray": RayExecutor}


def make_executor(cfg, worker_args: dict) -> Executor:
    """The executor `cfg.type` names (an `ExecutorConfig`), its workers started with `worker_args`."""
    return EXECUTORS[cfg.type].from_config(cfg, worker_args)


__all__ = ["EXECUTORS", "Executor", "Job", "LocalExecutor", "ProcessExecutor", "RayExecutor", "Worker", "WorkerStats",
           "make_executor"]
