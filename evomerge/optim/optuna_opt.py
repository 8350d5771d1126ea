"""Optuna samplers behind the generation ask/tell interface: `tpe` (TPESampler), `gp` (GPSampler, Gaussian-process
Bayesian optimization) and `nsga2` (NSGAIISampler, a genetic algorithm for multi-objective search).

One in-memory study per optimizer, maximizing every objective. Gene i is the parameter `x0000`… (zero-padded to at
least four digits), a `FloatDistribution` over [0, 1], with `step=` for a discrete gene (its range ends at its top
level, see `evomerge.optim.base`). A generation is `popsize` trials asked in a row, then told together: GPSampler
sees the asked-not-told ones as running trials (q-batch acquisition); TPE samples them independently of each other;
NSGA-II makes one generation of its own per batch (its population_size is our popsize; it counts completed trials
only, so a batch asked before any is told is one generation). The samplers start from their own defaults (10 random
startup trials for TPE and GP, a random first generation for NSGA-II): `cfg.sigma0` and `cfg.x0` are CMA-ES's only.

Steady-state: `ask_one` is one `study.ask`, `tell_one` one `study.tell` of the trial that gave that genome out, in
any order; the outstanding ones are running trials, as in a generation. GPSampler conditions each new candidate on
them (qLogEI / qLogEHVI), TPE ignores them, and NSGA-II gives each new trial the generation it counts from the
completed trials: once `popsize` trials of the newest generation are complete, the next ask starts the next one
(its parents are chosen then, from the completed trials, and kept). So a generation holds `popsize` trials plus
those asked while its last ones were running, and a result told after the next generation has started is never a
parent (Optuna's own asynchronous NSGA-II; out-of-order results break nothing).

All three handle several objectives in Optuna 5 (GPSampler through log-EHVI, whose cost grows quickly with the
number of objectives). The state is the pickled study (storage with every trial, the asked-not-told ones included,
and the sampler with its RNG and, for GPSampler, its cached kernel parameters), zlib-compressed, plus the trial
numbers given out (by generation and by `ask_one`); so it grows linearly with the number of trials.
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
    steady_state = True

    def __init__(self, cfg, dim: int, seed: int, n_objectives: int = 1, steps: np.ndarray | None = None,
                 x0: np.ndarray | None = None):
        super().__init__(cfg, dim, seed, n_objectives, steps, x0)
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
        self._outstanding: list[tuple[int, np.ndarray]] = []  # the same for ask_one, in the order asked

    def _sampler(self, seed: int) -> optuna.samplers.BaseSampler:
        raise NotImplementedError

    @property
    def popsize(self) -> int:
        return self._popsize

    def _ask_trial(self) -> tuple[int, np.ndarray]:
        trial = self._study.ask(self._dists)
        return trial.number, snap_to_grid(np.array([trial.params[n] for n in self._names], dtype=float), self.steps)

    def _tell_trial(self, number: int, value) -> None:
        self._study.tell(number, value if self.n_objectives == 1 else list(value))

    def seed(self, genomes: list[np.ndarray], values: list, examples: list | None = None) -> None:
        """The known candidates become completed trials (as `enqueue_trial`'d ones would, without scoring them
        again); genomes are on the grid (the search snaps them)."""
        values = self._check_told(genomes, values)
        for g, v in zip(genomes, values, strict=True):
            params = {n: float(x) for n, x in zip(self._names, np.asarray(g, dtype=float), strict=True)}
            self._study.add_trial(optuna.trial.create_trial(
                params=params, distributions=self._dists,
                **({"value": v} if self.n_objectives == 1 else {"values": list(v)})))

    def ask(self) -> list[np.ndarray]:
        if self._outstanding:
            raise RuntimeError(f"ask: {len(self._outstanding)} genomes of ask_one are still outstanding; tell_one "
                               f"them first (whole generations and steady-state do not interleave)")
        for number, _ in self._pending:  # asked again without a tell: those candidates are dropped
            self._study.tell(number, state=TrialState.FAIL)
        self._pending = []
        for _ in range(self._popsize):
            self._pending.append(self._ask_trial())
        return [x.copy() for _, x in self._pending]

    def tell(self, genomes: list[np.ndarray], values: list) -> None:
        values = self._check_told(genomes, values)
        if len(genomes) != len(self._pending):
            raise ValueError(f"tell: {len(genomes)} genomes, but the last ask() gave out {len(self._pending)}")
        for i, (g, (_, x)) in enumerate(zip(genomes, self._pending, strict=True)):
            if not np.array_equal(np.asarray(g, dtype=float), x):
                raise ValueError(f"tell: genome {i} is not the one ask() gave out at that position")
        for (number, _), v in zip(self._pending, values, strict=True):
            self._tell_trial(number, v)
        self._pending = []

    def ask_one(self) -> np.ndarray:
        if self._pending:
            raise RuntimeError(f"ask_one: the {len(self._pending)} genomes of the last ask() are not told yet; tell "
                               f"them first (whole generations and steady-state do not interleave)")
        self._outstanding.append(self._ask_trial())
        return self._outstanding[-1][1].copy()

    def tell_one(self, genome: np.ndarray, value) -> None:
        """Tells the trial of `genome`: the first outstanding one (in the order asked) equal to it value for value.
        Bit-identical outstanding genomes are the same candidate, so whichever of their trials is told does not
        matter (their Optuna parameters could differ in a last bit only, where a discrete gene was snapped)."""
        value = self._check_one(value)
        i = self._match(genome, [x for _, x in self._outstanding])
        if i is None:
            raise ValueError(f"tell_one: that genome is not one of the {len(self._outstanding)} outstanding ones "
                             f"of ask_one")
        number, _ = self._outstanding.pop(i)
        self._tell_trial(number, value)

    def outstanding(self) -> list[np.ndarray]:
        return [x.copy() for _, x in self._outstanding]

    def state(self) -> bytes:
        # The study pickles whole: storage (all trials, running ones included), sampler and its RNG state. It grows
        # with every trial (some KB per trial at a few hundred genes); zlib halves it, or better, in milliseconds.
        return pickle.dumps({"study": _Zipped(self._study), "pending": self._pending,
                             "outstanding": self._outstanding})

    def load_state(self, blob: bytes) -> None:
        st = pickle.loads(blob)
        self._study, self._pending = st["study"], st["pending"]
        self._outstanding = st.get("outstanding", [])  # absent from states of before steady-state


class TPEOptimizer(OptunaOptimizer):
    def _sampler(self, seed: int) -> optuna.samplers.BaseSampler:
        return optuna.samplers.TPESampler(seed=seed)


class GPOptimizer(OptunaOptimizer):
    def _sampler(self, seed: int) -> optuna.samplers.BaseSampler:
        return optuna.samplers.GPSampler(seed=seed)


class NSGA2Optimizer(OptunaOptimizer):
    def _sampler(self, seed: int) -> optuna.samplers.BaseSampler:
        return optuna.samplers.NSGAIISampler(seed=seed, population_size=self._popsize)
