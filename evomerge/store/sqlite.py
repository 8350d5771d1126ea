"""SQLite run store. Each evaluation is committed before the optimizer hears of it; the store is the truth."""

from __future__ import annotations

import json
import sqlite3
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS evaluations (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    kind TEXT NOT NULL,            -- 'search' (optimizer candidates) | 'tune' | 'heldout' (final table)
    generation INTEGER NOT NULL,
    idx INTEGER NOT NULL,
    label TEXT NOT NULL,           -- candidate id or baseline name
    split TEXT NOT NULL,
    genome TEXT,                   -- JSON list, for optimizer candidates
    recipe TEXT,                   -- JSON Recipe (NULL for unmerged models)
    status TEXT NOT NULL,          -- 'ok' | 'failed'
    objective REAL,
    per_task TEXT,                 -- JSON {task: accuracy}
    per_example TEXT,              -- JSON {task: [0/1, ...]}
    error TEXT,
    merge_seconds REAL,
    eval_seconds REAL,
    cache_key TEXT,                -- hash of recipe + split + fitness settings: equal keys, equal scores
    created REAL NOT NULL,
    UNIQUE (kind, generation, idx, label)
);
CREATE TABLE IF NOT EXISTS snapshots (generation INTEGER PRIMARY KEY, state BLOB NOT NULL, created REAL NOT NULL);
"""


@dataclass
class Evaluation:
    kind: str
    generation: int
    idx: int
    label: str
    split: str
    status: str
    objective: float | None = None
    per_task: dict[str, float] = field(default_factory=dict)
    per_example: dict[str, list[int]] = field(default_factory=dict)
    genome: list[float] | None = None
    recipe: str | None = None
    error: str | None = None
    merge_seconds: float = 0.0
    eval_seconds: float = 0.0
    cache_key: str | None = None


_JSON_FIELDS = ("genome", "per_task", "per_example")


class RunStore:
    def __init__(self, path: Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(self.path)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=FULL")  # a committed evaluation survives a power cut, not only kill -9
        self.db.executescript(SCHEMA)
        self.db.execute("CREATE INDEX IF NOT EXISTS evaluations_cache ON evaluations (cache_key)")

    def close(self) -> None:
        self.db.close()

    def get_meta(self, key: str) -> str | None:
        row = self.db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return row[0] if row else None

    def set_meta(self, key: str, value: str) -> None:
        with self.db:
            self.db.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, value))

    def add(self, ev: Evaluation) -> None:
        d = asdict(ev)
        for k in _JSON_FIELDS:
            d[k] = None if d[k] is None else json.dumps(d[k])
        d["created"] = time.time()
        cols = ", ".join(d)
        with self.db:
            self.db.execute(f"INSERT OR REPLACE INTO evaluations ({cols}) VALUES ({', '.join('?' * len(d))})",
                            tuple(d.values()))

    def _rows(self, where: str, args: tuple) -> list[Evaluation]:
        names = [f for f in Evaluation.__dataclass_fields__]
        cur = self.db.execute(f"SELECT {', '.join(names)} FROM evaluations WHERE {where} ORDER BY id", args)
        out = []
        for row in cur:
            d = dict(zip(names, row, strict=True))
            for k in _JSON_FIELDS:
                d[k] = None if d[k] is None else json.loads(d[k])
            out.append(Evaluation(**d))
        return out

    def get(self, kind: str, generation: int, idx: int, label: str) -> Evaluation | None:
        rows = self._rows("kind = ? AND generation = ? AND idx = ? AND label = ?", (kind, generation, idx, label))
        return rows[0] if rows else None

    def cached(self, cache_key: str) -> Evaluation | None:
        """A successful evaluation with the same cache key, if one is stored."""
        rows = self._rows("cache_key = ? AND status = 'ok'", (cache_key,))
        return rows[0] if rows else None

    def evaluations(self, kind: str | None = None) -> list[Evaluation]:
        return self._rows("kind = ?", (kind,)) if kind else self._rows("1", ())

    def best(self, kind: str = "search") -> Evaluation | None:
        ok = [e for e in self.evaluations(kind) if e.status == "ok"]
        return max(ok, key=lambda e: e.objective) if ok else None

    def save_snapshot(self, generation: int, state: bytes) -> None:
        with self.db:
            self.db.execute("INSERT OR REPLACE INTO snapshots VALUES (?, ?, ?)", (generation, state, time.time()))

    def last_snapshot(self) -> tuple[int, bytes] | None:
        row = self.db.execute("SELECT generation, state FROM snapshots ORDER BY generation DESC LIMIT 1").fetchone()
        return (row[0], row[1]) if row else None
