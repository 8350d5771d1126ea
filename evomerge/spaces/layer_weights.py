"""PS — parameter-space search (Akiba et al.): per layer group and per source, a merge weight and a density."""

from __future__ import annotations

import numpy as np

from evomerge.merge import OPERATORS
from evomerge.recipe import GroupParams, Recipe
from evomerge.sources import group_names


class LayerWeightsSpace:
    """Genome layout: for each group, K weights, then (if the operator sparsifies) K densities; all in [0, 1]
    and mapped linearly onto `weight_range` / `density_range`."""

    def __init__(self, cfg, n_sources: int, n_blocks: int):
        self.cfg = cfg
        self.k = n_sources
        self.groups = group_names(cfg.granularity, n_blocks)
        self.per_group = n_sources * (2 if OPERATORS[cfg.operator].uses_density else 1)

    @property
    def dim(self) -> int:
        return len(self.groups) * self.per_group

    def decode(self, x: np.ndarray, seed: int = 0) -> Recipe:
        x = np.clip(np.asarray(x, dtype=float), 0.0, 1.0)
        if x.shape != (self.dim,):
            raise ValueError(f"genome has shape {x.shape}, expected ({self.dim},)")
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

    def encode(self, weights: list[float], densities: list[float] | None = None) -> np.ndarray | None:
        """The genome that gives every group these weights (and densities; 1.0 when the operator sparsifies and none
        are given), or None where the ranges cannot reach them."""
        (wlo, whi), (dlo, dhi) = self.cfg.weight_range, self.cfg.density_range
        genes = [(w - wlo) / (whi - wlo) for w in weights]
        if self.per_group > self.k:
            genes += [(d - dlo) / (dhi - dlo) for d in (densities or [1.0] * self.k)]
        if any(g < -1e-9 or g > 1 + 1e-9 for g in genes):
            return None
        return np.tile(np.clip(genes, 0.0, 1.0), len(self.groups))

    def seeds(self, names: list[str], baselines) -> list[tuple[str, np.ndarray]]:
        """What the search is compared against, as far as this space can express it: each source (one-hot weights,
        full density), the base (all weights 0) and the untuned baselines of this operator (task arithmetic: uniform
        1/K and the tuned-weight grid; TIES, DARE-TIES: weight 1 at the baseline's density). Scored before the
        search and given to the optimizer, so that the search never ends below what it was given."""
        k, op = self.k, self.cfg.operator
        wanted: list[tuple[str, list[float], list[float] | None]] = []
        if OPERATORS[op].uses_base:
            wanted.append(("base", [0.0] * k, None))
        wanted += [(f"source {n}", [1.0 if j == i else 0.0 for j in range(k)], None) for i, n in enumerate(names)]
        if baselines.enabled and op == "task_arithmetic":
            wanted.append((f"TA uniform 1/{k}", [1 / k] * k, None))
            wanted += [(f"TA w={w:g}", [w] * k, None) for w in baselines.tuned_weights]
        elif baselines.enabled and op in ("ties", "dare_ties"):
            d = baselines.ties_density if op == "ties" else baselines.dare_density
            wanted.append((f"{'TIES' if op == 'ties' else 'DARE-TIES'} d={d:g}", [1.0] * k, [d] * k))
        out = []
        for label, w, d in wanted:
            x = self.encode(w, d)
            if x is not None and not any(np.array_equal(x, y) for _, y in out):
                out.append((label, x))
        return out
