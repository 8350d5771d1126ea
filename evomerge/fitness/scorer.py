"""Scorers: a model in, per-example scores, per-task means and the (weighted) objective out."""

from __future__ import annotations

import importlib
import math
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from evomerge.errors import ConfigError
from evomerge.fitness.native import (choice_accuracy, encode_choices, encode_teacher_forced, exact_match_generate,
                                     exact_match_teacher_forced)
from evomerge.fitness.tasks import is_multiple_choice


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
                 batch_size: int = 128, max_new_tokens: int = 16, weights: dict[str, float] | None = None,
                 checks: dict[str, Callable[[str], bool]] | None = None, chat: bool = False):
        self.tokenizer, self.tasks, self.mode, self.chat = tokenizer, tasks, mode, chat
        self.batch_size, self.max_new_tokens = batch_size, max_new_tokens
        self.weights = weights or dict.fromkeys(tasks, 1.0)
        self.checks = checks or {}
        # multiple-choice tasks are scored by log-likelihood in either mode; their pairs are encoded once
        self._choices = {t: encode_choices(tokenizer, ex, chat=chat) for t, ex in tasks.items()
                         if is_multiple_choice(ex)}
        self._encoded = ({t: encode_teacher_forced(tokenizer, ex, chat=chat) for t, ex in tasks.items()
                          if t not in self._choices}
                         if mode == "teacher_forced" else None)
        # teacher-forced exact match means the answer was generated verbatim: its check is the answer's own
        for t in self.checks:
            if t in self._choices:
                raise ConfigError(f"fitness.tasks.{t}.check: checks look at generated answers; {t} is multiple-choice")
        self._passes = {t: torch.tensor([self.checks[t](ex["answer"]) for ex in tasks[t]]) for t in self.checks}

    def score(self, model) -> Score:
        model.eval()
        per_example = {}
        for task, examples in self.tasks.items():
            if task in self._choices:
                ok = choice_accuracy(model, self._choices[task], examples, self.batch_size)
            elif self._encoded is not None:
                ok = exact_match_teacher_forced(model, self._encoded[task], self.batch_size)
                if task in self._passes:
                    ok = ok & self._passes[task]
            else:
                ok = exact_match_generate(model, self.tokenizer, examples, self.max_new_tokens, self.batch_size,
                                          check=self.checks.get(task), chat=self.chat)
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
    from evomerge.fitness.checks import make_check

    checks = {t: make_check(cfg.task_spec(t).check) for t in cfg.tasks if cfg.task_spec(t).check}
    return NativeScorer(tokenizer, tasks, mode=cfg.mode, batch_size=cfg.batch_size,
                        max_new_tokens=cfg.max_new_tokens, weights=weights, checks=checks,
                        chat=cfg.apply_chat_template)
