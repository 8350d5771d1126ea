"""Bring your own model family: tokenizers in every convention transformers ships, an architecture matrix through
real CLI searches, the grouping of tied tensors shown, `validate` as a dry run, and a search that never ends below
the models it was given."""

import json

import pytest
import yaml
from rich.console import Console
from transformers import AutoModelForCausalLM, AutoTokenizer
from typer.testing import CliRunner

from evomerge.cli import app
from evomerge.fitness.native import exact_match_generate
from evomerge.fitness.scorer import NativeScorer
from evomerge.runner import Runner
from evomerge.store import RunDir
from evomerge.zoo.build import PROFILES, build_zoo, make_splits, write_task_data
from evomerge.zoo.build import family_spec
from evomerge.zoo.families import FAMILIES
from evomerge.zoo.tokenizer import build_char_tokenizer
from tests.conftest import write_experiment


def _cli(*args):
    result = CliRunner().invoke(app, [str(a) for a in args])
    return result.exit_code, result.output


@pytest.fixture(scope="module")
def families(tmp_path_factory):
    """Each family's CI zoo (base + add and reverse experts) and task data, built on first use."""
    root = tmp_path_factory.mktemp("families")
    built = {}

    def get(family: str):
        if family not in built:
            spec = family_spec(family, "ci")
            write_task_data(spec, root / family / "tasks")
            built[family] = (build_zoo(spec, root / family / "zoo", log=lambda *_: None), root / family / "tasks")
        return built[family]
    return get


def _family_experiment(path, zoo, tasks, **overrides):
    cfg = {"name": path.stem, "seed": 0,
           "sources": {"base": str(zoo / "base"), "models": [str(zoo / "add"), str(zoo / "reverse")]},
           "space": {"type": "layer_weights", "operator": "task_arithmetic", "granularity": "layer"},
           "optimizer": {"type": "cma", "generations": 2, "popsize": 4},
           # multiple choice: graded even for the CI profile's near-chance models
           "fitness": {"type": "native", "tasks": {t: str(tasks / t) for t in ("add_mc", "reverse_mc")}},
           "baselines": {"tuned_weights": [0.5]}}
    cfg.update(overrides)
    path.write_text(yaml.safe_dump(cfg))
    return path


# -- finding 1: tokenizers as transformers defines them -------------------------------------------------------------

@pytest.mark.parametrize("side", ["right", "left"])
@pytest.mark.parametrize("convention", ["llama3", "qwen2", "gpt2", "gemma"])
def test_scoring_equals_unbatched_greedy_generation_in_every_tokenizer_convention(tiny_zoo, tmp_path, convention,
                                                                                   side):
    """Llama-3 (BOS, no pad), Qwen2 (no BOS, pad an EOS-like token, chat template), GPT-2 (BOS = EOS, not added, no
    pad), Gemma (BOS and pad), either padding side: teacher-forced scoring in batches gives, example for example,
    what greedy generation gives one prompt at a time (and in left-padded batches). 9c92cb0 crashed without BOS
    ('Could not infer dtype of NoneType') and without pad."""
    build_char_tokenizer(convention, side).save_pretrained(tmp_path)
    tok = AutoTokenizer.from_pretrained(tmp_path)  # as a user's checkpoint would load it
    model = AutoModelForCausalLM.from_pretrained(tiny_zoo / "reverse").eval()
    sizes = PROFILES["tiny"].sizes
    tasks = {t: make_splits(t, 0, sizes)["search"][:20] for t in ("reverse", "add")}
    total = []
    for chat in [False, True] if convention == "qwen2" else [False]:
        forced = NativeScorer(tok, tasks, chat=chat).score(model).per_example
        batched = NativeScorer(tok, tasks, mode="generate", chat=chat).score(model).per_example
        alone = {t: [int(exact_match_generate(model, tok, [ex], max_new_tokens=12, batch_size=1, chat=chat)[0])
                     for ex in rows] for t, rows in tasks.items()}
        assert forced == alone == batched, (convention, side, chat)
        total += [v for rows in forced.values() for v in rows]
    assert 0 < sum(total) < len(total)  # some right, some wrong: the comparison means something


