"""The contract every registered optimizer keeps (one suite, parametrized over the registry, skipped by capability)."""

import ast
import re

import numpy as np
import pytest

from evomerge.config import OptimizerConfig
from evomerge.optim import OPTIMIZERS
from evomerge.optim.pareto import dominates, pareto_front

# optimizers over a genome alone; m2n2 also needs its mosaic space and per-example scores (tests/test_m2n2.py)
NAMES = sorted(n for n in OPTIMIZERS if not getattr(OPTIMIZERS[n], "needs_space", False))
TARGET = np.array([0.2, 0.8, 0.35, 0.6, 0.5])
STEPS = np.array([0.0, 1.0, 0.25])  # continuous, binary, five levels
GRID_TARGET = np.array([0.35, 1.0, 0.75])  # on the grid of STEPS
A, B = 0.2, 0.8  # the optima (every coordinate) of two conflicting objectives


def _multi(name):
    limit = OPTIMIZERS[name].max_objectives
    return limit is None or limit >= 2


def _sphere(x, target=TARGET):
    x = np.asarray(x)
    return -float(np.sum((x - target[: len(x)]) ** 2))  # maximized at target


def _two(x):
    x = np.asarray(x)
    return -float(np.sum((x - A) ** 2)), -float(np.sum((x - B) ** 2))


def _generation(opt, f=_sphere):
    genomes = opt.ask()
    opt.tell(genomes, [f(x) for x in genomes])
    return genomes


def _on_grid(x, steps):
    x = np.asarray(x)
    d = steps > 0
    k = x[d] / steps[d]
    return bool(np.all((0 <= x) & (x <= 1)) and np.all(np.abs(k - np.rint(k)) < 1e-9))


def _hypervolume_2d(points, ref=(-1.5, -1.5)):
    """Area dominated by `points` (maximized) above `ref`."""
    front = sorted({tuple(points[i]) for i in pareto_front(points)}, reverse=True)  # f1 down, so f2 up
    area, prev_f2 = 0.0, ref[1]
    for f1, f2 in front:
        area += (f1 - ref[0]) * (f2 - prev_f2)
        prev_f2 = f2
    return area


def _climb(opt, f, generations=30, goal=-0.05):
    """Generations until `goal` is reached (at most `generations` after the first): (first best, best)."""
    first = best = max(f(x) for x in _generation(opt, f))
    for _ in range(generations):
        genomes = _generation(opt, f)
        best = max(best, *(f(x) for x in genomes))
        if best > goal and best > first:
            break
    return first, best


# -- the base contract ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
def test_improves_on_a_sphere(name):
    opt = OPTIMIZERS[name](OptimizerConfig(type=name), dim=5, seed=0)
    seen = []

    def f(x):
        seen.append(x)
        return _sphere(x)

    first, best = _climb(opt, f)  # the same budget for all: 31 generations, stopping once the goal is met
    assert all(len(x) == 5 and np.all((0 <= x) & (x <= 1)) for x in seen)
    assert best > first
    assert best > -0.05  # within ~0.1 of the optimum per coordinate


@pytest.mark.parametrize("name", NAMES)
def test_state_round_trip_gives_the_same_next_ask(name):
    cfg = OptimizerConfig(type=name, popsize=6)
    a = OPTIMIZERS[name](cfg, dim=4, seed=3)
    for _ in range(3):
        _generation(a)
    b = OPTIMIZERS[name](cfg, dim=4, seed=99)  # a different seed: everything must come from the state
    b.load_state(a.state())
    assert a.popsize == b.popsize == 6
    for x, y in zip(a.ask(), b.ask(), strict=True):
        np.testing.assert_array_equal(x, y)


@pytest.mark.parametrize("name", NAMES)
def test_same_seed_same_run(name):
    runs = []
    for _ in range(2):
        opt = OPTIMIZERS[name](OptimizerConfig(type=name), dim=3, seed=7)
        runs.append([x.tolist() for _ in range(3) for x in _generation(opt)])
    assert runs[0] == runs[1]


