"""Loading sources of several architectures by tensor names, sharded checkpoints, and compatibility errors."""

import json

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoConfig, AutoModelForCausalLM

from evomerge.errors import SourceError
from evomerge.merge.materialize import Merger
from evomerge.recipe import Recipe
from evomerge.sources import SourcePool, group_names, layer_group

ARCHS = {
    "llama": dict(hidden_size=32, intermediate_size=64, num_attention_heads=4, num_key_value_heads=2),
    "mistral": dict(hidden_size=32, intermediate_size=64, num_attention_heads=4, num_key_value_heads=2),
    "qwen2": dict(hidden_size=32, intermediate_size=64, num_attention_heads=4, num_key_value_heads=2),
    "gemma": dict(hidden_size=32, intermediate_size=64, num_attention_heads=4, num_key_value_heads=1, head_dim=8),
    "gpt2": dict(n_embd=32, n_head=4, n_positions=64),
}
N_LAYERS = 3


def _make(arch: str, path, seed: int, **kw):
    torch.manual_seed(seed)
    layers = {"n_layer": N_LAYERS} if arch == "gpt2" else {"num_hidden_layers": N_LAYERS}
    cfg = AutoConfig.for_model(arch, vocab_size=50, **layers, **ARCHS[arch])
    model = AutoModelForCausalLM.from_config(cfg)
    model.save_pretrained(path, **kw)
    return model


@pytest.mark.parametrize("arch", sorted(ARCHS))
def test_any_architecture_loads_groups_and_merges(tmp_path, arch):
    _make(arch, tmp_path / "base", 0)
    expert = _make(arch, tmp_path / "expert", 1, max_shard_size="20KB")  # sharded safetensors
    assert (tmp_path / "expert" / "model.safetensors.index.json").exists()
    pool = SourcePool(tmp_path / "base", [tmp_path / "expert"])
    assert pool.n_blocks == N_LAYERS
    groups = {layer_group(n, "layer", pool.n_blocks) for n in pool.base}
    assert groups == set(group_names("layer", N_LAYERS))  # embed, each block, head — found from names alone
    live = AutoModelForCausalLM.from_pretrained(tmp_path / "base")
    Merger(pool).materialize(Recipe.uniform("task_arithmetic", 1, 1.0), live)
    for name, p in live.state_dict().items():
        if name in pool.base:
            torch.testing.assert_close(p, expert.state_dict()[name], rtol=1e-5, atol=1e-6)


def test_mismatches_are_reported_by_tensor_name(tmp_path):
    _make("llama", tmp_path / "base", 0)
    torch.manual_seed(0)
    cfg = AutoConfig.for_model("llama", vocab_size=50, num_hidden_layers=N_LAYERS + 1, **ARCHS["llama"])
    AutoModelForCausalLM.from_config(cfg).save_pretrained(tmp_path / "deeper")
    with pytest.raises(SourceError) as e:
        SourcePool(tmp_path / "base", [tmp_path / "deeper"])
    assert f"model.layers.{N_LAYERS}.mlp.up_proj.weight: not in base" in str(e.value)
    cfg = AutoConfig.for_model("llama", vocab_size=60, num_hidden_layers=N_LAYERS, **ARCHS["llama"])
    AutoModelForCausalLM.from_config(cfg).save_pretrained(tmp_path / "vocab")
    with pytest.raises(SourceError) as e:
        SourcePool(tmp_path / "base", [tmp_path / "vocab"])
    assert "model.embed_tokens.weight: shape (60, 32) != base (50, 32)" in str(e.value)
    assert "vocab_size 60 != base 50" in str(e.value)


def test_architecture_and_dtype_mismatch(tmp_path):
    _make("llama", tmp_path / "base", 0)
    _make("mistral", tmp_path / "mistral", 1)
    with pytest.raises(SourceError, match="model_type 'mistral' != base 'llama'"):
        SourcePool(tmp_path / "base", [tmp_path / "mistral"])
    m = _make("llama", tmp_path / "half", 2)
    m.to(torch.bfloat16).save_pretrained(tmp_path / "half")
    # one entry for all the tensors of one dtype, with what to do about it
    with pytest.raises(SourceError, match=r"lm_head.weight and \d+ other tensors: dtype torch.bfloat16 != base "
                                          r"torch.float32 \(set the experiment's dtype"):
        SourcePool(tmp_path / "base", [tmp_path / "half"])
    # with a dtype every model is cast to, a source stored in another one merges
    pool = SourcePool(tmp_path / "base", [tmp_path / "half"], dtype=torch.float32)
    assert pool.dtype == torch.float32
    torch.testing.assert_close(pool.source("lm_head.weight", 0), m.lm_head.weight.float())


