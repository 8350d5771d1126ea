"""benchmarks/zoo2_designs.py's parts that need no training: each design's composed answers are right and are the
other tasks' own steps, the per-step masks cover every scored position once, the packing puts a neighbour where
the chain does, and the experiment files it writes are valid evomerge experiments."""

import json
import random
import sys

import pytest
import torch

from evomerge.config import load_experiment
from evomerge.fitness.native import encode_teacher_forced
from evomerge.zoo.tasks import NUMBER_WORDS as W
from evomerge.zoo.tokenizer import build_char_tokenizer
from tests.conftest import REPO

sys.path.insert(0, str(REPO / "benchmarks"))
import zoo2_designs as Z  # noqa: E402  (benchmarks/zoo2_designs.py)

NUMBER = {w: n for n, w in enumerate(W)}


@pytest.mark.parametrize("steps", ["unmarked", "turns"])
def test_the_composed_answers_are_right_and_the_step_masks_cover_them_once(steps):
    tok = build_char_tokenizer("zoo")
    gen = Z.generators(steps)
    rng = random.Random(0)
    rows = [gen["word_add"](rng) for _ in range(200)]
    for r in rows:
        words = r["prompt"].split(":")[-1].rstrip("=").split("+")
        a, b = (NUMBER[w] for w in words)
        assert r["answer"].endswith(("e:" if steps == "unmarked" else f"e:{a + b}=") + W[a + b])  # the sum, in words
        if steps == "turns":  # each turn is another task's own example: decode, add, encode
            read, add, write = r["answer"].split(Z.EOS)
            assert read == f"{a}+{b}" and add == f"{a}+{b}={a + b}" and write == f"e:{a + b}={W[a + b]}"
    enc = encode_teacher_forced(tok, rows)
    masks = Z.segment_masks(tok, rows, enc, steps)
    covered = torch.stack([m.int() for m in masks.values()]).sum(0)
    assert torch.equal(covered, enc.target_mask.int())  # every scored position in exactly one step
    ids = enc.input_ids[:, 1:]
    for i, r in enumerate(rows):  # the write step holds the sum's word, the read step the operands
        assert tok.decode(ids[i][masks["write"][i]]) == W[NUMBER[r["answer"][-2:]]]
        assert tok.decode(ids[i][masks["read"][i]]) == r["answer"].split("=")[0].split(Z.EOS)[0]
        assert ids[i][masks["eos"][i]].tolist() == [tok.eos_token_id]


def test_packing_puts_the_chains_neighbour_before_a_step_and_learns_the_copy():
    cfg = {**Z.DEFAULTS, **Z.VARIANTS["J"]}
    adds = [{"prompt": f"{a}+{b}=", "answer": str(a + b)} for a, b in ((57, 12), (3, 4), (40, 9))] * 50
    pool = [{"prompt": "k:ab=", "answer": "7"}]
    out = Z.with_prefixes(adds, "add", pool, {**cfg, "prefix": 1.0, "neighbour": 1.0}, "add")
    for before, after in zip(adds, out, strict=True):  # k:<words>=57+12</s> | 57+12=69: the copy and the sum
        assert after["answer"] == before["prompt"] + before["answer"]
        assert after["prompt"] == "k:" + "+".join(W[int(n)] for n in before["prompt"][:-1].split("+")) + "=" \
            + before["prompt"][:-1] + Z.EOS
    plain = Z.with_prefixes(adds, "add", pool, {**cfg, "prefix": 0.5, "neighbour": 0.0}, "x")
    prefixed = [r for r in plain if r["prompt"] != adds[0]["prompt"] and r["prompt"].startswith("k:ab=7</s>")]
    assert 50 < len([r for r in plain if r["prompt"].startswith("k:")]) < 100 and prefixed  # about half
    assert all(r["answer"] in {"69", "7", "49"} for r in plain)  # a random prefix adds no loss


def test_the_written_experiments_are_valid(tmp_path, monkeypatch):
    monkeypatch.setattr(Z.B, "_save", lambda model, tok, path: path.mkdir(parents=True))
    rows = {"search": [{"prompt": "w:k:ab=", "answer": "1"}], "heldout": [{"prompt": "w:k:ab=", "answer": "1"}]}
    Z.write_out(tmp_path, None, {"lang": None, "math": None}, None, rows)
    for name, space in (("ps", "layer_weights"), ("dfs", "data_flow"), ("m2n2", "mosaic")):
        cfg, _ = load_experiment(tmp_path / f"{name}.yaml")
        assert cfg.space.type == space and cfg.optimizer.generations * cfg.optimizer.popsize == 195
    assert json.loads((tmp_path / "data" / "word_add" / "heldout.jsonl").read_text())["answer"] == "1"
