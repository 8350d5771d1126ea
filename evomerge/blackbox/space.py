"""The search space of one black-box stage: a genome in [0, 1]^N (what every optimizer searches) is the vector of
per-adapter sparsities α (denoise stage) or scales β (scale stage) in the stage's bounds, the other vector held
fixed. `penalty` is the stage's regularizer λ·mean|x|, added to the loss the stage minimizes."""

from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class ServiceMerge:
    """One merge the service is asked to score: per-adapter α and β, and the penalty of the genome it came from.
    It stands where a recipe stands for model merges (a job's `recipe`)."""

    alpha: tuple[float, ...]
    beta: tuple[float, ...]
    penalty: float = 0.0

    def to_json(self) -> str:
        return json.dumps({"kind": "service_merge", "alpha": list(self.alpha), "beta": list(self.beta),
                           "penalty": self.penalty})


@dataclass(frozen=True)
class StageSpace:
    """`searches`: 'alpha' or 'beta'; the other vector is `fixed`. `x0` is the start in merge units."""

    searches: str
    low: float
    high: float
    x0: tuple[float, ...]
    fixed: tuple[float, ...]
    lam: float

    @property
    def dim(self) -> int:
        return len(self.x0)

    @property
    def genome_x0(self) -> np.ndarray:
        return (np.asarray(self.x0) - self.low) / (self.high - self.low)

    def genome_sigma(self, sigma: float) -> float:
        """A step size in merge units as one in genome units."""
        return sigma / (self.high - self.low)

    def vector(self, genome) -> np.ndarray:
        """The searched vector (α or β) of a genome."""
        return self.low + (self.high - self.low) * np.clip(np.asarray(genome, dtype=float), 0.0, 1.0)

    def decode(self, genome) -> ServiceMerge:
        x = self.vector(genome)
        other = tuple(float(v) for v in self.fixed)
        searched = tuple(float(v) for v in x)
        alpha, beta = (searched, other) if self.searches == "alpha" else (other, searched)
        return ServiceMerge(alpha, beta, self.lam * float(np.mean(np.abs(x))))
