"""Start the merge service as a subprocess for one run (`service.launch: local`) and stop it after.

The token is made fresh for the run and handed to the server through its environment: it is never written to a
file, a log or the run directory.
"""

from __future__ import annotations

import os
import secrets
import socket
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

from evomerge.errors import require_extra

require_extra("blackbox", "black-box merging")  # one clear line when the extra is missing

import httpx  # noqa: E402

from evomerge.blackbox.service import TOKEN_ENV  # noqa: E402
from evomerge.errors import RunError  # noqa: E402


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def serve_command(base: Path, repository: Path, port: int, *, replicas: int = 1, threads: int = 1,
                  data: dict[str, Path] | None = None, budget: int = 1_000_000,
                  budget_db: Path | None = None) -> list[str]:
    cmd = [sys.executable, "-m", "evomerge.cli", "serve", "--base", str(base), "--repository", str(repository),
           "--host", "127.0.0.1", "--port", str(port), "--replicas", str(replicas), "--threads", str(threads),
           "--budget", str(budget)]
    if budget_db is not None:
        cmd += ["--budget-db", str(budget_db)]
    for name, d in (data or {}).items():
        cmd += ["--dataset", f"{name}={d}"]
    return cmd


def wait_healthy(url: str, proc: subprocess.Popen, timeout_s: float, log: Path | None = None) -> None:
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        if proc.poll() is not None:
            tail = log.read_text()[-2000:] if log and log.is_file() else ""
            raise RunError(f"the merge service exited with status {proc.returncode} while starting: {tail}")
        try:
            if httpx.get(f"{url}/healthz", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.3)
    raise RunError(f"the merge service at {url} did not answer /healthz within {timeout_s:.0f} s")


@contextmanager
def local_service(base: Path, repository: Path, log: Path, *, replicas: int = 1, threads: int = 1,
                  start_timeout_s: float = 300.0):
    """Yield (url, token) of a merge service running in a child process on loopback."""
    port, token = free_port(), secrets.token_urlsafe(24)
    env = {**os.environ, TOKEN_ENV: token}
    with open(log, "ab") as out:
        proc = subprocess.Popen(serve_command(base, repository, port, replicas=replicas, threads=threads,
                                              budget_db=log.parent / "service-budgets.db"),
                                env=env, stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(url, proc, start_timeout_s, log)
        yield url, token
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
