"""A worker holds the sources, one live model and the scorers; recipes come in, evaluations go out."""

from __future__ import annotations

import math
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

import torch
from threadpoolctl import threadpool_limits
from transformers import AutoModelForCausalLM, AutoTokenizer

from evomerge.errors import MergeError
from evomerge.fitness import make_scorer
from evomerge.fitness.estimators import RaceSpec, race_score
from evomerge.merge.materialize import Merger
from evomerge.recipe import FlowRecipe, Recipe
from evomerge.sources import SourcePool
from evomerge.store import Evaluation

GPU_WORKER_THREADS = 2  # a GPU worker's CPU threads only tokenize and launch kernels: more would only spin


def threads_for(cpus: float, gpu: bool = False) -> int:
    """The CPU threads a worker with `cpus` CPUs uses: its whole CPUs, at least one, never more (a fraction of a
    CPU is one thread that shares its core, as Ray's own OMP_NUM_THREADS does)."""
    n = max(1, math.floor(cpus))
    return min(n, GPU_WORKER_THREADS) if gpu else n


def limit_threads(n: int) -> None:
    """Every thread pool of this process to `n` threads: torch's intra-op pool, and OpenMP and BLAS (MKL,
    OpenBLAS) through threadpoolctl, whatever their environment variables said at import. Workers that share cores
    and each run more threads than their share spin against each other at every parallel region."""
    torch.set_num_threads(n)
    threadpool_limits(n)


@dataclass(frozen=True)
class Job:
    kind: str
    generation: int
    idx: int
    label: str
    split: str
    recipe: Recipe | FlowRecipe
    genome: list[float] | None = None
    cache_key: str | None = None
    examples: dict[str, list[int]] | None = None  # score only these examples (per task, by index); None: all
    race: RaceSpec | None = None  # score in a fixed order and stop once the candidate cannot beat a reference


class MergeBuilder:
    """Parameter-space candidates: a recipe is merged into one live model, in place."""

    def __init__(self, base: Path, sources: list[Path], device: str, stream: bool | None, dtype: torch.dtype | None):
        self.pool = SourcePool(base, sources, device=device, stream=stream, dtype=dtype)
        # the live model holds merges in the sources' dtype
        self.model = AutoModelForCausalLM.from_pretrained(base, dtype=self.pool.dtype).to(device).eval()
        self.tokenizer = AutoTokenizer.from_pretrained(base)
        self.merger = Merger(self.pool)
        self.shape = (self.pool.n_sources, self.pool.n_blocks)
        self.streaming, self.device = self.pool.streaming, self.pool.device

    def build(self, recipe: Recipe, check_finite: bool) -> torch.nn.Module:
        if not isinstance(recipe, Recipe):
            raise MergeError(f"a parameter-space worker cannot build a {type(recipe).__name__}")
        self.merger.materialize(recipe, self.model, check_finite=check_finite)
        return self.model

    def check_finite(self, model) -> None:
        self.merger.check_finite(model)


class FlowBuilder:
    """Data-flow candidates: the flow's models stay loaded; a recipe becomes a model over their shared layers."""

    def __init__(self, models: list[Path], device: str, dtype: torch.dtype | None):
        from evomerge.merge.flow import FlowModels

        self.flow = FlowModels(models, device=device, dtype=dtype)
        self.tokenizer = self.flow.tokenizer
        self.shape = (len(models), tuple(self.flow.n_layers))
        self.streaming, self.device = False, device

    def build(self, recipe: FlowRecipe, check_finite: bool) -> torch.nn.Module:  # noqa: ARG002 — weights are the sources'
        if not isinstance(recipe, FlowRecipe):
            raise MergeError(f"a data-flow worker cannot build a {type(recipe).__name__}")
        return self.flow.build(recipe)

    def check_finite(self, model) -> None:
        pass  # the layers are the sources' own weights; a non-finite output comes from the scales, not a weight


class Worker:
    def __init__(self, base: Path | None, sources: list[Path], tasks: dict[str, dict[str, list[dict]]], fitness_cfg,
                 threads: int = 1, device: str = "cpu", stream: bool | None = None, base_dir: Path = Path("."),
                 name: str = "local", flow: bool = False, dtype: str = "auto"):
        limit_threads(threads)
        self.name = name
        if device == "auto":  # resolved where the worker runs: on a cluster the driver may have no GPU
            device = "cuda" if torch.cuda.is_available() else "cpu"
        cast = None if dtype == "auto" else getattr(torch, dtype)  # the experiment's `dtype`
        self.builder = (FlowBuilder(sources, device, cast) if flow
                        else MergeBuilder(base, sources, device, stream, cast))
        self.tokenizer = self.builder.tokenizer
        # lm-eval takes the search split's example cap as its `limit`; the other scorers get capped example lists
        self.scorers = {split: make_scorer(self.tokenizer, split_tasks, fitness_cfg, Path(base_dir),
                                           limit=fitness_cfg.max_examples if split == fitness_cfg.search_split
                                           else None)
                        for split, split_tasks in tasks.items()}

    def info(self) -> dict:
        """What the driver needs to know of the models: (sources, layers) for the search space, and more."""
        b = self.builder
        return {"shape": b.shape, "streaming": b.streaming, "device": str(b.device), "threads": torch.get_num_threads()}

    def evaluate(self, job: Job) -> Evaluation:
        """Never raises for a bad candidate: a failure becomes a FAILED evaluation with its reason."""
        ev = Evaluation(kind=job.kind, generation=job.generation, idx=job.idx, label=job.label, split=job.split,
                        status="failed", genome=job.genome, recipe=job.recipe.to_json(), cache_key=job.cache_key,
                        worker=self.name)
        t0 = time.perf_counter()
        try:
            scorer = self.scorers[job.split]
            # a scorer that checks the logits for NaN/Inf spares the scan of every weight
            model = self.builder.build(job.recipe, check_finite=not scorer.checks_logits)
            t1 = time.perf_counter()
            ev.merge_seconds = t1 - t0
            try:
                if job.race is not None:
                    score, ev.examples = race_score(scorer, model, job.race)
                    if ev.examples is not None:
                        ev.cache_key = None  # a race stopped early: a score of its own, never a cached full one
                else:
                    score = scorer.score(model, job.examples)
                    ev.examples = job.examples
            except FloatingPointError:
                self.builder.check_finite(model)  # names the first non-finite tensor, if a weight is one
                raise
            ev.eval_seconds = time.perf_counter() - t1
        except Exception as e:  # noqa: BLE001 — failures are data; the run goes on
            ev.error = f"{type(e).__name__}: {e}\n{traceback.format_exc(limit=3)}"
            ev.merge_seconds = time.perf_counter() - t0
            return ev
        ev.status, ev.objective = "ok", score.objective
        ev.per_task, ev.per_example = score.per_task, score.per_example
        return ev
