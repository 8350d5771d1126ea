"""A bad experiment file gives a one-line error naming the field and what was expected, and exit status 2."""

import os

import pytest
import yaml
from typer.testing import CliRunner

from evomerge.cli import app
from evomerge.config import load_experiment
from evomerge.errors import read_mapping
from tests.conftest import REPO, write_experiment


def _cli(*args):
    result = CliRunner().invoke(app, list(args))
    return result.exit_code, result.stderr.strip()


def _edit(path, fn):
    cfg = yaml.safe_load(path.read_text())
    fn(cfg)
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.mark.parametrize(
    ("edit", "expected"),
    [
        (lambda c: c.pop("fitness"), "fitness: required field is missing"),
        (lambda c: c["sources"].pop("models"), "sources.models: required field is missing"),
        (lambda c: c["optimizer"].update(generations="many"),
         "optimizer.generations: expected a number, got the string 'many'"),
        (lambda c: c["space"].update(operator="frankenmerge"), "space.operator: unknown operator 'frankenmerge'; "
                                                                 "expected one of"),
        (lambda c: c["optimizer"].update(type="hillclimb"), "optimizer.type: unknown optimizer 'hillclimb'"),
        (lambda c: c["space"].update(weight_range=[1, 0]), "space.weight_range: expected [low, high] with low < high"),
        (lambda c: c.update(colour="blue"), "colour: unknown field"),
        (lambda c: c["fitness"].update(heldout_split="search"), "fitness: search_split and heldout_split must differ"),
        (lambda c: c["fitness"].update(objective="per_task"), "optimizer.type: cma is single-objective but "
                                                              "fitness.objective is per_task (3 objectives); use one of"),
        (lambda c: c["fitness"].update(weights={"add": 1, "chess": 2}), "fitness.weights: expected non-negative "
                                                                        "weights for tasks among"),
        (lambda c: c["fitness"].update(type="python"), "fitness.scorer: type python needs scorer: 'module:function'"),
        (lambda c: c.update(executor={"type": "local", "timeout_s": 60}), "executor.timeout_s: needs type: process"),
        (lambda c: c.update(executor={"type": "slurm"}), "executor.type: unknown executor 'slurm'; expected one of ['local', 'process', 'ray']"),
        (lambda c: c.update(executor={"type": "local", "workers": 4}), "executor.workers: only used with type: ray"),
        (lambda c: c["optimizer"].update(steady_state=True), "optimizer.steady_state: cma works in whole "
                                                             "generations; use one of"),
        (lambda c: c["optimizer"].update(sigma0=-1), "optimizer.sigma0: Input should be greater than 0"),
        (lambda c: c["fitness"].update(search_subset=10), "fitness.search_subset: use either search_subset"),
        # one task's data under a second name counted twice in the objective, silently
        (lambda c: c["fitness"]["tasks"].update(again=c["fitness"]["tasks"]["add"]),
         "fitness.tasks.again: the same task as fitness.tasks.add"),
    ],
)
def test_invalid_fields_are_named(tmp_path, tiny_task_dir, edit, expected):
    exp = _edit(write_experiment(tmp_path / "e.yaml", tiny_task_dir), edit)
    for command in ("validate", "run"):
        code, err = _cli(command, str(exp), *(["--run-dir", str(tmp_path / "r")] if command == "run" else []))
        assert code == 2, err
        assert expected in err
        assert len(err.splitlines()) == 1, err
    assert not (tmp_path / "r").exists()  # nothing was created for an invalid experiment


def test_missing_model_path_is_named(tmp_path, tiny_task_dir):
    exp = write_experiment(tmp_path / "e.yaml", tiny_task_dir,
                           sources={"base": "zoo:base", "models": ["zoo:add", "no/such/model"]})
    code, err = _cli("run", str(exp), "--run-dir", str(tmp_path / "r"))
    assert code == 2
    assert "sources.models[1]: model directory" in err and "does not exist" in err
    assert len(err.splitlines()) == 1


@pytest.mark.parametrize("broken", ["base", "models"])
def test_a_source_without_config_json_is_refused_by_validate_plan_and_run(tmp_path, tiny_zoo, tiny_task_dir, broken):
    """`run` refused a source directory without config.json, but `validate` said ok (a source) or crashed with a
    traceback from the memory plan (the base), and so did `plan`: all three now give run's one line."""
    import shutil

    shutil.copytree(tiny_zoo / "add", tmp_path / "noconfig")
    (tmp_path / "noconfig" / "config.json").unlink()
    sources = ({"base": str(tmp_path / "noconfig"), "models": [str(tiny_zoo / "add"), str(tiny_zoo / "cipher")]}
               if broken == "base" else {"base": "zoo:base", "models": ["zoo:cipher", str(tmp_path / "noconfig")]})
    exp = write_experiment(tmp_path / "e.yaml", tiny_task_dir, sources=sources)
    for command in ("validate", "plan", "run"):
        code, err = _cli(command, str(exp), *(["--run-dir", str(tmp_path / "r")] if command == "run" else []))
        assert code == 2, (command, err)
        assert err == f"error: {tmp_path / 'noconfig'}: no config.json (expected a Hugging Face model directory)", \
            (command, err)
    assert not (tmp_path / "r").exists()


