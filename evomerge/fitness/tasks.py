"""Task data: one directory per task with `<split>.jsonl` files of rows, either generation rows
{"prompt": ..., "answer": ...} (exact match of the generated answer) or multiple-choice rows
{"prompt": ..., "choices": [...], "gold": index} (the choice the model gives the highest log-likelihood)."""

from __future__ import annotations

import json
from pathlib import Path

from evomerge.errors import ConfigError


def load_split(task_dir: Path, split: str, field: str) -> list[dict[str, str]]:
    path = Path(task_dir) / f"{split}.jsonl"
    if not path.is_file():
        raise ConfigError(f"{field}: {path} not found (expected a JSONL file of prompt/answer rows)")
    rows = []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise ConfigError(f"{path}:{n}: not valid JSON ({e.msg})") from None
        if not (_generation_row(row) or _choice_row(row)):
            raise ConfigError(f"{path}:{n}: expected an object with string fields 'prompt' and 'answer', or 'prompt', "
                              "'choices' (a list of strings) and 'gold' (the index of the right choice)")
        rows.append(row)
    if not rows:
        raise ConfigError(f"{path}: no examples")
    if len({_choice_row(r) for r in rows}) > 1:
        raise ConfigError(f"{path}: mixes generation rows and multiple-choice rows; a task is one or the other")
    return rows


def _generation_row(row) -> bool:
    return isinstance(row, dict) and isinstance(row.get("prompt"), str) and isinstance(row.get("answer"), str)


def _choice_row(row) -> bool:
    if not isinstance(row, dict) or not isinstance(row.get("prompt"), str):
        return False
    choices, gold = row.get("choices"), row.get("gold")
    return (isinstance(choices, list) and len(choices) >= 2 and all(isinstance(c, str) and c for c in choices)
            and isinstance(gold, int) and not isinstance(gold, bool) and 0 <= gold < len(choices))


def shared_prompts(search: list[dict], heldout: list[dict]) -> int:
    """How many prompts of the held-out rows also appear among the search rows."""
    return len({r["prompt"] for r in search} & {r["prompt"] for r in heldout})


def check_disjoint(field: str, shared: int, what: str, search_split: str, heldout_split: str) -> None:
    """The one search/held-out overlap rule: `shared` items (`what`: prompts, documents) in both splits is a
    ConfigError naming the field, since held-out numbers would not be held out."""
    if shared:
        raise ConfigError(f"{field}: {shared} {what} appear in both the {search_split!r} and {heldout_split!r} "
                          "splits; held-out numbers would not be held out")


def is_multiple_choice(rows: list[dict]) -> bool:
    return "choices" in rows[0]


def to_multiple_choice(rows: list[dict], n_choices: int, seed: int | str) -> list[dict]:
    """A multiple-choice version of a generation task: the right answer among n-1 other answers of the same split
    (distinct from it), in a random order; deterministic in `seed`."""
    import random

    rng = random.Random(seed)
    answers = sorted({r["answer"] for r in rows})
    out = []
    for r in rows:
        choices = [r["answer"], *rng.sample([a for a in answers if a != r["answer"]], n_choices - 1)]
        rng.shuffle(choices)
        out.append({"prompt": r["prompt"], "choices": choices, "gold": choices.index(r["answer"])})
    return out
