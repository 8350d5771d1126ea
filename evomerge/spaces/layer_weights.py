"""PS — parameter-space search (Akiba et al.): per layer group and per source, a merge weight and a density."""

from __future__ import annotations

import numpy as np

from evomerge.merge import OPERATORS
from evomerge.merge.generalized import GeneralizedMerge
from evomerge.recipe import GroupParams, Recipe
from evomerge.sources import group_names


def has_scale_gene(cfg) -> bool:
    """Whether each group gets a scale gene: `space.scale`, or with auto, when the operator normalizes — then the
    weights cancel out and, without it, the merged task vector could never be shrunk the way a tuned
    task-arithmetic weight shrinks it."""
    op = OPERATORS[cfg.operator]
    if not isinstance(op, GeneralizedMerge):
        return False
    if cfg.scale != "auto":
        return cfg.scale
    return op.default_normalize if cfg.normalize is None else cfg.normalize


class LayerWeightsSpace:
    """Genome layout: for each group, K weights, then (if the operator sparsifies) K densities, then (if
    `has_scale_gene`) the group's scale; all in [0, 1] and mapped linearly onto `weight_range` / `density_range` /
    `scale_range` (the default x0 = 0.5 starts the scale at 1 for the default range [0, 2])."""

    def __init__(self, cfg, n_sources: int, n_blocks: int):
        self.cfg = cfg
        self.k = n_sources
        self.groups = group_names(cfg.granularity, n_blocks)
        self.densities = OPERATORS[cfg.operator].uses_density
        self.scaled = has_scale_gene(cfg)
        self.per_group = n_sources * (2 if self.densities else 1) + int(self.scaled)

    @property
    def dim(self) -> int:
        return len(self.groups) * self.per_group

    def decode(self, x: np.ndarray, seed: int = 0) -> Recipe:
        x = np.clip(np.asarray(x, dtype=float), 0.0, 1.0)
        if x.shape != (self.dim,):
            raise ValueError(f"genome has shape {x.shape}, expected ({self.dim},)")
        (wlo, whi), (dlo, dhi), (slo, shi) = self.cfg.weight_range, self.cfg.density_range, self.cfg.scale_range
        k = self.k
        groups = {}
        for g, name in enumerate(self.groups):
            chunk = x[g * self.per_group : (g + 1) * self.per_group]
            weights = tuple(float(wlo + v * (whi - wlo)) for v in chunk[:k])
            dens = tuple(float(dlo + v * (dhi - dlo)) for v in chunk[k : 2 * k]) if self.densities else None
            scale = float(slo + chunk[-1] * (shi - slo)) if self.scaled else 1.0
            groups[name] = GroupParams(weights=weights, densities=dens, scale=scale)
        return Recipe(operator=self.cfg.operator, granularity=self.cfg.granularity, groups=groups, lam=self.cfg.lam,
                      normalize=self.cfg.normalize, rescale=self.cfg.rescale, gamma=self.cfg.gamma,
                      epsilon=self.cfg.epsilon, seed=seed)
