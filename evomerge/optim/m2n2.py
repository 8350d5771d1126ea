"""M2N2 as an evomerge optimizer, over the mosaic space (`evomerge.spaces.mosaic`; the algorithm in
`evomerge.m2n2.niches`).

The first K candidates are the K sources themselves (one-hot mosaics): they seed the archive, as the paper's two
pre-trained models do. Every later candidate is a child of two archive members; while no source has been scored
yet (more workers than sources, steady-state), of two sources drawn uniformly. The optimizer learns from each
candidate's per-example scores (`tell_one(genome, value, examples)`; the search passes them, see `wants_examples`);
a candidate told without them (a failed evaluation) does not enter the archive. Steady-state: a child is bred from
the archive as it is when asked, so no worker ever waits for another. `state()` holds the archive, its score matrix,
the random stream and the outstanding candidates: a run resumes exactly.
"""

from __future__ import annotations

import pickle

import numpy as np

from evomerge.m2n2.niches import Niches, NicheSettings
from evomerge.optim.base import Optimizer

DEFAULT_ARCHIVE = 20  # the paper's population


class M2N2Optimizer(Optimizer):
    steady_state = True
    needs_space = True  # the search passes its space: the mosaic layout and the sources' Gram matrices
    wants_examples = True  # tell/tell_one take the per-example scores

    def __init__(self, cfg, dim: int, seed: int, n_objectives: int = 1, steps: np.ndarray | None = None,
                 space=None):
        super().__init__(cfg, dim, seed, n_objectives, steps)
        if space is None or not hasattr(space, "one_hot"):
            raise ValueError("m2n2 evolves mosaics of the sources: use space type 'mosaic'")
        if space.dim != dim:
            raise ValueError(f"the mosaic space has {space.dim} genes, the optimizer was given dim={dim}")
        m = cfg.m2n2
        self.settings = NicheSettings(popsize=cfg.popsize or DEFAULT_ARCHIVE, alpha=m.alpha, attraction=m.attraction,
                                      split_point=m.split_point, crossover=m.crossover, mutation_std=0.0)
        self.niches = Niches(self.settings, space.backend(), seed)
        self._shape = (len(space.names), space.k)
        self._starts = [space.one_hot(k) for k in range(space.k)]
        self._asked = 0
        self._outstanding: list[np.ndarray] = []
        self._generation_out = False
        self.bred: dict[bytes, tuple[np.ndarray, np.ndarray]] = {}

    @property
    def popsize(self) -> int:
        return self.settings.popsize

    def _next(self) -> np.ndarray:
        if self._asked < len(self._starts):
            c = self._starts[self._asked]
        else:
            c = self.niches.breed(pool=self._starts)
            # the parents' genomes by the child's, for the leaderboard (not part of the state: reporting only)
            self.bred[c.reshape(-1).tobytes()] = tuple(np.asarray(p, dtype=float).reshape(-1)
                                                       for p in self.niches.last_parents)
        self._asked += 1
        return c.reshape(-1).copy()

    def _offer(self, genome: np.ndarray, examples) -> None:
        if examples is not None:
            self.niches.offer(np.asarray(genome, dtype=float).reshape(self._shape), examples)

    def seed(self, genomes: list[np.ndarray], values: list, examples: list | None = None) -> None:
        """Known candidates with their per-example scores enter the archive as any told candidate does."""
        self._check_told(genomes, values)
        for g, e in zip(genomes, examples or [None] * len(genomes), strict=True):
            self._offer(g, e)

    # -- whole generations -----------------------------------------------------------------------------------------
    def ask(self) -> list[np.ndarray]:
        if self._outstanding:
            raise RuntimeError(f"ask: {len(self._outstanding)} genomes of ask_one are still outstanding; tell_one "
                               f"them first (whole generations and steady-state do not interleave)")
        self._generation_out = True
        return [self._next() for _ in range(self.popsize)]

    def tell(self, genomes: list[np.ndarray], values: list, examples: list | None = None) -> None:
        """`examples[i]`: candidate i's per-example scores, or None when it failed."""
        self._check_told(genomes, values)
        examples = examples if examples is not None else [None] * len(genomes)
        if len(examples) != len(genomes):
            raise ValueError(f"tell: {len(genomes)} genomes but {len(examples)} per-example rows")
        for g, e in zip(genomes, examples, strict=True):
            self._offer(g, e)
        self._generation_out = False

    # -- steady-state ----------------------------------------------------------------------------------------------
    def ask_one(self) -> np.ndarray:
        self._no_generation_out("ask_one")
        x = self._next()
        self._outstanding.append(x)
        return x.copy()

    def tell_one(self, genome: np.ndarray, value, examples=None) -> None:
        """`examples`: the candidate's per-example scores; None (a failed evaluation) keeps it out of the archive."""
        self._check_one(value)
        i = self._match(genome, self._outstanding)
        if i is None:
            raise ValueError(f"tell_one: that genome is not one of the {len(self._outstanding)} outstanding ones "
                             f"of ask_one")
        self._offer(self._outstanding.pop(i), examples)

    def outstanding(self) -> list[np.ndarray]:
        return [x.copy() for x in self._outstanding]

    # -- the archive -----------------------------------------------------------------------------------------------
    def archive(self) -> list[tuple[np.ndarray, np.ndarray]]:
        """(mosaic [U, K], per-example scores) of every archive member."""
        n = self.niches
        return [(m.copy(), n.scores[i].copy()) for i, m in enumerate(n.members) if m is not None]

    def state(self) -> bytes:
        return pickle.dumps({"niches": self.niches.state(), "asked": self._asked, "outstanding": self._outstanding,
                             "generation_out": self._generation_out})

    def load_state(self, blob: bytes) -> None:
        st = pickle.loads(blob)
        self.niches.load_state(st["niches"])
        self._asked = st["asked"]
        self._outstanding = [np.asarray(x, dtype=float) for x in st["outstanding"]]
        self._generation_out = st["generation_out"]
