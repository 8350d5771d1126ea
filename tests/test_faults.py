"""Injected faults — a NaN merge, a fitness that raises, a worker process killed mid-evaluation, a time-out — are
recorded as FAILED evaluations with their reason, and the run completes."""

import textwrap

import pytest
from rich.console import Console

from evomerge.runner import Runner
from evomerge.store import RunDir, read_events
from tests.conftest import poison_search, write_experiment

pytestmark = pytest.mark.slow

# A custom scorer (fitness.type: python) that misbehaves on chosen calls, counted across processes in a file: the
# same call number always gets the same fault, whichever process makes it.
SCORER = textwrap.dedent('''
    import os, signal, time
    from pathlib import Path

    HERE = Path(__file__).parent

    def _call():
        f = HERE / "calls.txt"
        n = int(f.read_text()) + 1 if f.exists() else 1
        f.write_text(str(n))
        return n

    def score(model, tokenizer, task, examples):
        n = _call()
        fault = os.environ.get("FAULTS", "")
        for spec in fault.split(","):
            if not spec:
                continue
            kind, at = spec.split("@")
            if n == int(at):
                if kind == "raise":
                    raise RuntimeError("the benchmark server went away")
                if kind == "kill":
                    os.kill(os.getpid(), signal.SIGKILL)
                if kind == "hang":
                    time.sleep(600)
        return [1.0 if task in ex["prompt"] or len(ex["answer"]) % 2 else 0.5 for ex in examples]
''')


def _experiment(tmp_path, tiny_task_dir, executor, optimizer=None, **kw):
    (tmp_path / "faulty.py").write_text(SCORER)
    # no warm start: the scorer's call numbers are then the search candidates' own
    optimizer = {"type": "cma", "generations": 2, "popsize": 4, **(optimizer or {}), "warm_start": False}
    return write_experiment(
        tmp_path / "exp.yaml", tiny_task_dir, executor=executor, optimizer=optimizer,
        fitness={"type": "python", "scorer": "faulty:score",
                 "tasks": {"add": str(tiny_task_dir / "add")}, "max_examples": 10},
        baselines={"enabled": False}, **kw)


def _search(run_dir):
    store = RunDir.open(run_dir).store()
    try:
        return store.evaluations("search")
    finally:
        store.close()


def test_raising_fitness_is_a_failed_evaluation_in_process(tmp_path, tiny_zoo, tiny_task_dir, monkeypatch):
    monkeypatch.setenv("FAULTS", "raise@2,raise@5")
    exp = _experiment(tmp_path, tiny_task_dir, {"type": "local"})
    results = Runner(exp, tmp_path / "run", console=Console(quiet=True)).run()
    evals = _search(tmp_path / "run")
    assert len(evals) == 8
    failed = [e for e in evals if e.status == "failed"]
    assert [e.label for e in failed] == ["g0-1", "g1-0"]
    assert all("RuntimeError: the benchmark server went away" in e.error for e in failed)
    assert results["search"]["failed"] == 2
    logged = [e for e in read_events(tmp_path / "run" / "events.jsonl") if e["event"] == "evaluation"]
    assert sum(e["status"] == "failed" for e in logged) == 2 and "benchmark server" in logged[1]["error"]


def test_killed_worker_process_is_replaced_and_its_candidate_reissued(tmp_path, tiny_zoo, tiny_task_dir,
                                                                       monkeypatch):
    # call 3 kills the worker: the candidate is issued again on a new worker (call 4) and succeeds; with no
    # retries left, the kill at call 7 becomes a FAILED evaluation
    monkeypatch.setenv("FAULTS", "kill@3,kill@7")
    exp = _experiment(tmp_path, tiny_task_dir, {"type": "process", "max_retries": 1},
                      optimizer={"type": "cma", "generations": 2, "popsize": 3})
    Runner(exp, tmp_path / "run", console=Console(quiet=True)).run()
    evals = _search(tmp_path / "run")
    assert [e.status for e in evals] == ["ok"] * 6
    # calls 1, 2 | 3 dies, 4 re-issues g0-2 || 5, 6 | 7 dies, 8 re-issues g1-2
    assert [e.attempts for e in evals] == [1, 1, 2, 1, 1, 2]
    stopped = [e for e in read_events(tmp_path / "run" / "events.jsonl") if e["event"] == "worker_stopped"]
    assert [(e["worker"], e["reason"]) for e in stopped] == [
        ("process-0", "worker process died (killed by SIGKILL)"),
        ("process-1", "worker process died (killed by SIGKILL)")]  # each death logged, the run's end not

    monkeypatch.setenv("FAULTS", "kill@2")
    (tmp_path / "calls.txt").unlink()
    exp = _experiment(tmp_path, tiny_task_dir, {"type": "process", "max_retries": 0},
                      optimizer={"type": "cma", "generations": 1, "popsize": 3})
    Runner(exp, tmp_path / "run0", console=Console(quiet=True)).run()
    evals = _search(tmp_path / "run0")
    assert [e.status for e in evals] == ["ok", "failed", "ok"]
    assert evals[1].error == "worker process died (killed by SIGKILL), on all 1 attempts"


def test_a_hanging_evaluation_times_out(tmp_path, tiny_zoo, tiny_task_dir, monkeypatch):
    monkeypatch.setenv("FAULTS", "hang@2")
    exp = _experiment(tmp_path, tiny_task_dir, {"type": "process", "timeout_s": 3},
                      optimizer={"type": "cma", "generations": 1, "popsize": 3})
    Runner(exp, tmp_path / "run", console=Console(quiet=True)).run()
    evals = _search(tmp_path / "run")
    assert [e.status for e in evals] == ["ok", "failed", "ok"]
    assert evals[1].error.startswith("timed out after 3 s (executor.timeout_s = 3)")
    assert evals[1].attempts == 1  # not re-issued


def test_nan_merges_are_recorded_and_the_run_completes(tmp_path, tiny_zoo, tiny_task_dir, monkeypatch):
    """The merges of search candidates 2 and 6 are poisoned after the real merge (one weight set to NaN, as an overflowing recipe would
    leave it): the scorer's logit check catches both, and the run goes on to its final table."""
    poison_search(monkeypatch, {2, 6})
    exp = write_experiment(tmp_path / "exp.yaml", tiny_task_dir, optimizer={"type": "cma", "generations": 2,
                                                                             "popsize": 4})
    results = Runner(exp, tmp_path / "run", console=Console(quiet=True)).run()
    evals = _search(tmp_path / "run")
    assert [e.label for e in evals if e.status == "failed"] == ["g0-1", "g1-1"]
    assert all("NaN/Inf" in e.error for e in evals if e.status == "failed")
    assert results["search"]["failed"] == 2 and len(results["rows"]) > 5  # the table was made
