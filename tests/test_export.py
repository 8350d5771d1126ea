"""Export: the exported directory is a standard checkpoint whose logits equal the in-memory merge; the mergekit
YAML written beside it makes mergekit 0.1.5 produce the same tensors."""

import json

import pytest
import torch
import yaml
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer

from evomerge.reporting.export import export_recipe, mergekit_config
from evomerge.merge.materialize import Merger
from evomerge.recipe import GroupParams, Recipe
from evomerge.sources import SourcePool, group_names


def _sources(zoo):
    return zoo / "base", [zoo / "add", zoo / "cipher", zoo / "reverse"]


def test_export_round_trip_matches_in_memory_logits(tmp_path, tiny_zoo):
    base, sources = _sources(tiny_zoo)
    recipe = Recipe(operator="dare_ties", granularity="layer", seed=9, normalize=True, groups={
        g: GroupParams(weights=(0.2 + 0.1 * i, 0.5, 0.7 - 0.1 * i), densities=(0.6, 0.8, 0.5))
        for i, g in enumerate(group_names("layer", 2))})
    out = export_recipe(recipe, base, sources, tmp_path / "merged", {"note": "test"})
    live = AutoModelForCausalLM.from_pretrained(base).eval()
    Merger(SourcePool(base, sources)).materialize(recipe, live)
    exported = AutoModelForCausalLM.from_pretrained(out, local_files_only=True).eval()
    tok = AutoTokenizer.from_pretrained(out, local_files_only=True)
    ids = torch.tensor([[tok.bos_token_id, *tok.encode("c:hello=", add_special_tokens=False)]])
    with torch.no_grad():
        torch.testing.assert_close(exported(ids).logits, live(ids).logits, rtol=0, atol=0)
    assert Recipe.from_json((out / "evomerge_recipe.json").read_text()) == recipe
    card = (out / "README.md").read_text()
    assert "dare_ties" in card and "note: test" in card and str(sources[0]) in card
    assert not (out / "mergekit_config.yml").exists()  # per-layer groups and 1/p rescaling: not expressible


@pytest.mark.usefixtures("mergekit_sorts_stably")  # ties in magnitude break as evomerge breaks them
@pytest.mark.parametrize("operator", ["task_arithmetic", "ties", "linear", "breadcrumbs_ties", "slerp"])
def test_mergekit_yaml_reproduces_the_export(tmp_path, tiny_zoo, operator):
    from mergekit.config import MergeConfiguration
    from mergekit.merge import MergeOptions, run_merge

    base, sources = _sources(tiny_zoo)
    if operator == "slerp":
        sources = sources[:1]
        recipe = Recipe.uniform("slerp", 1, 0.35)
    else:
        dens = (0.5, 0.7, 0.9) if operator in ("ties", "breadcrumbs_ties") else None
        recipe = Recipe(operator=operator, lam=1.0 if operator == "linear" else 0.9, gamma=0.02,
                        groups={"all": GroupParams(weights=(0.6, 0.3, 0.5)[: len(sources)], densities=dens)})
    out = export_recipe(recipe, base, sources, tmp_path / "ours")
    cfg = yaml.safe_load((out / "mergekit_config.yml").read_text())
    assert cfg == mergekit_config(recipe, base, sources)
    run_merge(MergeConfiguration.model_validate(cfg), str(tmp_path / "theirs"), MergeOptions(copy_tokenizer=False))
    ours, theirs = load_file(out / "model.safetensors"), load_file(tmp_path / "theirs" / "model.safetensors")
    assert set(ours) == set(theirs)
    for k in ours:
        torch.testing.assert_close(ours[k], theirs[k], rtol=1e-5, atol=1e-6)


