"""Task data: one directory per task with `<split>.jsonl` files of {"prompt": ..., "answer": ...} rows."""

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
        if not isinstance(row, dict) or not isinstance(row.get("prompt"), str) or not isinstance(row.get("answer"), str):
            raise ConfigError(f"{path}:{n}: expected an object with string fields 'prompt' and 'answer'")
        rows.append(row)
    if not rows:
        raise ConfigError(f"{path}: no examples")
    return rows
