"""Scores a model on a set of tasks: per-example exact match, per-task accuracy, mean objective."""

from __future__ import annotations

from dataclasses import dataclass

from evomerge.fitness.native import encode_teacher_forced, exact_match_generate, exact_match_teacher_forced


@dataclass(frozen=True)
class Score:
    objective: float  # mean accuracy over tasks
    per_task: dict[str, float]
    per_example: dict[str, list[int]]


class NativeScorer:
    """Encodes its examples once; `score(model)` is then one forward pass per batch (teacher-forced mode)."""

    worst = 0.0  # the objective a failed evaluation is given

    def __init__(self, tokenizer, tasks: dict[str, list[dict]], mode: str = "teacher_forced",
                 batch_size: int = 128, max_new_tokens: int = 16):
        self.tokenizer, self.tasks, self.mode = tokenizer, tasks, mode
        self.batch_size, self.max_new_tokens = batch_size, max_new_tokens
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
        per_task = {t: sum(v) / len(v) for t, v in per_example.items()}
        return Score(sum(per_task.values()) / len(per_task), per_task, per_example)
