"""The contract every registered optimizer keeps (one suite, parametrized over the registry)."""

import numpy as np
import pytest

from evomerge.config import OptimizerConfig
from evomerge.optim import OPTIMIZERS

TARGET = np.array([0.2, 0.8, 0.35, 0.6, 0.5])


def _sphere(x):
    x = np.asarray(x)
    return -float(np.sum((x - TARGET[: len(x)]) ** 2))  # maximized at TARGET


def _generation(opt):
    genomes = opt.ask()
    opt.tell(genomes, [_sphere(x) for x in genomes])
    return genomes


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_improves_on_a_sphere(name):
    opt = OPTIMIZERS[name](OptimizerConfig(type=name), dim=5, seed=0)
    first = max(_sphere(x) for x in _generation(opt))
    best = first
    for _ in range(30):
        genomes = _generation(opt)
        assert all(len(x) == 5 and np.all((0 <= x) & (x <= 1)) for x in genomes)
        best = max(best, *(_sphere(x) for x in genomes))
    assert best > first
    assert best > -0.05  # within ~0.1 of the optimum per coordinate


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
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


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_same_seed_same_run(name):
    runs = []
    for _ in range(2):
        opt = OPTIMIZERS[name](OptimizerConfig(type=name), dim=3, seed=7)
        runs.append([x.tolist() for _ in range(3) for x in _generation(opt)])
    assert runs[0] == runs[1]
