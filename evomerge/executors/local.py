"""Runs jobs one after another in this process."""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from evomerge.executors.worker import Job, Worker
from evomerge.store import Evaluation


class LocalExecutor:
    def __init__(self, worker_args: dict):
        self.worker = Worker(**worker_args)

    @property
    def streaming(self) -> bool:
        return self.worker.pool.streaming

    @property
    def shape(self) -> tuple[int, int]:
        """(sources, transformer blocks): what a search space needs to know of the models."""
        return self.worker.pool.n_sources, self.worker.pool.n_blocks

    def run(self, jobs: Iterable[Job]) -> Iterator[Evaluation]:
        """Yields each evaluation as soon as it completes."""
        for job in jobs:
            yield self.worker.evaluate(job)

    def close(self) -> None:
        pass