def test_a_source_listed_twice_or_the_base_as_a_source_is_refused(tmp_path, tiny_zoo, tiny_task_dir):
    for sources, field in [({"base": "zoo:base", "models": ["zoo:add", "zoo:cipher", "zoo:add"]}, "sources.models[2]"),
                           ({"base": "zoo:base", "models": ["zoo:add", "zoo:base"]}, "sources.models[1]")]:
        exp = write_experiment(tmp_path / "e.yaml", tiny_task_dir, sources=sources)
        for command in ("validate", "run"):
            code, err = _cli(command, str(exp), *(["--run-dir", str(tmp_path / "r")] if command == "run" else []))
            assert code == 2 and err.startswith(f"error: {field}: ") and "is the same model as" in err, err
            assert len(err.splitlines()) == 1
    assert not (tmp_path / "r").exists()


def test_sources_with_the_same_directory_name_get_distinct_names():
    from pathlib import Path

    from evomerge.runner import model_names

    assert model_names([Path("/m/a/final"), Path("/m/b/final"), Path("/m/add")]) == ["a/final", "b/final", "add"]
    assert model_names([Path("/x/r/final"), Path("/y/r/final")]) == ["x/r/final", "y/r/final"]
    assert model_names([Path("/runs/q/exported/g3-1"), Path("/z/add")]) == ["q g3-1", "add"]


