"""CMA-ES through the `cmaes` package, with the PS paper's defaults (x0 = 0.5, σ₀ = 1/6, default population)."""

from __future__ import annotations

import pickle

import numpy as np
from cmaes import CMA


class CMAOptimizer:
    """Generation-based ask/tell. Maximizes: `tell` negates for cmaes, which minimizes."""

    def __init__(self, cfg, dim: int, seed: int):
        self._cma = CMA(
            mean=np.full(dim, cfg.x0),
            sigma=cfg.sigma0,
            bounds=np.array([[0.0, 1.0]] * dim),
            seed=seed,
            population_size=cfg.popsize,
        )

    @property
    def popsize(self) -> int:
        return self._cma.population_size

    def ask(self) -> list[np.ndarray]:
        """One whole generation of genomes."""
        return [self._cma.ask() for _ in range(self.popsize)]

    def tell(self, genomes: list[np.ndarray], values: list[float]) -> None:
        self._cma.tell([(np.asarray(x), -float(v)) for x, v in zip(genomes, values, strict=True)])

    def state(self) -> bytes:
        # Pickling CMA itself drops its RNG (cmaes' __getstate__); its __dict__ keeps it, for bit-exact resume.
        return pickle.dumps(self._cma.__dict__)

    def load_state(self, blob: bytes) -> None:
        self._cma.__dict__.update(pickle.loads(blob))
