"""The memory plan: sizes from safetensors headers, the layout that fits, and one-line refusals."""

import pytest
from typer.testing import CliRunner

from evomerge.cli import app
from evomerge.merge.materialize import Merger
from evomerge.merge.memory import CheckpointSize, parse_size, plan_memory
from evomerge.runner import plan_experiment
from evomerge.sources import SourcePool, load_state_dict
from tests.conftest import write_experiment


def test_sizes_from_headers_equal_the_loaded_tensors(tiny_zoo):
    sd = load_state_dict(tiny_zoo / "base")
    size = CheckpointSize.of(tiny_zoo / "base")
    floats = [v for v in sd.values() if v.is_floating_point()]
    assert size.params == sum(v.numel() for v in floats)
    assert size.bytes == sum(v.numel() * v.element_size() for v in floats)
    assert size.largest == max(v.numel() for v in floats)


def test_in_memory_terms_are_what_the_pool_holds(tiny_zoo):
    sources = [tiny_zoo / "add", tiny_zoo / "cipher"]
    p = plan_memory(tiny_zoo / "base", sources, operators={"ties"}, batch=8, seq=16, capacity=10**12, runtime=0)
    terms = {t.name: t.bytes for t in p.layouts["in memory"]}
    pool = SourcePool(tiny_zoo / "base", sources)
    assert terms["base"] == sum(v.nbytes for v in pool.base.values())
    assert terms["task vectors"] == sum(v.nbytes for v in pool.stacked.values())
    merger = Merger(pool)
    for name in pool.base:  # the rank cache TIES builds: one byte per parameter and source
        merger.magnitude_index(name, "desc")
    held = sum(i.nbytes() for idx in merger._order.values() for i in idx)
    assert held == terms["rank cache"] == len(sources) * CheckpointSize.of(tiny_zoo / "base").params


def test_layout_choice_and_refusal(tiny_zoo):
    args = {"operators": {"task_arithmetic"}, "batch": 8, "seq": 16, "runtime": 0, "threads": 0}  # models' terms only
    sources = [tiny_zoo / "add", tiny_zoo / "cipher", tiny_zoo / "reverse"]
    roomy = plan_memory(tiny_zoo / "base", sources, capacity=10**12, **args)
    assert roomy.chosen == "in memory"
    mapped = roomy.total("memory-mapped")
    assert mapped < roomy.total("in memory")
    tight = plan_memory(tiny_zoo / "base", sources, capacity=mapped, **args)
    assert tight.chosen == "memory-mapped"
    none = plan_memory(tiny_zoo / "base", sources, capacity=mapped - 1, **args)
    assert none.chosen is None
    line = none.refusal()
    assert "\n" not in line and "largest term" in line and "memory-mapped" in line
    forced = plan_memory(tiny_zoo / "base", sources, capacity=mapped, stream=False, **args)
    assert forced.chosen is None and "largest term: task vectors" in forced.refusal()


def test_plan_command_and_validate(tiny_zoo, tiny_task_dir, tmp_path):
    exp = write_experiment(tmp_path / "e.yaml", tiny_task_dir)
    p = plan_experiment(exp)
    assert p.chosen == "in memory"
    ok = CliRunner().invoke(app, ["plan", str(exp)])
    assert ok.exit_code == 0 and "task vectors" in ok.output and "layout: in memory" in ok.output
    assert "memory:" in CliRunner().invoke(app, ["validate", str(exp)]).output
    refused = CliRunner().invoke(app, ["plan", str(exp), "--device-memory", "1MB"])
    assert refused.exit_code == 2 and "does not fit" in refused.output and "largest term" in refused.output


@pytest.mark.parametrize("text,value", [("141GB", 141 * 10**9), ("24GiB", 24 * 2**30), ("8e9", 8 * 10**9)])
def test_parse_size(text, value):
    assert parse_size(text, "--device-memory") == value


def test_activation_term_grows_with_batch_and_generation(tiny_zoo):
    from evomerge.merge.memory import activation_bytes

    small = activation_bytes(tiny_zoo / "base", 8, 16, 4)
    assert activation_bytes(tiny_zoo / "base", 16, 16, 4) >= 2 * small - 1
    assert activation_bytes(tiny_zoo / "base", 8, 16, 4, generate_tokens=16) > small


def test_the_plan_counts_the_dtype_the_experiment_casts_the_sources_to(tiny_zoo, tmp_path):
    """bf16 checkpoints merged in float32 (`dtype: float32`): the pool holds 4 bytes per parameter, not 2."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    dirs = []
    for name in ("base", "add", "cipher"):
        m = AutoModelForCausalLM.from_pretrained(tiny_zoo / name, dtype=torch.bfloat16)
        m.save_pretrained(tmp_path / name)
        AutoTokenizer.from_pretrained(tiny_zoo / name).save_pretrained(tmp_path / name)
        dirs.append(tmp_path / name)
    args = {"operators": {"task_arithmetic"}, "batch": 8, "seq": 16, "capacity": 10**12, "runtime": 0}
    own = {t.name: t.bytes for t in plan_memory(dirs[0], dirs[1:], **args).layouts["in memory"]}
    cast = {t.name: t.bytes for t in plan_memory(dirs[0], dirs[1:], dtype_bytes=4, **args).layouts["in memory"]}
    pool = SourcePool(dirs[0], dirs[1:], dtype=torch.float32)
    assert cast["base"] == sum(v.nbytes for v in pool.base.values()) == 2 * own["base"]
    assert cast["task vectors"] == sum(v.nbytes for v in pool.stacked.values()) == 2 * own["task vectors"]
    assert cast["live model"] == 2 * own["live model"]
