"""Synthetic character-level skills for the tiny model zoo.

Each task maps a short prompt to a short answer. Prompts carry a task prefix so that one model can learn all
of them; answers are exact strings, scored by exact match. Every generator is a pure function of its RNG, so
the splits are reproducible from a seed.
"""

from __future__ import annotations

import random
import string
from collections.abc import Callable

LETTERS = string.ascii_lowercase
# The cipher is a fixed permutation of the alphabet: a second "language" the base model barely knows.
_CIPHER_RNG = random.Random(1234)
CIPHER_TABLE = dict(zip(LETTERS, _CIPHER_RNG.sample(LETTERS, len(LETTERS)), strict=True))


def _word(rng: random.Random, lo: int, hi: int) -> str:
    return "".join(rng.choice(LETTERS) for _ in range(rng.randint(lo, hi)))


def make_add(rng: random.Random) -> dict[str, str]:
    a, b = rng.randint(0, 99), rng.randint(0, 99)
    return {"prompt": f"{a}+{b}=", "answer": str(a + b)}


def make_cipher(rng: random.Random) -> dict[str, str]:
    w = _word(rng, 3, 7)
    return {"prompt": f"c:{w}=", "answer": "".join(CIPHER_TABLE[ch] for ch in w)}


def make_reverse(rng: random.Random) -> dict[str, str]:
    w = _word(rng, 3, 8)
    return {"prompt": f"r:{w}=", "answer": w[::-1]}


TASKS: dict[str, Callable[[random.Random], dict[str, str]]] = {
    "add": make_add,
    "cipher": make_cipher,
    "reverse": make_reverse,
}

# Characters every prompt and answer is made of; the tokenizer's vocabulary.
ALPHABET = sorted(set(string.digits + LETTERS + "+=:"))

SPLITS = ("train", "search", "heldout")


def make_splits(task: str, seed: int, sizes: dict[str, int]) -> dict[str, list[dict[str, str]]]:
    """Disjoint train / search / held-out examples of one task (disjoint by prompt)."""
    rng = random.Random(f"{task}:{seed}")
    make = TASKS[task]
    seen: set[str] = set()
    out: dict[str, list[dict[str, str]]] = {}
    for split in SPLITS:
        rows: list[dict[str, str]] = []
        while len(rows) < sizes[split]:
            ex = make(rng)
            if ex["prompt"] in seen:
                continue
            seen.add(ex["prompt"])
            rows.append(ex)
        out[split] = rows
    return out
