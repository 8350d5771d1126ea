"""The Ray executor on a real local Ray instance: actors that load the sources once, a full search, a killed
actor replaced without losing an evaluation, steady-state search that keeps every worker busy, and workers that run
as many threads as they have CPUs (the process executor's worker: the experiment's `threads`)."""

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest
from rich.console import Console

from evomerge.runner import Runner
from evomerge.store import RunDir, read_events
from tests.conftest import write_experiment

pytestmark = pytest.mark.slow
RAY = {"type": "ray", "workers": 2, "cpus_per_worker": 0.5}

# A scorer with a fixed cost per call (so a kill lands mid-run) and a score that depends on the model.
SLOW_SCORER = textwrap.dedent('''
    import time
    import torch

    def score(model, tokenizer, task, examples):
        time.sleep(0.3)
        with torch.no_grad():
            w = next(model.parameters()).float().abs().mean().item()
        return [w] * len(examples)
''')


def _search(run_dir):
    store = RunDir.open(run_dir).store()
    try:
        return store.evaluations("search"), store.evaluations(), json.loads(store.get_meta("workers"))
    finally:
        store.close()


def test_search_on_two_ray_actors(tmp_path, tiny_zoo, tiny_task_dir):
    exp = write_experiment(tmp_path / "exp.yaml", tiny_task_dir, executor=RAY, threads=2,
                           optimizer={"type": "cma", "generations": 3, "popsize": 5})
    results = Runner(exp, tmp_path / "run", console=Console(quiet=True)).run()
    search, everything, workers = _search(tmp_path / "run")
    assert len(search) == 15 and all(e.status == "ok" for e in search)
    assert {e.worker for e in search} == {"ray-0", "ray-1"}  # both actors worked
    assert len(results["rows"]) >= 8
    # telemetry per worker: jobs, merge and evaluation seconds, idle time, from the driver's clock
    assert sorted(w["name"] for w in workers) == ["ray-0", "ray-1"]
    assert sum(w["jobs"] for w in workers) == sum(e.worker in ("ray-0", "ray-1") for e in everything)
    assert all(w["busy_s"] > 0 and w["idle_s"] >= 0 and w["pid"] != os.getpid() for w in workers)
    # half a CPU each: one thread, whatever the experiment's `threads`; `evomerge status` shows it per worker
    from evomerge.reporting.status import render_status, run_status

    assert [w["threads"] for w in workers] == [1, 1]
    console = Console(record=True, width=400)
    console.print(render_status(run_status(tmp_path / "run")))
    assert console.export_text().count("(1 thread) on") == 2


def test_a_killed_actor_is_replaced_and_no_evaluation_is_lost(tmp_path, tiny_zoo, tiny_task_dir, evomerge_home):
    (tmp_path / "slow.py").write_text(SLOW_SCORER)
    exp = write_experiment(tmp_path / "exp.yaml", tiny_task_dir, executor=RAY, baselines={"enabled": False},
                           optimizer={"type": "cma", "generations": 4, "popsize": 4},
                           fitness={"type": "python", "scorer": "slow:score",
                                    "tasks": {"add": str(tiny_task_dir / "add")}, "max_examples": 4})
    run_dir = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-m", "evomerge.cli", "run", str(exp), "--run-dir", str(run_dir)],
                            env={**os.environ, "EVOMERGE_HOME": str(evomerge_home)}, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    victim, deadline = None, time.time() + 180
    while victim is None and time.time() < deadline and proc.poll() is None:
        events = read_events(run_dir / "events.jsonl")
        workers = {e["worker"]: e["pid"] for e in events if e["event"] == "worker_started"}
        done = sum(e["event"] == "evaluation" for e in events)
        if len(workers) == 2 and done >= 5:
            victim = workers["ray-1"]
            os.kill(victim, signal.SIGKILL)
        time.sleep(0.05)
    assert victim is not None, "the run ended (or never started) before an actor could be killed"
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    search, _, workers = _search(run_dir)
    assert len(search) == 16 and all(e.status == "ok" for e in search)  # nothing lost
    assert sorted((e.generation, e.idx) for e in search) == [(g, i) for g in range(4) for i in range(4)]
    assert any(e.attempts == 2 for e in search)  # the killed actor's candidate, issued again
    assert {w["name"] for w in workers} == {"ray-0", "ray-1", "ray-2"}  # ray-2 replaced ray-1
    assert [w["alive"] for w in sorted(workers, key=lambda w: w["name"])] == [False, False, False]  # all closed
    started = [e for e in read_events(run_dir / "events.jsonl") if e["event"] == "worker_started"]
    assert [e["worker"] for e in started] == ["ray-0", "ray-1", "ray-2"]
    stopped = [e for e in read_events(run_dir / "events.jsonl") if e["event"] == "worker_stopped"]
    assert [(e["worker"], e["pid"]) for e in stopped] == [("ray-1", victim)] and "died" in stopped[0]["reason"]


