"""Uniform random search over [0, 1]^n: the baseline every optimizer must beat."""

from __future__ import annotations

import math
import pickle

import numpy as np


class RandomSearch:
    def __init__(self, cfg, dim: int, seed: int):
        self.dim = dim
        self._rng = np.random.default_rng(seed)
        # the same batch size as CMA-ES's default, so that runs compare generation for generation
        self._popsize = cfg.popsize or 4 + int(3 * math.log(dim))

    @property
    def popsize(self) -> int:
        return self._popsize

    def ask(self) -> list[np.ndarray]:
        return list(self._rng.random((self._popsize, self.dim)))

    def tell(self, genomes: list[np.ndarray], values: list[float]) -> None:
        """Random search learns nothing."""

    def state(self) -> bytes:
        return pickle.dumps(self._rng.bit_generator.state)

    def load_state(self, blob: bytes) -> None:
        self._rng.bit_generator.state = pickle.loads(blob)
