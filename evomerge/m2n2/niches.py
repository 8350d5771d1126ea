"""The M2N2 algorithm (Abrantes, Lange, Tang, "Competition and Attraction Improve Model Fusion"), independent of how
archive members are stored (DESIGN §6).

An archive of at most P members, each with a row of per-example scores s(xⱼ|θ) ∈ [0, 1] (a score matrix S, P×N).

- Resource competition: zⱼ = Σₖ S[k, j] over the archive (∪ the child when updating), zⱼ := 1 where it is 0; the
  shared fitness of a member is f = Σⱼ S[·, j] / zⱼ^α. α = 0 is the plain genetic algorithm (the GA ablation).
- Parent A ~ f / Σf. Attraction: g(A, B) = Σⱼ max(S[B, j]/zⱼ^α − S[A, j]/zⱼ^α, 0), parent B ~ g / Σg. Without
  attraction (an ablation) both parents are drawn from f / Σf, independently.
- Crossover: a split point ~ UniformInt[0, D) over the D parameters (snapped to the nearest unit boundary when the
  backend splits only between units: tensors), a mixing ratio w ~ U(0, 1); the parameters before the split are
  SLERP(w; A, B), those after it SLERP(1 − w; A, B), with one angle over the whole vectors. Ablations: no split
  point (the whole child is SLERP(w; A, B)), no crossover (the child is a copy of A).
- Mutation (from scratch only): child += N(0, σ²), σ = 0.01.
- Replace-the-worst: f over archive ∪ {child}; the argmin is dropped; a child that is the argmin is discarded.

Empty slots (an archive not yet full) count as members that score 0 everywhere and hold nothing, as the reference
code's zero-initialized archive does: they are replaced first and are never picked as parents.

A backend says how members are stored and combined: `size` (D), `boundaries` (None: a split may fall anywhere, or
the sorted unit offsets 0 … D a split snaps to), `dot(a, b)`, `mix(a, b, split, (ca, cb), (ca2, cb2))` (ca·a + cb·b
before `split`, ca2·a + cb2·b from it), `mutate(x, std, seed)` (x + N(0, std²) drawn from a generator seeded with
`seed`, which the archive's random stream supplies), `add_noise(x, noise, std)` (x + std·noise for given
standard normals), `copy(x)`, and `to_numpy`/`from_numpy` for the state;
`evomerge.m2n2.flat` holds flat vectors, `evomerge.m2n2.mosaic` per-tensor coefficient vectors over source models.

Random numbers come from a stream of draws: `NumpyDraws` (one numpy Generator, the default) or `ThreefryDraws`
(JAX's generator with the reference code's key schedule: for the same seed, the reference's very draws, hence its
runs). Both give every draw the same distribution; they differ only in which numbers a seed yields.

Where the reference code would divide by zero, this one falls back: when no member scores anything, parents are
uniform over the filled slots; when nothing attracts A (A is at least as good as everyone on every example), B is
drawn by shared fitness, like A.
"""

from __future__ import annotations

import functools
import math
from dataclasses import asdict, dataclass

import numpy as np

from evomerge.m2n2 import threefry


@dataclass(frozen=True)
class NicheSettings:
    """The knobs of M2N2 and its ablations (the paper's defaults)."""

    popsize: int = 20  # archive size P
    alpha: float = 1.0  # competition exponent; 0 is the plain GA
    attraction: bool = True  # pick the second parent by attraction (else like the first)
    split_point: bool = True  # crossover with a split point (else one SLERP over the whole vectors)
    crossover: bool = True  # else the child is a copy of its first parent
    mutation_std: float = 0.0  # > 0 only when evolving from scratch (the paper: 0.01)

    def __post_init__(self):
        if self.popsize < 2:
            raise ValueError(f"popsize: an archive needs at least 2 members (got {self.popsize})")
        if not (self.alpha >= 0 and math.isfinite(self.alpha)):
            raise ValueError(f"alpha: expected a finite number >= 0 (got {self.alpha})")
        if not (self.mutation_std >= 0 and math.isfinite(self.mutation_std)):
            raise ValueError(f"mutation_std: expected a finite number >= 0 (got {self.mutation_std})")


def competition(scores: np.ndarray, alpha: float) -> np.ndarray:
    """Every row's score divided by the resource it competes for: S[k, j] / zⱼ^α (zⱼ := 1 where it is 0)."""
    z = scores.sum(axis=0) ** alpha
    return scores / np.where(z == 0, 1.0, z)


def shared_fitness(scores: np.ndarray, alpha: float) -> np.ndarray:
    """f(θₖ) = Σⱼ S[k, j] / zⱼ^α for every row k."""
    return competition(scores, alpha).sum(axis=1)


def attraction(shared: np.ndarray, a: int) -> np.ndarray:
    """g(A, B) for every row B: how much B gains over A where A is weak (0 for B = A)."""
    return np.maximum(shared - shared[a], 0.0).sum(axis=1)