def test_ctrl_c_before_the_run_directory_exists_does_not_offer_a_resume(tmp_path, tiny_zoo, tiny_task_dir,
                                                                         monkeypatch):
    """Ctrl-C while the sources were checked said 'Continue with: evomerge resume DIR' for a DIR never created."""
    import evomerge.runner

    def interrupted(*_args, **_kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(evomerge.runner, "preflight", interrupted)
    exp = write_experiment(tmp_path / "e.yaml", tiny_task_dir)
    code, err = _cli("run", str(exp), "--run-dir", str(tmp_path / "r"))
    assert code == 130 and err == "interrupted; the run had not started, nothing was written", err
    assert not (tmp_path / "r").exists()


def test_unknown_zoo_model_and_missing_file(tmp_path, tiny_task_dir):
    exp = write_experiment(tmp_path / "e.yaml", tiny_task_dir, sources={"base": "zoo:bass", "models": ["zoo:add"]})
    code, err = _cli("run", str(exp), "--run-dir", str(tmp_path / "r"))
    assert code == 2 and "sources.base: unknown zoo model 'zoo:bass'" in err
    code, err = _cli("validate", str(tmp_path / "nope.yaml"))
    assert code == 2 and "experiment file:" in err and "not found" in err


def test_quickstart_is_valid():
    from tests.conftest import REPO

    code, _ = _cli("validate", str(REPO / "experiments" / "quickstart.yaml"), "--config-only")
    assert code == 0


def test_every_shipped_experiment_and_preset_validates():
    from evomerge.config import experiment_kind, load_experiment, read_mapping
    from evomerge.m2n2.digits import load_config
    from tests.conftest import REPO

    from evomerge.blackbox.config import load_blackbox

    for exp in sorted((REPO / "experiments").rglob("*.yaml")):  # templates/ too
        kind = experiment_kind(exp)
        if kind == "m2n2_digits":
            load_config(read_mapping(exp, "experiment file"), str(exp))
        elif kind == "blackbox":
            load_blackbox(exp)
        else:
            load_experiment(exp)
    for preset in sorted((REPO / "search_spaces").glob("*.yaml")):
        from evomerge.config import SpaceConfig

        SpaceConfig.model_validate(read_mapping(preset, "space"))
    for preset in sorted((REPO / "fitness").glob("*.yaml")):
        from evomerge.config import FitnessConfig

        FitnessConfig.model_validate(read_mapping(preset, "fitness"))


def test_every_preset_is_composed_by_a_shipped_experiment():
    """search_spaces/ and fitness/ hold the presets the experiments use, each named by at least one of them."""
    used = set()
    for exp in (REPO / "experiments").rglob("*.yaml"):
        raw = read_mapping(exp, "experiment file")
        used |= {(exp.parent / raw[s]).resolve() for s in ("space", "fitness") if isinstance(raw.get(s), str)}
    presets = {p.resolve() for d in ("search_spaces", "fitness") for p in (REPO / d).glob("*.yaml")}
    assert presets and presets <= used, sorted(str(p) for p in presets - used)


def test_a_fitness_preset_paths_are_relative_to_the_preset(tmp_path, tiny_task_dir):
    """The same preset gives the same tasks to experiments in different directories."""
    (tmp_path / "presets" / "data").mkdir(parents=True)
    (tmp_path / "presets" / "data" / "add").symlink_to(tiny_task_dir / "add")
    (tmp_path / "presets" / "f.yaml").write_text("tasks: {add: data/add}\nmax_examples: 5\n")
    (tmp_path / "deep" / "er").mkdir(parents=True)
    loaded = []
    for where in (tmp_path / "e.yaml", tmp_path / "deep" / "er" / "e.yaml"):
        exp = write_experiment(where, tiny_task_dir,
                               fitness=os.path.relpath(tmp_path / "presets" / "f.yaml", where.parent))
        cfg, base_dir = load_experiment(exp)
        loaded.append((base_dir / cfg.fitness.task_spec("add").source).resolve())
        assert cfg.fitness.max_examples == 5
    assert loaded == [(tiny_task_dir / "add").resolve()] * 2


def test_missing_preset_is_named(tmp_path, tiny_task_dir):
    exp = write_experiment(tmp_path / "e.yaml", tiny_task_dir, space="nope.yaml")
    code, err = _cli("validate", str(exp))
    assert code == 2 and "space (preset file):" in err and "not found" in err


def test_ci_runs_the_readme_test_command_verbatim():
    from tests.conftest import REPO

    ci = (REPO / ".ci" / "run").read_text().strip().splitlines()[-1]
    assert ci.startswith("python3.11 -m venv .venv") and "pytest" in ci
    assert ci in (REPO / "README.md").read_text()


def test_slerp_needs_exactly_one_source(tmp_path, tiny_task_dir):
    exp = write_experiment(tmp_path / "e.yaml", tiny_task_dir,
                           space={"type": "layer_weights", "operator": "slerp", "granularity": "model"})
    code, err = _cli("validate", str(exp))
    assert code == 2 and "space.operator: slerp interpolates between the base and exactly one source" in err


def test_unreadable_files_are_named(tmp_path, tiny_zoo, tiny_task_dir):
    bad_yaml = tmp_path / "bad.yaml"
    bad_yaml.write_text("name: x\nsources: [unclosed\n")
    a_list = tmp_path / "list.yaml"
    a_list.write_text("- name: x\n")
    no_tasks = write_experiment(tmp_path / "t.yaml", tiny_task_dir,
                                fitness={"type": "native", "tasks": {"add": str(tmp_path / "nowhere")}})
    no_module = write_experiment(tmp_path / "m.yaml", tiny_task_dir,
                                 fitness={"type": "python", "scorer": "no_such_module:score",
                                          "tasks": {"add": str(tiny_task_dir / "add")}})
    for path, command, expected in [
        (bad_yaml, "validate", "experiment file: " + str(bad_yaml) + " is not valid YAML"),
        (a_list, "validate", "must hold a YAML mapping of fields"),
        (no_tasks, "run", "fitness.tasks.add: task directory"),
        (no_module, "run", "fitness.scorer: cannot import module 'no_such_module'"),
        # validate is a dry run: what fails in run fails there, with the same line
        (no_tasks, "validate", "fitness.tasks.add: task directory"),
        (no_module, "validate", "fitness.scorer: cannot import module 'no_such_module'"),
    ]:
        code, err = _cli(command, str(path), *(["--run-dir", str(tmp_path / "r")] if command == "run" else []))
        assert code == 2 and expected in err and len(err.splitlines()) == 1, (path, err)
    assert not (tmp_path / "r").exists()


def test_normalizing_operators_get_a_scale_gene_per_group_that_reaches_a_task_arithmetic_weight(tiny_zoo):
    """TIES's weighted mean divides the weights out: without a scale per group the search could never shrink the
    merged task vector the way a tuned task-arithmetic weight does."""
    import numpy as np
    import torch

    from evomerge.config import SpaceConfig
    from evomerge.merge.materialize import Merger
    from evomerge.recipe import Recipe
    from evomerge.sources import SourcePool
    from evomerge.spaces.layer_weights import LayerWeightsSpace

    ties = LayerWeightsSpace(SpaceConfig(operator="ties", granularity="model"), n_sources=1, n_blocks=2)
    assert ties.dim == 3  # weight, density, scale
    dare = LayerWeightsSpace(SpaceConfig(operator="dare_ties", granularity="layer"), n_sources=3, n_blocks=2)
    assert dare.dim == 4 * 6  # not normalized by default: its weights already scale the merge
    normalized = LayerWeightsSpace(SpaceConfig(operator="dare_ties", normalize=True), n_sources=3, n_blocks=2)
    assert normalized.dim == 4 * 7
    assert LayerWeightsSpace(SpaceConfig(operator="ties", scale=False), 3, 2).dim == 4 * 6
    recipe = ties.decode(np.array([0.8, 1.0, 0.15]))  # weight 0.8, density 1, scale 0.3
    assert recipe.groups["all"].scale == pytest.approx(0.3)
    pool = SourcePool(tiny_zoo / "base", [tiny_zoo / "add"])
    ta = Recipe.uniform("task_arithmetic", 1, 0.3)
    merger = Merger(pool)
    for name in pool.base:
        torch.testing.assert_close(merger.merged_tensor(recipe, name), merger.merged_tensor(ta, name))
