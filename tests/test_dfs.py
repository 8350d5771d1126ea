"""Data-flow space (DFS): path execution is exact, the KV cache has one entry per step, exports are standard
checkpoints that match the search-time model, and DFS / PS+DFS searches run end to end on the tiny zoo."""

import json

import numpy as np
import pytest
import torch
import yaml
from rich.console import Console
from transformers import AutoModelForCausalLM

from evomerge.config import ExperimentConfig, FlowSpaceConfig, SpaceConfig
from evomerge.errors import ConfigError
from evomerge.merge.flow import FlowModels, export_flow, passthrough_config
from evomerge.recipe import FlowRecipe, parse_recipe
from evomerge.runner import Runner
from evomerge.spaces.data_flow import DataFlowSpace
from tests.conftest import write_experiment

PROMPTS = ["12+34=", "abc>", "hello world:"]


@pytest.fixture(scope="module")
def flow(tiny_zoo):
    return FlowModels([tiny_zoo / "add", tiny_zoo / "reverse"])


def _inputs(flow):
    tok = flow.tokenizer
    tok.padding_side = "left"  # batched greedy generation with a decoder-only model
    return tok(PROMPTS, return_tensors="pt", padding=True)


def _greedy(model, inputs, **kw):
    return model.generate(**inputs, max_new_tokens=10, do_sample=False, **kw)


@torch.no_grad()
def test_identity_path_reproduces_each_model_exactly(flow):
    inputs = _inputs(flow)
    for k, source in enumerate(flow.models):
        model = flow.build(FlowRecipe.identity(k, flow.n_layers[k]))
        assert torch.equal(model(**inputs).logits, source(**inputs).logits)
        assert torch.equal(_greedy(model, inputs), _greedy(source, inputs))


@torch.no_grad()
def test_a_layer_used_twice_gets_its_own_cache_entry(flow):
    """With one KV-cache entry per layer instead of per step, cached generation would differ from uncached."""
    recipe = FlowRecipe(path=((0, 0), (0, 1), (1, 0), (0, 1), (1, 1), (0, 1)), scales=(1.0, 0.8, 1.3, 1.1, 0.7, 1.2))
    model, inputs = flow.build(recipe), _inputs(flow)
    cached = _greedy(model, inputs, use_cache=True)
    assert torch.equal(cached, _greedy(model, inputs, use_cache=False))
    out = model(**inputs, use_cache=True)
    assert len(out.past_key_values.layers) == len(recipe.path)
    # building a flow never changes the sources' own layers
    assert [layer.self_attn.layer_idx for layer in flow.models[0].model.layers] == [0, 1]


@torch.no_grad()
def test_export_with_scales_is_a_standard_checkpoint_matching_the_search_time_logits(flow, tmp_path):
    recipe = FlowRecipe(path=((0, 0), (1, 0), (0, 1), (1, 1), (0, 1)), scales=(1.0, 0.6, 1.7, 0.9, 1.4))
    export_flow(flow, recipe, tmp_path / "out")
    cfg = json.loads((tmp_path / "out" / "config.json").read_text())
    assert cfg["num_hidden_layers"] == 5 and "auto_map" not in cfg  # no remote code
    saved = AutoModelForCausalLM.from_pretrained(tmp_path / "out").eval()
    inputs = _inputs(flow)
    ref = flow.build(recipe)(**inputs).logits.double()
    got = saved(**inputs).logits.double()
    assert ((got - ref).norm() / ref.norm()).item() < 1e-4
    assert passthrough_config(recipe, flow.paths) is None  # mergekit's passthrough cannot scale


@torch.no_grad()
def test_unit_scale_path_equals_mergekit_passthrough_of_the_same_layers(flow, tmp_path):
    """mergekit (the external oracle) builds the layer stack from our passthrough config; its model must give the
    logits of the search-time flow model."""
    from mergekit.config import MergeConfiguration
    from mergekit.merge import MergeOptions, run_merge

    recipe = FlowRecipe(path=((0, 0), (1, 0), (1, 1), (0, 0), (0, 1)), scales=(1.0,) * 5)
    mk = passthrough_config(recipe, flow.paths)
    assert [s["sources"][0]["layer_range"] for s in mk["slices"]] == [[0, 1], [0, 2], [0, 2]]
    run_merge(MergeConfiguration.model_validate(mk), str(tmp_path / "mk"), options=MergeOptions(copy_tokenizer=True))
    theirs = AutoModelForCausalLM.from_pretrained(tmp_path / "mk").eval()
    inputs = _inputs(flow)
    torch.testing.assert_close(theirs(**inputs).logits, flow.build(recipe)(**inputs).logits, rtol=1e-5, atol=1e-5)


