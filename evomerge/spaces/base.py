"""The search-space contract: a flat genome in, a recipe out.

Every class in `evomerge.spaces.SPACES` subclasses `SearchSpace` and keeps this contract (checked for each
registered space by tests/test_contracts.py):

- `Space(space_cfg, n_sources, layers, sources=None, base=None)`: `space_cfg` the experiment's `space` section;
  `n_sources` and `layers` the executor's shape (the number of transformer blocks of the base, or for a data flow
  the tuple of every model's layer count); `sources` (and `base`) the model directories, passed only where
  `needs_sources` is declared;
- `dim`: the genome's length; `decode(x, seed)` turns a genome of that length into a `Recipe` (or `FlowRecipe`)
  that validates, the same recipe for the same genome and seed every time; a genome of another length raises
  ValueError;
- `bounded`: True when every gene lives in [0, 1] (values outside are clipped); `steps` (None: all continuous) marks
  discrete genes for the optimizers that handle them (`evomerge.optim.base`), and `x0` (None: the optimizer's
  `optimizer.x0` in every gene) is where a search starts — it decodes like any genome; `start_name(names)` labels it
  among the known candidates the search scores first, with `seeds(names, baselines)` where a space defines them.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from evomerge.recipe import FlowRecipe, Recipe


class SearchSpace:
    """Base of every registered search space; see the module docstring for the contract."""

    needs_sources: bool = False  # the runner passes `sources=` the source model directories
    bounded: bool = True  # genes in [0, 1]; False: only a space-aware optimizer (needs_space) proposes genomes

    def __init__(self, cfg: Any, n_sources: int, layers: Any, sources: Any = None):
        self.cfg = cfg

    @property
    def dim(self) -> int:
        raise NotImplementedError

    @property
    def steps(self) -> np.ndarray | None:
        """Per gene: 0 continuous, > 0 the step of a discrete gene; None when all are continuous."""
        return None

    @property
    def x0(self) -> np.ndarray | None:
        """The genome a search starts from; None: the optimizer's own (`optimizer.x0` in every gene)."""
        return None

    def start_name(self, names: list[str]) -> str:  # noqa: ARG002 — a space whose start is a source names it
        """The label of the start point `x0` among the known candidates the search scores first."""
        return "start"

    def decode(self, x: np.ndarray, seed: int = 0) -> Recipe | FlowRecipe:
        raise NotImplementedError

    def _genome(self, x: np.ndarray) -> np.ndarray:
        """`x` as a float array of this space's length (clipped to [0, 1] when the space is bounded), or
        ValueError."""
        x = np.asarray(x, dtype=float)
        if x.shape != (self.dim,):
            raise ValueError(f"genome has shape {x.shape}, expected ({self.dim},)")
        return np.clip(x, 0.0, 1.0) if self.bounded else x
