"""The generalized task-arithmetic merge that task arithmetic, TIES, DARE and DARE-TIES are settings of.

θ = θ₀ + λ · Σᵢ wᵢ·mᵢ·S(τᵢ) / D, where S sparsifies (trim or drop), mᵢ is the TIES sign-agreement mask (all ones
without consensus), and D = Σᵢ wᵢ·mᵢ when normalizing (1 otherwise; a zero divisor counts as 1). This is
mergekit's weighted form; the TIES paper's disjoint mean is the case wᵢ = 1 with normalization.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from evomerge.merge.sparsify import magnitude_trim, random_drop


@dataclass(frozen=True)
class TensorInputs:
    """What one output tensor is merged from."""

    base: torch.Tensor
    deltas: list[torch.Tensor]
    order: list[torch.Tensor] | None = None  # per source, indices by descending |τᵢ| (magnitude trim)
    generator: torch.Generator | None = None  # seeded per (recipe, tensor) for random drop


@dataclass(frozen=True)
class GeneralizedMerge:
    sparsify: str | None  # None | "magnitude" | "random"
    consensus: bool  # TIES sign election
    default_normalize: bool
    uses_density: bool

    def merge(
        self,
        x: TensorInputs,
        weights: tuple[float, ...],
        densities: tuple[float, ...] | None,
        *,
        lam: float = 1.0,
        normalize: bool | None = None,
        rescale: str = "inverse",
    ) -> torch.Tensor:
        normalize = self.default_normalize if normalize is None else normalize
        deltas = []
        for i, delta in enumerate(x.deltas):
            d = 1.0 if densities is None else densities[i]
            if self.sparsify == "magnitude":
                delta = magnitude_trim(delta, d, x.order[i])
            elif self.sparsify == "random":
                delta = random_drop(delta, d, x.generator, rescale)
            deltas.append(delta * weights[i])
        if self.consensus:
            majority = torch.where(sum(deltas) >= 0, 1.0, -1.0).to(x.base.dtype)
            mixed = torch.zeros_like(x.base)
            divisor = torch.zeros_like(x.base)
            for w, delta in zip(weights, deltas, strict=True):
                agree = delta.sign() == majority  # a trimmed (zero) entry never agrees
                mixed += delta * agree
                divisor += w * agree
            divisor[divisor == 0] = 1
        else:
            mixed = sum(deltas)
            divisor = sum(weights)
            if abs(divisor) < 1e-8:
                divisor = 1.0
        if normalize:
            mixed = mixed / divisor
        if lam != 1:
            mixed = mixed * lam
        return (x.base + mixed).to(x.base.dtype)
