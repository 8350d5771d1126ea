"""Uniform random search over [0, 1]^n: the baseline every optimizer must beat.

It learns nothing, so it takes any number of objectives. A discrete gene is uniform over its levels (drawn from the
same uniform number a continuous gene would use, so the random stream does not depend on `steps`).

Steady-state: `ask_one` draws the next `dim` numbers of the same stream, so `popsize` calls to `ask_one` give out
exactly what one `ask` would. Its outstanding genomes are still kept (and in `state()`), so that `tell_one` checks
what it is told and a resumed run knows what was in flight.
"""

from __future__ import annotations

import numpy as np

from evomerge.optim import state as codec
from evomerge.optim.base import Optimizer, default_popsize, top_levels


class RandomSearch(Optimizer):
    max_objectives = None
    supports_steps = True
    steady_state = True

    def __init__(self, cfg, dim: int, seed: int, n_objectives: int = 1, steps: np.ndarray | None = None,
                 x0: np.ndarray | None = None):
        super().__init__(cfg, dim, seed, n_objectives, steps, x0)
        self._rng = np.random.default_rng(seed)
        # the same batch size as CMA-ES's default, so that runs compare generation for generation
        self._popsize = cfg.popsize or default_popsize(dim)
        self._disc = self.steps > 0
        self._top = top_levels(self.steps)
        self._outstanding: list[np.ndarray] = []  # given out by ask_one, not told yet, in the order asked
        self._generation_out = False  # a generation asked and not told: ask_one refuses, as Optuna's do

    @property
    def popsize(self) -> int:
        return self._popsize

    def _draw(self, n: int) -> np.ndarray:
        u = self._rng.random((n, self.dim))
        if self._disc.any():
            d, top = self._disc, self._top[self._disc]
            k = np.minimum(np.floor(u[:, d] * (top + 1)), top)  # level k with probability 1/(top + 1)
            u[:, d] = np.minimum(k * self.steps[d], 1.0)
        return u

    def ask(self) -> list[np.ndarray]:
        if self._outstanding:
            raise RuntimeError(f"ask: {len(self._outstanding)} genomes of ask_one are still outstanding; tell_one "
                               f"them first (whole generations and steady-state do not interleave)")
        self._generation_out = True
        return list(self._draw(self._popsize))

    def tell(self, genomes: list[np.ndarray], values: list, examples: list | None = None) -> None:
        """Random search learns nothing (the values are checked, then dropped)."""
        self._check_told(genomes, values)
        self._generation_out = False

    def ask_one(self) -> np.ndarray:
        self._no_generation_out("ask_one")
        x = self._draw(1)[0]
        self._outstanding.append(x)
        return x.copy()

    def tell_one(self, genome: np.ndarray, value, examples: list | None = None) -> None:
        """Checks the value and forgets `genome` (the first outstanding one equal to it)."""
        self._check_one(value)
        i = self._match(genome, self._outstanding)
        if i is None:
            raise ValueError(f"tell_one: that genome is not one of the {len(self._outstanding)} outstanding ones "
                             f"of ask_one")
        del self._outstanding[i]

    def outstanding(self) -> list[np.ndarray]:
        return [x.copy() for x in self._outstanding]

    def state(self) -> bytes:
        return codec.encode("random", {"rng": self._rng.bit_generator.state, "outstanding": self._outstanding,
                                       "generation_out": self._generation_out})

    def load_state(self, blob: bytes) -> None:
        st = codec.decode(blob, "random")
        try:
            self._rng.bit_generator.state = st["rng"]
            self._outstanding = [np.asarray(x, dtype=float).reshape(self.dim) for x in st["outstanding"]]
            self._generation_out = bool(st["generation_out"])
        except (KeyError, TypeError, ValueError) as e:
            raise codec.StateError(f"random state: {e}") from None
