"""Run directories: corrupted ones are refused with a one-line error (exit 2) and left exactly as they were; runs
can live in a shared database; `status`, `runs` and `resume` work on what is on disk."""

import hashlib
import json
import shutil
import sqlite3

import numpy as np
import pytest
from rich.console import Console
from typer.testing import CliRunner

from evomerge.cli import app
from evomerge.optim.state import decode
from evomerge.runner import Runner
from evomerge.store import RunDir
from tests.conftest import write_experiment

pytestmark = pytest.mark.slow


def _cli(*args):
    result = CliRunner().invoke(app, [str(a) for a in args])
    return result.exit_code, result.stdout, result.stderr.strip()


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, tiny_zoo, tiny_task_dir):
    """A small finished run, copied by each test that corrupts it."""
    d = tmp_path_factory.mktemp("finished")
    exp = write_experiment(d / "exp.yaml", tiny_task_dir, optimizer={"type": "cma", "generations": 2, "popsize": 2},
                           baselines={"enabled": False})
    Runner(exp, d / "run", console=Console(quiet=True)).run()
    return exp, d / "run"


def _digest(run_dir):
    """Every file of the run but the lock (which holds the pid of whoever last ran it)."""
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(run_dir.iterdir())
            if p.is_file() and p.name != ".lock"}


def _sql(run_dir, statement, *args):
    con = sqlite3.connect(run_dir / "run.db")
    with con:
        con.execute(statement, args)
    con.close()


def _edit_run_json(run_dir, **changes):
    data = json.loads((run_dir / "run.json").read_text())
    data.update(changes)
    (run_dir / "run.json").write_text(json.dumps(data))


CORRUPTIONS = {
    "run.json is not JSON": (lambda d: (d / "run.json").write_text("{not json"), "run.json: not valid JSON"),
    "run.json of another tool": (lambda d: _edit_run_json(d, format="other"), "not an evomerge run file"),
    "run.json from the future": (lambda d: _edit_run_json(d, version=7), "version 7 is not supported"),
    "run.json without run_id": (lambda d: _edit_run_json(d, run_id=""), "run_id: expected a non-empty string"),
    "run.db is garbage": (lambda d: (d / "run.db").write_bytes(b"\x00garbage" * 500),
                          "run.db: cannot read the run database (file is not a database)"),
    "run.db is missing": (lambda d: (d / "run.db").unlink(), "run.db: missing"),
    "run.db is another database": (lambda d: ((d / "run.db").unlink(), sqlite3.connect(d / "run.db").execute(
        "CREATE TABLE t (x)").connection.close()), "not an evomerge run store (missing tables"),
    "run id not in the store": (lambda d: _edit_run_json(d, run_id="0000"), "run 0000 is not in this database"),
    "store from a newer evomerge": (lambda d: _sql(d, "UPDATE evomerge_runs SET schema_version = 99"),
                                    "written by a newer evomerge (store schema 99"),
    "optimizer snapshot corrupted": (lambda d: _sql(d, "UPDATE evomerge_snapshots SET state = ?", b"\x80\x05junk"),
                                     "optimizer snapshot of generation 2 cannot be loaded: it is a pickle"),
    "optimizer snapshot not a state": (lambda d: _sql(d, "UPDATE evomerge_snapshots SET state = ?", b"{}"),
                                       "optimizer snapshot of generation 2 cannot be loaded: not an evomerge"),
}


@pytest.mark.parametrize("case", sorted(CORRUPTIONS))
def test_corrupted_run_directory_is_refused_and_untouched(tmp_path, finished_run, case):
    exp, original = finished_run
    corrupt, expected = CORRUPTIONS[case]
    run_dir = _corrupted_copy(original, tmp_path / "run", corrupt)
    commands = [("run", exp, "--run-dir", run_dir), ("resume", run_dir)]
    if not case.startswith("optimizer snapshot"):  # status reads no snapshot
        commands.append(("status", run_dir))
    _each_refused_untouched(commands, run_dir, expected)


def _corrupted_copy(original, run_dir, corrupt, drop=()):
    """A copy of a finished run, less the files in `drop`, damaged by `corrupt`."""
    shutil.copytree(original, run_dir)
    for name in drop:
        (run_dir / name).unlink(missing_ok=True)
    corrupt(run_dir)
    return run_dir


