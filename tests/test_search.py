"""End-to-end: a real search on the tiny zoo, durable evaluations, and continuing a stopped run."""

import json

import pytest
from rich.console import Console

from evomerge.executors.worker import Worker
from evomerge.runner import Runner
from evomerge.store import RunDir
from tests.conftest import write_experiment

pytestmark = pytest.mark.slow


def _run(exp, run_dir):
    return Runner(exp, run_dir, console=Console(quiet=True)).run()


def _search_rows(run_dir):
    store = RunDir.open(run_dir).store()
    try:
        return [(e.generation, e.idx, e.genome, e.objective, e.status) for e in store.evaluations("search")]
    finally:
        store.close()


def test_two_generation_search_records_everything(tmp_path, tiny_zoo, tiny_task_dir):
    exp = write_experiment(tmp_path / "exp.yaml", tiny_task_dir,
                           space={"type": "layer_weights", "operator": "ties", "granularity": "layer"})
    results = _run(exp, tmp_path / "run")
    rows = _search_rows(tmp_path / "run")
    assert len(rows) == 2 * 4 and all(r[4] == "ok" for r in rows)
    assert [r[:2] for r in rows] == [(g, i) for g in range(2) for i in range(4)]
    # the results file is what the table shows, on the held-out split
    on_disk = json.loads((tmp_path / "run" / "results.json").read_text())
    assert on_disk == json.loads(json.dumps(results))
    # the envelope every kind's results.json shares (the run lifecycle writes it)
    assert on_disk["schema_version"] == 2 and on_disk["kind"] == "search" and on_disk["experiment"]
    assert on_disk["best_candidate"] == on_disk["rows"][0]["label"].removeprefix("evolved (").removesuffix(")")
    labels = [r["label"] for r in results["rows"]]
    assert results["split"] == "heldout" and results["examples"] == 3 * 60
    assert labels[:5] == [labels[0], "base", "add", "cipher", "reverse"] and labels[0].startswith("evolved")
    assert any(lbl.startswith("TIES") for lbl in labels) and any(lbl.startswith("DARE-TIES") for lbl in labels)
    evolved = results["rows"][0]
    assert evolved["recipe"]["operator"] == "ties" and len(evolved["recipe"]["groups"]) == 4  # embed, 2 blocks, head
    for r in results["rows"]:
        assert 0 <= r["average"] <= 1
        assert r["average"] == pytest.approx(sum(r["per_task"].values()) / 3)


def test_stopped_run_continues_exactly(tmp_path, tiny_zoo, tiny_task_dir, monkeypatch):
    exp = write_experiment(tmp_path / "exp.yaml", tiny_task_dir,
                           space={"type": "layer_weights", "operator": "dare_ties", "granularity": "model"})
    _run(exp, tmp_path / "straight")
    reference = _search_rows(tmp_path / "straight")

    # Stop the second run in the middle of generation 2 (after 6 of 8 evaluations), as a crash would.
    real = Worker.evaluate
    calls = {"n": 0}

    def dying(self, job):
        if job.kind == "search":  # the known candidates scored first do not count
            if calls["n"] == 6:
                raise KeyboardInterrupt
            calls["n"] += 1
        return real(self, job)

    monkeypatch.setattr(Worker, "evaluate", dying)
    with pytest.raises(KeyboardInterrupt):
        _run(exp, tmp_path / "resumed")
    assert len(_search_rows(tmp_path / "resumed")) == 6

    # Continue: completed evaluations are reused, not recomputed; the sequence equals the uninterrupted run.
    evaluated = []

    def counting(self, job):
        evaluated.append((job.kind, job.generation, job.idx))
        return real(self, job)

    monkeypatch.setattr(Worker, "evaluate", counting)
    results = _run(exp, tmp_path / "resumed")
    assert [e for e in evaluated if e[0] == "search"] == [("search", 1, 2), ("search", 1, 3)]
    assert _search_rows(tmp_path / "resumed") == reference
    straight = json.loads((tmp_path / "straight" / "results.json").read_text())
    assert [r["average"] for r in results["rows"]] == [r["average"] for r in straight["rows"]]


