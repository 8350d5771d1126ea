"""What every optimizer shares: argument checks, the default population size and the grid of discrete genes.

A discrete gene i (`steps[i] > 0`) takes the values k·steps[i] for k = 0 … ⌊1/steps[i]⌋, all inside [0, 1]: a
step of 1.0 is a binary gene {0, 1}, 0.25 has five levels, 0.3 has four (0, 0.3, 0.6, 0.9; the top of the range is
not a level when the step does not divide 1). `steps[i] == 0` is a continuous gene in [0, 1].
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

_EPS = 1e-9  # slack for 1/step: a step of 0.1 has eleven levels, not ten


def default_popsize(dim: int) -> int:
    """CMA-ES's default population size, 4 + ⌊3 ln n⌋, used by every optimizer for comparable generations."""
    return 4 + int(3 * math.log(dim))


def check_steps(steps: Sequence[float] | np.ndarray | None, dim: int) -> np.ndarray:
    """`steps` as a float array of length `dim` (zeros for None), or ValueError."""
    if steps is None:
        return np.zeros(dim)
    out = np.asarray(steps, dtype=float).reshape(-1)
    if out.shape != (dim,):
        raise ValueError(f"steps has {out.size} entries for a genome of {dim} genes")
    if not np.all(np.isfinite(out)) or np.any(out < 0):
        raise ValueError("steps must be finite and >= 0 (0: continuous gene, > 0: discrete step in genome units)")
    if np.any(out > 1):
        bad = np.flatnonzero(out > 1).tolist()
        raise ValueError(f"steps > 1 at genes {bad}: a discrete gene needs at least two levels in [0, 1]")
    return out


def top_levels(steps: np.ndarray) -> np.ndarray:
    """The index of the highest level of each gene (⌊1/step⌋; 0 for continuous genes)."""
    with np.errstate(divide="ignore"):
        return np.where(steps > 0, np.floor(1.0 / np.where(steps > 0, steps, 1.0) + _EPS), 0).astype(int)


def snap_to_grid(x: np.ndarray, steps: np.ndarray) -> np.ndarray:
    """`x` clipped to [0, 1] with every discrete gene moved to its nearest level (k·step, computed exactly so)."""
    x = np.clip(np.asarray(x, dtype=float), 0.0, 1.0)
    disc = steps > 0
    if not disc.any():
        return x
    k = np.clip(np.rint(x[disc] / steps[disc]), 0, top_levels(steps)[disc])
    x[disc] = np.minimum(k * steps[disc], 1.0)
    return x


def optimizer_names(pred) -> list[str]:
    """The registered optimizers whose class satisfies `pred`, sorted: the alternatives an error names."""
    from evomerge.optim import OPTIMIZERS  # the registry imports this module

    return sorted(n for n, cls in OPTIMIZERS.items() if pred(cls))


def fits(cls: type[Optimizer], n_objectives: int, discrete: bool) -> bool:
    """Whether optimizer class `cls` handles this many objectives (and discrete genes, if asked)."""
    limit = cls.max_objectives
    return (limit is None or n_objectives <= limit) and (not discrete or cls.supports_steps)


