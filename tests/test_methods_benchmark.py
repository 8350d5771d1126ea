"""benchmarks/methods.py's parts that need no search: its experiment files (zoo v2, one evaluation budget), its
paired margins across records, its flags; and zoo v2's LoRA versions of the experts, built at tiny size."""

import json
import subprocess
import sys

import pytest

from tests.conftest import REPO

sys.path.insert(0, str(REPO / "benchmarks"))
import methods  # noqa: E402  (benchmarks/methods.py)

BUDGET = 195  # zoo2_ps.yaml's 15 generations of 13


def test_every_method_experiment_is_a_zoo2_run_at_the_same_budget():
    from evomerge.blackbox.config import load_blackbox
    from evomerge.config import load_experiment

    assert set(methods.METHODS) == {"ps", "dfs", "psdfs", "m2n2", "m2n2_weights", "blackbox", "blackbox_best_single"}
    for method, (path, _) in methods.METHODS.items():
        assert path.name.startswith("zoo2_"), path
        if method.startswith("blackbox"):
            cfg, _ = load_blackbox(path)
            assert cfg.zoo == "zoo2"
            assert cfg.stages.denoise_budget + cfg.stages.scale_budget == BUDGET
            assert list(cfg.data.tasks) == ["word_add"]
        else:
            cfg, _ = load_experiment(path)
            assert cfg.zoo == "zoo2" and list(cfg.fitness.tasks) == ["word_add"], path
            assert cfg.optimizer.popsize * cfg.optimizer.generations == BUDGET, path
    # the paper's DFS setup: the language expert is model A, the math expert B; PS+DFS: the PS result is A
    assert load_experiment(methods.METHODS["dfs"][0])[0].sources.models == ["zoo:lang", "zoo:math"]
    a, b = load_experiment(methods.METHODS["psdfs"][0])[0].sources.models
    assert a.startswith("run:") and b == "zoo:math"


def test_the_written_experiment_points_psdfs_at_the_seeds_ps_run(tmp_path):
    runs = tmp_path / "runs"
    with pytest.raises(SystemExit, match="no finished PS run of seed 1"):
        methods.experiment("psdfs", 1, tmp_path, runs, None)
    (runs / "ps_1").mkdir(parents=True)
    (runs / "ps_1" / "results.json").write_text("{}")
    import yaml

    cfg = yaml.safe_load(methods.experiment("psdfs", 1, tmp_path, runs, 1).read_text())
    assert cfg["seed"] == 1 and cfg["threads"] == 1
    assert cfg["sources"]["models"] == [f"run:{runs / 'ps_1'}", "zoo:math"]
    assert all(p.startswith("/") for p in cfg["fitness"]["tasks"].values())
    bb = yaml.safe_load(methods.experiment("blackbox", 2, tmp_path, runs, None).read_text())
    assert bb["seed"] == 2 and (REPO / "fitness" / "data" / "zoo2" / "word_add").samefile(
        bb["data"]["tasks"]["word_add"]
    )


def _record(method, seed, bits, margin=None):
    ref = {"ps": "best_source", "blackbox": "best_adapter", "blackbox_best_single": "best_adapter"}.get(method, "ps")
    return {
        "method": method,
        "seed": seed,
        "winner": f"{method} winner",
        "heldout": sum(bits) / len(bits),
        "heldout_correct": "".join(map(str, bits)),
        "reference": {"name": ref},
        "margin": margin,
        "margin_se": None if margin is None else 0.01,
    }


def test_margins_against_the_ps_record_are_paired_and_follow_it():
    ps = [1, 0, 0, 1, 0, 0, 0, 0]
    m2n2 = [1, 1, 0, 0, 1, 0, 0, 0]  # differences 0, +1, 0, -1, +1, 0, 0, 0: mean 1/8
    records = [_record("ps", 0, ps, margin=-0.01), _record("m2n2", 0, m2n2), _record("psdfs", 1, m2n2)]
    s = methods.summarize(records)
    assert tuple(s) == methods.SUMMARY_KEYS
    assert s["ps_minus_best_source"] == [-0.01] and s["m2n2_minus_cma"] == [0.125]
    d = [0, 1, 0, -1, 1, 0, 0, 0]
    se = (sum((x - 0.125) ** 2 for x in d) / 7 / 8) ** 0.5
    assert s["m2n2_minus_cma_se"] == [round(se, 4)]
    assert records[1]["reference"] == {"name": "ps", "label": "ps winner", "heldout": 0.25}
    # no PS record of seed 1: no margin, and no summary value for it
    assert records[2]["margin"] is None and s["psdfs_minus_ps"] == []
    # a new PS record changes the margin of the record measured against it
    records[0] = _record("ps", 0, m2n2, margin=0.0)
    assert methods.summarize(records)["m2n2_minus_cma"] == [0.0]