def test_changed_config_on_existing_run_is_refused(tmp_path, tiny_zoo, tiny_task_dir):
    from evomerge.errors import ConfigError

    exp = write_experiment(tmp_path / "exp.yaml", tiny_task_dir, optimizer={"type": "cma", "generations": 1,
                                                                             "popsize": 2})
    _run(exp, tmp_path / "run")
    write_experiment(exp, tiny_task_dir, optimizer={"type": "cma", "generations": 1, "popsize": 3})
    with pytest.raises(ConfigError, match=r"different experiment config \(optimizer.popsize: 2 → 3\); use a new"):
        _run(exp, tmp_path / "run")
    with pytest.raises(ConfigError, match="optimizer.popsize: 2 → 3\\); these fields define the search"):
        Runner(exp, tmp_path / "run", console=Console(quiet=True), force=True).run()
    # a change that does not touch the search is accepted with --force, and nothing is recomputed
    write_experiment(exp, tiny_task_dir, optimizer={"type": "cma", "generations": 1, "popsize": 2}, threads=2)
    with pytest.raises(ConfigError, match="threads: 1 → 2"):
        _run(exp, tmp_path / "run")
    before = _search_rows(tmp_path / "run")
    Runner(exp, tmp_path / "run", console=Console(quiet=True), force=True).run()
    assert _search_rows(tmp_path / "run") == before


def test_non_finite_merge_is_a_failed_evaluation_and_the_run_goes_on(tmp_path, tiny_zoo, tiny_task_dir):
    from evomerge.config import FitnessConfig
    from evomerge.executors import Job
    from evomerge.recipe import Recipe

    worker = Worker(tiny_zoo / "base", [tiny_zoo / "add"], {"search": {"add": [{"prompt": "1+1=", "answer": "2"}]}},
                    FitnessConfig(tasks={"add": "x"}))
    bad = worker.evaluate(Job("search", 0, 0, "bad", "search", Recipe.uniform("task_arithmetic", 1, 1e39)))
    assert bad.status == "failed" and "NaN/Inf" in bad.error and bad.objective is None
    good = worker.evaluate(Job("search", 0, 1, "good", "search", Recipe.uniform("task_arithmetic", 1, 1.0)))
    assert good.status == "ok"  # the live model is usable again after a failed merge


def test_a_run_where_every_candidate_fails_stops_with_a_clear_message(tmp_path, tiny_zoo, tiny_task_dir):
    from typer.testing import CliRunner

    from evomerge.cli import app

    exp = write_experiment(tmp_path / "exp.yaml", tiny_task_dir,
                           space={"type": "layer_weights", "operator": "task_arithmetic", "granularity": "model",
                                  "weight_range": [1e39, 2e39]})
    result = CliRunner().invoke(app, ["run", str(exp), "--run-dir", str(tmp_path / "run")])
    assert result.exit_code == 1
    assert "every candidate of generation 1 failed" in result.stderr and "NaN/Inf" in result.stderr
    rows = _search_rows(tmp_path / "run")
    assert len(rows) == 4 and all(r[4] == "failed" for r in rows)  # the failures are recorded, not lost


