"""Uniform random search over [0, 1]^n: the baseline every optimizer must beat.

It learns nothing, so it takes any number of objectives. A discrete gene is uniform over its levels (drawn from the
same uniform number a continuous gene would use, so the random stream does not depend on `steps`).
"""

from __future__ import annotations

import pickle

import numpy as np

from evomerge.optim.base import Optimizer, default_popsize, top_levels


class RandomSearch(Optimizer):
    max_objectives = None
    supports_steps = True

    def __init__(self, cfg, dim: int, seed: int, n_objectives: int = 1, steps: np.ndarray | None = None):
        super().__init__(cfg, dim, seed, n_objectives, steps)
        self._rng = np.random.default_rng(seed)
        # the same batch size as CMA-ES's default, so that runs compare generation for generation
        self._popsize = cfg.popsize or default_popsize(dim)
        self._disc = self.steps > 0
        self._top = top_levels(self.steps)

    @property
    def popsize(self) -> int:
        return self._popsize

    def ask(self) -> list[np.ndarray]:
        u = self._rng.random((self._popsize, self.dim))
        if self._disc.any():
            d, top = self._disc, self._top[self._disc]
            k = np.minimum(np.floor(u[:, d] * (top + 1)), top)  # level k with probability 1/(top + 1)
            u[:, d] = np.minimum(k * self.steps[d], 1.0)
        return list(u)

    def tell(self, genomes: list[np.ndarray], values: list) -> None:
        """Random search learns nothing (the values are checked, then dropped)."""
        self._check_told(genomes, values)

    def state(self) -> bytes:
        return pickle.dumps(self._rng.bit_generator.state)

    def load_state(self, blob: bytes) -> None:
        self._rng.bit_generator.state = pickle.loads(blob)