def _space(**flow_kw) -> DataFlowSpace:
    return DataFlowSpace(SpaceConfig(type="data_flow", flow=FlowSpaceConfig(**flow_kw)), 2, (2, 3))


@pytest.mark.parametrize("scaling,indicator", [("matrix", "binary"), ("step", "threshold"), ("none", "binary")])
def test_space_starts_at_a_and_decodes_paths_and_scales(scaling, indicator):
    space = _space(scaling=scaling, indicator=indicator, scale_range=(0.5, 2.0))
    assert space.t == 3 * 5 and space.dim == 15 + {"matrix": 25, "step": 15, "none": 0}[scaling]
    assert (space.steps[:15] == (1.0 if indicator == "binary" else 0.0)).all() and not space.steps[15:].any()
    start = space.decode(space.x0)
    assert start.path == ((0, 0), (0, 1)) and start.scales == pytest.approx((1.0, 1.0))
    # every slot off: the forced start and end, A's first and last layer
    assert space.decode(np.zeros(space.dim)).path == ((0, 0), (0, 1))
    x = np.zeros(space.dim)
    x[[0, 3, 4, 5, 6]] = 1.0  # A0 | B1 B2 | (rep 2) A0 A1
    x[15:] = 1.0  # every scale at the top of the range
    r = space.decode(x)
    assert r.path == ((0, 0), (1, 1), (1, 2), (0, 0), (0, 1))
    expected = 1.0 if scaling == "none" else 2.0
    assert r.scales == pytest.approx((1.0, *[expected] * 4))  # the first layer is fed the embeddings unscaled


def test_matrix_scales_follow_the_transition():
    space = _space(scaling="matrix")
    x = np.zeros(space.dim)
    x[[0, 3]] = 1.0  # A0 -> B1 -> (forced) A1
    w = np.full((5, 5), 0.0)
    w[0, 3], w[3, 1] = 1.0, 1 / 3  # global layer ids: A0=0, A1=1, B0=2, B1=3, B2=4
    x[15:] = w.reshape(-1)
    r = space.decode(x)
    assert r.path == ((0, 0), (1, 1), (0, 1)) and r.scales == pytest.approx((1.0, 2.0, 1.0))


def test_config_checks():
    base = {"name": "x", "sources": {"models": ["a", "b"]}, "fitness": {"tasks": {"t": "d"}}}
    cfg = ExperimentConfig.model_validate({**base, "space": {"type": "data_flow"}, "optimizer": {"type": "cma_wm"}})
    assert cfg.space.flow == FlowSpaceConfig() and cfg.discrete_genes
    bad = [({"space": {"type": "data_flow"}}, "cma_wm"),  # binary genes need an optimizer with discrete genes
           ({"space": {"type": "data_flow"}, "optimizer": {"type": "cma_wm"},
             "sources": {"base": "q", "models": ["a", "b"]}}, "sources.base"),
           ({"space": {"type": "data_flow", "flow": {"scale_range": [0, 1]}}, "optimizer": {"type": "cma_wm"}},
            "0 < low"),
           ({}, "sources.base: required")]
    for override, needle in bad:
        with pytest.raises(Exception, match=needle.replace(".", r"\.")):
            ExperimentConfig.model_validate({**base, **override})


def _dfs_experiment(tmp_path, task_dir, models, indicator="binary", optimizer="cma_wm"):
    return write_experiment(
        tmp_path / "dfs.yaml", task_dir, name="dfs", sources={"models": models},
        space={"type": "data_flow", "flow": {"repeats": 2, "indicator": indicator}},
        optimizer={"type": optimizer, "generations": 2, "popsize": 4})