@pytest.mark.parametrize("n_objectives", [1, 2])
@pytest.mark.parametrize("name", NAMES)
def test_state_between_ask_and_tell_resumes_exactly(name, n_objectives):
    """A state taken with candidates asked but not told: a fresh optimizer takes their values and asks the same."""
    cls = OPTIMIZERS[name]
    if n_objectives > 1 and not _multi(name):
        pytest.skip(f"{name} is single-objective")
    steps = STEPS if cls.supports_steps else None  # discrete genes where supported: their bookkeeping too
    f = _sphere if n_objectives == 1 else _two
    cfg = OptimizerConfig(type=name, popsize=4)
    a = cls(cfg, dim=3, seed=3, n_objectives=n_objectives, steps=steps)
    for _ in range(2):
        _generation(a, f)
    asked = a.ask()  # 12 trials once told: past Optuna's 10 startup trials, the next ask is modelled
    b = cls(cfg, dim=3, seed=99, n_objectives=n_objectives, steps=steps)
    b.load_state(a.state())
    values = [f(x) for x in asked]
    a.tell(asked, values)
    b.tell([np.array(x.tolist()) for x in asked], values)  # as a resumed run has them: from storage, as floats
    for x, y in zip(a.ask(), b.ask(), strict=True):
        np.testing.assert_array_equal(x, y)


# -- capabilities ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
def test_discrete_genes_stay_on_the_grid_and_improve(name):
    cls = OPTIMIZERS[name]
    if not cls.supports_steps:
        pytest.skip(f"{name} has no discrete genes")
    opt = cls(OptimizerConfig(type=name), dim=3, seed=0, steps=STEPS)
    seen = []

    def f(x):
        seen.append(x)
        return _sphere(x, GRID_TARGET)

    first, best = _climb(opt, f, goal=-0.02)  # needs both discrete genes right and the continuous one close
    assert seen and all(_on_grid(x, STEPS) for x in seen)
    assert {x[1] for x in seen} <= {0.0, 1.0}
    assert best > first
    assert best > -0.02


@pytest.mark.parametrize("name", NAMES)
def test_two_conflicting_objectives_grow_the_front(name):
    cls = OPTIMIZERS[name]
    if not _multi(name):
        pytest.skip(f"{name} is single-objective")
    opt = cls(OptimizerConfig(type=name, popsize=4), dim=2, seed=0, n_objectives=2)
    points = [_two(x) for x in _generation(opt, _two)]
    first = _hypervolume_2d(points)
    for _ in range(3):  # Optuna samplers start modelling after 10 trials: the last generation is modelled
        genomes = _generation(opt, _two)
        assert all(np.all((0 <= x) & (x <= 1)) for x in genomes)
        points += [_two(x) for x in genomes]
    assert _hypervolume_2d(points) > first
    assert len(pareto_front(points)) >= 2  # a front, not one compromise


def _alternatives(msg: str) -> list[str]:
    m = re.search(r"use one of (\[[^\]]*\])", msg)
    assert m, msg
    return ast.literal_eval(m.group(1))


@pytest.mark.parametrize("name", NAMES)
def test_unsupported_objectives_or_steps_raise_naming_an_alternative(name):
    cls = OPTIMIZERS[name]
    cfg = OptimizerConfig(type=name)
    cases = []
    if cls.max_objectives is not None:
        cases.append({"n_objectives": cls.max_objectives + 1})
    if not cls.supports_steps:
        cases.append({"steps": STEPS})
    if not cases:
        pytest.skip(f"{name} takes any number of objectives and discrete genes")
    for kwargs in cases:
        with pytest.raises(ValueError) as err:
            cls(cfg, dim=3, seed=0, **kwargs)
        msg = str(err.value)
        assert name in msg
        alts = _alternatives(msg)
        assert alts and name not in alts
        for alt in alts:
            OPTIMIZERS[alt](OptimizerConfig(type=alt), dim=3, seed=0, **kwargs)  # it does work


@pytest.mark.parametrize("name", NAMES)
def test_continuous_steps_and_bad_steps(name):
    cls = OPTIMIZERS[name]
    cfg = OptimizerConfig(type=name)
    cls(cfg, dim=3, seed=0, steps=np.zeros(3))  # all continuous: every optimizer takes it
    for bad in (np.zeros(2), np.array([0.0, -0.5, 0.0]), np.array([0.0, 2.0, 0.0]), np.array([0.0, np.nan, 0.0])):
        with pytest.raises(ValueError):
            cls(cfg, dim=3, seed=0, steps=bad)
    with pytest.raises(ValueError):
        cls(cfg, dim=3, seed=0, n_objectives=0)


# -- steady-state (ask_one / tell_one) ---------------------------------------------------------------------------


def _steady_only(name):
    if not OPTIMIZERS[name].steady_state:
        pytest.skip(f"{name} works in whole generations only")


