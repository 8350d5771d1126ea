"""The scorer contract: a live model in, one score per example of every task out, then per-task means and the
(weighted) objective.

Every class in `evomerge.fitness.SCORERS` subclasses `Scorer` and keeps this contract (checked for each registered
scorer by tests/test_contracts.py):

- `check_config(cfg)`: raises ValueError naming the `fitness.…` field when the experiment's fitness section asks for
  something this scorer does not do (called while the config is validated, before anything runs);
- `from_config(tokenizer, tasks, cfg, base_dir, limit)`: the scorer of one split's tasks, built once per worker;
- `score(model, examples=None) -> Score`: one score per example of every task, each in [0, 1], in the tasks'
  example order; with `examples` ({task: [index, ...]}, a task left out: none of it) only those, in that order —
  what racing and IRT anchors ask for; the same model scores the same every time (deterministic); raises (a
  recorded failed evaluation) when it cannot score;
- `checks_logits`: True when `score` itself raises FloatingPointError on non-finite logits, so that the worker need
  not scan the merged weights for NaN/Inf first.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class Score:
    objective: float  # weighted mean of the per-task scores
    per_task: dict[str, float]
    per_example: dict[str, list[float]]  # with `examples`: the scores of those examples, in that order


Examples = dict[str, list[int]]  # per task, the indices of the examples to score


def score_from_examples(per_example: dict[str, list[float]], weights: dict[str, float]) -> Score:
    """Per-task means and their weighted mean (a task with no scored example is left out); FloatingPointError when
    the objective is not finite."""
    per_task = {t: sum(v) / len(v) for t, v in per_example.items() if v}
    total = sum(weights[t] for t in per_task)
    objective = sum(weights[t] * s for t, s in per_task.items()) / total if total else float("nan")
    if not math.isfinite(objective):
        raise FloatingPointError(f"the objective is {objective}")
    return Score(objective, per_task, per_example)


class Scorer:
    """Base of every registered scorer; see the module docstring for the contract."""

    checks_logits: bool = False

    @classmethod
    def check_config(cls, cfg: Any) -> None:
        """ValueError naming the field when `cfg` (a FitnessConfig) asks for something this scorer does not do."""

    @classmethod
    def from_config(cls, tokenizer: Any, tasks: dict, cfg: Any, base_dir: Path, limit: int | None = None) -> Scorer:
        """`tasks`: {task: examples} (or, for lm_eval, {task: lm-eval task config}) of one split."""
        raise NotImplementedError

    def score(self, model: Any, examples: Examples | None = None) -> Score:
        raise NotImplementedError


def pick(items: list, indices: list[int] | None) -> list:
    """`items` at `indices` (all of them for None)."""
    return items if indices is None else [items[i] for i in indices]
