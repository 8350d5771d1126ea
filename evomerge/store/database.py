"""The run store, on SQLAlchemy: SQLite in the run directory by default, or any server database by URL (PostgreSQL
for a long-lived cluster driver), where many runs share the tables, told apart by run id.

Each evaluation is committed before the optimizer hears of it; the store is the truth.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from enum import StrEnum

import sqlalchemy as sa
from sqlalchemy.exc import SQLAlchemyError

from evomerge.errors import ConfigError, shown

SCHEMA_VERSION = 2

_md = sa.MetaData()
RUNS = sa.Table(
    "evomerge_runs", _md,
    sa.Column("run_id", sa.String(36), primary_key=True),
    sa.Column("name", sa.Text, nullable=False),
    sa.Column("schema_version", sa.Integer, nullable=False),
    sa.Column("created", sa.Float, nullable=False),
)
META = sa.Table(
    "evomerge_meta", _md,
    sa.Column("run_id", sa.String(36), primary_key=True),
    sa.Column("key", sa.String(64), primary_key=True),
    sa.Column("value", sa.Text, nullable=False),
)
EVALUATIONS = sa.Table(
    "evomerge_evaluations", _md,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("run_id", sa.String(36), nullable=False),
    sa.Column("kind", sa.String(16), nullable=False),  # an EvalKind value
    sa.Column("generation", sa.Integer, nullable=False),
    sa.Column("idx", sa.Integer, nullable=False),
    sa.Column("label", sa.Text, nullable=False),  # candidate id or baseline name
    sa.Column("split", sa.Text, nullable=False),
    sa.Column("genome", sa.Text),  # JSON list, for optimizer candidates
    sa.Column("recipe", sa.Text),  # JSON Recipe
    sa.Column("status", sa.String(8), nullable=False),  # 'ok' | 'failed'
    sa.Column("objective", sa.Float),
    sa.Column("per_task", sa.Text),  # JSON {task: score}
    sa.Column("per_example", sa.Text),  # JSON {task: [score, ...]}
    # JSON {task: [index, ...]}: the examples a cheaper fitness scored (per_example follows it); NULL: all of them
    sa.Column("examples", sa.Text),
    sa.Column("error", sa.Text),
    sa.Column("merge_seconds", sa.Float),
    sa.Column("eval_seconds", sa.Float),
    sa.Column("attempts", sa.Integer),  # how many times it was issued (worker deaths re-issue it)
    sa.Column("worker", sa.Text),
    sa.Column("cache_key", sa.String(64), index=True),  # hash of recipe + split + fitness: equal keys, equal scores
    sa.Column("created", sa.Float, nullable=False),
    sa.UniqueConstraint("run_id", "kind", "generation", "idx", "label"),
)
SNAPSHOTS = sa.Table(
    "evomerge_snapshots", _md,
    sa.Column("run_id", sa.String(36), primary_key=True),
    sa.Column("generation", sa.Integer, primary_key=True),
    # 'asked': the state after ask() plus the genomes not yet told; 'told': the state after tell(); 'steady': a
    # steady-state search's state (generation = candidates asked so far) plus [n, *genome] of those not yet told
    sa.Column("phase", sa.String(8), primary_key=True),
    sa.Column("state", sa.LargeBinary, nullable=False),
    sa.Column("genomes", sa.Text),
    sa.Column("created", sa.Float, nullable=False),
)


class EvalKind(StrEnum):
    """What an evaluation was for. Stored as its value: the strings runs have always stored, so old runs still read
    (and a value read back compares equal to its member)."""

    SEARCH = "search"  # a candidate of the search, on the search split (label g<generation>-<index>)
    SEED = "seed"  # a known candidate scored before the search (start point, sources, baselines; warm start)
    LEADER = "leader"  # one of the best search candidates on the held-out split, scored by an otherwise idle worker
    CHECKPOINT = "checkpoint"  # every fitness.rescore_every: the best so far on the whole search split (subset runs)
    CHECKPOINT_HELDOUT = "checkpoint_heldout"  # … and on the held-out split
    TUNE = "tune"  # the tuned baseline's grid (one task-arithmetic weight), on the search split
    RESCORE = "rescore"  # end of a subset search: its best candidates on the whole search split
    RESCORE_HELDOUT = "rescore_heldout"  # … and on the held-out split
    FRONT = "front"  # a multi-objective run's Pareto front, on the held-out split
    HELDOUT = "heldout"  # the final table's rows (sources, baselines, the winner), on the held-out split


@dataclass
class Evaluation:
    kind: str  # an EvalKind value
    generation: int
    idx: int
    label: str
    split: str
    status: str
    objective: float | None = None
    per_task: dict[str, float] = field(default_factory=dict)
    per_example: dict[str, list[float]] = field(default_factory=dict)
    examples: dict[str, list[int]] | None = None  # which examples were scored (None: every one of the split)
    genome: list[float] | None = None
    recipe: str | None = None
    error: str | None = None
    merge_seconds: float = 0.0
    eval_seconds: float = 0.0
    attempts: int = 1
    worker: str | None = None
    cache_key: str | None = None
    created: float | None = None


@dataclass
class Snapshot:
    generation: int
    phase: str  # 'asked' | 'told'
    state: bytes
    genomes: list[list[float]] | None


_JSON_FIELDS = ("genome", "per_task", "per_example", "examples")


def _number(v) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def _map_of(check):
    return lambda v: isinstance(v, dict) and all(isinstance(k, str) and check(x) for k, x in v.items())


def _list_of(check):
    return lambda v: isinstance(v, list) and all(check(x) for x in v)


# what each JSON column of a stored evaluation must hold: (as said in an error, check)
_ROW_CHECKS = {
    "genome": ("a list of numbers", _list_of(_number)),
    "per_task": ("an object of task -> number", _map_of(_number)),
    "per_example": ("an object of task -> list of numbers", _map_of(_list_of(_number))),
    "examples": ("an object of task -> list of example indices", _map_of(_list_of(lambda x: isinstance(x, int)))),
    "recipe": ("a JSON object (a recipe)", lambda v: isinstance(v, dict)),
}
_FIELDS = tuple(Evaluation.__dataclass_fields__)


def _sqlite_pragmas(dbapi_conn, _record) -> None:
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA synchronous=FULL")  # a committed evaluation survives a power cut, not only kill -9
    cur.close()


def make_engine(url: str) -> sa.Engine:
    try:
        engine = sa.create_engine(url)
    except (SQLAlchemyError, ImportError, ValueError) as e:
        raise ConfigError(f"--db: cannot use database URL {_safe(url)!r}: {e}".replace("\n", " ")) from None
    if engine.dialect.name == "sqlite":
        sa.event.listen(engine, "connect", _sqlite_pragmas)
    return engine


def _safe(url: str) -> str:
    try:
        return sa.make_url(url).render_as_string(hide_password=True)
    except Exception:  # noqa: BLE001 — only for messages
        return "<unparseable URL>"


class RunStore:
    """One run's rows in a (possibly shared) database. `create=True` makes the tables and the run's row."""

    def __init__(self, url: str, run_id: str, name: str = "", create: bool = False, where: str = ""):
        self.url, self.run_id = url, run_id
        where = self.where = where or _safe(url)
        self.engine = make_engine(url)
        try:
            if create:
                if self.engine.dialect.name == "sqlite":  # kept in the file: readers never block the writer
                    with self.engine.connect() as c:
                        c.exec_driver_sql("PRAGMA journal_mode=WAL")
                _md.create_all(self.engine)
                with self.engine.begin() as c:
                    if c.execute(sa.select(RUNS.c.run_id).where(RUNS.c.run_id == run_id)).first() is None:
                        c.execute(RUNS.insert().values(run_id=run_id, name=name, schema_version=SCHEMA_VERSION,
                                                       created=time.time()))
            self._check(where)
            self._add_columns()
        except SQLAlchemyError as e:
            self.engine.dispose()
            msg = str(getattr(e, "orig", e)).splitlines()[0]
            raise ConfigError(f"{where}: cannot read the run database ({msg}); expected an evomerge run "
                              "store") from None
        except ConfigError:
            self.engine.dispose()
            raise

    def _check(self, where: str) -> None:
        """Refuse a database that is not an evomerge store, lacks this run, or was written by a newer version."""
        names = set(sa.inspect(self.engine).get_table_names())
        missing = sorted(t.name for t in _md.sorted_tables if t.name not in names)
        if missing:
            raise ConfigError(f"{where}: not an evomerge run store (missing tables {missing})")
        with self.engine.connect() as c:
            row = c.execute(sa.select(RUNS.c.schema_version).where(RUNS.c.run_id == self.run_id)).first()
        if row is None:
            raise ConfigError(f"{where}: run {self.run_id} is not in this database")
        if row[0] > SCHEMA_VERSION:
            raise ConfigError(f"{where}: written by a newer evomerge (store schema {row[0]}, this one reads "
                              f"{SCHEMA_VERSION}); upgrade evomerge")

    def _add_columns(self) -> None:
        """Columns added since a store was created (nullable, NULL meaning what older runs did) are added to it."""
        have = {c["name"] for c in sa.inspect(self.engine).get_columns(EVALUATIONS.name)}
        for col in EVALUATIONS.columns:
            if col.name not in have:
                with self.engine.begin() as c:
                    c.exec_driver_sql(f"ALTER TABLE {EVALUATIONS.name} ADD COLUMN {col.name} "
                                      f"{col.type.compile(self.engine.dialect)}")

    def close(self) -> None:
        self.engine.dispose()

    # -- meta ------------------------------------------------------------------------------------------------------
    def get_meta(self, key: str) -> str | None:
        with self.engine.connect() as c:
            row = c.execute(sa.select(META.c.value).where(META.c.run_id == self.run_id, META.c.key == key)).first()
        return row[0] if row else None

    def set_meta(self, key: str, value: str) -> None:
        with self.engine.begin() as c:
            c.execute(META.delete().where(META.c.run_id == self.run_id, META.c.key == key))
            c.execute(META.insert().values(run_id=self.run_id, key=key, value=value))

    # -- evaluations -----------------------------------------------------------------------------------------------
    def add(self, ev: Evaluation) -> None:
        d = asdict(ev)
        for k in _JSON_FIELDS:
            d[k] = None if d[k] is None else json.dumps(d[k])
        d["created"] = time.time()
        key = (EVALUATIONS.c.run_id == self.run_id, EVALUATIONS.c.kind == ev.kind,
               EVALUATIONS.c.generation == ev.generation, EVALUATIONS.c.idx == ev.idx, EVALUATIONS.c.label == ev.label)
        with self.engine.begin() as c:  # one transaction: replace, never duplicate
            c.execute(EVALUATIONS.delete().where(*key))
            c.execute(EVALUATIONS.insert().values(run_id=self.run_id, **d))

    def _rows(self, *where) -> list[Evaluation]:
        q = sa.select(*(EVALUATIONS.c[f] for f in _FIELDS)).where(EVALUATIONS.c.run_id == self.run_id, *where)
        with self.engine.connect() as c:
            rows = c.execute(q.order_by(EVALUATIONS.c.id)).all()
        return [self._evaluation(dict(zip(_FIELDS, row, strict=True))) for row in rows]

    def _evaluation(self, d: dict) -> Evaluation:
        """A stored row as an Evaluation, each field checked: a row edited by hand or damaged is one line naming the
        evaluation and the field, not a traceback from whichever reader meets it first."""
        def bad(name: str, expected: str, value) -> ConfigError:
            return ConfigError(f"{self.where}: evaluation {d['kind']} {d['label']!r}: {name}: expected {expected}, "
                               f"got {shown(value)} (the run store was edited or damaged)")

        for k in (*_JSON_FIELDS, "recipe"):
            if d[k] is None:
                continue
            try:
                value = json.loads(d[k])
            except (TypeError, ValueError, RecursionError):
                raise bad(k, "JSON", d[k]) from None
            if not _ROW_CHECKS[k][1](value):
                raise bad(k, _ROW_CHECKS[k][0], value)
            if k != "recipe":  # the recipe stays text: readers parse it into the kind of recipe it is
                d[k] = value
        for k in ("objective", "merge_seconds", "eval_seconds"):
            if d[k] is not None and not _number(d[k]):
                raise bad(k, "a number", d[k])
        if d["status"] not in ("ok", "failed"):
            raise bad("status", "'ok' or 'failed'", d["status"])
        if d["status"] == "failed" and not isinstance(d["error"], str):
            raise bad("error", "the reason a failed evaluation failed", d["error"])
        return Evaluation(**d)

    def get(self, kind: str, generation: int, idx: int, label: str) -> Evaluation | None:
        c = EVALUATIONS.c
        rows = self._rows(c.kind == kind, c.generation == generation, c.idx == idx, c.label == label)
        return rows[0] if rows else None

    def cached(self, cache_key: str) -> Evaluation | None:
        """A successful evaluation with the same cache key, if one is stored."""
        rows = self._rows(EVALUATIONS.c.cache_key == cache_key, EVALUATIONS.c.status == "ok")
        return rows[0] if rows else None

    def evaluations(self, kind: str | None = None) -> list[Evaluation]:
        return self._rows(EVALUATIONS.c.kind == kind) if kind else self._rows()

    def best(self, kind: str = EvalKind.SEARCH) -> Evaluation | None:
        ok = [e for e in self.evaluations(kind) if e.status == "ok"]
        return max(ok, key=lambda e: e.objective or 0.0) if ok else None

    # -- optimizer snapshots ---------------------------------------------------------------------------------------
    def save_snapshot(self, generation: int, phase: str, state: bytes, genomes=None) -> None:
        s = SNAPSHOTS.c
        with self.engine.begin() as c:
            c.execute(SNAPSHOTS.delete().where(s.run_id == self.run_id, s.generation == generation, s.phase == phase))
            if phase in ("told", "steady"):  # older ones are never resumed from; Optuna states grow with every trial
                c.execute(SNAPSHOTS.delete().where(s.run_id == self.run_id, s.generation < generation))
            c.execute(SNAPSHOTS.insert().values(
                run_id=self.run_id, generation=generation, phase=phase, state=state, created=time.time(),
                genomes=None if genomes is None else json.dumps([[float(v) for v in g] for g in genomes])))

    def last_snapshot(self) -> Snapshot | None:
        """The newest snapshot: 'told' sorts before 'asked' of the next generation, and after 'asked' of its own
        (a run has either generation snapshots or steady-state ones)."""
        s = SNAPSHOTS.c
        q = (sa.select(s.generation, s.phase, s.state, s.genomes).where(s.run_id == self.run_id)
             .order_by(s.generation.desc(), s.phase.desc()).limit(1))  # 'told' > 'asked'
        with self.engine.connect() as c:
            row = c.execute(q).first()
        if row is None:
            return None
        return Snapshot(row[0], row[1], row[2], None if row[3] is None else json.loads(row[3]))
