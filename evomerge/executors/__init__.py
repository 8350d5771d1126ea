"""Executors run evaluation jobs on workers: in-process (local) now, Ray actors later."""

from evomerge.executors.local import LocalExecutor
from evomerge.executors.worker import Job, Worker

__all__ = ["Job", "LocalExecutor", "Worker"]
