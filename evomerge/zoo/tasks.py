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


# Zoo v2's second "language": every number below 100 has a word of two letters, drawn at random once — a vocabulary
# of 100 words to learn, as a language's number words are. Addition posed and answered in it (sums below 100) is a
# skill composed of two others — reading and writing the language, and adding — as the evolutionary-merge paper
# composed a Japanese model with English math models.
NUMBER_WORDS = random.Random(4321).sample([a + b for a in LETTERS for b in LETTERS], 100)


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


def _numbers(rng: random.Random) -> list[int]:
    """One or two numbers below 100."""
    return [rng.randint(0, 99) for _ in range(rng.randint(1, 2))]


def make_encode(rng: random.Random) -> dict[str, str]:
    """Write numbers in the language: e:57+12= -> qx+ab."""
    ns = _numbers(rng)
    return {"prompt": "e:" + "+".join(map(str, ns)) + "=", "answer": "+".join(NUMBER_WORDS[n] for n in ns)}


def make_decode(rng: random.Random) -> dict[str, str]:
    """Read numbers in the language: k:qx+ab= -> 57+12."""
    ns = _numbers(rng)
    return {"prompt": "k:" + "+".join(NUMBER_WORDS[n] for n in ns) + "=", "answer": "+".join(map(str, ns))}


# Turns of a chain end as every answer does, with EOS (`</s>` in every convention of the zoo tokenizer): a skill
# fine-tuned to end its answer then ends it inside the chain too, and the next turn starts as its own task's prompt.
TURN_END = "</s>"


def make_word_add(rng: random.Random) -> dict[str, str]:
    """Addition posed and answered in the language, worked as a chain of the other tasks' own turns: read the
    operands (decode's prompt, its answer), add them (add's prompt, its answer), write the sum (encode's prompt, its
    answer): w:k:qx+ab= -> 57+12</s>57+12=69</s>e:69=xe. Sums stay below 100."""
    a = rng.randint(0, 99)
    b = rng.randint(0, 99 - a)
    return {"prompt": f"w:k:{NUMBER_WORDS[a]}+{NUMBER_WORDS[b]}=",
            "answer": f"{a}+{b}{TURN_END}{a}+{b}={a + b}{TURN_END}e:{a + b}={NUMBER_WORDS[a + b]}"}


def chain_neighbour(task: str, row: dict[str, str], rng: random.Random) -> dict[str, str] | None:
    """The example whose answer `row`'s prompt repeats in word_add's chain, or None: the decode whose answer is an
    addition's prompt, an addition whose sum is a one-number encode's prompt (training text that reuses what came
    before it, as documents do)."""
    p = row["prompt"]
    if task == "add":
        ns = p[:-1].split("+")
        return {"prompt": "k:" + "+".join(NUMBER_WORDS[int(n)] for n in ns) + "=", "answer": p[:-1]}
    if task == "encode" and "+" not in p:
        n = int(p[2:-1])
        a = rng.randint(0, n)
        return {"prompt": f"{a}+{n - a}=", "answer": str(n)}
    return None


def vocabulary(task: str) -> list[dict[str, str]]:
    """The language's 100 words one at a time, as `task`'s examples (encode, decode; none for other tasks). The
    splits are disjoint by prompt, so each one-number prompt is one training row among thousands (and in no search
    or held-out split: the training split, drawn first, holds all 100); word_add's last turn is exactly one."""
    if task == "encode":
        return [{"prompt": f"e:{n}=", "answer": NUMBER_WORDS[n]} for n in range(100)]
    if task == "decode":
        return [{"prompt": f"k:{NUMBER_WORDS[n]}=", "answer": str(n)} for n in range(100)]
    return []


TASKS: dict[str, Callable[[random.Random], dict[str, str]]] = {
    "add": make_add,
    "cipher": make_cipher,
    "reverse": make_reverse,
    # zoo v2: the language (numbers <-> words) and addition in it
    "encode": make_encode,
    "decode": make_decode,
    "word_add": make_word_add,
}

# Characters every prompt and answer is made of; the tokenizer's vocabulary.
ALPHABET = sorted(set(string.digits + LETTERS + "+=:"))  # and TURN_END, a special token

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
