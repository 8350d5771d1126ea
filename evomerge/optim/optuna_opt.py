"""Optuna samplers behind the generation ask/tell interface: `tpe` (TPESampler), `gp` (GPSampler, Gaussian-process
Bayesian optimization) and `nsga2` (NSGAIISampler, a genetic algorithm for multi-objective search).

One in-memory study per optimizer, maximizing every objective. Gene i is the parameter `x0000`… (zero-padded to at
least four digits), a `FloatDistribution` over [0, 1], with `step=` for a discrete gene (its range ends at its top
level, see `evomerge.optim.base`). A generation is `popsize` trials asked in a row, then told together: GPSampler
sees the asked-not-told ones as running trials (q-batch acquisition); TPE samples them independently of each other;
NSGA-II makes one generation of its own per batch (its population_size is our popsize; it counts completed trials
only, so a batch asked before any is told is one generation). The samplers start from their own defaults (10 random
startup trials for TPE and GP, a random first generation for NSGA-II): `cfg.sigma0` and `cfg.x0` are CMA-ES's only.

All three handle several objectives in Optuna 5 (GPSampler through log-EHVI, whose cost grows quickly with the
number of objectives). The state is the pickled study (storage with every trial, the asked-not-told ones included,
and the sampler with its RNG and, for GPSampler, its cached kernel parameters), zlib-compressed, plus the trial
numbers given out; so it grows linearly with the number of trials.
"""

from __future__ import annotations

import pickle
import warnings
import zlib

import numpy as np
import optuna
from optuna.distributions import FloatDistribution
from optuna.storages import InMemoryStorage
from optuna.trial import TrialState

from evomerge.optim.base import Optimizer, default_popsize, snap_to_grid, top_levels


def _unzip(blob: bytes):
    return pickle.loads(zlib.decompress(blob))


class _Zipped:
    """Pickles its object zlib-compressed and unpickles to the object itself, so that a plain `pickle.loads` of a
    state still unpickles (and so checks) the whole study."""

    def __init__(self, obj):
        self.obj = obj

    def __reduce__(self):
        return _unzip, (zlib.compress(pickle.dumps(self.obj, protocol=pickle.HIGHEST_PROTOCOL)),)


class OptunaOptimizer(Optimizer):
    """Base of the Optuna adapters; a subclass says which sampler (`_sampler`)."""

    max_objectives = None
    supports_steps = True

    def __init__(self, cfg, dim: int, seed: int, n_objectives: int = 1, steps: np.ndarray | None = None):
        super().__init__(cfg, dim, seed, n_objectives, steps)
        optuna.logging.set_verbosity(optuna.logging.WARNING)  # no INFO line per trial
        self._popsize = cfg.popsize or default_popsize(dim)
        width = max(4, len(str(dim - 1)))
        self._names = [f"x{i:0{width}d}" for i in range(dim)]
        top = top_levels(self.steps)
        with warnings.catch_warnings():  # a step that does not divide 1 exactly in decimal: optuna warns, then trims
            warnings.simplefilter("ignore")
            self._dists = {
                n: FloatDistribution(0.0, float(top[i] * s), step=float(s)) if s > 0 else FloatDistribution(0.0, 1.0)
                for i, (n, s) in enumerate(zip(self._names, self.steps, strict=True))
            }
        self._study = optuna.create_study(storage=InMemoryStorage(), sampler=self._sampler(seed),
                                          directions=["maximize"] * self.n_objectives)
        self._pending: list[tuple[int, np.ndarray]] = []  # (trial number, genome given out), by position

    def _sampler(self, seed: int) -> optuna.samplers.BaseSampler:
        raise NotImplementedError

    @property
    def popsize(self) -> int:
        return self._popsize

    def ask(self) -> list[np.ndarray]:
        for number, _ in self._pending:  # asked again without a tell: those candidates are dropped
            self._study.tell(number, state=TrialState.FAIL)
        self._pending = []
        for _ in range(self._popsize):
            trial = self._study.ask(self._dists)
            x = snap_to_grid(np.array([trial.params[n] for n in self._names], dtype=float), self.steps)
            self._pending.append((trial.number, x))
        return [x.copy() for _, x in self._pending]

    def tell(self, genomes: list[np.ndarray], values: list) -> None:
        values = self._check_told(genomes, values)
        if len(genomes) != len(self._pending):
            raise ValueError(f"tell: {len(genomes)} genomes, but the last ask() gave out {len(self._pending)}")
        for i, (g, (_, x)) in enumerate(zip(genomes, self._pending, strict=True)):
            if not np.array_equal(np.asarray(g, dtype=float), x):
                raise ValueError(f"tell: genome {i} is not the one ask() gave out at that position")
        for (number, _), v in zip(self._pending, values, strict=True):
            self._study.tell(number, v if self.n_objectives == 1 else list(v))
        self._pending = []

    def state(self) -> bytes:
        # The study pickles whole: storage (all trials, running ones included), sampler and its RNG state. It grows
        # with every trial (some KB per trial at a few hundred genes); zlib halves it, or better, in milliseconds.
        return pickle.dumps({"study": _Zipped(self._study), "pending": self._pending})

    def load_state(self, blob: bytes) -> None:
        st = pickle.loads(blob)
        self._study, self._pending = st["study"], st["pending"]


class TPEOptimizer(OptunaOptimizer):
    def _sampler(self, seed: int) -> optuna.samplers.BaseSampler:
        return optuna.samplers.TPESampler(seed=seed)


class GPOptimizer(OptunaOptimizer):
    def _sampler(self, seed: int) -> optuna.samplers.BaseSampler:
        return optuna.samplers.GPSampler(seed=seed)


class NSGA2Optimizer(OptunaOptimizer):
    def _sampler(self, seed: int) -> optuna.samplers.BaseSampler:
        return optuna.samplers.NSGAIISampler(seed=seed, population_size=self._popsize)
