"""A bad experiment file gives a one-line error naming the field and what was expected, and exit status 2."""

import pytest
import yaml
from typer.testing import CliRunner

from evomerge.cli import app
from tests.conftest import write_experiment


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
        (lambda c: c["optimizer"].update(generations="many"), "optimizer.generations: Input should be a valid integer"),
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
        (lambda c: c.update(executor={"type": "slurm"}), "executor.type: Input should be 'local', 'process' or 'ray'"),
        (lambda c: c.update(executor={"type": "local", "workers": 4}), "executor.workers: only used with type: ray"),
        (lambda c: c["optimizer"].update(steady_state=True), "optimizer.steady_state: cma works in whole "
                                                             "generations; use one of"),
        (lambda c: c["optimizer"].update(sigma0=-1), "optimizer.sigma0: Input should be greater than 0"),
        (lambda c: c["fitness"].update(search_subset=10), "fitness.search_subset: use either search_subset"),
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