def test_apply_chat_template_needs_a_template(tmp_path):
    from evomerge.errors import ConfigError

    build_char_tokenizer("gpt2").save_pretrained(tmp_path)
    tok = AutoTokenizer.from_pretrained(tmp_path)
    with pytest.raises(ConfigError, match="fitness.apply_chat_template: the base model's tokenizer has no chat"):
        NativeScorer(tok, {"t": [{"prompt": "1+1=", "answer": "2"}]}, chat=True)


def test_an_answer_the_tokenizer_cannot_encode_is_refused(tiny_zoo):
    """An answer with characters outside the vocabulary encodes to <unk>, which no model is trained to produce:
    every such example scored 0 for every candidate, silently."""
    from evomerge.errors import ConfigError

    tok = AutoTokenizer.from_pretrained(tiny_zoo / "base")
    NativeScorer(tok, {"add": [{"prompt": "1+1=", "answer": "2"}]})
    with pytest.raises(ConfigError, match=r"answer 'Ü2' of prompt '1\+1=' holds characters the tokenizer does not "
                                          r"know \(they encode to <unk>\)"):
        NativeScorer(tok, {"add": [{"prompt": "1+1=", "answer": "2"}, {"prompt": "1+1=", "answer": "Ü2"}]})


# -- finding 2: never below what you brought -------------------------------------------------------------------------

def test_a_dominant_expert_is_never_beaten_by_the_evolved_row(tmp_path, tiny_zoo, tiny_task_dir):
    """On the add task the add expert dominates; four random per-layer mixes of it with the cipher expert stay below
    it. The evolved row is the best on the search split of everything scored — here the expert itself, labelled
    so, with a warning. (9c92cb0 reported the search's own best, below the expert.)"""
    exp = write_experiment(tmp_path / "e.yaml", tiny_task_dir, name="dominant",
                           sources={"base": "zoo:base", "models": ["zoo:add", "zoo:cipher"]},
                           space={"type": "layer_weights", "operator": "task_arithmetic", "granularity": "layer"},
                           optimizer={"type": "random", "generations": 1, "popsize": 4},
                           fitness={"type": "native", "tasks": {"add": str(tiny_task_dir / "add")}},
                           baselines={"tuned_weights": [0.5]})
    results = Runner(exp, tmp_path / "run", console=Console(quiet=True)).run()
    # the expert's own score on the search split, computed here, apart from the run
    tok = AutoTokenizer.from_pretrained(tiny_zoo / "add")
    rows = [json.loads(line) for line in (tiny_task_dir / "add" / "search.jsonl").read_text().splitlines()]
    expert = NativeScorer(tok, {"add": rows}).score(AutoModelForCausalLM.from_pretrained(tiny_zoo / "add")).objective
    store = RunDir.open(tmp_path / "run").store()
    try:
        evolved = next(e for e in store.evaluations() if e.label == results["best_candidate"]
                       and e.split == "search")
        own = store.best("search")
    finally:
        store.close()
    assert evolved.objective >= expert
    assert own.objective < expert  # the setting does what it claims: the search alone ends below the expert
    assert results["rows"][0]["label"] == "evolved (= source add, known before the search)"
    assert "ended below source add" in results["warnings"][0]


# -- finding 6 and inspect: how tensors are grouped ------------------------------------------------------------------

def test_inspect_names_the_tied_head_of_gpt2(families):
    zoo, _ = families("gpt2")
    code, out = _cli("inspect", zoo / "base")
    assert code == 0, out
    assert "lm_head.weight is tied to transformer.wte.weight" in out and "'embed' group" in out
    assert "the 'head' genes move only transformer.ln_f.bias, transformer.ln_f.weight" in out
    code, out = _cli("inspect", zoo / "base", "--granularity", "nope")
    assert code == 2 and "--granularity" in out


# -- validate as a dry run -------------------------------------------------------------------------------------------