@pytest.mark.parametrize("optimizer", ["tpe", "m2n2"])
def test_steady_state_search_keeps_workers_busy_and_resumes(tmp_path, tiny_zoo, tiny_task_dir, monkeypatch, optimizer):
    """TPE, and M2N2 over mosaics, steady-state on two actors: a stop in the middle is resumed without losing or
    recomputing an evaluation, and the candidates asked before the stop go out again."""
    from evomerge.search import Evaluator

    space = {"space": {"type": "mosaic"}} if optimizer == "m2n2" else {}
    exp = write_experiment(tmp_path / "exp.yaml", tiny_task_dir, executor=RAY, baselines={"enabled": False},
                           optimizer={"type": optimizer, "generations": 4, "popsize": 4}, **space)
    real, seen = Evaluator.record, {"n": 0}

    def stopping(self, ev):
        out = real(self, ev)
        seen["n"] += ev.kind == "search"
        if seen["n"] == 7:
            raise KeyboardInterrupt
        return out

    monkeypatch.setattr(Evaluator, "record", stopping)
    with pytest.raises(KeyboardInterrupt):
        Runner(exp, tmp_path / "run", console=Console(quiet=True)).run()
    monkeypatch.setattr(Evaluator, "record", real)
    store = RunDir.open(tmp_path / "run").store()
    snap = store.last_snapshot()
    store.close()
    assert snap.phase == "steady" and snap.generation >= 7  # asked so far; the in-flight ones are in snap.genomes
    Runner.resume(tmp_path / "run", console=Console(quiet=True)).run()
    search, _, workers = _search(tmp_path / "run")
    assert len(search) == 16 and all(e.status == "ok" for e in search)
    assert sorted((e.generation, e.idx) for e in search) == [(g, i) for g in range(4) for i in range(4)]
    computed = [e for e in read_events(tmp_path / "run" / "events.jsonl")
                if e["event"] == "evaluation" and e["kind"] == "search" and e["worker"] != "cache"]
    assert len(computed) == 16  # each candidate computed once across the stop
    started = [e for e in read_events(tmp_path / "run" / "events.jsonl") if e["event"] == "search_started"]
    assert all(e["steady_state"] for e in started)


# What a worker runs with while it scores: torch's intra-op threads, and the largest and smallest OpenMP/BLAS pool.
THREADS_SCORER = textwrap.dedent('''
    import torch
    from threadpoolctl import threadpool_info

    def score(model, tokenizer, task, examples):
        pools = [p["num_threads"] for p in threadpool_info()]
        return [torch.get_num_threads(), max(pools), min(pools)]
''')


def _thread_counts(executor) -> list[list[float]]:
    from evomerge.executors import Job
    from evomerge.recipe import Recipe

    for i in range(executor.n_workers):
        executor.submit(Job("search", 0, i, f"c{i}", "search", Recipe.uniform("task_arithmetic", 1, 0.5)))
    evs = [executor.next() for _ in range(executor.n_workers)]
    assert all(e.status == "ok" for e in evs), [e.error for e in evs]
    assert {e.worker for e in evs} == {f"ray-{i}" for i in range(executor.n_workers)}  # each worker scored one
    return [e.per_example["probe"] for e in evs]


def _probe_args(tmp_path, tiny_zoo, threads: int) -> dict:
    from evomerge.config import FitnessConfig

    (tmp_path / "threads_probe.py").write_text(THREADS_SCORER)
    fitness = FitnessConfig(type="python", scorer="threads_probe:score", tasks={"probe": "x"})
    return {"base": tiny_zoo / "base", "sources": [tiny_zoo / "add"], "fitness_cfg": fitness, "threads": threads,
            "tasks": {"search": {"probe": [{"prompt": "1+1=", "answer": "2"}] * 3}}, "base_dir": tmp_path}


def test_the_process_worker_runs_the_experiments_threads(tmp_path, tiny_zoo):
    from evomerge.executors import Job, ProcessExecutor
    from evomerge.recipe import Recipe

    executor = ProcessExecutor(_probe_args(tmp_path, tiny_zoo, threads=2))
    try:
        executor.submit(Job("search", 0, 0, "c0", "search", Recipe.uniform("task_arithmetic", 1, 0.5)))
        assert executor.next().per_example["probe"] == [2, 2, 2]
        assert [w["threads"] for w in executor.telemetry()] == [2]
    finally:
        executor.close()


def test_a_ray_worker_runs_as_many_threads_as_it_has_cpus(tmp_path, tiny_zoo):
    """The experiment asks for 3 threads (the local executor's setting); each Ray worker runs exactly its CPU
    allocation (half a CPU: 1 thread; 2 CPUs: 2), in torch and in every OpenMP/BLAS pool, while it scores, and
    reports it. One Ray instance for both pools: starting Ray is most of this test's time."""
    import ray

    from evomerge.executors.ray_pool import RayExecutor

    args = _probe_args(tmp_path, tiny_zoo, threads=3)
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        for workers, cpus, threads in ((2, 0.5, 1), (1, 2.0, 2)):
            executor = RayExecutor(args, workers=workers, cpus_per_worker=cpus, address="local")  # joins this Ray
            try:
                assert _thread_counts(executor) == [[threads] * 3] * workers, (workers, cpus)
                assert [w["threads"] for w in executor.telemetry()] == [threads] * workers
            finally:
                executor.close()
    finally:
        ray.shutdown()


def test_cpu_workers_default_to_whole_cpus_of_one_node():
    from evomerge.executors.ray_pool import cpu_share
    from evomerge.executors.worker import threads_for

    assert cpu_share(2, 1, 2) == 2 and cpu_share(2, 2, 2) == 1 and cpu_share(2, 4, 2) == 0.5
    assert cpu_share(7, 2, 8) == 3  # 3.5 CPUs would be 3 threads: the half CPU stays free for another worker
    assert cpu_share(64, 1, 16) == 16  # no more than the largest node has: an actor runs on one node
    assert [threads_for(c) for c in (0.25, 1, 1.9, 4)] == [1, 1, 1, 4]
    assert threads_for(8, gpu=True) == 2
