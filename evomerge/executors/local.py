"""Runs jobs one after another in this process."""

from __future__ import annotations

import os
import socket

from evomerge.executors.base import Executor, WorkerStats
from evomerge.executors.worker import Worker
from evomerge.store import Evaluation


class LocalExecutor(Executor):
    @classmethod
    def from_config(cls, cfg, worker_args: dict) -> LocalExecutor:  # noqa: ARG003 — nothing to set
        return cls(worker_args)

    def __init__(self, worker_args: dict):
        super().__init__()
        self.worker = Worker(**worker_args)
        info = self.worker.info()
        self.shape, self.streaming = info["shape"], info["streaming"]
        self.stats["local"] = WorkerStats("local", pid=os.getpid(), host=socket.gethostname(), device=info["device"],
                                          threads=info["threads"])
        self.stats["local"].ready()

    def next(self) -> Evaluation:
        job, _ = self.queue.popleft()
        stats = self.stats["local"]
        stats.handed()
        ev = self.worker.evaluate(job)
        stats.returned(ev)
        return ev