def test_a_source_with_other_attention_heads_is_refused_though_its_shapes_match(tmp_path):
    """Same tensor shapes, another architecture: 8 heads of 4 are not 4 heads of 8, and merging them was silent."""
    _make("llama", tmp_path / "base", 0)
    torch.manual_seed(1)
    cfg = AutoConfig.for_model("llama", vocab_size=50, num_hidden_layers=N_LAYERS,
                               **{**ARCHS["llama"], "num_attention_heads": 8})
    AutoModelForCausalLM.from_config(cfg).save_pretrained(tmp_path / "heads")
    with pytest.raises(SourceError, match=r"heads is not compatible with base .*: config num_attention_heads 8 != "
                                          r"base 4"):
        SourcePool(tmp_path / "base", [tmp_path / "heads"])


def test_validate_and_run_merge_sources_of_two_dtypes_cast_to_the_experiments(tmp_path, tiny_zoo, tiny_task_dir):
    """The experiment's `dtype` casts every model when loaded, but run and validate refused sources stored in two
    dtypes, and validate's dry run ignored the setting."""
    from typer.testing import CliRunner

    from evomerge.cli import app
    from tests.conftest import write_experiment

    AutoModelForCausalLM.from_pretrained(tiny_zoo / "add").to(torch.bfloat16).save_pretrained(tmp_path / "add16")
    for f in ("tokenizer.json", "tokenizer_config.json"):
        (tmp_path / "add16" / f).write_bytes((tiny_zoo / "add" / f).read_bytes())
    sources = {"base": str(tiny_zoo / "base"), "models": [str(tmp_path / "add16"), str(tiny_zoo / "cipher")]}
    exp = write_experiment(tmp_path / "e.yaml", tiny_task_dir, sources=sources)
    refused = CliRunner().invoke(app, ["validate", str(exp)])
    assert refused.exit_code == 2 and "set the experiment's dtype" in refused.stderr, refused.output
    exp = write_experiment(tmp_path / "e.yaml", tiny_task_dir, sources=sources, dtype="float32",
                           optimizer={"type": "cma", "generations": 1, "popsize": 2}, baselines={"enabled": False})
    ok = CliRunner().invoke(app, ["validate", str(exp)])
    assert ok.exit_code == 0, ok.output
    done = CliRunner().invoke(app, ["run", str(exp), "--run-dir", str(tmp_path / "r")])
    assert done.exit_code == 0, done.output
    assert (tmp_path / "r" / "results.json").is_file()


