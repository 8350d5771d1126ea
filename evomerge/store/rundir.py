"""A run directory: `run.json` (which run, which database), a lock held while a run is live, and `events.jsonl`.

The run directory always holds the run's identity and its event log; the evaluations live in `run.db` beside them,
or in a server database named by URL (`--db`), where the run id tells runs apart.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import sqlalchemy as sa

from evomerge.errors import ConfigError
from evomerge.store.database import RunStore

RUN_FILE, DB_FILE, LOCK_FILE, EVENTS_FILE = "run.json", "run.db", ".lock", "events.jsonl"
FORMAT = "evomerge-run"


def normalize_url(url: str) -> str:
    """The URL as kept in run.json. A password never goes to disk: it comes from the environment (e.g.
    PGPASSWORD) or ~/.pgpass."""
    try:
        return sa.make_url(url).set(password=None).render_as_string(hide_password=False)
    except sa.exc.ArgumentError as e:
        raise ConfigError(f"--db: {e} (expected a SQLAlchemy URL such as postgresql://user@host/db)") from None


@dataclass(frozen=True)
class RunDir:
    path: Path
    run_id: str
    db: str | None = None  # None: SQLite at <path>/run.db

    @property
    def url(self) -> str:
        return self.db or f"sqlite:///{(self.path / DB_FILE).resolve()}"

    @classmethod
    def exists(cls, path: Path) -> bool:
        return (Path(path) / RUN_FILE).is_file()

    @classmethod
    def new(cls, path: Path, db: str | None = None) -> RunDir:
        """A new run for `path`, checked but not yet written: `save()` writes run.json once its store exists."""
        path = Path(path)
        if path.exists() and not path.is_dir():
            raise ConfigError(f"{path}: exists and is not a directory (expected a run directory)")
        if path.is_dir() and any(path.iterdir()):
            raise ConfigError(f"{path}: not an evomerge run directory (no {RUN_FILE}) and not empty; "
                              "choose another --run-dir")
        return cls(path, str(uuid.uuid4()), None if db is None else normalize_url(db))

    def save(self) -> None:
        tmp = self.path / (RUN_FILE + ".tmp")
        tmp.write_text(json.dumps({"format": FORMAT, "version": 1, "run_id": self.run_id, "db": self.db}, indent=2))
        os.replace(tmp, self.path / RUN_FILE)  # atomic: a run directory has a whole run.json or none

    @classmethod
    def open(cls, path: Path) -> RunDir:
        """Read `run.json`; every way it can be wrong is a one-line error naming the file."""
        path = Path(path)
        if not path.is_dir():
            raise ConfigError(f"{path}: no such run directory")
        f = path / RUN_FILE
        if not f.is_file():
            raise ConfigError(f"{path}: not an evomerge run directory (no {RUN_FILE})")
        try:
            data = json.loads(f.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ConfigError(f"{f}: not valid JSON ({e})") from None
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise ConfigError(f"{f}: not an evomerge run file (expected \"format\": \"{FORMAT}\")")
        if data.get("version") != 1:
            raise ConfigError(f"{f}: version {data.get('version')!r} is not supported (expected 1)")
        if not isinstance(data.get("run_id"), str) or not data["run_id"]:
            raise ConfigError(f"{f}: run_id: expected a non-empty string")
        db = data.get("db")
        if db is not None and not isinstance(db, str):
            raise ConfigError(f"{f}: db: expected a database URL or null")
        for name in (EVENTS_FILE, LOCK_FILE):  # found now, not after the store was written to
            if (path / name).exists() and not (path / name).is_file():
                raise ConfigError(f"{path / name}: not a regular file (expected the run's {name})")
        if db is None and not (path / DB_FILE).is_file():
            raise ConfigError(f"{path / DB_FILE}: missing; the run's evaluations are gone (expected the SQLite "
                              "store beside run.json)")
        return cls(path, data["run_id"], db)

    def store(self, name: str = "", create: bool = False) -> RunStore:
        where = str(self.path / DB_FILE) if self.db is None else f"{self.path / RUN_FILE}: database {self.url}"
        return RunStore(self.url, self.run_id, name=name, create=create, where=where)

    # -- one live process per run ----------------------------------------------------------------------------------
    @contextlib.contextmanager
    def lock(self, defer_pid: bool = False):
        """Held for the life of `evomerge run`: a second process on the same run is refused, not interleaved.
        With `defer_pid`, the holder's pid is written only when it calls the function this yields (once its
        checks have passed), so that a run refused inside the lock leaves the lock file as it was."""
        self.path.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise ConfigError(f"{self.path}: already running (pid {self.running_pid()}); "
                                  "one process per run") from None
            def claim() -> None:
                os.ftruncate(fd, 0)
                os.pwrite(fd, str(os.getpid()).encode(), 0)

            if not defer_pid:
                claim()
            yield claim
        finally:
            os.close(fd)  # closing releases the lock; a killed process releases it too

    def running_pid(self) -> int | None:
        """The pid of the live process holding the run, or None when nobody holds it."""
        f = self.path / LOCK_FILE
        if not f.exists():
            return None
        fd = os.open(f, os.O_RDONLY)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except BlockingIOError:
                text = f.read_text().strip()
                return int(text) if text.isdigit() else -1
            fcntl.flock(fd, fcntl.LOCK_UN)
            return None
        finally:
            os.close(fd)

    def events(self) -> EventLog:
        return EventLog(self.path / EVENTS_FILE)

    @contextlib.contextmanager
    def session(self, **started):
        """The event log for one process's work on the run: `run_started` (with `started`) on entry, `run_stopped`
        with the reason if the work ends in an exception (Ctrl-C included), closed on exit."""
        events = self.events()
        events.emit("run_started", pid=os.getpid(), **started)
        try:
            yield events
        except BaseException as e:
            events.emit("run_stopped", reason=f"{type(e).__name__}: {e}".splitlines()[0])
            raise
        finally:
            events.close()


class EventLog:
    """Append-only JSON lines: one object per event, with its time. For people and tools; the store is the truth."""

    def __init__(self, path: Path):
        self.path = path
        self._f = open(path, "a", buffering=1)  # noqa: SIM115 — lives as long as the run

    def emit(self, event: str, **fields) -> None:
        self._f.write(json.dumps({"t": round(time.time(), 3), "event": event, **fields}) + "\n")

    def close(self) -> None:
        self._f.close()


def read_events(path: Path) -> list[dict]:
    """The log's events; a line torn by a kill is skipped."""
    out = []
    if path.is_file():
        for line in path.read_text().splitlines():
            with contextlib.suppress(json.JSONDecodeError):
                out.append(json.loads(line))
    return out