def slerp_scales(cos: float, t: float) -> tuple[float, float]:
    """(cₐ, c_b) with SLERP(t; a, b) = cₐ·a + c_b·b for vectors at angle arccos(cos); linear when (anti)parallel
    (sin Ω ≤ 1e-6, as in the reference code)."""
    omega = math.acos(min(1.0, max(-1.0, cos)))
    s = math.sin(omega)
    if s <= 1e-6:
        return 1.0 - t, t
    return math.sin((1.0 - t) * omega) / s, math.sin(t * omega) / s


class NumpyDraws:
    """The draws of a child from one numpy Generator, in the order they are asked for."""

    def __init__(self, seed: int):
        self.rng = np.random.default_rng(seed)

    def child(self) -> NumpyDraws:
        return self

    def first(self, p: np.ndarray) -> int:
        return int(self.rng.choice(len(p), p=p))

    second = first

    def pair(self, p: np.ndarray) -> tuple[int, int]:
        return self.first(p), self.first(p)

    def pool_pair(self, n: int) -> tuple[int, int]:
        i, j = self.rng.integers(0, n, size=2)
        return int(i), int(j)

    def split_point(self, size: int) -> int:
        return int(self.rng.integers(0, size))

    def ratio(self, with_split: bool) -> float:
        return float(self.rng.random())

    def mutate(self, backend, x, std: float):
        return backend.mutate(x, std, int(self.rng.integers(2**63)))

    def state(self) -> dict:
        return self.rng.bit_generator.state

    def load_state(self, st: dict) -> None:
        self.rng.bit_generator.state = st


class ThreefryDraws:
    """JAX's generator (`evomerge.m2n2.threefry`) used as the reference code (natural_niches_fn.py) uses it: every
    child splits the key into (k1, k2, k3, next key); the parents are drawn from k1 (A and B from its two halves with
    attraction, both from k1 at once without), the split point and mixing ratio from k2 (from its two halves; the
    ratio from k2 itself without a split point), the mutation noise N(0, std²) from k3."""

    def __init__(self, key: threefry.Key):
        self.key = (int(key[0]), int(key[1]))

    def child(self) -> _ThreefryChild:
        k1, k2, k3, self.key = threefry.split(self.key, 4)
        return _ThreefryChild(k1, k2, k3)

    def pool_pair(self, n: int) -> tuple[int, int]:
        return self.child().pair(np.full(n, 1.0 / n))

    def state(self) -> dict:
        return {"threefry": list(self.key)}

    def load_state(self, st: dict) -> None:
        self.key = (int(st["threefry"][0]), int(st["threefry"][1]))


class _ThreefryChild:
    def __init__(self, k1, k2, k3):
        self.k1, self.k2, self.k3 = k1, k2, k3

    @functools.cached_property
    def _k1_halves(self) -> list:
        return threefry.split(self.k1)

    @functools.cached_property
    def _k2_halves(self) -> list:
        return threefry.split(self.k2)

    def first(self, p: np.ndarray) -> int:
        return int(threefry.choice(self._k1_halves[0], p)[0])

    def second(self, p: np.ndarray) -> int:
        return int(threefry.choice(self._k1_halves[1], p)[0])

    def pair(self, p: np.ndarray) -> tuple[int, int]:
        b, a = threefry.choice(self.k1, p, 2)  # the reference unpacks the two draws as (B, A)
        return int(a), int(b)

    def split_point(self, size: int) -> int:
        return threefry.randint(self._k2_halves[0], 0, size)

    def ratio(self, with_split: bool) -> float:
        return float(threefry.uniform(self._k2_halves[1] if with_split else self.k2, 1)[0])

    def mutate(self, backend, x, std: float):
        return backend.add_noise(x, threefry.normal(self.k3, backend.size), std)


