"""`evomerge validate` as a dry run: what `evomerge run` would do first, on a few examples, in seconds — load the
sources, build the search's first candidate (the optimizer's start point), score a few examples of every task on
every split. What would fail in a run fails here, as one line."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
from rich.console import Console

from evomerge.errors import ConfigError

EXAMPLES = 3  # per task and split


def dry_run(experiment: Path, console: Console) -> None:
    from evomerge.config import load_experiment
    from evomerge.executors import Job
    from evomerge.executors.worker import Worker
    from evomerge.fitness.scorer import load_scorer_function, make_scorer
    from evomerge.inspect import grouping, render_grouping
    from evomerge.runner import resolve_models, resolve_tasks
    from evomerge.search import make_optimizer
    from evomerge.spaces import SPACES

    t0 = time.perf_counter()
    cfg, base_dir = load_experiment(experiment)
    f = cfg.fitness
    tasks = resolve_tasks(cfg, base_dir)
    if f.type == "python":
        load_scorer_function(f.scorer, base_dir)
    if f.type != "lm_eval":  # lm-eval task configs are capped by the scorer's limit below
        tasks = {split: {t: ex[:EXAMPLES] for t, ex in by_task.items()} for split, by_task in tasks.items()}
    base, models = resolve_models(cfg, base_dir, console)
    flow = cfg.space.type == "data_flow"
    for line in render_grouping(grouping(models[0] if flow else base, "layer" if flow else cfg.space.granularity),
                                models[0] if flow else base):
        console.print(line, highlight=False, soft_wrap=True)
    try:
        worker = Worker(base, models, tasks, f, threads=cfg.threads, device="cpu", base_dir=base_dir, flow=flow)
    except ConfigError:
        raise
    except Exception as e:  # noqa: BLE001 — whatever stops a worker from starting stops a run: one line
        raise ConfigError(f"dry run: the sources or tasks do not load: {type(e).__name__}: {e}") from None
    if f.type == "lm_eval":
        worker.scorers = {s: make_scorer(worker.tokenizer, t, f, base_dir, limit=EXAMPLES) for s, t in tasks.items()}
    space_cls = SPACES[cfg.space.type]
    extra = {"sources": models} if getattr(space_cls, "needs_sources", False) else {}
    space = space_cls(cfg.space, *worker.builder.shape, **extra)
    try:
        opt = make_optimizer(cfg, space)
    except ValueError as e:
        raise ConfigError(f"optimizer: {e}") from None
    recipe = space.decode(np.asarray(opt.x0, dtype=float), seed=cfg.seed)
    scores = []
    for split in tasks:
        ev = worker.evaluate(Job("dry_run", -1, 0, "start", split, recipe))
        if ev.status != "ok":
            raise ConfigError(f"dry run: the first candidate fails on the {split!r} split: "
                              f"{ev.error.splitlines()[0]}")
        scores.append(f"{split} {ev.objective:.3f}")
    console.print(f"dry run: {len(models)} sources loaded, the first candidate built and scored on {EXAMPLES} "
                  f"examples per task ({', '.join(scores)}) in {time.perf_counter() - t0:.1f} s", highlight=False)
