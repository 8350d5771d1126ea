"""Runs jobs one after another in this process."""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from evomerge.executors.worker import Job, Worker
from evomerge.store import Evaluation


class LocalExecutor:
    def __init__(self, worker: Worker):
        self.worker = worker

    def run(self, jobs: Iterable[Job]) -> Iterator[Evaluation]:
        """Yields each evaluation as soon as it completes."""
        for job in jobs:
            yield self.worker.evaluate(job)
