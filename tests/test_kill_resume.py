"""kill -9 at five random moments of a quickstart-sized seeded run, resumed each time: the same evaluations in the
same order, the same best recipe and final table as an uninterrupted run; nothing lost, nothing computed twice."""

import os

import pytest

from scripts.kill_resume import kill_and_resume
from tests.conftest import write_experiment

pytestmark = pytest.mark.slow


def test_five_random_kills_then_resume_equal_an_uninterrupted_run(tmp_path, tiny_zoo, tiny_task_dir, evomerge_home):
    # the quickstart's search (per-layer task arithmetic, default population, 15 generations) on the tiny zoo
    exp = write_experiment(tmp_path / "exp.yaml", tiny_task_dir,
                           space={"type": "layer_weights", "operator": "task_arithmetic", "granularity": "layer"},
                           optimizer={"type": "cma", "generations": 15})
    env = {**os.environ, "EVOMERGE_HOME": str(evomerge_home)}
    report = kill_and_resume(exp, tmp_path / "work", kills=5, seed=1, env=env, log=lambda *_: None)
    assert report["evaluations"] > 150
    assert len(report["killed_at"]) == 5
    assert report["same_sequence"] and report["same_best"] and report["same_results"], report
    assert report["lost"] == 0 and report["recomputed"] == [], report
    assert report["ok"]