@pytest.mark.slow
def test_ps_then_dfs_end_to_end_with_export(tmp_path, tiny_zoo, tiny_task_dir):
    """PS on the tiny zoo, then DFS with the PS winner as A (run: reference) and the reverse expert as B."""
    from evomerge.reporting.export import export_from_run

    quiet = Console(quiet=True)
    ps = write_experiment(tmp_path / "ps.yaml", tiny_task_dir, baselines={"enabled": False})
    Runner(ps, tmp_path / "ps", console=quiet).run()
    exp = _dfs_experiment(tmp_path, tiny_task_dir, ["run:ps", "zoo:reverse"])
    results = Runner(exp, tmp_path / "dfs", console=quiet).run()
    best = json.loads((tmp_path / "ps" / "results.json").read_text())["best_candidate"]
    assert (tmp_path / "ps" / "exported" / best / "config.json").is_file()
    labels = [r["label"] for r in results["rows"]]
    assert labels[1:] == [f"ps {best}", "reverse"] and labels[0].startswith("evolved")
    evolved = results["rows"][0]["recipe"]
    assert evolved["kind"] == "flow" and evolved["path"][0] == [0, 0] and evolved["path"][-1] == [0, 1]
    # the identity row of A is the PS result itself: the same held-out score as the PS run's winner
    ps_rows = json.loads((tmp_path / "ps" / "results.json").read_text())["rows"]
    assert results["rows"][1]["average"] == pytest.approx(ps_rows[0]["average"])
    # A itself, the start, is scored first, with the PS winner's search score: the search cannot end below it
    from evomerge.store import RunDir

    def search_scores(run):
        store = RunDir.open(tmp_path / run).store()
        try:
            return {e.label: e.objective for k in ("seed", "search") for e in store.evaluations(k) if e.split == "search"}
        finally:
            store.close()

    known = search_scores("dfs")
    assert known[f"A = ps {best}"] == pytest.approx(search_scores("ps")[best], abs=1e-12)
    assert known[results["best_candidate"]] == max(known.values())  # the winner: the best of all, A included
    # the report draws the winner's path, by model name; the leaderboard summarizes flows
    from evomerge.reporting.html_report import render_report
    from evomerge.reporting.leaderboard import read_board

    board = read_board(tmp_path / "dfs")
    page = render_report(board)
    dfs = page[page.index("id='dfs'"):].split("</section>")[0]
    assert "<img" in dfs and "Left out" not in dfs
    assert board.candidates[0].operator == "data_flow" and "layers" in board.candidates[0].recipe_summary
    # export the DFS winner and check it against a fresh search-time build
    out, label = export_from_run(tmp_path / "dfs", tmp_path / "dfs_model")
    recipe = parse_recipe((out / "evomerge_recipe.json").read_text())
    assert isinstance(recipe, FlowRecipe) and "logits match" in (out / "README.md").read_text()
    AutoModelForCausalLM.from_pretrained(out)


@pytest.mark.slow
def test_threshold_indicators_with_plain_cma_and_a_bad_run_reference(tmp_path, tiny_zoo, tiny_task_dir):
    exp = _dfs_experiment(tmp_path, tiny_task_dir, ["zoo:add", "zoo:cipher"], indicator="threshold", optimizer="cma")
    results = Runner(exp, tmp_path / "dfs", console=Console(quiet=True)).run()
    assert [r["label"] for r in results["rows"]][1:] == ["add", "cipher"]
    cfg = yaml.safe_load(exp.read_text())
    cfg["sources"]["models"][0] = "run:nowhere"
    exp.write_text(yaml.safe_dump(cfg))
    with pytest.raises(ConfigError, match=r"sources\.models\[0\]: .*nowhere.* is not a run directory"):
        Runner(exp, tmp_path / "dfs2", console=Console(quiet=True)).run()
    assert not (tmp_path / "dfs2").exists()


NEAR_A = """
import os, torch
from transformers import AutoModelForCausalLM

_a = []


def score(model, tokenizer, task, examples):
    # minus how far the candidate's logits are from model A's: A itself scores best, anything else below it
    if not _a:
        _a.append(AutoModelForCausalLM.from_pretrained(os.environ["MODEL_A"]).eval())
    ids = torch.tensor([[1, 5, 6, 7, 8]])
    with torch.no_grad():
        d = float((model(input_ids=ids).logits - _a[0](input_ids=ids).logits).abs().max())
    return [-d for _ in examples]
"""


@pytest.mark.slow
def test_a_dfs_run_won_by_its_start_exports_model_a(tmp_path, tiny_zoo, tiny_task_dir, monkeypatch):
    """A DFS search no candidate of which beats A itself, the start scored first: the run's winner is A, and
    exporting it writes a model that computes what A does (it crashed: the known-winner path read every recipe as a
    parameter-space one)."""
    from evomerge.reporting.export import export_from_run

    (tmp_path / "near_a.py").write_text(NEAR_A)
    monkeypatch.setenv("MODEL_A", str(tiny_zoo / "add"))
    exp = write_experiment(
        tmp_path / "dfs.yaml", tiny_task_dir, name="dfs", sources={"models": ["zoo:add", "zoo:cipher"]},
        space={"type": "data_flow", "flow": {"repeats": 2}}, optimizer={"type": "cma_wm", "generations": 2,
                                                                      "popsize": 3},
        fitness={"type": "python", "scorer": "near_a:score", "tasks": {"add": str(tiny_task_dir / "add")},
                 "max_examples": 5})
    results = Runner(exp, tmp_path / "dfs", console=Console(quiet=True)).run()
    assert results["rows"][0]["label"].startswith("evolved (= A = add")
    out, label = export_from_run(tmp_path / "dfs", tmp_path / "model")
    assert label == "A = add" and isinstance(parse_recipe((out / "evomerge_recipe.json").read_text()), FlowRecipe)
    ids = torch.tensor([[1, 5, 6, 7, 8]])
    got = AutoModelForCausalLM.from_pretrained(out).eval()(ids).logits
    want = AutoModelForCausalLM.from_pretrained(tiny_zoo / "add").eval()(ids).logits
    assert torch.allclose(got, want, atol=1e-5)


