"""Runs jobs in a child process, so that a worker which dies (OOM, segfault, kill -9) or hangs past the time-out
costs one candidate, not the run: the child is replaced and the candidate re-issued or recorded FAILED."""

from __future__ import annotations

import contextlib
import multiprocessing as mp
import signal
import socket
import time
import traceback
from typing import Any

from evomerge.errors import RunError
from evomerge.executors.base import Executor, WorkerStats, failed_evaluation
from evomerge.executors.worker import Job, Worker
from evomerge.store import Evaluation


def _serve(conn, worker_args: dict) -> None:
    """The child: build the worker once, then evaluate jobs until told to stop (None)."""
    try:
        worker = Worker(**worker_args)
    except Exception as e:  # noqa: BLE001 — reported to the parent, which decides
        conn.send(("error", f"{type(e).__name__}: {e}\n{traceback.format_exc(limit=3)}"))
        return
    conn.send(("ready", worker.info()))
    while (job := conn.recv()) is not None:
        conn.send(("done", worker.evaluate(job)))


def _death(exitcode: int | None) -> str:
    if exitcode is not None and exitcode < 0:
        return f"worker process died (killed by {signal.Signals(-exitcode).name})"
    return f"worker process died (exit code {exitcode})"


class ProcessExecutor(Executor):
    can_stop = True

    @classmethod
    def from_config(cls, cfg, worker_args: dict) -> ProcessExecutor:
        return cls(worker_args, timeout_s=cfg.timeout_s, max_retries=cfg.max_retries)

    def __init__(self, worker_args: dict, timeout_s: float | None = None, max_retries: int = 1):
        super().__init__()
        self.worker_args, self.timeout_s, self.max_retries = worker_args, timeout_s, max_retries
        self._ctx = mp.get_context("spawn")  # fork after torch has threads is unsafe
        # the spawn context's process and pipe end (Any: multiprocessing's context types do not narrow)
        self._proc: Any = None
        self._conn: Any = None
        self.restarts = 0
        self._start()

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    def _start(self) -> None:
        parent, child = self._ctx.Pipe()
        self._proc = self._ctx.Process(target=_serve, args=(child, self.worker_args), daemon=True)
        self._proc.start()
        child.close()
        self._conn = parent
        try:
            kind, payload = self._conn.recv()
        except EOFError:
            raise RunError(f"the worker process could not start: {_death(self._wait())}") from None
        if kind == "error":
            raise RunError(f"the worker process could not start: {payload.splitlines()[0]}")
        self.shape, self.streaming = payload["shape"], payload["streaming"]
        self.name = f"process-{len(self.stats)}"
        self.stats[self.name] = WorkerStats(self.name, pid=self._proc.pid, host=socket.gethostname(),
                                            device=payload["device"], threads=payload["threads"])
        self.stats[self.name].ready()

    def _wait(self) -> int | None:
        self._proc.join(timeout=10)
        return self._proc.exitcode

    def _kill(self, reason: str | None = None) -> None:
        if self._proc.is_alive():
            self._proc.kill()
        self._wait()
        self._conn.close()
        self._proc = None
        self.stats[self.name].stop(reason)

    def _attempt(self, job: Job) -> Evaluation | str:
        """The evaluation, or why the worker gave none ('timed out …' or a death)."""
        if self._proc is None:
            self.restarts += 1
            self._start()
        stats = self.stats[self.name]
        stats.handed()
        t0 = time.perf_counter()
        try:
            self._conn.send(job)
            if self._conn.poll(self.timeout_s):  # None: wait for as long as it takes
                ev = self._conn.recv()[1]
                stats.returned(ev)
                return ev
        except (EOFError, BrokenPipeError, ConnectionResetError):
            reason = _death(self._wait())
        else:
            reason = f"timed out after {time.perf_counter() - t0:.0f} s (executor.timeout_s = {self.timeout_s:g})"
        self._kill(reason)
        return reason

    def next(self) -> Evaluation:
        job, _ = self.queue.popleft()
        for attempt in range(1, self.max_retries + 2):
            result = self._attempt(job)
            if isinstance(result, Evaluation):
                result.attempts = attempt
                return result
            if result.startswith("timed out"):  # a slow candidate would be as slow again: not re-issued
                return failed_evaluation(job, result, attempt, self.name)
        return failed_evaluation(job, f"{result}, on all {attempt} attempts", attempt, self.name)

    def close(self) -> None:
        if self._proc is not None:
            with contextlib.suppress(BrokenPipeError, OSError):  # the child is gone already
                self._conn.send(None)
            self._proc.join(timeout=10)
            self._kill()
        super().close()
