"""The zoo: deterministic task data (the committed JSONL files), standard HF directories, real specialists."""

import json
import os

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from evomerge.fitness.native import encode_teacher_forced, exact_match_generate, exact_match_teacher_forced
from evomerge.zoo.build import PROFILES, task_splits, training_rows, write_task_data
from evomerge.zoo.tasks import CIPHER_TABLE, NUMBER_WORDS, TASKS, TURN_END, vocabulary
from tests.conftest import REPO


@pytest.mark.parametrize(("profile", "data"), [("default", "zoo"), ("zoo2", "zoo2")])
def test_committed_task_data_is_what_the_profile_generates(tmp_path, profile, data):
    write_task_data(PROFILES[profile], tmp_path)
    for task in PROFILES[profile].tasks:
        for split in ("train", "search", "heldout"):
            committed = (REPO / "fitness" / "data" / data / task / f"{split}.jsonl").read_text()
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
    assert {"add", "cipher", "reverse"} <= set(TASKS)


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


def test_the_first_zoos_keep_their_fingerprints():
    """Zoo v2's fields default to the first zoos' behaviour: their fingerprints (the quickstart's cache) hold."""
    assert PROFILES["default"].fingerprint() == "46d984cac6f5"
    assert PROFILES["tiny"].fingerprint() == "57acb8129c38"
    assert PROFILES["default"].expert_tasks() == {"add": ("add",), "cipher": ("cipher",), "reverse": ("reverse",)}


def test_zoo2_splits_are_disjoint_and_answers_correct():
    """Zoo v2's tasks: numbers written as words of the language and read back, addition in digits, and the composed
    skill (addition posed and answered in words, in steps), each answer checked against arithmetic done here."""
    spec = PROFILES["zoo2"]
    value = {w: n for n, w in enumerate(NUMBER_WORDS)}
    assert len(value) == len(NUMBER_WORDS) == 100 and all(len(w) == 2 and w.isalpha() for w in NUMBER_WORDS)
    composed = set(spec.tasks) - {t for own in spec.expert_tasks().values() for t in own}
    assert composed == {"word_add"}
    for task, splits in task_splits(spec).items():
        assert [len(rows) for rows in splits.values()] == [spec.sizes[s] for s in splits], task
        prompts = [{r["prompt"] for r in rows} for rows in splits.values()]
        assert sum(len(p) for p in prompts) == len(set().union(*prompts)), task
        for r in (r for rows in splits.values() for r in rows):
            prompt, answer = r["prompt"].removesuffix("="), r["answer"]
            if task == "add":
                a, b = prompt.split("+")
                assert answer == str(int(a) + int(b))
            elif task == "encode":
                assert prompt.startswith("e:")
                assert [value[w] for w in answer.split("+")] == [int(n) for n in prompt[2:].split("+")]
            elif task == "decode":
                assert prompt.startswith("k:")
                assert [int(n) for n in answer.split("+")] == [value[w] for w in prompt[2:].split("+")]
            else:  # the chain of the other tasks' turns: decode's answer, add's prompt and answer, encode's
                assert prompt.startswith("w:k:")
                a, b = (value[w] for w in prompt[4:].split("+"))
                assert answer == f"{a}+{b}{TURN_END}{a}+{b}={a + b}{TURN_END}e:{a + b}={NUMBER_WORDS[a + b]}", r
                assert not any(c.isdigit() for c in prompt)