def test_validate_is_a_dry_run_that_fails_where_run_would(tmp_path, families):
    zoo, tasks = families("qwen2")
    ok = _family_experiment(tmp_path / "ok.yaml", zoo, tasks)
    code, out = _cli("validate", ok)
    assert code == 0, out
    assert "dry run: 2 sources loaded, the first candidate built and scored" in out and "heldout" in out
    zoo, tasks = families("gpt2")  # no chat template
    bad = _family_experiment(tmp_path / "bad.yaml", zoo, tasks,
                             fitness={"type": "native", "apply_chat_template": True,
                                      "tasks": {"add": str(tasks / "add")}})
    code, out = _cli("validate", bad)
    assert code == 2 and "fitness.apply_chat_template" in out and "Traceback" not in out
    code, out = _cli("validate", bad, "--config-only")
    assert code == 0


# -- the architecture matrix -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_a_cli_search_runs_on_every_family_and_never_ends_below_a_source(tmp_path, families, family):
    """A real CLI search per family (CI profile: tiny models, two generations): it completes, and the evolved row is
    at least every source and baseline on the search split (scored here, apart from the run)."""
    zoo, tasks = families(family)
    exp = _family_experiment(tmp_path / f"{family}.yaml", zoo, tasks)
    code, out = _cli("run", exp, "--run-dir", tmp_path / "run")
    assert code == 0, out
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    tok = AutoTokenizer.from_pretrained(zoo / "base")
    rows = {t: [json.loads(x) for x in (tasks / t / "search.jsonl").read_text().splitlines()]
            for t in ("add_mc", "reverse_mc")}
    scorer = NativeScorer(tok, rows)
    sources = {n: scorer.score(AutoModelForCausalLM.from_pretrained(zoo / n)).objective for n in ("add", "reverse")}
    store = RunDir.open(tmp_path / "run").store()
    try:
        evolved = next(e for e in store.evaluations() if e.label == results["best_candidate"] and e.split == "search")
    finally:
        store.close()
    assert evolved.objective >= max(sources.values()) - 1e-9, (family, evolved.objective, sources)


# -- Optimizer.seed: each optimizer takes the known candidates its own way -------------------------------------------

@pytest.mark.parametrize("name", ["cma", "sep_cma", "cma_wm", "tpe", "nsga2", "random"])
def test_every_optimizer_takes_known_candidates_and_resumes_exactly(name):
    import numpy as np

    from evomerge.config import OptimizerConfig
    from evomerge.optim import OPTIMIZERS

    cfg = OptimizerConfig(type=name, popsize=4)
    known = [np.full(5, 0.5), np.array([1.0, 0, 0, 0, 0]), np.array([0, 1.0, 0, 0, 0])]
    opt = OPTIMIZERS[name](cfg, 5, seed=3)
    opt.seed(known, [0.2, 0.9, 0.4])
    if name in ("cma", "sep_cma", "cma_wm"):  # the mean starts at the best known candidate
        es = opt._es._cma if name == "cma_wm" else opt._es
        assert np.array_equal(es.mean, known[1])
    if name in ("tpe", "nsga2"):  # completed trials with their values
        assert [t.value for t in opt._study.trials] == [0.2, 0.9, 0.4]
    twin = OPTIMIZERS[name](cfg, 5, seed=99)
    twin.load_state(opt.state())
    assert all(np.array_equal(a, b) for a, b in zip(opt.ask(), twin.ask(), strict=True))


def test_a_family_zoo_is_rebuilt_when_its_architecture_changes(monkeypatch):
    """The cache key of a family's zoo covers its transformers config: a zoo built before a change to it (GPT-2's
    dropout was one) is not reused; the Llama zoos' keys stay as they were."""
    import dataclasses

    from evomerge.zoo import families
    from evomerge.zoo.build import PROFILES, family_spec

    before = family_spec("gpt2", "ci").fingerprint()
    assert family_spec("gpt2", "ci").fingerprint() == before  # stable
    old = families.FAMILIES["gpt2"]

    def dropout(spec, tok):
        cfg = old.config(spec, tok)
        cfg.resid_pdrop = 0.1
        return cfg

    monkeypatch.setitem(families.FAMILIES, "gpt2", dataclasses.replace(old, config=dropout))
    assert family_spec("gpt2", "ci").fingerprint() != before
    assert PROFILES["default"].fingerprint() == "46d984cac6f5" and PROFILES["tiny"].fingerprint() == "57acb8129c38"
