"""PS — parameter-space search (Akiba et al.): per layer group and per source, a merge weight and a density."""

from __future__ import annotations

import numpy as np

from evomerge.merge import OPERATORS
from evomerge.recipe import GroupParams, Recipe
from evomerge.sources import group_names
from evomerge.spaces.base import SearchSpace


class LayerWeightsSpace(SearchSpace):
    """Genome layout: for each group, K weights, then (if the operator sparsifies) K densities; all in [0, 1]
    and mapped linearly onto `weight_range` / `density_range`."""

    def __init__(self, cfg, n_sources: int, n_blocks: int, sources=None):
        super().__init__(cfg, n_sources, n_blocks)
        self.k = n_sources
        self.groups = group_names(cfg.granularity, n_blocks)
        self.per_group = n_sources * (2 if OPERATORS[cfg.operator].uses_density else 1)

    @property
    def dim(self) -> int:
        return len(self.groups) * self.per_group

    def decode(self, x: np.ndarray, seed: int = 0) -> Recipe:
        x = self._genome(x)
        (wlo, whi), (dlo, dhi) = self.cfg.weight_range, self.cfg.density_range
        groups = {}
        for g, name in enumerate(self.groups):
            chunk = x[g * self.per_group : (g + 1) * self.per_group]
            weights = tuple(float(wlo + v * (whi - wlo)) for v in chunk[: self.k])
            dens = tuple(float(dlo + v * (dhi - dlo)) for v in chunk[self.k :]) or None
            groups[name] = GroupParams(weights=weights, densities=dens)
        return Recipe(operator=self.cfg.operator, granularity=self.cfg.granularity, groups=groups, lam=self.cfg.lam,
                      normalize=self.cfg.normalize, rescale=self.cfg.rescale, gamma=self.cfg.gamma,
                      epsilon=self.cfg.epsilon, seed=seed)
