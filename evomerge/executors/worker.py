"""A worker holds the sources, one live model and the scorers; recipes come in, evaluations go out."""

from __future__ import annotations

import time
import traceback
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from evomerge.errors import MergeError
from evomerge.fitness.scorer import make_scorer
from evomerge.merge.materialize import Merger
from evomerge.recipe import FlowRecipe, Recipe
from evomerge.sources import SourcePool
from evomerge.store import Evaluation


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


class MergeBuilder:
    """Parameter-space candidates: a recipe is merged into one live model, in place."""

    def __init__(self, base: Path, sources: list[Path], device: str, stream: bool | None):
        self.pool = SourcePool(base, sources, device=device, stream=stream)
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

    def __init__(self, models: list[Path], device: str):
        from evomerge.merge.flow import FlowModels

        self.flow = FlowModels(models, device=device)
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
                 name: str = "local", flow: bool = False):
        torch.set_num_threads(threads)
        self.name = name
        if device == "auto":  # resolved where the worker runs: on a cluster the driver may have no GPU
            device = "cuda" if torch.cuda.is_available() else "cpu"
        self.builder = FlowBuilder(sources, device) if flow else MergeBuilder(base, sources, device, stream)
        self.tokenizer = self.builder.tokenizer
        # lm-eval takes the search split's example cap as its `limit`; the other scorers get capped example lists
        self.scorers = {split: make_scorer(self.tokenizer, split_tasks, fitness_cfg, Path(base_dir),
                                           limit=fitness_cfg.max_examples if split == fitness_cfg.search_split else None)
                        for split, split_tasks in tasks.items()}

    def info(self) -> dict:
        """What the driver needs to know of the models: (sources, layers) for the search space, and more."""
        b = self.builder
        return {"shape": b.shape, "streaming": b.streaming, "device": str(b.device)}

    def evaluate(self, job: Job) -> Evaluation:
        """Never raises for a bad candidate: a failure becomes a FAILED evaluation with its reason."""
        ev = Evaluation(kind=job.kind, generation=job.generation, idx=job.idx, label=job.label, split=job.split,
                        status="failed", genome=job.genome, recipe=job.recipe.to_json(), cache_key=job.cache_key,
                        worker=self.name)
        t0 = time.perf_counter()
        try:
            scorer = self.scorers[job.split]
            # teacher-forced scoring checks the logits for NaN/Inf, which is cheaper than scanning every weight
            model = self.builder.build(job.recipe, check_finite=scorer.mode != "teacher_forced")
            t1 = time.perf_counter()
            ev.merge_seconds = t1 - t0
            try:
                score = scorer.score(model)
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