def _listed(genomes):
    return [np.asarray(g).tolist() for g in genomes]  # float lists compare bit for bit (NaN aside)


def _tell_some(opt, flying, n, f, rng):
    """Tells `n` of the outstanding genomes `flying` (kept in the order asked), picked at random, each followed by
    one new `ask_one`; checks `outstanding()` against `flying` throughout."""
    for _ in range(n):
        x = flying.pop(rng.integers(len(flying)))
        opt.tell_one(x, f(x))
        flying.append(opt.ask_one())
        assert _listed(opt.outstanding()) == _listed(flying)


def _steady_climb(opt, f, in_flight=4, generations=30, goal=-0.05):
    """`_climb` one candidate at a time: `in_flight` outstanding, told in a shuffled order, one new `ask_one` after
    each `tell_one`, at most `_climb`'s budget of evaluations. (best of the first popsize told, best, evaluations)."""
    rng = np.random.default_rng(0)
    budget = (generations + 1) * opt.popsize
    flying = [opt.ask_one() for _ in range(in_flight)]
    told = []
    while flying:
        x = flying.pop(rng.integers(len(flying)))
        told.append(f(x))
        opt.tell_one(x, told[-1])
        first, best = max(told[: opt.popsize]), max(told)
        if len(told) > opt.popsize and best > goal and best > first:
            break
        if len(told) + len(flying) < budget:
            flying.append(opt.ask_one())
        assert _listed(opt.outstanding()) == _listed(flying)
    return first, best, len(told)


@pytest.mark.parametrize("name", NAMES)
def test_steady_state_improves_on_a_sphere(name):
    _steady_only(name)
    opt = OPTIMIZERS[name](OptimizerConfig(type=name), dim=5, seed=0)
    seen = []

    def f(x):
        seen.append(x)
        return _sphere(x)

    first, best, evaluations = _steady_climb(opt, f)  # the generation test's budget, 4 candidates in flight
    assert evaluations <= 31 * opt.popsize
    assert all(len(x) == 5 and np.all((0 <= x) & (x <= 1)) for x in seen)
    assert best > first
    assert best > -0.05


@pytest.mark.parametrize("n_objectives", [1, 2])
@pytest.mark.parametrize("name", NAMES)
def test_steady_state_resumes_exactly_with_candidates_outstanding(name, n_objectives):
    """A state taken with 3 genomes outstanding, after 2 of 5 were told out of order: a fresh optimizer of another
    seed takes the remaining ones, in yet another order, and asks exactly what the original does."""
    cls = OPTIMIZERS[name]
    _steady_only(name)
    if n_objectives > 1 and not _multi(name):
        pytest.skip(f"{name} is single-objective")
    steps = STEPS if cls.supports_steps else None
    f = _sphere if n_objectives == 1 else _two
    cfg = OptimizerConfig(type=name, popsize=4)
    a = cls(cfg, dim=3, seed=3, n_objectives=n_objectives, steps=steps)
    rng = np.random.default_rng(1)
    flying = [a.ask_one() for _ in range(4)]
    _tell_some(a, flying, 10, f, rng)  # 10 told: past Optuna's 10 startup trials, what comes next is modelled
    flying.append(a.ask_one())  # 5 outstanding
    for i in (3, 1):  # the 4th and the 2nd asked are told first
        x = flying.pop(i)
        a.tell_one(x, f(x))
    b = cls(cfg, dim=3, seed=99, n_objectives=n_objectives, steps=steps)
    b.load_state(a.state())
    assert _listed(b.outstanding()) == _listed(flying)
    for i in (2, 0, 1):  # the rest, out of order; b has them as a resumed run does: from storage, as floats
        a.tell_one(flying[i], f(flying[i]))
        b.tell_one(np.array(flying[i].tolist()), f(flying[i]))
    assert a.outstanding() == b.outstanding() == []
    for x, y in zip([a.ask_one() for _ in range(2)], [b.ask_one() for _ in range(2)], strict=True):
        np.testing.assert_array_equal(x, y)  # the second one modelled with the first one running (GP: qLogEI)
        if steps is not None:
            assert _on_grid(x, steps)


