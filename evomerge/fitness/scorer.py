"""Scorers: a model in, per-example scores, per-task means and the (weighted) objective out."""

from __future__ import annotations

import importlib
import math
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from evomerge.errors import ConfigError
from evomerge.fitness.native import encode_teacher_forced, exact_match_generate, exact_match_teacher_forced


@dataclass(frozen=True)
class Score:
    objective: float  # weighted mean of the per-task scores
    per_task: dict[str, float]
    per_example: dict[str, list[float]]


def _score(per_example: dict[str, list[float]], weights: dict[str, float]) -> Score:
    per_task = {t: sum(v) / len(v) for t, v in per_example.items()}
    objective = sum(weights[t] * s for t, s in per_task.items()) / sum(weights.values())
    if not math.isfinite(objective):
        raise FloatingPointError(f"the objective is {objective}")
    return Score(objective, per_task, per_example)


class NativeScorer:
    """Exact match of the answer. Encodes its examples once; `score(model)` is then one forward pass per batch
    (teacher-forced mode)."""

    def __init__(self, tokenizer, tasks: dict[str, list[dict]], mode: str = "teacher_forced",
                 batch_size: int = 128, max_new_tokens: int = 16, weights: dict[str, float] | None = None):
        self.tokenizer, self.tasks, self.mode = tokenizer, tasks, mode
        self.batch_size, self.max_new_tokens = batch_size, max_new_tokens
        self.weights = weights or dict.fromkeys(tasks, 1.0)
        self._encoded = {t: encode_teacher_forced(tokenizer, ex) for t, ex in tasks.items()} if mode == "teacher_forced" else None

    def score(self, model) -> Score:
        model.eval()
        per_example = {}
        for task, examples in self.tasks.items():
            if self._encoded is not None:
                ok = exact_match_teacher_forced(model, self._encoded[task], self.batch_size)
            else:
                ok = exact_match_generate(model, self.tokenizer, examples, self.max_new_tokens, self.batch_size)
            per_example[task] = [int(v) for v in ok]
        return _score(per_example, self.weights)


class PythonScorer:
    """Your scorer: `fn(model, tokenizer, task_name, examples) -> one float per example`."""

    mode = "custom"  # weights are checked for NaN/Inf after the merge, as the scorer may not look at logits

    def __init__(self, tokenizer, tasks: dict[str, list[dict]], fn: Callable, weights: dict[str, float] | None = None):
        self.tokenizer, self.tasks, self.fn = tokenizer, tasks, fn
        self.weights = weights or dict.fromkeys(tasks, 1.0)

    def score(self, model) -> Score:
        model.eval()
        per_example = {}
        for task, examples in self.tasks.items():
            scores = [float(v) for v in self.fn(model, self.tokenizer, task, examples)]
            if len(scores) != len(examples):
                raise ValueError(f"scorer returned {len(scores)} scores for {len(examples)} {task!r} examples")
            per_example[task] = scores
        return _score(per_example, self.weights)


def load_scorer_function(spec: str, base_dir: Path) -> Callable:
    """'module:function', the module found beside the experiment file first, then on the usual import path."""
    module_name, _, fn_name = spec.partition(":")
    if str(base_dir) not in sys.path:
        sys.path.insert(0, str(base_dir))
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise ConfigError(f"fitness.scorer: cannot import module {module_name!r} ({e})") from None
    fn = getattr(module, fn_name, None)
    if not callable(fn):
        raise ConfigError(f"fitness.scorer: module {module_name!r} has no function {fn_name!r}")
    return fn


def make_scorer(tokenizer, tasks: dict, cfg, base_dir: Path, limit: int | None = None):
    """`tasks`: {task: examples} (native, python) or {task: lm-eval task config} (lm_eval)."""
    weights = cfg.task_weights()
    if cfg.type == "lm_eval":
        from evomerge.fitness.lm_eval_scorer import LmEvalScorer

        return LmEvalScorer(tokenizer, tasks, cfg, weights, limit=limit)
    if cfg.type == "python":
        return PythonScorer(tokenizer, tasks, load_scorer_function(cfg.scorer, base_dir), weights)
    return NativeScorer(tokenizer, tasks, mode=cfg.mode, batch_size=cfg.batch_size,
                        max_new_tokens=cfg.max_new_tokens, weights=weights)