def test_kill_9_in_the_middle_of_a_generation_then_continue(tmp_path, tiny_zoo, tiny_task_dir, evomerge_home):
    """A real `kill -9` of `evomerge run`: the continued run reuses every stored evaluation and ends exactly where
    an uninterrupted run ends."""
    import os
    import signal
    import sqlite3
    import subprocess
    import sys
    import time

    exp = write_experiment(tmp_path / "exp.yaml", tiny_task_dir,
                           optimizer={"type": "cma", "generations": 3, "popsize": 4},
                           space={"type": "layer_weights", "operator": "ties", "granularity": "layer"})
    _run(exp, tmp_path / "straight")
    reference = _search_rows(tmp_path / "straight")

    cmd = [sys.executable, "-m", "evomerge.cli", "run", str(exp), "--run-dir", str(tmp_path / "killed")]
    env = {**os.environ, "EVOMERGE_HOME": str(evomerge_home)}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    db = tmp_path / "killed" / "run.db"
    deadline = time.time() + 120
    stored = 0
    while time.time() < deadline and proc.poll() is None:
        if db.exists():
            try:
                stored = sqlite3.connect(db).execute("SELECT count(*) FROM evomerge_evaluations WHERE kind='search'").fetchone()[0]
            except sqlite3.OperationalError:  # the schema is being created
                stored = 0
            if stored >= 6:  # inside generation 2
                break
        time.sleep(0.05)
    assert proc.poll() is None, "the run ended before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    partial = _search_rows(tmp_path / "killed")
    assert 6 <= len(partial) < 12
    assert partial == reference[: len(partial)]  # what was stored before the kill is exactly the reference prefix

    done = subprocess.run(cmd, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "continuing" in done.stdout
    assert _search_rows(tmp_path / "killed") == reference


def test_a_duplicate_candidate_is_not_scored_twice(tmp_path, tiny_zoo, tiny_task_dir, monkeypatch):
    """The same recipe on the same split with the same fitness settings is scored once, then copied."""
    from evomerge.executors import Job, LocalExecutor
    from evomerge.recipe import Recipe
    from evomerge.runner import resolve_tasks
    from evomerge.search import Evaluator

    exp = write_experiment(tmp_path / "exp.yaml", tiny_task_dir, optimizer={"type": "cma", "generations": 1,
                                                                             "popsize": 2})
    runner = Runner(exp, tmp_path / "run", console=Console(quiet=True))
    runner.run()
    scored = []
    real = Worker.evaluate

    def counting(self, job):
        scored.append(job.label)
        return real(self, job)

    monkeypatch.setattr(Worker, "evaluate", counting)
    rundir = RunDir.open(tmp_path / "run")
    store = rundir.store()
    executor = LocalExecutor({"base": tiny_zoo / "base", "sources": [tiny_zoo / m for m in ("add", "cipher", "reverse")],
                              "tasks": resolve_tasks(runner.cfg, runner.base_dir), "fitness_cfg": runner.cfg.fitness})
    evaluator = Evaluator(runner.cfg, store, executor, rundir.events())
    try:
        recipe = Recipe.uniform("task_arithmetic", 3, 0.45)
        jobs = [Job("search", 7, i, f"dup-{i}", "search", recipe, [0.45] * 3) for i in range(3)]
        jobs.append(Job("search", 7, 3, "other-split", "heldout", recipe))
        evs = list(evaluator.evaluate(jobs[:1])) + list(evaluator.evaluate(jobs[1:]))
        assert scored == ["dup-0", "other-split"]  # dup-1 and dup-2 came from the cache
        assert evs[0].objective == evs[1].objective == evs[2].objective
        assert [e.label for e in evs] == ["dup-0", "dup-1", "dup-2", "other-split"]
        stored = {e.label: e for e in store.evaluations("search")}
        assert stored["dup-2"].per_example == stored["dup-0"].per_example and stored["dup-2"].eval_seconds == 0
    finally:
        store.close()


def test_multi_objective_search_reports_the_pareto_front(tmp_path, tiny_zoo, tiny_task_dir):
    """One objective per task (NSGA-II): the front of non-dominated candidates, each re-scored on held-out data."""
    from evomerge.optim.pareto import pareto_front

    exp = write_experiment(tmp_path / "exp.yaml", tiny_task_dir, optimizer={"type": "nsga2", "generations": 2,
                                                                             "popsize": 6},
                           fitness={"type": "native", "objective": "per_task", "max_examples": 30,
                                    "tasks": {t: str(tiny_task_dir / t) for t in ("add", "cipher", "reverse")}},
                           baselines={"enabled": False})
    results = _run(exp, tmp_path / "run")
    front = results["pareto_front"]
    store = RunDir.open(tmp_path / "run").store()
    try:
        ok = [e for e in store.evaluations("search") if e.status == "ok"]
    finally:
        store.close()
    tasks = ["add", "cipher", "reverse"]
    expected = {ok[i].label for i in pareto_front([[e.per_task[t] for t in tasks] for e in ok])}
    assert {r["label"] for r in front} == expected and len(front) >= 1
    assert [r["search_objective"] for r in front] == sorted((r["search_objective"] for r in front), reverse=True)
    assert all(set(r["heldout"]) == set(tasks) for r in front)
    # the table's evolved row is the front member with the best mean, unless a known candidate (a source) was better
    known = results["search"]["best_known"]
    if known["objective"] > front[0]["search_objective"]:
        assert results["rows"][0]["label"] == f"evolved (= {known['label']}, known before the search)"
        assert results["warnings"] and known["label"] in results["warnings"][0]
    else:
        assert results["rows"][0]["label"] == f"evolved ({front[0]['label']})"


@pytest.mark.parametrize("fitness_type", ["native", "lm_eval"])
def test_search_on_a_random_subset_is_rechecked_on_the_whole_split(tmp_path, tiny_zoo, tiny_task_dir, fitness_type):
    """Cheap fitness: candidates are scored on 10 random examples per task (the same for all); at the end CMA-ES's
    final mean and the 3 best are re-scored on all 60 search examples (raced: one shown not to beat the best so far
    stops early) and those scored in full on held-out data, and the winner is the best on all 60."""
    from tests.test_lm_eval import _lm_eval_tasks

    tasks = (_lm_eval_tasks(tiny_task_dir, tmp_path) if fitness_type == "lm_eval"
             else {t: str(tiny_task_dir / t) for t in ("add", "cipher", "reverse")})
    exp = write_experiment(tmp_path / "exp.yaml", tiny_task_dir, baselines={"enabled": False},
                           fitness={"type": fitness_type, "tasks": tasks, "search_subset": 10, "rescore_top": 3})
    results = _run(exp, tmp_path / "run")
    store = RunDir.open(tmp_path / "run").store()
    try:
        search = store.evaluations("search")
        full = {e.label: e for e in store.evaluations("rescore")}
    finally:
        store.close()
    assert all(len(v) == 10 for e in search for v in e.per_example.values())  # the subset, stratified per task
    whole = [e for e in full.values() if e.examples is None]
    assert all(len(v) == 60 for e in whole for v in e.per_example.values())  # the whole split
    assert all(sum(map(len, e.examples.values())) < 180 for e in full.values() if e.examples is not None)
    rescored = results["rescored"]
    top3 = sorted(search, key=lambda e: -e.objective)[:3]
    assert {r["label"] for r in rescored} == {"final-mean", *(e.label for e in top3)}
    complete = [r for r in rescored if r["rescore_examples"] is None]
    assert rescored[: len(complete)] == complete  # those scored in full first, best first
    assert [r["full_search"] for r in complete] == sorted((r["full_search"] for r in complete), reverse=True)
    assert results["rows"][0]["label"] == f"evolved ({rescored[0]['label']})"
    assert results["rows"][0]["average"] == rescored[0]["heldout"]


def test_periodic_rescoring_every_n_evaluations(tmp_path, tiny_zoo, tiny_task_dir):
    """fitness.rescore_every: after every 4 evaluations (each generation here) the 2 best so far are scored on the
    whole search split and on held-out data; results.json keeps each checkpoint, and the final re-scoring of the same
    candidates comes from the cache."""
    tasks = {t: str(tiny_task_dir / t) for t in ("add", "cipher", "reverse")}
    exp = write_experiment(tmp_path / "exp.yaml", tiny_task_dir, baselines={"enabled": False},
                           optimizer={"type": "cma", "generations": 3, "popsize": 4},
                           fitness={"type": "native", "tasks": tasks, "search_subset": 10, "rescore_top": 2,
                                    "rescore_every": 4, "rescore_mean": False})
    results = _run(exp, tmp_path / "run")
    store = RunDir.open(tmp_path / "run").store()
    try:
        search = store.evaluations("search")
        held = store.evaluations("checkpoint_heldout")
        final_held = store.evaluations("rescore_heldout")
    finally:
        store.close()
    checkpoints = results["checkpoints"]
    assert [c["evaluations"] for c in checkpoints] == [4, 8, 12]
    for c in checkpoints:
        best_then = sorted(search[: c["evaluations"]], key=lambda e: -e.objective)[:2]
        assert [r["label"] for r in c["top"]] == [e.label for e in best_then]
        assert all(r["full_search"] is not None and 0 <= r["heldout"] <= 1 for r in c["top"])
    assert len(held) == 3 * 2
    # the last checkpoint saw the final top 2: the end of the run copied their held-out scores
    assert {e.worker for e in final_held} == {"cache"}


def test_a_bf16_run_merges_scores_and_exports_in_bf16(tmp_path, tiny_zoo, tiny_task_dir):
    """`dtype: bfloat16`: the fp32 zoo is cast when loaded, every candidate merges and scores in bf16, the sources'
    rows are the sources themselves, and the export is a bf16 checkpoint whose mergekit YAML says bfloat16."""
    import torch
    import yaml
    from safetensors.torch import load_file
    from typer.testing import CliRunner

    from evomerge.cli import app

    exp = write_experiment(tmp_path / "exp.yaml", tiny_task_dir, dtype="bfloat16",
                           optimizer={"type": "cma", "generations": 1, "popsize": 3})
    results = _run(exp, tmp_path / "run")
    assert all(r[4] == "ok" for r in _search_rows(tmp_path / "run"))
    labels = [r["label"] for r in results["rows"]]
    assert labels[0].startswith("evolved") and "add" in labels
    cfg = yaml.safe_load(exp.read_text())
    worker = Worker(tiny_zoo / "base", [tiny_zoo / "add"], {}, _fitness(cfg), dtype="bfloat16")
    assert worker.builder.model.dtype == torch.bfloat16 and worker.builder.pool.dtype == torch.bfloat16
    result = CliRunner().invoke(app, ["export", str(tmp_path / "run"), "--out", str(tmp_path / "best")])
    assert result.exit_code == 0, result.stderr
    assert {t.dtype for t in load_file(tmp_path / "best" / "model.safetensors").values()} == {torch.bfloat16}
    assert yaml.safe_load((tmp_path / "best" / "mergekit_config.yml").read_text())["dtype"] == "bfloat16"


def _fitness(cfg):
    from evomerge.config import FitnessConfig

    return FitnessConfig.model_validate(cfg["fitness"])