def test_models_that_cannot_share_a_flow_are_refused_before_the_run_directory_exists(tmp_path, tiny_zoo,
                                                                                       tiny_task_dir):
    """They were refused only when a worker loaded them, after the run directory was written: the corrected
    experiment was then refused in that directory as 'a different experiment config'."""
    import shutil

    from typer.testing import CliRunner

    from evomerge.cli import app

    AutoModelForCausalLM.from_pretrained(tiny_zoo / "add").to(torch.bfloat16).save_pretrained(tmp_path / "add16")
    for f in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(tiny_zoo / "add" / f, tmp_path / "add16" / f)
    exp = _dfs_experiment(tmp_path, tiny_task_dir, [str(tmp_path / "add16"), "zoo:cipher"])
    for command in ("validate", "run"):
        result = CliRunner().invoke(app, [command, str(exp), *(["--run-dir", str(tmp_path / "r")]
                                                               if command == "run" else [])])
        assert result.exit_code == 2, result.output
        assert "cipher: dtype torch.float32, the host model has torch.bfloat16 (set the experiment's dtype" in \
            result.stderr and len(result.stderr.splitlines()) == 1, result.stderr
    assert not (tmp_path / "r").exists()
    cfg = yaml.safe_load(exp.read_text())
    exp.write_text(yaml.safe_dump({**cfg, "dtype": "float32", "optimizer": {"type": "cma_wm", "generations": 1,
                                                                               "popsize": 2}}))
    assert CliRunner().invoke(app, ["validate", str(exp)]).exit_code == 0


@pytest.mark.parametrize("family", ["qwen2", "mistral"])
@torch.no_grad()
def test_other_families_with_per_layer_attention_types(tmp_path, family):
    """Qwen2 (per-layer `layer_types`, sliding and full attention mixed) and Mistral: the identity path is exact,
    a path that repeats layers generates the same with and without its cache, and the export matches."""
    from transformers import AutoConfig

    from evomerge.zoo.tokenizer import build_char_tokenizer

    tok = build_char_tokenizer()
    kw = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=3, num_attention_heads=4,
              num_key_value_heads=2, vocab_size=len(tok), max_position_embeddings=64, pad_token_id=0,
              bos_token_id=1, eos_token_id=None)
    if family == "qwen2":
        kw.update(use_sliding_window=True, sliding_window=4, max_window_layers=1,
                  layer_types=["full_attention", "sliding_attention", "sliding_attention"])
    else:
        kw.update(sliding_window=4)
    paths = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(AutoConfig.for_model(family, **kw)).eval()
        # trained models carry O(1) hidden states; at init (std 0.02) the norms' epsilon would dominate the
        # export's folded scales, which are exact only up to that epsilon
        model.model.embed_tokens.weight.data *= 50
        model.save_pretrained(tmp_path / str(seed))
        tok.save_pretrained(tmp_path / str(seed))
        paths.append(tmp_path / str(seed))
    flow = FlowModels(paths)
    ids = tok(["abcdefghij klmno", "hello world there"], return_tensors="pt", padding=True)
    ids.pop("token_type_ids", None)
    gen = dict(max_new_tokens=6, do_sample=False, eos_token_id=None)
    a = flow.models[0]
    identity = flow.build(FlowRecipe.identity(0, 3))
    assert torch.equal(identity(**ids).logits, a(**ids).logits)
    recipe = FlowRecipe(path=((0, 0), (1, 1), (0, 1), (1, 1), (0, 2)), scales=(1.0, 0.7, 1.2, 0.9, 1.1))
    model = flow.build(recipe)
    if family == "qwen2":
        assert model.config.layer_types == ["full_attention", "sliding_attention", "sliding_attention",
                                             "sliding_attention", "sliding_attention"]
    assert torch.equal(model.generate(**ids, **gen, use_cache=True), model.generate(**ids, **gen, use_cache=False))
    export_flow(flow, recipe, tmp_path / "out")
    saved = AutoModelForCausalLM.from_pretrained(tmp_path / "out").eval()
    ref, got = model(**ids).logits.double(), saved(**ids).logits.double()
    assert ((got - ref).norm() / ref.norm()).item() < 1e-4
