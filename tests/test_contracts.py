"""The contract of every extension point, run over its registry: a new entry is tested the moment it is registered.

- spaces (`evomerge.spaces.SPACES`, contract in `evomerge.spaces.base`): decode is valid (the recipe builds a model
  on the tiny zoo) and deterministic for random genomes, bounds hold, the start point decodes;
- scorers (`evomerge.fitness.SCORERS`, contract in `evomerge.fitness.base`): one score per example, in [0, 1],
  deterministic, on the tiny zoo's models and tasks;
- executors (`evomerge.executors.EXECUTORS`, contract in `evomerge.executors.base`): the same evaluations as the
  local one, a failing candidate included;
- optimizers (`evomerge.optim.OPTIMIZERS`): the declared capabilities and the one `tell` signature here; the
  behaviour in tests/test_optimizers.py (and tests/test_m2n2.py for m2n2), parametrized over the same registry;
- operators (`evomerge.merge.OPERATORS`): tests/test_operators.py, parametrized over the registry.

Each registry has a table of cases below (how to build one entry on the tiny zoo); a registered name without a
case fails `test_every_entry_has_a_case`, so that no entry goes untested.
"""

from __future__ import annotations

import inspect
import textwrap
from pathlib import Path

import numpy as np
import pytest

from evomerge.config import ExecutorConfig, FitnessConfig, SpaceConfig
from evomerge.executors import EXECUTORS, Job, LocalExecutor
from evomerge.executors.worker import FlowBuilder, MergeBuilder
from evomerge.fitness import SCORERS, Score, Scorer, make_scorer
from evomerge.merge import OPERATORS
from evomerge.optim import OPTIMIZERS
from evomerge.optim.base import Optimizer
from evomerge.recipe import FlowRecipe, Recipe, parse_recipe
from evomerge.spaces import SPACES, SearchSpace
from evomerge.store import EvalKind

TASKS = ("add", "cipher", "reverse")
EXPERTS = ("add", "cipher", "reverse")

# -- cases: how to build each registered entry on the tiny zoo ------------------------------------------------------

# space name -> (space section, whether it runs over a data flow's models)
SPACE_CASES = {
    "layer_weights": ({"type": "layer_weights", "operator": "dare_ties", "granularity": "layer"}, False),
    "data_flow": ({"type": "data_flow", "flow": {"repeats": 2, "scaling": "matrix"}}, True),
    "mosaic": ({"type": "mosaic"}, False),
}

PYTHON_SCORER = textwrap.dedent('''
    import torch

    def likelihood(model, tokenizer, task, examples):
        """exp(-mean token loss) of each example's answer: a real score of the model in (0, 1]."""
        out = []
        with torch.no_grad():
            for ex in examples:
                ids = tokenizer.encode(ex["prompt"] + ex["answer"], return_tensors="pt")
                out.append(float(torch.exp(-model(input_ids=ids, labels=ids).loss)))
        return out
''')


def _lm_eval_files(task_dir: Path, tmp: Path) -> dict[str, str]:
    from tests.test_lm_eval import _lm_eval_tasks

    return _lm_eval_tasks(task_dir, tmp)


# scorer name -> fitness section builder (task_dir, tmp_path) -> dict
SCORER_CASES = {
    "native": lambda d, tmp: {"type": "native", "tasks": {t: str(d / t) for t in TASKS}},
    "python": lambda d, tmp: {"type": "python", "scorer": "contract_scorer:likelihood",
                              "tasks": {t: str(d / t) for t in TASKS}},
    "lm_eval": lambda d, tmp: {"type": "lm_eval", "tasks": _lm_eval_files(d, tmp)},
}

# executor name -> executor section
EXECUTOR_CASES = {
    "local": {"type": "local"},
    "process": {"type": "process"},
    "ray": {"type": "ray", "workers": 2, "cpus_per_worker": 0.5},
}


@pytest.mark.parametrize(("registry", "cases"), [(SPACES, SPACE_CASES), (SCORERS, SCORER_CASES),
                                                 (EXECUTORS, EXECUTOR_CASES)])
def test_every_entry_has_a_case(registry, cases):
    assert sorted(cases) == sorted(registry)


# -- spaces -----------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def builders(tiny_zoo):
    """The workers' model builders over the tiny zoo: parameter space (base + experts) and data flow (two experts)."""
    merge = MergeBuilder(tiny_zoo / "base", [tiny_zoo / m for m in EXPERTS], "cpu", None, None)
    flow = FlowBuilder([tiny_zoo / "add", tiny_zoo / "reverse"], "cpu", None)
    return {False: merge, True: flow}


