"""CMA-ES through the `cmaes` package, with the PS paper's defaults (x0 = 0.5, σ₀ = 1/6, default population).

`cma` is full-covariance CMA-ES; `sep_cma` keeps a diagonal covariance, linear in the genome length, for large
genomes (per-layer, per-tensor spaces of big models)."""

from __future__ import annotations

import pickle

import numpy as np
from cmaes import CMA, SepCMA


class CMAOptimizer:
    """Generation-based ask/tell. Maximizes: `tell` negates for cmaes, which minimizes."""

    impl = CMA

    def __init__(self, cfg, dim: int, seed: int):
        self._es = self.impl(
            mean=np.full(dim, cfg.x0),
            sigma=cfg.sigma0,
            bounds=np.array([[0.0, 1.0]] * dim),
            seed=seed,
            population_size=cfg.popsize,
        )

    @property
    def popsize(self) -> int:
        return self._es.population_size

    def ask(self) -> list[np.ndarray]:
        """One whole generation of genomes."""
        return [self._es.ask() for _ in range(self.popsize)]

    def tell(self, genomes: list[np.ndarray], values: list[float]) -> None:
        self._es.tell([(np.asarray(x), -float(v)) for x, v in zip(genomes, values, strict=True)])

    def state(self) -> bytes:
        # Pickling the optimizer itself drops its RNG (cmaes' __getstate__); its __dict__ keeps it: bit-exact resume.
        return pickle.dumps(self._es.__dict__)

    def load_state(self, blob: bytes) -> None:
        self._es.__dict__.update(pickle.loads(blob))


class SepCMAOptimizer(CMAOptimizer):
    impl = SepCMA
