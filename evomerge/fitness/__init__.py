"""Fitness: turns a live model into per-example scores and an objective.

`SCORERS` is the one registry (name -> `Scorer` class; `fitness.type` names one). The contract is in
`evomerge.fitness.base`; tests/test_contracts.py runs it over every entry.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from evomerge.fitness.base import Score, Scorer
from evomerge.fitness.lm_eval_scorer import LmEvalScorer
from evomerge.fitness.scorer import NativeScorer, PythonScorer

SCORERS: dict[str, type[Scorer]] = {"native": NativeScorer, "python": PythonScorer, "lm_eval": LmEvalScorer}


def make_scorer(tokenizer: Any, tasks: dict, cfg: Any, base_dir: Path, limit: int | None = None) -> Scorer:
    """The scorer `cfg.type` names, for one split's `tasks` ({task: examples}, or {task: lm-eval task config})."""
    return SCORERS[cfg.type].from_config(tokenizer, tasks, cfg, Path(base_dir), limit=limit)


__all__ = ["SCORERS", "Score", "Scorer", "make_scorer"]