def _space(name: str, builders, tiny_zoo) -> tuple[SearchSpace, object]:
    section, flow = SPACE_CASES[name]
    cls = SPACES[name]
    builder = builders[flow]
    extra = {"sources": [tiny_zoo / m for m in EXPERTS]} if cls.needs_sources else {}
    space = cls(SpaceConfig.model_validate(section), *builder.shape, **extra)
    assert isinstance(space, SearchSpace)
    return space, builder


def _genomes(space: SearchSpace, n: int = 4) -> list[np.ndarray]:
    rng = np.random.default_rng(7)
    return [rng.random(space.dim) for _ in range(n)]


def _finite_logits(model, tokenizer) -> bool:
    import torch

    ids = torch.tensor([tokenizer.encode("12+34=")])
    with torch.no_grad():
        return bool(torch.isfinite(model(input_ids=ids).logits).all())


@pytest.mark.parametrize("name", sorted(SPACES))
def test_space_decodes_random_genomes_into_models_deterministically(name, builders, tiny_zoo):
    space, builder = _space(name, builders, tiny_zoo)
    assert space.dim >= 1
    for i, x in enumerate(_genomes(space)):
        recipe = space.decode(x, seed=i)
        assert isinstance(recipe, Recipe | FlowRecipe)
        assert parse_recipe(recipe.to_json()) == recipe  # valid: it validates and round-trips
        assert space.decode(x.copy(), seed=i).to_json() == recipe.to_json()  # deterministic
        model = builder.build(recipe, check_finite=True)  # and it builds a model
        assert _finite_logits(model, builder.tokenizer)


@pytest.mark.parametrize("name", sorted(SPACES))
def test_space_bounds_hold(name, builders, tiny_zoo):
    space, _ = _space(name, builders, tiny_zoo)
    with pytest.raises(ValueError, match="genome"):
        space.decode(np.zeros(space.dim + 1))
    if space.bounded:  # genes live in [0, 1]: anything outside is the nearest bound
        for x in _genomes(space):
            wild = x * 3 - 1
            assert space.decode(wild).to_json() == space.decode(np.clip(wild, 0, 1)).to_json()
    steps = space.steps
    if steps is not None:
        assert steps.shape == (space.dim,) and np.all(steps >= 0) and np.all(steps <= 1)


@pytest.mark.parametrize("name", sorted(SPACES))
def test_space_start_point_decodes(name, builders, tiny_zoo):
    space, builder = _space(name, builders, tiny_zoo)
    x0 = space.x0
    if x0 is None:  # the optimizer's own start, optimizer.x0 in every gene
        x0 = np.full(space.dim, 0.5)
    assert x0.shape == (space.dim,) and np.all((0 <= x0) & (x0 <= 1))
    model = builder.build(space.decode(x0), check_finite=True)
    assert _finite_logits(model, builder.tokenizer)


# -- scorers ----------------------------------------------------------------------------------------------------------


def _scorer(name: str, tiny_zoo, tiny_task_dir, tmp_path, split: str = "search") -> tuple[Scorer, dict[str, int]]:
    from transformers import AutoTokenizer

    from evomerge.fitness.lm_eval_scorer import load_task_config
    from evomerge.fitness.tasks import load_split

    (tmp_path / "contract_scorer.py").write_text(PYTHON_SCORER)
    cfg = FitnessConfig.model_validate({**SCORER_CASES[name](tiny_task_dir, tmp_path), "max_examples": 12})
    if name == "lm_eval":  # lm-eval scores the first `limit` documents of a task config
        tasks = {t: load_task_config(Path(cfg.task_spec(t).source), split, t) for t in TASKS}
    else:
        tasks = {t: load_split(tiny_task_dir / t, split, t)[:12] for t in TASKS}
    tok = AutoTokenizer.from_pretrained(tiny_zoo / "base")
    scorer = make_scorer(tok, tasks, cfg, tmp_path, limit=12)
    assert isinstance(scorer, SCORERS[name])
    return scorer, dict.fromkeys(TASKS, 12)