def _each_refused_untouched(commands, run_dir, expected):
    """Each command exits 2 with one line holding `expected`, and leaves the run directory as it was."""
    before = _digest(run_dir)
    for command in commands:
        code, _, err = _cli(*command)
        assert code == 2, (command, err)
        assert expected in err, (command, err)
        assert len(err.splitlines()) == 1, err
        assert _digest(run_dir) == before, command


def _row(column, value):
    return lambda d: _sql(d, f"UPDATE evomerge_evaluations SET {column} = ? WHERE kind = 'search' AND label = 'g1-1'",
                          value)


# a row of the store edited by hand: every reader gave a traceback (JSONDecodeError, TypeError, AttributeError)
ROW_CORRUPTIONS = {
    "recipe not JSON": (_row("recipe", "{garbage"), "evaluation search 'g1-1': recipe: expected JSON, got '{garbage'"),
    "recipe not a recipe": (_row("recipe", '{"operator": 3}'), "the stored recipe of g1-1: operator: Input should be"),
    "per_task not an object": (_row("per_task", '"str"'), "evaluation search 'g1-1': per_task: expected an object "
                                                          "of task -> number, got 'str'"),
    "genome not JSON": (_row("genome", "nan,"), "evaluation search 'g1-1': genome: expected JSON"),
    "objective not a number": (_row("objective", "abc"), "evaluation search 'g1-1': objective: expected a number"),
    "unknown status": (_row("status", "weird"), "evaluation search 'g1-1': status: expected 'ok' or 'failed'"),
    "failed without a reason": (lambda d: (_row("status", "failed")(d), _row("error", None)(d)),
                                "evaluation search 'g1-1': error: expected the reason a failed evaluation failed"),
}


@pytest.mark.parametrize("case", sorted(ROW_CORRUPTIONS))
def test_a_hand_edited_store_row_is_one_line_for_every_reader(tmp_path, finished_run, case):
    exp, original = finished_run
    corrupt, expected = ROW_CORRUPTIONS[case]
    run_dir = _corrupted_copy(original, tmp_path / "run", corrupt, drop=["report.html"])
    # the stored recipe is checked as JSON by every reader, and as a recipe where one is built from it (export)
    export = ("export", run_dir, "--candidate", "g1-1", "--out", tmp_path / "out")
    commands = [export] if case == "recipe not a recipe" else [
        ("run", exp, "--run-dir", run_dir), ("resume", run_dir), ("status", run_dir), ("leaderboard", run_dir),
        export, ("report", run_dir)]
    _each_refused_untouched(commands, run_dir, expected)
    assert not (tmp_path / "out").exists()


def test_not_a_run_directory(tmp_path, finished_run):
    exp, _ = finished_run
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "todo.txt").write_text("keep me")
    (tmp_path / "afile").write_text("x")
    for args, expected in [
        (("run", exp, "--run-dir", tmp_path / "notes"), "not an evomerge run directory (no run.json) and not empty"),
        (("run", exp, "--run-dir", tmp_path / "afile"), "exists and is not a directory"),
        (("resume", tmp_path / "notes"), "not an evomerge run directory (no run.json)"),
        (("resume", tmp_path / "nowhere"), "no such run directory"),
        (("status", tmp_path / "nowhere"), "no such run directory"),
        (("runs", tmp_path / "nowhere"), "no such folder"),
    ]:
        code, _, err = _cli(*args)
        assert code == 2 and expected in err and len(err.splitlines()) == 1, (args, err)
    assert (tmp_path / "notes" / "todo.txt").read_text() == "keep me"
    assert sorted(p.name for p in (tmp_path / "notes").iterdir()) == ["todo.txt"]


def test_a_run_cannot_move_to_another_database(tmp_path, finished_run):
    exp, original = finished_run
    shutil.copytree(original, tmp_path / "run")
    before = _digest(tmp_path / "run")
    code, _, err = _cli("run", exp, "--run-dir", tmp_path / "run", "--db", f"sqlite:///{tmp_path}/other.db")
    assert code == 2 and "--db: this run keeps its evaluations in sqlite:///" in err
    assert _digest(tmp_path / "run") == before and not (tmp_path / "other.db").exists()


def test_bad_database_url_creates_nothing(tmp_path, finished_run):
    exp, _ = finished_run
    code, _, err = _cli("run", exp, "--run-dir", tmp_path / "run", "--db", "nosuchdialect://x/y")
    assert code == 2 and "--db:" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "run").exists()