def test_zoo2_trains_on_packed_text_with_the_chains_neighbours_and_the_vocabulary():
    """What the zoo2 models train on: the train split plus the vocabulary (each one-word example 10 more times, none
    of them a search or held-out prompt); about half of the rows after another example and EOS, and about half of
    those after their neighbour in the chain, the copy of its answer into the prompt learned too."""
    spec = PROFILES["zoo2"]
    data = task_splits(spec)
    rows = training_rows(spec, data)
    for task in ("encode", "decode"):
        words = vocabulary(task)
        assert len(words) == 100 and len(rows[task]) == spec.sizes["train"] + 100 * spec.vocab_repeats
        unseen = {r["prompt"] for s in ("search", "heldout") for r in data[task][s]}
        assert not unseen & {r["prompt"] for r in words}
    assert len(rows["add"]) == spec.sizes["train"]
    raw = {r["prompt"] for r in data["add"]["train"]}
    packed = [r for r in rows["add"] if r["prompt"] not in raw]
    chained = [r for r in packed if r["answer"] in {p + str(sum(map(int, p[:-1].split("+")))) for p in raw}]
    assert 0.4 < len(packed) / len(rows["add"]) < 0.6 and 0.4 < len(chained) / len(packed) < 0.6
    value = {w: n for n, w in enumerate(NUMBER_WORDS)}
    for r in chained:  # k:<words>=57+12</s> -> 57+12=69: the decode that reads the operands, then the sum
        read, copy = r["prompt"].removesuffix(TURN_END).split("=")
        assert copy == r["answer"].split("=")[0] == "+".join(str(value[w]) for w in read[2:].split("+"))
    for r in set(map(json.dumps, packed)) - set(map(json.dumps, chained)):  # another example, EOS, the row itself
        r = json.loads(r)
        assert r["prompt"].count(TURN_END) == 1 and r["prompt"].split(TURN_END)[1] in raw
    assert training_rows(PROFILES["default"], task_splits(PROFILES["tiny"])) == {
        t: s["train"] for t, s in task_splits(PROFILES["tiny"]).items()}  # the first zoos: the train split as is


@pytest.mark.parametrize("family", ["llama", "gpt2", "gemma2"])  # BOS added; BOS = EOS, not added; left padding
def test_generation_scores_an_answer_worked_in_turns_as_teacher_forcing_does(family):
    """An answer whose turns end with EOS (zoo v2's word_add) is generated through those EOS tokens, to the one
    after its last turn: a small real model trained on a few such answers gets the same per-example score from
    generation as from one teacher-forced pass, in three tokenizer conventions, and a config whose max_new_tokens
    cannot hold them is refused."""
    from evomerge.errors import ConfigError
    from evomerge.fitness.scorer import NativeScorer
    from evomerge.zoo.build import ZooSpec, _encode_train, _train
    from evomerge.zoo.families import make_model
    from evomerge.zoo.tokenizer import build_char_tokenizer

    from evomerge.zoo.families import FAMILIES

    spec = ZooSpec(hidden=64, intermediate=128, layers=2, heads=4, batch=16, family=family)
    tok = build_char_tokenizer(FAMILIES[family].convention)
    rows = task_splits(PROFILES["zoo2"])["word_add"]["search"][:12]
    torch.manual_seed(0)
    model = make_model(family, spec, tok)
    _train(model, [_encode_train(tok, rows[:8])], [1.0], 150, 3e-3, spec, 0)
    model.eval()
    wrong = [{**r, "answer": r["answer"][:-1] + ("a" if r["answer"][-1] != "a" else "b")} for r in rows[:4]]
    examples = rows + wrong
    fast = exact_match_teacher_forced(model, encode_teacher_forced(tok, examples))
    slow = exact_match_generate(model, tok, examples, max_new_tokens=40)
    assert torch.equal(fast, slow) and fast[:8].sum() >= 6 and not fast[12:].any(), (fast, slow)
    with pytest.raises(ConfigError, match="fitness.max_new_tokens: 16 is too few for task 'word_add'"):
        NativeScorer(tok, {"word_add": rows}, mode="generate", max_new_tokens=16)