class Niches:
    """The archive, its score matrix and the random stream; `breed()` makes a child, `offer()` lets it compete."""

    def __init__(self, settings: NicheSettings, backend, seed: int | None = None, draws=None):
        """Draws from `draws` (a NumpyDraws or ThreefryDraws) or, given only a seed, from NumpyDraws(seed)."""
        if (seed is None) == (draws is None):
            raise ValueError("Niches: give either a seed or a stream of draws")
        self.settings, self.backend = settings, backend
        self.draws = draws if draws is not None else NumpyDraws(seed)
        self.members: list = [None] * settings.popsize  # None: an empty slot
        self.scores: np.ndarray | None = None  # P×N, allocated at the first offer (N is known then)
        self._shared: np.ndarray | None = None  # competition(scores), kept until the archive changes

    # -- the archive -----------------------------------------------------------------------------------------------
    @property
    def filled(self) -> np.ndarray:
        return np.array([m is not None for m in self.members])

    def offer(self, member, score) -> int | None:
        """Replace-the-worst: the slot the child now holds, or None when it lost (discarded)."""
        score = np.asarray(score, dtype=float).reshape(-1)
        if self.scores is None:
            self.scores = np.zeros((self.settings.popsize, score.size))
        if score.shape != (self.scores.shape[1],):
            raise ValueError(f"a score row has {score.size} examples, the archive's rows {self.scores.shape[1]}")
        if not np.all(np.isfinite(score)):
            raise ValueError("a score row holds NaN/Inf")
        fit = shared_fitness(np.vstack([self.scores, score]), self.settings.alpha)
        worst = int(np.argmin(fit))  # the first of equals: empty slots (all zero) go before the child
        if worst == self.settings.popsize:
            return None
        self.members[worst], self.scores[worst] = member, score
        self._shared = None
        return worst

    def best(self) -> int | None:
        """The member with the best mean score (training accuracy), the one M2N2 reports."""
        if self.scores is None or not self.filled.any():
            return None
        mean = np.where(self.filled, self.scores.mean(axis=1), -np.inf)
        return int(np.argmax(mean))

    # -- breeding --------------------------------------------------------------------------------------------------
    @staticmethod
    def _probs(weights: np.ndarray, fallback: np.ndarray) -> np.ndarray:
        """Probabilities ∝ weights, or ∝ fallback where every weight is 0 (the reference code divides by zero
        there)."""
        if not weights.sum() > 0:
            weights = fallback
        return weights / weights.sum()

    def parents(self, draws=None) -> tuple[int, int]:
        """(A, B): A by shared fitness, B by attraction to A (or again by shared fitness)."""
        filled = self.filled
        if not filled.any():
            raise RuntimeError("the archive is empty: offer() at least one scored member before breeding")
        if self._shared is None:
            self._shared = competition(self.scores, self.settings.alpha)
        shared = self._shared
        fit = np.where(filled, shared.sum(axis=1), 0.0)
        if not fit.sum() > 0:  # no member scores anything: uniform over the filled slots
            fit = filled.astype(float)
        d = draws if draws is not None else self.draws.child()
        if not self.settings.attraction:
            return d.pair(self._probs(fit, fit))
        a = d.first(self._probs(fit, fit))
        # nothing attracts a member that is best everywhere: B is then drawn like A
        b = d.second(self._probs(np.where(filled, attraction(shared, a), 0.0), fit))
        return a, b

    def breed(self, pool: list | None = None):
        """A child of two archive members (or, before any member is scored, of two members of `pool`, drawn
        uniformly: the sources a steady-state run starts from while their own scores are still out)."""
        if self.scores is None or not self.filled.any():
            if not pool:
                raise RuntimeError("the archive is empty and no starting pool was given")
            i, j = self.draws.pool_pair(len(pool))
            self.last_parents = (pool[i], pool[j])
            return self.cross(*self.last_parents)
        d = self.draws.child()
        a, b = self.parents(d)
        self.last_parents = (self.members[a], self.members[b])  # for reports: who bred the child
        return self.cross(*self.last_parents, draws=d)

    def cross(self, a, b, draws=None):
        """Crossover (per the settings) of members a and b, then mutation when evolving from scratch."""
        s, be = self.settings, self.backend
        d = draws if draws is not None else self.draws.child()
        if s.crossover:
            split = d.split_point(be.size)  # drawn even when unused, so that the numpy stream stays as it was
            w = d.ratio(s.split_point)
            if be.boundaries is not None:
                split = snap(split, be.boundaries)
            na, nb = math.sqrt(be.dot(a, a)), math.sqrt(be.dot(b, b))
            cos = be.dot(a, b) / (na * nb) if na > 0 and nb > 0 else 1.0
            first = slerp_scales(cos, w)
            rest = slerp_scales(cos, 1.0 - w) if s.split_point else first
            child = be.mix(a, b, split if s.split_point else be.size, first, rest)
        else:
            child = be.copy(a)
        if s.mutation_std > 0:
            child = d.mutate(be, child, s.mutation_std)
        return child

    # -- exact resume ----------------------------------------------------------------------------------------------
    def state(self) -> dict:
        return {"settings": asdict(self.settings), "rng": self.draws.state(),
                "members": [None if m is None else self.backend.to_numpy(m) for m in self.members],
                "scores": None if self.scores is None else self.scores.copy()}

    def load_state(self, st: dict) -> None:
        if st["settings"] != asdict(self.settings):
            raise ValueError(f"the saved archive was made with settings {st['settings']}, not {asdict(self.settings)}")
        self.draws.load_state(st["rng"])
        self.members = [None if m is None else self.backend.from_numpy(m) for m in st["members"]]
        self.scores = None if st["scores"] is None else np.array(st["scores"], dtype=float)
        self._shared = None


def snap(split: int, boundaries: np.ndarray) -> int:
    """The unit boundary nearest to a split position (the lower one on a tie)."""
    i = int(np.searchsorted(boundaries, split, side="right")) - 1
    lo, hi = int(boundaries[i]), int(boundaries[min(i + 1, len(boundaries) - 1)])
    return lo if split - lo <= hi - split else hi
