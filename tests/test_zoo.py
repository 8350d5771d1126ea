"""The zoo: deterministic task data (the committed JSONL files), standard HF directories, real specialists."""

import json

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from evomerge.fitness.native import encode_teacher_forced, exact_match_generate, exact_match_teacher_forced
from evomerge.zoo.build import PROFILES, task_splits, write_task_data
from evomerge.zoo.tasks import CIPHER_TABLE, TASKS
from tests.conftest import REPO


def test_committed_task_data_is_what_the_default_zoo_generates(tmp_path):
    write_task_data(PROFILES["default"], tmp_path)
    for task in PROFILES["default"].tasks:
        for split in ("train", "search", "heldout"):
            committed = (REPO / "fitness" / "data" / "zoo" / task / f"{split}.jsonl").read_text()
            assert (tmp_path / task / f"{split}.jsonl").read_text() == committed, (task, split)


def test_splits_are_disjoint_and_answers_correct():
    for task, splits in task_splits(PROFILES["tiny"]).items():
        prompts = [set(r["prompt"] for r in rows) for rows in splits.values()]
        assert sum(len(p) for p in prompts) == len(set().union(*prompts)), task
        for r in splits["heldout"]:
            body = r["prompt"].split(":", 1)[-1].rstrip("=")
            if task == "add":
                a, b = body.split("+")
                assert r["answer"] == str(int(a) + int(b))
            elif task == "reverse":
                assert r["answer"] == body[::-1]
            else:
                assert r["answer"] == "".join(CIPHER_TABLE[c] for c in body)
    assert set(TASKS) == {"add", "cipher", "reverse"}


def test_zoo_models_are_standard_hf_directories(tiny_zoo):
    report = json.loads((tiny_zoo / "zoo.json").read_text())
    assert set(report["models"]) == {"base", "add", "cipher", "reverse"}
    for name in report["models"]:
        d = tiny_zoo / name
        assert (d / "model.safetensors").is_file() and (d / "config.json").is_file()
        model = AutoModelForCausalLM.from_pretrained(d, local_files_only=True)
        tok = AutoTokenizer.from_pretrained(d, local_files_only=True)
        assert model.config.model_type == "llama"
        assert tok.decode(tok.encode("12+34=46", add_special_tokens=False)) == "12+34=46"


def test_experts_are_specialists(tiny_zoo):
    """Each expert is the best model on its own skill, and clearly better at it than at the others."""
    models = json.loads((tiny_zoo / "zoo.json").read_text())["models"]
    for task in PROFILES["tiny"].tasks:
        own = models[task][task]
        assert own == max(m[task] for m in models.values()), (task, models)
        assert own >= models["base"][task] + 0.1, (task, models)


def test_teacher_forced_exact_match_equals_greedy_generation(tiny_zoo):
    splits = task_splits(PROFILES["tiny"])
    tok = AutoTokenizer.from_pretrained(tiny_zoo / "base")
    for name in ("base", "reverse"):
        model = AutoModelForCausalLM.from_pretrained(tiny_zoo / name).eval()
        for task, s in splits.items():
            examples = s["search"]
            fast = exact_match_teacher_forced(model, encode_teacher_forced(tok, examples))
            slow = exact_match_generate(model, tok, examples, max_new_tokens=12)
            assert torch.equal(fast, slow), (name, task)


def test_a_zoo_build_is_bit_identical_on_one_machine(tiny_zoo, tmp_path, monkeypatch):
    """The same profile and seed, built again in another home: every model file has the same bytes (the README's
    claim that one machine always builds the same zoo; across CPUs, floating-point kernels differ)."""
    from evomerge.zoo.build import PROFILES, build_zoo

    monkeypatch.setenv("EVOMERGE_HOME", str(tmp_path))
    again = build_zoo(PROFILES["tiny"], log=lambda *_: None)
    assert again != tiny_zoo
    for name in ("base", "add", "cipher", "reverse"):
        assert (again / name / "model.safetensors").read_bytes() == (tiny_zoo / name / "model.safetensors").read_bytes()
