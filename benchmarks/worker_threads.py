"""Seconds per candidate of the quickstart's real scoring, by worker and thread count: one local worker, or N Ray
actors of C CPUs each scoring concurrently, each with T torch/OpenMP/BLAS threads (T > C is what Ray workers ran
before their threads followed their CPUs).

    python benchmarks/worker_threads.py local 1 2            # the local worker with 1, then 2 threads
    python benchmarks/worker_threads.py ray 2 1.0 2          # 2 actors × 1 CPU × 2 threads (oversubscribed)
    python benchmarks/worker_threads.py ray 2 1.0 1          # 2 actors × 1 CPU × 1 thread
    EVOMERGE_ZOO=tiny python benchmarks/worker_threads.py ... # the tiny zoo (faster to build)

Median over 5 candidates (random recipes, after one warm-up) of each worker's `evaluate` time.
"""

from __future__ import annotations

import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
from rich.console import Console

from evomerge.config import load_experiment
from evomerge.executors.worker import Job, Worker
from evomerge.runner import resolve_models, resolve_tasks
from evomerge.spaces import SPACES

QUICKSTART = Path(__file__).resolve().parents[1] / "experiments" / "quickstart.yaml"


def worker_args(threads: int) -> dict:
    cfg, base_dir = load_experiment(QUICKSTART)
    cfg = cfg.model_copy(update={"zoo": os.environ.get("EVOMERGE_ZOO", cfg.zoo)})
    base, models = resolve_models(cfg, base_dir, Console(quiet=True))
    return {
        "base": base,
        "sources": models,
        "tasks": resolve_tasks(cfg, base_dir),
        "fitness_cfg": cfg.fitness,
        "threads": threads,
        "device": "cpu",
        "base_dir": base_dir,
    }


def jobs(args: dict, shape: tuple, n: int = 6) -> list[Job]:
    cfg, _ = load_experiment(QUICKSTART)
    space = SPACES[cfg.space.type](cfg.space, *shape)
    rng = np.random.default_rng(0)
    return [
        Job(
            "search",
            0,
            i,
            f"c{i}",
            "search",
            space.decode(rng.uniform(0, 1, space.dim)),
        )
        for i in range(n)
    ]


def timed(worker: Worker, job: Job) -> float:
    t0 = time.perf_counter()
    worker.evaluate(job)
    return time.perf_counter() - t0


def local(threads: list[int]) -> None:
    for t in threads:
        args = worker_args(t)
        w = Worker(**args)
        js = jobs(args, w.info()["shape"])
        w.evaluate(js[0])
        times = [timed(w, j) for j in js[1:]]
        print(
            f"local, {torch.get_num_threads()} threads: {statistics.median(times):.3f} s per candidate, "
            f"{1 / statistics.median(times):.2f} candidates/s",
            flush=True,
        )


def ray_actors(n: int, cpus: float, threads: int) -> None:
    import ray

    ray.init(address="local", include_dashboard=False, log_to_driver=False)
    try:
        actor = ray.remote(num_cpus=cpus)(Probe)
        args = worker_args(threads)
        actors = [actor.remote(args) for _ in range(n)]
        shape = ray.get(actors[0].shape.remote())
        js = jobs(args, shape)
        ray.get([a.timed.remote(js[0]) for a in actors])
        t0, times = time.perf_counter(), []
        for j in js[1:]:
            times += ray.get([a.timed.remote(j) for a in actors])
        wall = time.perf_counter() - t0
        print(
            f"{n} Ray actors × {cpus:g} CPU × {threads} threads: {statistics.median(times):.3f} s per candidate, "
            f"{len(times) / wall:.2f} candidates/s",
            flush=True,
        )
    finally:
        ray.shutdown()


class Probe:
    """A Ray actor holding a worker with exactly the threads asked for (not the ones its CPUs would give)."""

    def __init__(self, args: dict):
        self.worker = Worker(**args)

    def shape(self) -> tuple:
        return self.worker.info()["shape"]

    def timed(self, job: Job) -> float:
        return timed(self.worker, job)


if __name__ == "__main__":
    if sys.argv[1] == "local":
        local([int(t) for t in sys.argv[2:]])
    else:
        ray_actors(int(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4]))