def test_a_source_with_nan_weights_is_refused_by_name(tmp_path):
    """Every merge with it failed as 'merge produced NaN/Inf in tensor …' without naming the model at fault, until
    the run stopped because a whole generation failed."""
    from safetensors.torch import save_file

    _make("llama", tmp_path / "base", 0)
    _make("llama", tmp_path / "nan", 1)
    sd = load_file(tmp_path / "nan" / "model.safetensors")
    sd["model.layers.1.mlp.up_proj.weight"][0, 0] = float("nan")
    save_file(sd, tmp_path / "nan" / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(SourceError, match=r"nan: model.layers.1.mlp.up_proj.weight holds NaN or Inf values"):
        SourcePool(tmp_path / "base", [tmp_path / "nan"])
    with pytest.raises(SourceError, match=r"nan: model.layers.1.mlp.up_proj.weight holds NaN or Inf values"):
        SourcePool(tmp_path / "nan", [tmp_path / "base"])
    # memory-mapped: nothing is read up front, so the tensor is checked when a merge first reads it
    name = "model.layers.1.mlp.up_proj.weight"
    for base, src in (("base", "nan"), ("nan", "base")):
        pool = SourcePool(tmp_path / base, [tmp_path / src], stream=True)
        pool.stacked["model.layers.0.mlp.up_proj.weight"]  # a finite tensor reads as before
        with pytest.raises(SourceError, match=rf"nan: {name} holds NaN or Inf values"):
            pool.stacked[name]


def test_a_run_refused_when_its_worker_loads_leaves_no_directory(tmp_path, tiny_zoo, tiny_task_dir):
    """A source refused only when the worker loads it (NaN weights: not visible in the headers) left a run directory
    with nothing in it, which then refused the corrected experiment as 'a different experiment config'."""
    import shutil

    from safetensors.torch import save_file
    from typer.testing import CliRunner

    from evomerge.cli import app
    from tests.conftest import write_experiment

    shutil.copytree(tiny_zoo / "add", tmp_path / "nan")
    sd = load_file(tmp_path / "nan" / "model.safetensors")
    sd["model.layers.0.mlp.up_proj.weight"][0, 0] = float("inf")
    save_file(sd, tmp_path / "nan" / "model.safetensors", metadata={"format": "pt"})
    small = {"optimizer": {"type": "cma", "generations": 1, "popsize": 2}, "baselines": {"enabled": False}}
    exp = write_experiment(tmp_path / "e.yaml", tiny_task_dir, **small,
                           sources={"base": "zoo:base", "models": [str(tmp_path / "nan"), "zoo:cipher"]})
    run = ["run", str(exp), "--run-dir", str(tmp_path / "r")]
    refused = CliRunner().invoke(app, run)
    assert refused.exit_code == 2 and "holds NaN or Inf values" in refused.stderr, refused.output
    assert not (tmp_path / "r").exists()
    write_experiment(exp, tiny_task_dir, **small, sources={"base": "zoo:base", "models": ["zoo:add", "zoo:cipher"]})
    done = CliRunner().invoke(app, run)
    assert done.exit_code == 0, done.output


def test_pickle_checkpoints_are_refused_with_a_reason(tmp_path):
    _make("llama", tmp_path / "base", 0)
    d = tmp_path / "pickled"
    d.mkdir()
    sd = load_file(tmp_path / "base" / "model.safetensors")
    torch.save(sd, d / "pytorch_model.bin")
    (d / "config.json").write_text((tmp_path / "base" / "config.json").read_text())
    with pytest.raises(SourceError, match="only pickle weights.*arbitrary code"):
        SourcePool(tmp_path / "base", [d])
    assert json.loads((d / "config.json").read_text())["model_type"] == "llama"


@pytest.mark.parametrize("dtype", [None, torch.bfloat16])
def test_streaming_pool_merges_like_the_in_memory_pool(tiny_zoo, dtype):
    # streaming, task arithmetic and DARE subtract the base inside the merge kernel as they read each source; the
    # in-memory pool stored τ = source − base once: equal bit for bit, in fp32 and bf16
    srcs = [tiny_zoo / "add", tiny_zoo / "cipher", tiny_zoo / "reverse"]
    mem = SourcePool(tiny_zoo / "base", srcs, stream=False, dtype=dtype)
    mapped = SourcePool(tiny_zoo / "base", srcs, stream=True, dtype=dtype)
    assert mapped.streaming and not mem.streaming and list(mapped.base) == list(mem.base)
    for recipe in (Recipe.uniform("task_arithmetic", 3, 0.4), Recipe.uniform("ties", 3, 0.8, 0.5),
                   Recipe.uniform("dare_ties", 3, 0.8, 0.5, seed=4), Recipe.uniform("dare_linear", 3, 0.8, 0.5)):
        a, b = Merger(mem), Merger(mapped)
        for name in mem.base:
            assert torch.equal(a.merged_tensor(recipe, name), b.merged_tensor(recipe, name)), name


def test_streaming_is_chosen_when_task_vectors_would_not_fit(tiny_zoo):
    from evomerge.sources import should_stream

    paths = [tiny_zoo / "base", tiny_zoo / "add"]
    assert should_stream(paths, available=1000)
    assert not should_stream(paths, available=10**12)


def test_streaming_pool_reports_mismatches_without_reading_tensors(tmp_path):
    _make("llama", tmp_path / "base", 0)
    cfg = AutoConfig.for_model("llama", vocab_size=60, num_hidden_layers=N_LAYERS, **ARCHS["llama"])
    AutoModelForCausalLM.from_config(cfg).save_pretrained(tmp_path / "vocab")
    with pytest.raises(SourceError, match=r"model.embed_tokens.weight: shape \(60, 32\) != base \(50, 32\)"):
        SourcePool(tmp_path / "base", [tmp_path / "vocab"], stream=True)
