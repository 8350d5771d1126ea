"""CMA-ES through the `cmaes` package, with the PS paper's defaults (x0 = 0.5, σ₀ = 1/6, default population).

`cma` is full-covariance CMA-ES; `sep_cma` keeps a diagonal covariance, linear in the genome length, for large
genomes (per-layer, per-tensor spaces of big models). Both are single-objective and continuous.

`cma_wm` is CMA-ES with margin (`cmaes.CMAwM`, Hamano et al. 2022) for genomes with discrete genes (`steps`): the
margin keeps every level of a binary or integer gene reachable, where plain CMA-ES rounding would freeze it. With no
discrete gene (steps None or all zero) CMAwM skips the margin entirely and is plain CMA-ES: the same samples as `cma`
for the same seed.

All three are generation-based (`steady_state = False`): a CMA-ES update ranks one whole generation of samples from
one distribution (cmaes' `tell` takes exactly `popsize` of them), so there is no one-result-at-a-time update.
"""

from __future__ import annotations

import numpy as np
from cmaes import CMA, CMAwM, SepCMA

from evomerge.optim import state as codec
from evomerge.optim.base import Optimizer, snap_to_grid, top_levels


class CMAOptimizer(Optimizer):
    """Generation-based ask/tell. Maximizes: `tell` negates for cmaes, which minimizes."""

    impl = CMA
    steady_state = False  # an update ranks a whole generation

    def __init__(self, cfg, dim: int, seed: int, n_objectives: int = 1, steps: np.ndarray | None = None,
                 x0: np.ndarray | None = None):
        super().__init__(cfg, dim, seed, n_objectives, steps, x0)
        self._cfg, self._seed = cfg, seed
        self._es = self._make(self.x0)

    def _make(self, mean: np.ndarray):
        # a population under 4 has one parent and no rank-mu update: cmaes then divides by a zero learning rate in a
        # min() whose other terms are finite, which is harmless but warns; the result is the same without the warning
        with np.errstate(divide="ignore"):
            return self.impl(mean=mean, sigma=self._cfg.sigma0, bounds=np.array([[0.0, 1.0]] * self.dim),
                             seed=self._seed, population_size=self._cfg.popsize)

    def seed(self, genomes: list[np.ndarray], values: list[float], examples: list | None = None) -> None:
        """The search starts (its mean, before any ask) at the best of the known candidates."""
        values = self._check_told(genomes, values)
        if values:
            self._es = self._make(np.asarray(genomes[int(np.argmax(values))], dtype=float))

    @property
    def popsize(self) -> int:
        return self._es.population_size

    def ask(self) -> list[np.ndarray]:
        """One whole generation of genomes."""
        return [self._es.ask() for _ in range(self.popsize)]

    def tell(self, genomes: list[np.ndarray], values: list, examples: list | None = None) -> None:
        values = self._check_told(genomes, values)
        self._es.tell([(np.asarray(x, dtype=float), -v) for x, v in zip(genomes, values, strict=True)])

    def recommendation(self) -> np.ndarray:
        return np.clip(np.asarray(self._es.mean, dtype=float), 0.0, 1.0)

    def state(self) -> bytes:
        # cmaes' attributes are numbers and arrays, its RNG a RandomState: all data, kept bit-exact. Nothing is
        # kept between ask and tell (tell takes the genomes themselves), so a state taken in between works.
        return codec.encode(self._name(), vars(self._es))

    def load_state(self, blob: bytes) -> None:
        codec.set_attrs(self._es, codec.decode(blob, self._name()), self._name())


class SepCMAOptimizer(CMAOptimizer):
    impl = SepCMA


class CMAwMOptimizer(Optimizer):
    """CMA-ES with margin. `ask` gives out CMAwM's x_eval (discrete genes on their grid) and keeps its x_tell, the
    raw sample the distribution update needs, by position until `tell`; both are part of `state()`."""

    supports_steps = True
    steady_state = False  # an update ranks a whole generation

    def __init__(self, cfg, dim: int, seed: int, n_objectives: int = 1, steps: np.ndarray | None = None,
                 x0: np.ndarray | None = None):
        super().__init__(cfg, dim, seed, n_objectives, steps, x0)
        self._cfg, self._seed = cfg, seed
        self._es = self._make(self.x0)
        self._pending: list[tuple[np.ndarray, np.ndarray]] = []  # (given out, for tell), by position

    def _make(self, mean: np.ndarray) -> CMAwM:
        # a discrete gene's range ends at its top level, so that CMAwM's levels are exactly ours (k·step ≤ 1)
        high = np.where(self.steps > 0, top_levels(self.steps) * self.steps, 1.0)
        with np.errstate(divide="ignore"):  # as in CMAOptimizer._make
            return CMAwM(mean=np.minimum(mean, high), sigma=self._cfg.sigma0,
                         bounds=np.stack([np.zeros(self.dim), high], axis=1), steps=self.steps, seed=self._seed,
                         population_size=self._cfg.popsize)

    def seed(self, genomes: list[np.ndarray], values: list[float], examples: list | None = None) -> None:
        """The search starts (its mean, before any ask) at the best of the known candidates."""
        values = self._check_told(genomes, values)
        if values:
            self._es = self._make(np.asarray(genomes[int(np.argmax(values))], dtype=float))

    @property
    def popsize(self) -> int:
        return self._es.population_size

    def ask(self) -> list[np.ndarray]:
        self._pending = []
        for _ in range(self.popsize):
            x_eval, x_tell = self._es.ask()
            self._pending.append((snap_to_grid(x_eval, self.steps), x_tell))
        return [x.copy() for x, _ in self._pending]

    def tell(self, genomes: list[np.ndarray], values: list, examples: list | None = None) -> None:
        values = self._check_told(genomes, values)
        if len(genomes) != len(self._pending):
            raise ValueError(f"tell: {len(genomes)} genomes, but the last ask() gave out {len(self._pending)}")
        for i, (g, (x_eval, _)) in enumerate(zip(genomes, self._pending, strict=True)):
            if not np.array_equal(np.asarray(g, dtype=float), x_eval):
                raise ValueError(f"tell: genome {i} is not the one ask() gave out at that position")
        self._es.tell([(x_tell, -v) for (_, x_tell), v in zip(self._pending, values, strict=True)])
        self._pending = []

    def state(self) -> bytes:
        # CMAwM wraps a CMA: both attribute sets (the RNG is in the inner one), plus what ask() gave out.
        outer = {k: v for k, v in vars(self._es).items() if k != "_cma"}
        return codec.encode(self._name(), {"cmawm": outer, "cma": vars(self._es._cma),
                                           "pending": [list(p) for p in self._pending]})

    def load_state(self, blob: bytes) -> None:
        st = codec.decode(blob, self._name())
        cma = self._es._cma
        try:
            codec.set_attrs(cma, st["cma"], "cma")
            codec.set_attrs(self._es, {**st["cmawm"], "_cma": cma}, "cmawm")
            self._pending = [(np.asarray(x, dtype=float), np.asarray(t, dtype=float)) for x, t in st["pending"]]
        except (KeyError, TypeError, ValueError) as e:
            raise codec.StateError(f"cma_wm state: {e}") from None