class Optimizer:
    """Ask/tell over flat genomes in [0, 1]^dim, maximizing. See `evomerge.optim` for the contract.

    What an optimizer can do is declared here, as class attributes, and read by the search (never probed)."""

    max_objectives: int | None = 1  # None: any number of objectives
    supports_steps: bool = False  # whether discrete genes (steps > 0) are allowed
    steady_state: bool = False  # whether ask_one/tell_one (one candidate at a time, told in any order) work
    needs_space: bool = False  # constructed with `space=` the search space (m2n2: the mosaic layout, Gram matrices)
    wants_examples: bool = False  # learns from per-example scores: the search passes `examples` to tell/tell_one
    keeps_archive: bool = False  # archive() lists its members and parents() a child's parents (for the report)

    def __init__(self, cfg, dim: int, seed: int, n_objectives: int = 1, steps: np.ndarray | None = None,
                 x0: np.ndarray | None = None):
        if dim < 1:
            raise ValueError(f"a genome needs at least one gene (dim={dim})")
        if n_objectives < 1:
            raise ValueError(f"n_objectives must be >= 1 (got {n_objectives})")
        self.dim = int(dim)
        self.n_objectives = int(n_objectives)
        self.steps = check_steps(steps, self.dim)
        # where the search starts (CMA-ES's mean): the space's own start point, or cfg.x0 in every gene
        self.x0 = np.full(self.dim, float(cfg.x0)) if x0 is None else np.clip(np.asarray(x0, dtype=float), 0, 1)
        if self.x0.shape != (self.dim,):
            raise ValueError(f"x0 has shape {self.x0.shape}, expected ({self.dim},)")
        discrete = bool(np.any(self.steps > 0))
        me = self._name()
        if not fits(type(self), self.n_objectives, False):
            alts = optimizer_names(lambda c: fits(c, self.n_objectives, discrete))
            what = ("is single-objective" if self.max_objectives == 1
                    else f"handles at most {self.max_objectives} objectives")
            raise ValueError(f"{me} {what}; use one of {alts} for {self.n_objectives} objectives "
                             f"(per-task objectives)")
        if discrete and not self.supports_steps:
            alts = optimizer_names(lambda c: fits(c, self.n_objectives, True))
            genes = np.flatnonzero(self.steps > 0).tolist()
            raise ValueError(f"{me} supports continuous genes only, but genes {genes[:8]}"
                             f"{'…' if len(genes) > 8 else ''} are discrete (steps > 0); use one of {alts}")

    def _name(self) -> str:
        names = optimizer_names(lambda c: c is type(self))
        return names[0] if names else type(self).__name__

    def _check_told(self, genomes: Sequence, values: Sequence) -> list:
        """`values` as floats (one objective) or tuples of floats (several), checked against `genomes`."""
        if len(genomes) != len(values):
            raise ValueError(f"tell: {len(genomes)} genomes but {len(values)} values")
        if self.n_objectives == 1:
            return [float(v) for v in values]
        out = []
        for v in values:
            v = tuple(float(e) for e in v)
            if len(v) != self.n_objectives:
                raise ValueError(f"tell: a value has {len(v)} objectives, expected {self.n_objectives}")
            out.append(v)
        return out

    def _check_one(self, value) -> float | tuple[float, ...]:
        """One told value as a float (one objective) or a tuple of `n_objectives` floats."""
        return self._check_told([None], [value])[0]

    def _not_steady(self, what: str) -> NotImplementedError:
        alts = optimizer_names(lambda c: c.steady_state
                               and not c.needs_space  # m2n2: its own space, not a drop-in
                               and fits(c, self.n_objectives, bool(np.any(self.steps > 0))))
        return NotImplementedError(f"{what}: {self._name()} works in whole generations (ask/tell) only; for "
                                   f"steady-state ask_one/tell_one use one of {alts}")

    @staticmethod
    def _match(genome, given: Sequence[np.ndarray]) -> int | None:
        """The index of the first genome in `given` equal to `genome` value for value (None: none is)."""
        g = np.asarray(genome, dtype=float)
        return next((i for i, x in enumerate(given) if np.array_equal(g, x)), None)

    @property
    def popsize(self) -> int:
        raise NotImplementedError

    def ask(self) -> list[np.ndarray]:
        raise NotImplementedError

    def tell(self, genomes: list[np.ndarray], values: list, examples: list | None = None) -> None:
        """The values of the genomes of the last `ask`, in order. `examples[i]`: candidate i's per-example scores
        (None where it failed), given only to optimizers that declare `wants_examples`."""
        raise NotImplementedError

    def seed(self, genomes: list[np.ndarray], values: list, examples: list | None = None) -> None:
        """Candidates scored before the search (the start point, the sources and the baselines the space can
        express), told once before the first ask, each optimizer taking them its own way: CMA-ES starts its mean at
        the best (the first of equal ones), Optuna's samplers count them as completed trials, M2N2 offers them to
        its archive (`examples`: their per-example scores). Random search learns nothing: it ignores them."""
        self._check_told(genomes, values)

    def _no_generation_out(self, what: str) -> None:
        """Steady-state optimizers that also ask whole generations: the two modes do not interleave."""
        if getattr(self, "_generation_out", False):
            raise RuntimeError(f"{what}: the genomes of the last ask() are not told yet; tell them first (whole "
                               "generations and steady-state do not interleave)")

    def ask_one(self) -> np.ndarray:
        """One genome (steady-state optimizers only), outstanding until `tell_one`."""
        raise self._not_steady("ask_one")

    def tell_one(self, genome: np.ndarray, value, examples: list | None = None) -> None:
        """The value of one outstanding genome of `ask_one`, in any order (steady-state optimizers only);
        `examples` as for `tell`."""
        raise self._not_steady("tell_one")

    def outstanding(self) -> list[np.ndarray]:
        """The genomes `ask_one` gave out and `tell_one` has not taken back yet, in the order they were asked."""
        return []

    def archive(self) -> list[tuple[np.ndarray, np.ndarray]]:
        """(member genome, its per-example scores) of every archive member (`keeps_archive` optimizers)."""
        return []

    def parents(self, genome: np.ndarray) -> tuple[np.ndarray, ...] | None:
        """The parents' genomes of a genome this optimizer bred, once (then forgotten); None when it was not bred
        (`keeps_archive` optimizers; reporting only, not part of the state)."""
        return None

    def recommendation(self) -> np.ndarray | None:
        """The genome this optimizer bets on without scoring it (None: it has none but its best scored): CMA-ES's
        distribution mean, an average over every generation's ranking, so less fooled by one noisy score than the
        best-scored candidate is. A cheaper fitness re-scores it at the end with the best candidates."""
        return None

    def state(self) -> bytes:
        raise NotImplementedError

    def load_state(self, blob: bytes) -> None:
        raise NotImplementedError
