"""M2N2's mosaic space: a genome is a [U, K] matrix of per-unit coefficients over the K sources, flattened
(see `evomerge.m2n2.mosaic`); a unit is a tensor, or with `space.rows: R` a block of R rows of one. It decodes to an
ordinary recipe, operator linear without normalization and one group per unit (granularity 'tensor', or 'rows'):
unit u = Σₖ C[u, k]·θₖ[u], which the merge engine materializes as it does any recipe. The genome holds the coefficients themselves (≥ 0; a SLERP child's coefficients may sum to a little more
than 1), not numbers mapped from [0, 1]: only the m2n2 optimizer proposes them."""

from __future__ import annotations

from functools import partial
from pathlib import Path

import numpy as np

from evomerge.m2n2.mosaic import MosaicBackend, source_gram, source_units
from evomerge.recipe import GroupParams, Recipe


class MosaicSpace:
    needs_sources = True  # the runner passes the source model directories (tensor names; Gram matrices)

    def __init__(self, cfg, n_sources: int, n_blocks: int, sources: list[Path] | None = None):
        if not sources:
            raise ValueError("the mosaic space needs the source model directories")
        if len(sources) != n_sources:
            raise ValueError(f"{len(sources)} source directories for {n_sources} sources")
        self.cfg, self.k, self.sources = cfg, n_sources, [Path(s) for s in sources]
        self.rows = getattr(cfg, "rows", None)
        self.units = source_units(self.sources[0], self.rows)
        self.names = [u.group for u in self.units]  # the recipe's group names
        self.sizes = [u.size for u in self.units]

    @property
    def dim(self) -> int:
        return len(self.names) * self.k

    def backend(self) -> MosaicBackend:
        return MosaicBackend(self.sizes, partial(source_gram, self.sources, self.units))

    def one_hot(self, k: int) -> np.ndarray:
        """Source k itself, as a mosaic."""
        c = np.zeros((len(self.names), self.k))
        c[:, k] = 1.0
        return c

    def decode(self, x: np.ndarray, seed: int = 0) -> Recipe:
        x = np.asarray(x, dtype=float)
        if x.shape != (self.dim,):
            raise ValueError(f"genome has shape {x.shape}, expected ({self.dim},)")
        c = x.reshape(len(self.names), self.k)
        groups = {n: GroupParams(weights=tuple(float(v) for v in row)) for n, row in zip(self.names, c, strict=True)}
        return Recipe(operator="linear", granularity="tensor" if self.rows is None else "rows", groups=groups,
                      normalize=False, seed=seed)
