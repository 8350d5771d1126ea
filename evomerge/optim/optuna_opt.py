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
number of objectives). The state is data (`evomerge.optim.state`), as Optuna's own database storages keep a study:
every trial (state, parameters, distributions as Optuna's JSON, values, attributes; the asked-not-told ones as
running), the study's system attributes (NSGA-II's parent cache), the sampler's random states and, for GPSampler,
its cached kernel parameters, plus the trial numbers given out (by generation and by `ask_one`). Loading rebuilds a
fresh study and sampler from it, so a resumed run asks exactly what the original would have. It grows linearly
with the number of trials.
"""

from __future__ import annotations

import warnings
from datetime import datetime
from types import SimpleNamespace

import numpy as np
import optuna
from optuna.distributions import BaseDistribution, FloatDistribution, distribution_to_json, json_to_distribution
from optuna.samplers._lazy_random_state import LazyRandomState
from optuna.storages import InMemoryStorage
from optuna.trial import FrozenTrial, TrialState

from evomerge.optim import state as codec
from evomerge.optim.base import Optimizer, default_popsize, snap_to_grid, top_levels


def _random_states(sampler) -> dict[str, LazyRandomState]:
    """Every random stream of a sampler, by attribute path (its own, its fallback sampler's, its strategies')."""
    out = {}
    for name, v in sorted(vars(sampler).items()):
        if isinstance(v, LazyRandomState):
            out[name] = v
        elif type(v).__module__.startswith("optuna.") and hasattr(v, "__dict__") and not isinstance(v, type):
            out.update({f"{name}.{k}": r for k, r in sorted(vars(v).items()) if isinstance(r, LazyRandomState)})
    return out


def _trial_data(t: FrozenTrial) -> dict:
    return {"state": t.state.name, "values": t.values, "params": t.params,
            "distributions": {k: distribution_to_json(d) for k, d in t.distributions.items()},
            "user_attrs": t.user_attrs, "system_attrs": t.system_attrs,
            "intermediate_values": {str(k): v for k, v in t.intermediate_values.items()},
            "start": t.datetime_start and t.datetime_start.isoformat(),
            "complete": t.datetime_complete and t.datetime_complete.isoformat()}


def _trial(d: dict) -> FrozenTrial:
    return FrozenTrial(
        number=-1, trial_id=-1, state=TrialState[d["state"]], value=None, values=d["values"], params=d["params"],
        distributions={k: json_to_distribution(v) for k, v in d["distributions"].items()},
        user_attrs=d["user_attrs"], system_attrs=d["system_attrs"],
        intermediate_values={int(k): v for k, v in d["intermediate_values"].items()},
        datetime_start=d["start"] and datetime.fromisoformat(d["start"]),
        datetime_complete=d["complete"] and datetime.fromisoformat(d["complete"]))


def _kernel_cache(gprs) -> list | None:
    """GPSampler's fitted kernel parameters (the start of its next fit), as arrays."""
    if gprs is None:
        return None
    return [{k: getattr(g, k).detach().cpu().numpy() for k in ("inverse_squared_lengthscales", "kernel_scale",
                                                                "noise_var")} for g in gprs]


def _kernel_uncache(saved: list | None) -> list | None:
    """The cache back: GPSampler reads nothing from a cached regressor but these three tensors."""
    if saved is None:
        return None
    import torch

    return [SimpleNamespace(**{k: torch.from_numpy(np.asarray(v, dtype=float)) for k, v in g.items()})
            for g in saved]


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
            self._dists: dict[str, BaseDistribution] = {
                n: FloatDistribution(0.0, float(top[i] * s), step=float(s)) if s > 0 else FloatDistribution(0.0, 1.0)
                for i, (n, s) in enumerate(zip(self._names, self.steps, strict=True))
            }
        self._seed = seed
        self._study = self._new_study()
        self._pending: list[tuple[int, np.ndarray]] = []  # (trial number, genome given out), by position
        self._outstanding: list[tuple[int, np.ndarray]] = []  # the same for ask_one, in the order asked

    def _sampler(self, seed: int) -> optuna.samplers.BaseSampler:
        raise NotImplementedError

    def _new_study(self) -> optuna.Study:
        return optuna.create_study(storage=InMemoryStorage(), sampler=self._sampler(self._seed),
                                   directions=["maximize"] * self.n_objectives)

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

    def tell(self, genomes: list[np.ndarray], values: list, examples: list | None = None) -> None:
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

    def tell_one(self, genome: np.ndarray, value, examples: list | None = None) -> None:
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
        study, sampler = self._study, self._study.sampler
        return codec.encode(self._name(), {
            "trials": [_trial_data(t) for t in study.get_trials(deepcopy=False)],
            "study_system_attrs": study._storage.get_study_system_attrs(study._study_id),
            "random": {k: r.rng for k, r in _random_states(sampler).items()},
            "gp_cache": _kernel_cache(getattr(sampler, "_gprs_cache_list", None)),
            "pending": [[n, x] for n, x in self._pending], "outstanding": [[n, x] for n, x in self._outstanding]})

    def load_state(self, blob: bytes) -> None:
        st = codec.decode(blob, self._name())
        try:
            study = self._new_study()
            storage, sid = study._storage, study._study_id
            for d in st["trials"]:
                storage.create_new_trial(sid, template_trial=_trial(d))
            for k, v in st["study_system_attrs"].items():
                storage.set_study_system_attr(sid, k, v)
            streams = _random_states(study.sampler)
            if set(streams) != set(st["random"]):
                raise ValueError(f"random streams {sorted(st['random'])}, expected {sorted(streams)}")
            for k, rs in st["random"].items():
                streams[k].rng.set_state(rs.get_state())
            if hasattr(study.sampler, "_gprs_cache_list"):
                study.sampler._gprs_cache_list = _kernel_uncache(st["gp_cache"])
            pending = [(int(n), np.asarray(x, dtype=float).reshape(self.dim)) for n, x in st["pending"]]
            outstanding = [(int(n), np.asarray(x, dtype=float).reshape(self.dim)) for n, x in st["outstanding"]]
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise codec.StateError(f"{self._name()} state: {e}") from None
        self._study, self._pending, self._outstanding = study, pending, outstanding


class TPEOptimizer(OptunaOptimizer):
    def _sampler(self, seed: int) -> optuna.samplers.BaseSampler:
        return optuna.samplers.TPESampler(seed=seed)


class GPOptimizer(OptunaOptimizer):
    def _sampler(self, seed: int) -> optuna.samplers.BaseSampler:
        return optuna.samplers.GPSampler(seed=seed)


class NSGA2Optimizer(OptunaOptimizer):
    def _sampler(self, seed: int) -> optuna.samplers.BaseSampler:
        return optuna.samplers.NSGAIISampler(seed=seed, population_size=self._popsize)
