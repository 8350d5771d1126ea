"""The native scorer (exact match of the answer, or log-likelihood multiple choice) and the python scorer (a
function of yours); both keep the `Scorer` contract of `evomerge.fitness.base`."""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable
from pathlib import Path

import torch

from evomerge.errors import ConfigError
from evomerge.fitness.base import Examples, Score, Scorer, pick, score_from_examples
from evomerge.fitness.checks import make_check
from evomerge.fitness.native import (
    choice_accuracy,
    encode_choices,
    encode_teacher_forced,
    exact_match_generate,
    exact_match_teacher_forced,
)
from evomerge.fitness.tasks import is_multiple_choice


class NativeScorer(Scorer):
    """Exact match of the answer. Encodes its examples once; `score(model)` is then one forward pass per batch
    (teacher-forced mode)."""

    def __init__(self, tokenizer, tasks: dict[str, list[dict]], mode: str = "teacher_forced",
                 batch_size: int = 128, max_new_tokens: int = 16, weights: dict[str, float] | None = None,
                 checks: dict[str, Callable[[str], bool]] | None = None, chat: bool = False):
        self.tokenizer, self.tasks, self.mode, self.chat = tokenizer, tasks, mode, chat
        self.checks_logits = mode == "teacher_forced"  # teacher-forced scoring looks at every logit
        self.batch_size, self.max_new_tokens = batch_size, max_new_tokens
        self.weights = weights or dict.fromkeys(tasks, 1.0)
        self.checks = checks or {}
        # multiple-choice tasks are scored by log-likelihood in either mode; their pairs are encoded once
        self._choices = {t: encode_choices(tokenizer, ex, chat=chat) for t, ex in tasks.items()
                         if is_multiple_choice(ex)}
        self._encoded = ({t: encode_teacher_forced(tokenizer, ex, chat=chat) for t, ex in tasks.items()
                          if t not in self._choices}
                         if mode == "teacher_forced" else None)
        if mode == "generate":
            _answers_fit(tokenizer, {t: ex for t, ex in tasks.items() if t not in self._choices}, max_new_tokens)
        # teacher-forced exact match means the answer was generated verbatim: its check is the answer's own
        for t in self.checks:
            if t in self._choices:
                raise ConfigError(f"fitness.tasks.{t}.check: checks look at generated answers; {t} is multiple-choice")
        self._passes = {t: torch.tensor([self.checks[t](ex["answer"]) for ex in tasks[t]]) for t in self.checks}

    @classmethod
    def check_config(cls, cfg) -> None:
        _no_scorer_function(cfg)
        _no_metric(cfg, "native scores exact match")

    @classmethod
    def from_config(cls, tokenizer, tasks, cfg, base_dir, limit=None) -> NativeScorer:  # noqa: ARG003
        checks = {t: make_check(cfg.task_spec(t).check) for t in cfg.tasks if cfg.task_spec(t).check}
        return cls(tokenizer, tasks, mode=cfg.mode, batch_size=cfg.batch_size, max_new_tokens=cfg.max_new_tokens,
                   weights=cfg.task_weights(), checks=checks, chat=cfg.apply_chat_template)

    def score(self, model, examples: Examples | None = None) -> Score:
        model.eval()
        per_example: dict[str, list[float]] = {}
        for task, rows in self.tasks.items():
            idx = None if examples is None else examples.get(task, [])
            if idx is not None and not idx:
                per_example[task] = []
                continue
            if task in self._choices:
                ok = choice_accuracy(model, self._choices[task].rows(_choice_rows(rows, idx)), pick(rows, idx),
                                     self.batch_size)
            elif self._encoded is not None:
                ok = exact_match_teacher_forced(model, self._encoded[task].rows(idx), self.batch_size)
                if task in self._passes:
                    ok = ok & (self._passes[task] if idx is None else self._passes[task][idx])
            else:
                ok = exact_match_generate(model, self.tokenizer, pick(rows, idx), self.max_new_tokens,
                                          self.batch_size, check=self.checks.get(task), chat=self.chat)
            per_example[task] = [int(v) for v in ok]
        return score_from_examples(per_example, self.weights)


def _answers_fit(tokenizer, tasks: dict[str, list[dict]], max_new_tokens: int) -> None:
    """Generation stops at `max_new_tokens`: an answer longer than that (with its EOS) could never match, so refuse
    the configuration instead of scoring 0."""
    end = tokenizer.eos_token_id is not None
    for t, rows in tasks.items():
        need = max((len(tokenizer.encode(r["answer"], add_special_tokens=False)) + end for r in rows), default=0)
        if need > max_new_tokens:
            raise ConfigError(f"fitness.max_new_tokens: {max_new_tokens} is too few for task {t!r}, whose longest "
                              f"answer takes {need} tokens with its EOS; set it to at least {need}")


def _choice_rows(rows: list[dict], idx: list[int] | None) -> list[int] | None:
    """The flattened (prompt, choice) rows of the chosen multiple-choice examples."""
    if idx is None:
        return None
    starts = [0]
    for r in rows:
        starts.append(starts[-1] + len(r["choices"]))
    return [j for i in idx for j in range(starts[i], starts[i + 1])]


class PythonScorer(Scorer):
    """Your scorer: `fn(model, tokenizer, task_name, examples) -> one float per example`. It may not look at the
    logits, so the worker checks the merged weights for NaN/Inf first (`checks_logits` False)."""

    def __init__(self, tokenizer, tasks: dict[str, list[dict]], fn: Callable, weights: dict[str, float] | None = None):
        self.tokenizer, self.tasks, self.fn = tokenizer, tasks, fn
        self.weights = weights or dict.fromkeys(tasks, 1.0)

    @classmethod
    def check_config(cls, cfg) -> None:
        if not cfg.scorer or ":" not in cfg.scorer:
            raise ValueError("fitness.scorer: type python needs scorer: 'module:function'")
        if cfg.apply_chat_template:
            raise ValueError("fitness.apply_chat_template: only used with type: native (lm_eval: "
                             "lm_eval.apply_chat_template; python: your scorer formats its prompts)")
        _no_metric(cfg, "a python scorer returns one score per example")
        for name in cfg.tasks:
            if cfg.task_spec(name).check:
                raise ValueError(f"fitness.tasks.{name}.check: a python scorer applies its own checks")

    @classmethod
    def from_config(cls, tokenizer, tasks, cfg, base_dir, limit=None) -> PythonScorer:  # noqa: ARG003
        return cls(tokenizer, tasks, load_scorer_function(cfg.scorer, base_dir), cfg.task_weights())

    def score(self, model, examples: Examples | None = None) -> Score:
        model.eval()
        per_example = {}
        for task, rows in self.tasks.items():
            chosen = pick(rows, None if examples is None else examples.get(task, []))
            scores = [float(v) for v in self.fn(model, self.tokenizer, task, chosen)] if chosen else []
            if len(scores) != len(chosen):
                raise ValueError(f"scorer returned {len(scores)} scores for {len(chosen)} {task!r} examples")
            per_example[task] = scores
        return score_from_examples(per_example, self.weights)


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


def _no_scorer_function(cfg) -> None:
    if cfg.scorer:
        raise ValueError("fitness.scorer: only used with type: python")


def _no_metric(cfg, why: str) -> None:
    for name in cfg.tasks:
        if cfg.task_spec(name).metric:
            raise ValueError(f"fitness.tasks.{name}.metric: only used with type: lm_eval ({why})")