@pytest.mark.parametrize("name", sorted(SCORERS))
def test_scorer_gives_one_score_per_example_in_range_deterministically(name, tiny_zoo, tiny_task_dir, tmp_path):
    from transformers import AutoModelForCausalLM

    scorer, sizes = _scorer(name, tiny_zoo, tiny_task_dir, tmp_path)
    for model_name in ("base", "add"):
        model = AutoModelForCausalLM.from_pretrained(tiny_zoo / model_name).eval()
        score = scorer.score(model)
        assert isinstance(score, Score)
        assert {t: len(v) for t, v in score.per_example.items()} == sizes
        assert all(0.0 <= v <= 1.0 for vs in score.per_example.values() for v in vs)
        assert score.per_task == pytest.approx({t: float(np.mean(v)) for t, v in score.per_example.items()})
        assert score.objective == pytest.approx(float(np.mean(list(score.per_task.values()))))
        again = scorer.score(model)
        assert again.per_example == score.per_example
    # a real scorer tells the add expert from the base on the add task
    if name != "python":
        assert score.per_task["add"] > 0


# -- executors --------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def worker_args(tiny_zoo, tiny_task_dir):
    from evomerge.fitness.tasks import load_split

    fitness = FitnessConfig.model_validate({"type": "native", "tasks": {t: str(tiny_task_dir / t) for t in TASKS},
                                            "max_examples": 10})
    tasks = {"search": {t: load_split(tiny_task_dir / t, "search", t)[:10] for t in TASKS}}
    return {"base": tiny_zoo / "base", "sources": [tiny_zoo / m for m in EXPERTS], "tasks": tasks,
            "fitness_cfg": fitness}


def _jobs() -> list[Job]:
    recipes = [Recipe.uniform("task_arithmetic", 3, w) for w in (0.2, 0.6)]
    recipes.append(Recipe.uniform("ties", 3, 0.5, density=0.5))
    jobs = [Job(EvalKind.SEARCH, 0, i, f"c{i}", "search", r, cache_key=f"k{i}") for i, r in enumerate(recipes)]
    # a recipe without the groups of this model: a failed evaluation, never an exception
    bad = Recipe(operator="linear", granularity="layer", groups={"nope": {"weights": (1.0, 0.0, 0.0)}})
    return [*jobs, Job(EvalKind.SEARCH, 0, len(jobs), "bad", "search", bad, cache_key="bad")]


def _outcome(ev) -> tuple:
    return ev.kind, ev.label, ev.split, ev.status, ev.objective, ev.per_example, ev.recipe, ev.cache_key


@pytest.fixture(scope="module")
def local_evaluations(worker_args):
    ex = LocalExecutor(worker_args)
    try:
        return {ev.label: ev for ev in ex.run(_jobs())}
    finally:
        ex.close()


@pytest.mark.parametrize("name", sorted(EXECUTORS))
def test_executor_gives_the_local_evaluations(name, worker_args, local_evaluations):
    assert local_evaluations["bad"].status == "failed" and "no parameters for group" in local_evaluations["bad"].error
    assert all(local_evaluations[f"c{i}"].status == "ok" for i in range(3))
    cfg = ExecutorConfig.model_validate(EXECUTOR_CASES[name])
    ex = EXECUTORS[name].from_config(cfg, worker_args)
    try:
        assert isinstance(ex, EXECUTORS[name])
        assert ex.shape == (3, local_shape(worker_args))
        jobs = _jobs()
        for job in jobs:
            ex.submit(job)
        got = []
        while ex.pending():
            got.append(ex.next())
        assert sorted(e.label for e in got) == sorted(j.label for j in jobs)  # each exactly once
        assert {e.label: _outcome(e) for e in got} == {k: _outcome(v) for k, v in local_evaluations.items()}
        assert all(s["jobs"] >= 0 for s in ex.telemetry())
    finally:
        ex.close()


def local_shape(worker_args) -> int:
    from evomerge.sources import SourcePool

    return SourcePool(worker_args["base"], worker_args["sources"]).n_blocks


# -- optimizers -------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_optimizer_declares_its_capabilities_and_tells_one_way(name):
    cls = OPTIMIZERS[name]
    assert issubclass(cls, Optimizer)
    for flag in ("supports_steps", "steady_state", "needs_space", "wants_examples", "keeps_archive"):
        assert isinstance(getattr(cls, flag), bool), flag
    assert cls.max_objectives is None or cls.max_objectives >= 1
    base = {m: list(inspect.signature(getattr(Optimizer, m)).parameters) for m in ("tell", "tell_one")}
    for method, params in base.items():
        assert list(inspect.signature(getattr(cls, method)).parameters) == params, method
    init = inspect.signature(cls.__init__).parameters
    assert {"cfg", "dim", "seed", "n_objectives", "steps", "x0"} <= set(init)
    assert ("space" in init) == cls.needs_space


@pytest.mark.parametrize("name", sorted(OPERATORS))
def test_operator_declares_what_it_uses(name):
    op = OPERATORS[name]
    assert isinstance(op.uses_density, bool) and isinstance(op.uses_base, bool)