def test_an_unknown_method_is_one_line_and_exit_2():
    proc = subprocess.run(
        [sys.executable, "methods.py", "--methods", "ps,nope"],
        cwd=REPO / "benchmarks",
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 2 and "--methods: unknown ['nope']" in proc.stderr


def test_lora_versions_of_zoo2_experts_train_on_the_experts_tasks(evomerge_home, tmp_path):
    """At zoo v2's code path with tiny sizes: an adapter named for an expert trains on that expert's tasks with its
    KL term, and its manifest says so; a name that is no task, expert or distractor is refused."""
    from evomerge.zoo.build import PROFILES, task_splits, training_rows
    from evomerge.zoo.lora import LORA_PROFILES, AdapterPlan, LoraSpec, _pools_for, build_lora_repo

    spec = LoraSpec(
        zoo="zoo2-tiny",
        steps=4,
        eval_examples=10,
        adapters=(AdapterPlan(task="lang"), AdapterPlan(task="math"), AdapterPlan(task="sort")),
    )
    data = training_rows(PROFILES["zoo2-tiny"], task_splits(PROFILES["zoo2-tiny"]))
    pools, keep = _pools_for(spec.adapters[0], spec, data)
    assert pools == [data["encode"], data["decode"]] and keep == ["add"]  # the rows the full expert trains on
    assert _pools_for(spec.adapters[1], spec, data)[1] == ["encode", "decode"]
    assert _pools_for(spec.adapters[2], spec, data)[1] == []
    with pytest.raises(ValueError, match="an expert"):
        _pools_for(AdapterPlan(task="nope"), spec, data)
    out = build_lora_repo(spec, out=tmp_path / "lora", log=lambda *_: None)
    manifest = json.loads((out / "repo.json").read_text())
    assert [a["task"] for a in manifest["adapters"].values()] == ["lang", "math", "sort"]
    assert set(manifest["adapters"]["lora-00"]["accuracy"]) == set(PROFILES["zoo2-tiny"].tasks)
    assert (out / "lora-00" / "adapter_model.safetensors").is_file()
    assert LORA_PROFILES["zoo2"].zoo == "zoo2"  # the profile the black-box experiment uses


def test_lora_of_a_zoo_without_a_repository_is_one_line_and_exit_2(tmp_path):
    import os

    proc = subprocess.run(
        [sys.executable, "-m", "evomerge.cli", "zoo", "build", "--profile", "zoo2-tiny", "--lora"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env={**os.environ, "EVOMERGE_HOME": str(tmp_path)},
    )
    assert proc.returncode == 2 and "'zoo2-tiny' zoo has no LoRA repository" in proc.stderr
    assert not any(tmp_path.iterdir())  # refused before anything was built


def test_the_readme_tables_come_from_the_records(capsys):
    ps = {
        **_record("ps", 0, [1, 0, 0, 0], margin=-0.25),
        "search_scores": {"best": 0.015, "above_zero": 0.5},
        "winner_skills": {"add": 0.5, "encode": 0.25, "decode": 1.0},
    }
    bb = {
        **_record("blackbox", 0, [1, 1, 0, 0], margin=0.25),
        "winner": methods.BLACKBOX_WINNER,
        "validation_loss": 1.5,
        "reference": {
            "name": "best_adapter",
            "label": "best single adapter (lora-02)",
            "heldout": 0.25,
            "validation_loss": 2.0,
        },
        "others": {
            "ablation: without sign flips": {"heldout": 0.0, "validation_loss": 1.75, "margin": 0.5, "margin_se": 0.29}
        },
    }
    methods.print_tables({"records": [ps, bb]})
    out = capsys.readouterr().out
    assert "| ps | best_source | 0.250 (-0.250 ± 0.010) |" in out
    assert "| ps | 0 | ps winner | 0.015 | 0.50 | 0.500 | 0.250 | 1.000 |" in out
    assert "| best single adapter | 0.250, loss 2.000 (lora-02; Evo-Merging − it: +0.250 ± 0.010) |" in out
    assert "| ablation: without sign flips | 0.000, loss 1.750 (Evo-Merging − it: +0.500 ± 0.290) |" in out