def test_cli_exports_a_runs_best_candidate(tmp_path, tiny_zoo, tiny_task_dir):
    from rich.console import Console
    from typer.testing import CliRunner

    from evomerge.cli import app
    from evomerge.runner import Runner
    from tests.conftest import write_experiment

    exp = write_experiment(tmp_path / "e.yaml", tiny_task_dir, optimizer={"type": "cma", "generations": 1,
                                                                           "popsize": 3},
                           baselines={"enabled": False})
    Runner(exp, tmp_path / "run", console=Console(quiet=True)).run()
    result = CliRunner().invoke(app, ["export", str(tmp_path / "run"), "--out", str(tmp_path / "best")])
    assert result.exit_code == 0, result.stderr
    recipe = json.loads((tmp_path / "best" / "evomerge_recipe.json").read_text())
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert recipe == results["rows"][0]["recipe"]  # rank 1 is the evolved row of the final table
    bad = CliRunner().invoke(app, ["export", str(tmp_path / "run"), "--out", str(tmp_path / "x"), "--rank", "9"])
    assert bad.exit_code == 2 and "--rank: expected 1..3" in bad.stderr
    # an earlier export is replaced; a path that cannot take the output is one line before any work (these were
    # tracebacks: NotADirectoryError, IsADirectoryError, FileNotFoundError), and a folder of other files (which
    # could hold another checkpoint's shard index, loaded instead of the export) is left alone
    again = CliRunner().invoke(app, ["export", str(tmp_path / "run"), "--out", str(tmp_path / "best")])
    assert again.exit_code == 0, again.stderr
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "model.safetensors.index.json").write_text("{}")
    (tmp_path / "a_file").write_text("mine")
    run = str(tmp_path / "run")
    for args, expected in [
        (["export", run, "--out", str(tmp_path / "a_file")], "is a file (expected a directory"),
        (["export", run, "--out", str(tmp_path / "busy")], "is not empty and not an earlier export"),
        (["leaderboard", run, "--out", str(tmp_path / "busy")], "is a directory (expected the path of a file"),
        (["leaderboard", run, "--out", str(tmp_path / "no" / "x.csv")], f"the folder {tmp_path / 'no'} does not"),
        (["report", run, "--out", str(tmp_path / "no" / "r.html")], f"the folder {tmp_path / 'no'} does not"),
    ]:
        refused = CliRunner().invoke(app, args)
        assert refused.exit_code == 2 and refused.stderr.startswith("error: --out: "), (args, refused.output)
        assert expected in refused.stderr and len(refused.stderr.splitlines()) == 1, refused.stderr
    assert sorted(p.name for p in (tmp_path / "busy").iterdir()) == ["model.safetensors.index.json"]
    assert (tmp_path / "a_file").read_text() == "mine" and not (tmp_path / "no").exists()


def test_cli_exports_a_recipe_file(tmp_path, tiny_zoo):
    from typer.testing import CliRunner

    from evomerge.cli import app

    base, sources = _sources(tiny_zoo)
    recipe = Recipe.uniform("ties", 3, 0.7, 0.5)
    (tmp_path / "r.json").write_text(recipe.to_json())
    args = ["export", str(tmp_path / "r.json"), "--out", str(tmp_path / "m"), "--base", str(base)]
    for s in sources:
        args += ["--source", str(s)]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.stderr
    assert Recipe.from_json((tmp_path / "m" / "evomerge_recipe.json").read_text()) == recipe
    assert (tmp_path / "m" / "mergekit_config.yml").is_file()
    bad = CliRunner().invoke(app, args[:-2])  # 2 sources for a 3-source recipe
    assert bad.exit_code == 2 and "has 3 weights for 2 --source models" in bad.stderr


@pytest.mark.usefixtures("mergekit_sorts_stably")  # ties in magnitude break as evomerge breaks them
@pytest.mark.parametrize("operator", ["ties", "task_arithmetic", "breadcrumbs_ties"])
def test_a_bf16_export_is_what_mergekit_makes_from_its_yaml(tmp_path, tiny_zoo, operator):
    """Real checkpoints are bf16: the YAML must say so (mergekit computes in its `dtype`), and then mergekit's
    tensors are the export's, bit for bit."""
    from mergekit.config import MergeConfiguration
    from mergekit.merge import MergeOptions, run_merge

    base, sources = _sources(tiny_zoo)
    copies = []
    for path in [base, *sources]:  # bf16 copies of the zoo's models, as a bf16 family would ship
        AutoModelForCausalLM.from_pretrained(path, dtype=torch.bfloat16).save_pretrained(tmp_path / path.name)
        AutoTokenizer.from_pretrained(path).save_pretrained(tmp_path / path.name)
        copies.append(tmp_path / path.name)
    base, sources = copies[0], copies[1:]
    dens = (0.5, 0.7, 0.3) if operator != "task_arithmetic" else None
    recipe = Recipe(operator=operator, lam=0.9, gamma=0.02, normalize=True,
                    groups={"all": GroupParams(weights=(0.6, 0.3, 0.5), densities=dens)})
    out = export_recipe(recipe, base, sources, tmp_path / "ours")
    cfg = yaml.safe_load((out / "mergekit_config.yml").read_text())
    assert cfg["dtype"] == "bfloat16"
    run_merge(MergeConfiguration.model_validate(cfg), str(tmp_path / "theirs"), MergeOptions(copy_tokenizer=False))
    ours, theirs = load_file(out / "model.safetensors"), load_file(tmp_path / "theirs" / "model.safetensors")
    assert set(ours) == set(theirs)
    for k in ours:
        assert ours[k].dtype == torch.bfloat16 and torch.equal(ours[k], theirs[k]), k