def test_resume_continues_with_the_stored_config(tmp_path, finished_run, tiny_task_dir):
    exp, original = finished_run
    shutil.copytree(original, tmp_path / "run")
    # drop the last generation's evaluations and its 'told' snapshot: resume must redo exactly those
    store = RunDir.open(tmp_path / "run").store()
    reference = [(e.label, e.genome, e.objective) for e in store.evaluations("search")]
    store.close()
    _sql(tmp_path / "run", "DELETE FROM evomerge_evaluations WHERE generation = 1 AND kind = 'search'")
    _sql(tmp_path / "run", "DELETE FROM evomerge_snapshots WHERE generation = 1 AND phase = 'told'")
    (tmp_path / "run" / "results.json").unlink()
    code, out, err = _cli("resume", tmp_path / "run")
    assert code == 0, err
    assert "continuing" in out
    store = RunDir.open(tmp_path / "run").store()
    assert [(e.label, e.genome, e.objective) for e in store.evaluations("search")] == reference
    store.close()
    assert (tmp_path / "run" / "results.json").exists()


def test_runs_share_one_database(tmp_path, tiny_zoo, tiny_task_dir):
    """Two runs keep their evaluations in one database (as a cluster driver would in PostgreSQL), apart."""
    db = f"sqlite:///{tmp_path / 'shared.db'}"
    for name, popsize in (("a", 2), ("b", 3)):
        exp = write_experiment(tmp_path / f"{name}.yaml", tiny_task_dir, name=name, baselines={"enabled": False},
                               optimizer={"type": "cma", "generations": 1, "popsize": popsize})
        code, _, err = _cli("run", exp, "--run-dir", tmp_path / "runs" / name, "--db", db)
        assert code == 0, err
        assert not (tmp_path / "runs" / name / "run.db").exists()
        assert json.loads((tmp_path / "runs" / name / "run.json").read_text())["db"] == db
    counts = {n: len(RunDir.open(tmp_path / "runs" / n).store().evaluations("search")) for n in "ab"}
    assert counts == {"a": 2, "b": 3}
    code, out, err = _cli("runs", tmp_path / "runs")
    assert code == 0, err
    assert "finished" in out and out.count("1/1") == 2


def test_status_of_a_finished_run(finished_run):
    _, run_dir = finished_run
    code, out, err = _cli("status", run_dir, "--json")
    assert code == 0, err
    s = json.loads(out)
    assert s["state"] == "finished" and s["pid"] is None
    assert s["generations"] == {"done": 2, "total": 2}
    assert s["evaluations"]["done"] == s["evaluations"]["total"] == 4 and s["evaluations"]["failed"] == 0
    assert s["best"]["label"].startswith("g") and 0 <= s["best"]["objective"] <= 1
    assert s["evaluations_per_hour"] > 0
    code, out, _ = _cli("status", run_dir)
    assert code == 0 and "best so far" in out and "evaluations/hour" in out


def test_a_second_process_on_a_live_run_is_refused(finished_run, tmp_path):
    exp, original = finished_run
    shutil.copytree(original, tmp_path / "run")
    rundir = RunDir.open(tmp_path / "run")
    with rundir.lock():
        assert rundir.running_pid() is not None
        code, _, err = _cli("resume", tmp_path / "run")
        assert code == 2 and "already running (pid" in err
        code, out, _ = _cli("status", tmp_path / "run", "--json")
        assert json.loads(out)["state"] == "running"
    assert rundir.running_pid() is None


def test_snapshot_holds_the_rng_and_the_candidates_not_yet_told(finished_run):
    _, run_dir = finished_run
    store = RunDir.open(run_dir).store()
    try:
        snaps = store.engine.connect().exec_driver_sql(
            "SELECT generation, phase, genomes FROM evomerge_snapshots ORDER BY generation, phase").all()
        # the last generation's: asked (with its genomes) and told; older ones are pruned
        assert [(g, p) for g, p, _ in snaps] == [(1, "asked"), (1, "told")]
        genomes = [e.genome for e in store.evaluations("search") if e.generation == 1]
        assert json.loads(snaps[0][2]) == genomes
        state = decode(store.last_snapshot().state, "cma")
        assert isinstance(state["_rng"], np.random.RandomState)  # cmaes' RNG, kept as data
    finally:
        store.close()