def test_a_zoo2_build_is_bit_identical_on_one_machine(tmp_path, monkeypatch):
    """Zoo v2's code path (12 layers, experts trained on several tasks, stopped on a measured target) at tiny sizes,
    built twice: by a caller on 1 torch thread, the experts one after the other, and by one on 2 threads, the experts
    in two processes at once. The same bytes (the build runs on its own thread count: these models differ between 1
    and 2 threads otherwise), the caller's thread count restored, the log lines of both experts passed on, and the
    experts are the spec's (a language and a math expert)."""
    from evomerge.zoo import build as B

    spec = PROFILES["zoo2-tiny"]
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        monkeypatch.setattr(B, "BUILD_WORKERS", 1)
        monkeypatch.setenv("EVOMERGE_HOME", str(tmp_path / "a"))
        first = B.build_zoo(spec, log=lambda *_: None)
        torch.set_num_threads(2)
        monkeypatch.setattr(B, "BUILD_WORKERS", 2)
        monkeypatch.setenv("EVOMERGE_HOME", str(tmp_path / "b"))
        lines: list[str] = []
        again = B.build_zoo(spec, log=lines.append)
        assert {line.split()[1].rstrip(":") for line in lines if line.startswith("expert ")} == {"lang", "math"}
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(threads)
    report = json.loads((first / "zoo.json").read_text())
    assert set(report["models"]) == {"base", *spec.expert_tasks()} == {"base", "lang", "math"}
    for name in report["models"]:
        config = json.loads((first / name / "config.json").read_text())
        assert config["num_hidden_layers"] == spec.layers >= 12
        assert (again / name / "model.safetensors").read_bytes() == (first / name / "model.safetensors").read_bytes()


# a zoo built in seconds (near-chance models): enough steps for rounding to show
_MICRO = dict(hidden=32, intermediate=64, layers=2, heads=2, batch=16, base_max_steps=40, base_target=1.1,
              check_every=1000, expert_steps=10, sizes={"train": 200, "search": 20, "heldout": 20})
# what an AVX2-only CPU runs, on any newer x86-64 one: torch's, MKL's and oneDNN's AVX2 code paths
_AVX2 = {"ATEN_CPU_CAPABILITY": "avx2", "MKL_ENABLE_INSTRUCTIONS": "AVX2", "ONEDNN_MAX_CPU_ISA": "AVX2"}


def _bytes(zoo):
    return [(zoo / n / "model.safetensors").read_bytes() for n in ("base", "add", "cipher", "reverse")]


def test_a_portable_zoo_is_the_same_on_another_instruction_set(tmp_path, monkeypatch):
    """`portable: true` builds in a process with portable kernels: the same bytes when this machine runs as an
    AVX2-only CPU would (a build with the usual kernels differs there, on a CPU with AVX-512, as the zoo of the
    README's table did on another CPU)."""
    import subprocess
    import sys

    from evomerge.zoo.build import ZooSpec, build_zoo

    spec = ZooSpec(portable=True, **_MICRO)
    assert spec.fingerprint() != ZooSpec(**_MICRO).fingerprint()
    native = build_zoo(spec, tmp_path / "native", log=lambda *_: None)
    for k, v in _AVX2.items():
        monkeypatch.setenv(k, v)
    avx2 = build_zoo(spec, tmp_path / "avx2", log=lambda *_: None)
    assert _bytes(native) == _bytes(avx2)
    assert json.loads((native / "zoo.json").read_text())["spec"]["portable"] is True

    if torch.backends.cpu.get_cpu_capability() != "AVX512":
        return  # this CPU runs the AVX2 paths anyway: nothing to tell apart
    code = ("import sys; from pathlib import Path; from evomerge.zoo.build import ZooSpec, build_zoo; "
            "build_zoo(ZooSpec.model_validate_json(sys.argv[1]), Path(sys.argv[2]), log=lambda *_: None)")
    plain = ZooSpec(**_MICRO).model_dump_json()
    for name, env in (("plain-avx2", {**os.environ}), ("plain-native", {
            k: v for k, v in os.environ.items() if k not in _AVX2})):
        subprocess.run([sys.executable, "-c", code, plain, str(tmp_path / name)], env=env, check=True,
                       capture_output=True)
    assert _bytes(tmp_path / "plain-avx2") != _bytes(tmp_path / "plain-native")


def test_a_failed_portable_build_says_why(tmp_path):
    from evomerge.zoo.build import ZooSpec, build_zoo

    out = tmp_path / "file"
    out.write_text("not a directory")  # the build cannot make its .partial directory beside a file's child
    with pytest.raises(RuntimeError, match="portable zoo build failed"):
        build_zoo(ZooSpec(portable=True, **_MICRO), out / "zoo", log=lambda *_: None)
