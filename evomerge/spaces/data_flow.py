"""DFS — data-flow space (Akiba et al.): which layers of which model run in which order, and how the hidden state
is scaled between them.

The flow's models' layers, A's then B's (then any further model's), M in all, are laid out `repeats` times: T = M·r
slots. Genome (all genes in [0, 1]):
- T indicator genes: slot t runs iff its gene is > 0.5. Binary genes (steps 1, for `cma_wm`) or continuous genes
  thresholded at 0.5 (plain CMA-ES), per `flow.indicator`.
- scaling genes, per `flow.scaling`: `matrix` — the paper's M×M matrix W, W[i, j] scales the hidden state fed into
  layer j when it comes from layer i; `step` — one scale per slot (cheaper: T genes instead of M²); `none`.
  A gene maps linearly onto `flow.scale_range`.
The path always starts with A's first layer (fed the embeddings, unscaled) and ends with A's last; the start point
`x0` switches on exactly A's layers in the first repetition at unit scale — A itself.
"""

from __future__ import annotations

import numpy as np

from evomerge.recipe import FlowRecipe
from evomerge.spaces.base import SearchSpace


class DataFlowSpace(SearchSpace):
    def __init__(self, cfg, n_models: int, n_layers: tuple[int, ...], sources=None):
        super().__init__(cfg, n_models, n_layers)
        self.flow = cfg.flow
        if len(n_layers) != n_models or n_models < 2:
            raise ValueError(f"a data-flow space needs the layer counts of >= 2 models, got {n_layers}")
        self.n_layers = tuple(n_layers)
        self.offsets = np.cumsum((0, *self.n_layers[:-1]))
        self.m = sum(self.n_layers)
        # slot t -> (model, layer)
        self.slots = [(k, i) for _ in range(self.flow.repeats) for k, n in enumerate(self.n_layers) for i in range(n)]
        self.t = len(self.slots)
        self.n_scales = {"matrix": self.m * self.m, "step": self.t, "none": 0}[self.flow.scaling]

    @property
    def dim(self) -> int:
        return self.t + self.n_scales

    @property
    def steps(self) -> np.ndarray:
        """Binary indicator genes for optimizers with discrete genes (cma_wm), else all continuous."""
        steps = np.zeros(self.dim)
        if self.flow.indicator == "binary":
            steps[: self.t] = 1.0
        return steps

    @property
    def x0(self) -> np.ndarray:
        """A's layers on in the first repetition, everything else off, every scale 1: the search starts at A."""
        margin = self.flow.init_margin
        on = np.zeros(self.t, dtype=bool)
        on[: self.n_layers[0]] = True
        lo, hi = self.flow.scale_range
        if self.flow.indicator == "binary":  # on the grid: CMAwM's mean starts on A exactly
            ind = np.where(on, 1.0, 0.0)
        else:
            ind = np.where(on, 0.5 + margin, 0.5 - margin)
        return np.concatenate([ind, np.full(self.n_scales, (1.0 - lo) / (hi - lo))])

    def seeds(self, names: list[str], baselines) -> list[tuple[str, np.ndarray]]:  # noqa: ARG002
        """Nothing beside the start point, A itself, which the search scores first (so that a data-flow search,
        PS+DFS's over a PS winner included, never ends below its model A): a path always runs through A's first and
        last layers, so B alone is not in the space, and a weight merge never is."""
        return []

    def start_name(self, names: list[str]) -> str:
        return f"A = {names[0]}"

    def _scale(self, genes: np.ndarray, prev: int | None, slot: int) -> float:
        if prev is None or self.flow.scaling == "none":
            return 1.0
        lo, hi = self.flow.scale_range
        if self.flow.scaling == "matrix":
            (pm, pi), (m, i) = self.slots[prev], self.slots[slot]
            g = genes[(self.offsets[pm] + pi) * self.m + self.offsets[m] + i]
        else:
            g = genes[slot]
        return float(lo + g * (hi - lo))

    def path_slots(self, x: np.ndarray) -> list[int]:
        """The slots the genome switches on, starting with A's first layer and ending with A's last."""
        on = [t for t in range(self.t) if x[t] > 0.5]
        if not on or on[0] != 0:
            on.insert(0, 0)
        last_a = (self.flow.repeats - 1) * self.m + self.n_layers[0] - 1  # A's last layer, last repetition
        if self.slots[on[-1]] != (0, self.n_layers[0] - 1):
            on.append(last_a)
        return on

    def decode(self, x: np.ndarray, seed: int = 0) -> FlowRecipe:  # noqa: ARG002 — a flow has no randomness
        x = self._genome(x)
        genes = x[self.t:]
        slots = self.path_slots(x)
        scales = [self._scale(genes, prev, s) for prev, s in zip([None, *slots[:-1]], slots, strict=True)]
        return FlowRecipe(host=0, path=tuple(self.slots[s] for s in slots), scales=tuple(scales))
