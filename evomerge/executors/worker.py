"""A worker holds the sources, one live model and the scorers; recipes come in, evaluations go out."""

from __future__ import annotations

import time
import traceback
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from evomerge.fitness.scorer import make_scorer
from evomerge.merge.materialize import Merger
from evomerge.recipe import Recipe
from evomerge.sources import SourcePool
from evomerge.store import Evaluation


@dataclass(frozen=True)
class Job:
    kind: str
    generation: int
    idx: int
    label: str
    split: str
    recipe: Recipe
    genome: list[float] | None = None
    cache_key: str | None = None


class Worker:
    def __init__(self, base: Path, sources: list[Path], tasks: dict[str, dict[str, list[dict]]], fitness_cfg,
                 threads: int = 1, device: str = "cpu", stream: bool | None = None, base_dir: Path = Path("."),
                 name: str = "local"):
        torch.set_num_threads(threads)
        self.name = name
        if device == "auto":  # resolved where the worker runs: on a cluster the driver may have no GPU
            device = "cuda" if torch.cuda.is_available() else "cpu"
        self.pool = SourcePool(base, sources, device=device, stream=stream)
        # the live model holds merges in the sources' dtype
        self.model = AutoModelForCausalLM.from_pretrained(base, dtype=self.pool.dtype).to(device).eval()
        self.tokenizer = AutoTokenizer.from_pretrained(base)
        self.merger = Merger(self.pool)
        # lm-eval takes the search split's example cap as its `limit`; the other scorers get capped example lists
        self.scorers = {split: make_scorer(self.tokenizer, split_tasks, fitness_cfg, Path(base_dir),
                                           limit=fitness_cfg.max_examples if split == fitness_cfg.search_split else None)
                        for split, split_tasks in tasks.items()}

    def evaluate(self, job: Job) -> Evaluation:
        """Never raises for a bad candidate: a failure becomes a FAILED evaluation with its reason."""
        ev = Evaluation(kind=job.kind, generation=job.generation, idx=job.idx, label=job.label, split=job.split,
                        status="failed", genome=job.genome, recipe=job.recipe.to_json(), cache_key=job.cache_key,
                        worker=self.name)
        t0 = time.perf_counter()
        try:
            scorer = self.scorers[job.split]
            # teacher-forced scoring checks the logits for NaN/Inf, which is cheaper than scanning every weight
            self.merger.materialize(job.recipe, self.model, check_finite=scorer.mode != "teacher_forced")
            t1 = time.perf_counter()
            ev.merge_seconds = t1 - t0
            try:
                score = scorer.score(self.model)
            except FloatingPointError:
                self.merger.check_finite(self.model)  # names the first non-finite tensor, if a weight is one
                raise
            ev.eval_seconds = time.perf_counter() - t1
        except Exception as e:  # noqa: BLE001 — failures are data; the run goes on
            ev.error = f"{type(e).__name__}: {e}\n{traceback.format_exc(limit=3)}"
            ev.merge_seconds = time.perf_counter() - t0
            return ev
        ev.status, ev.objective = "ok", score.objective
        ev.per_task, ev.per_example = score.per_task, score.per_example
        return ev