@pytest.mark.parametrize("name", NAMES)
def test_tell_one_takes_only_outstanding_genomes(name):
    _steady_only(name)
    cls = OPTIMIZERS[name]
    opt = cls(OptimizerConfig(type=name, popsize=4), dim=3, seed=0)
    x, y = opt.ask_one(), opt.ask_one()
    for bad in (x + 1e-12, x[:2], np.concatenate([x, [0.5]])):
        with pytest.raises(ValueError, match="outstanding"):
            opt.tell_one(bad, _sphere(x))
    with pytest.raises(RuntimeError, match="ask_one"):  # a whole generation with candidates in flight
        opt.ask()
    opt.tell_one(y, _sphere(y))  # out of order
    with pytest.raises(ValueError, match="outstanding"):  # told twice
        opt.tell_one(y, _sphere(y))
    assert _listed(opt.outstanding()) == _listed([x])
    opt.tell_one(x.tolist(), _sphere(x))  # any array-like of the same values
    assert opt.outstanding() == []
    genomes = opt.ask()  # nothing outstanding: whole generations again
    with pytest.raises(RuntimeError, match="ask"):  # but not one candidate with a generation out
        opt.ask_one()
    opt.tell(genomes, [_sphere(g) for g in genomes])
    opt.tell_one(opt.ask_one(), 0.0)  # and steady-state once it is told

    # bit-identical genomes outstanding together (one binary gene: bound to repeat) are told in any order
    if cls.supports_steps:
        opt = cls(OptimizerConfig(type=name, popsize=4), dim=1, seed=0, steps=np.array([1.0]))
        flying = [opt.ask_one() for _ in range(6)]
        assert len({float(g[0]) for g in flying}) < len(flying)
        for i in np.random.default_rng(0).permutation(6):
            opt.tell_one(flying[i], float(flying[i][0]))
        assert opt.outstanding() == []
        assert _on_grid(opt.ask_one(), np.array([1.0]))


@pytest.mark.parametrize("name", NAMES)
def test_generation_based_optimizers_refuse_ask_one(name):
    cls = OPTIMIZERS[name]
    if cls.steady_state:
        pytest.skip(f"{name} is steady-state")
    opt = cls(OptimizerConfig(type=name), dim=3, seed=0)
    with pytest.raises(NotImplementedError) as err:
        opt.ask_one()
    with pytest.raises(NotImplementedError):
        opt.tell_one(np.full(3, 0.5), 0.0)
    assert opt.outstanding() == []
    msg = str(err.value)
    assert name in msg
    alts = _alternatives(msg)
    assert alts and name not in alts
    for alt in alts:
        assert OPTIMIZERS[alt].steady_state
        OPTIMIZERS[alt](OptimizerConfig(type=alt), dim=3, seed=0).ask_one()  # it does work
    _generation(opt)  # and whole generations are untouched


# -- pareto_front --------------------------------------------------------------------------------------------


def test_pareto_front_dominance():
    pts = [(1, 1), (2, 0), (0, 2), (0.5, 0.5), (2, 0.5), (1, 1)]
    # (0.5, 0.5) is dominated by (1, 1); (2, 0) by (2, 0.5); the two (1, 1) tie and both stay
    assert pareto_front(pts) == [0, 2, 4, 5]
    assert dominates((2, 0.5), (2, 0)) and not dominates((1, 1), (1, 1)) and not dominates((2, 0), (0, 2))


def test_pareto_front_ties_single_and_empty():
    assert pareto_front([(1.0, 2.0)] * 3) == [0, 1, 2]  # equal points do not dominate each other
    assert pareto_front([(3.0, -1.0)]) == [0]
    assert pareto_front([]) == []
    assert pareto_front([(1,), (3,), (3,), (2,)]) == [1, 2]  # one objective: the maxima
    assert pareto_front(np.array([[0.0, 1.0], [1.0, 0.0], [-1.0, -1.0]])) == [0, 1]
    with pytest.raises(ValueError):
        pareto_front([(1, 2), (1, 2, 3)])


@pytest.mark.parametrize("name", ["cma", "sep_cma", "cma_wm"])
@pytest.mark.parametrize("popsize", [2, 3])
def test_a_small_cma_population_runs_without_warnings(name, popsize):
    """Under 4 the population has one parent; cmaes divides by a zero learning rate there (harmless, a min() over
    finite terms), which used to reach the user as a RuntimeWarning at every run's start and resume."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        opt = OPTIMIZERS[name](OptimizerConfig(type=name, popsize=popsize), dim=3, seed=0)
        for _ in range(3):
            _generation(opt)
        opt.load_state(opt.state())
    assert opt.popsize == popsize
