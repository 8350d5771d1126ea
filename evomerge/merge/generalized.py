"""The generalized task-arithmetic merge that task arithmetic, TIES, DARE, Breadcrumbs and DELLA are settings of.

θ = θ₀ + λ · Σᵢ wᵢ·mᵢ·S(τᵢ) / D, where S sparsifies, mᵢ is the TIES sign-agreement mask (all ones without
consensus), and D = Σᵢ wᵢ·mᵢ when normalizing (1 otherwise; a zero divisor counts as 1). This is mergekit's
weighted form; the TIES paper's disjoint mean is the case wᵢ = 1 with normalization.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from evomerge.merge.sparsify import della_drop, magnitude_trim, outlier_trim, random_drop


@dataclass(frozen=True)
class TensorInputs:
    """What one output tensor is merged from."""

    base: torch.Tensor
    deltas: list[torch.Tensor]
    ranks: Callable[[int, str], torch.Tensor] | None = None  # (source, kind) → cached magnitude ranks
    generator: torch.Generator | None = None  # seeded per (recipe, tensor) for random drops


@dataclass(frozen=True)
class MergeParams:
    """The per-tensor knobs of a recipe."""

    weights: tuple[float, ...]
    densities: tuple[float, ...] | None = None
    lam: float = 1.0
    normalize: bool | None = None  # None: the operator's default
    rescale: str | None = None  # None: the operator's default
    gamma: float = 0.01  # Breadcrumbs: fraction of largest-magnitude outliers dropped
    epsilon: float = 0.15  # DELLA: half-width of the keep-probability range


@dataclass(frozen=True)
class GeneralizedMerge:
    sparsify: str | None  # None | "magnitude" | "outliers" | "random" | "della"
    consensus: bool  # TIES sign election
    default_normalize: bool
    default_rescale: str = "none"
    uses_base = True

    @property
    def uses_density(self) -> bool:
        return self.sparsify is not None

    def _sparsified(self, x: TensorInputs, i: int, density: float, p: MergeParams, rescale: str) -> torch.Tensor:
        delta = x.deltas[i]
        if self.sparsify == "magnitude":
            return magnitude_trim(delta, density, x.ranks(i, "desc"), rescale)
        if self.sparsify == "outliers":
            return outlier_trim(delta, density, p.gamma, x.ranks(i, "asc"), rescale)
        if self.sparsify == "random":
            return random_drop(delta, density, x.generator, rescale)
        if self.sparsify == "della":
            return della_drop(delta, density, p.epsilon, x.ranks(i, "row_asc"), x.generator, rescale)
        return delta

    def merge(self, x: TensorInputs, p: MergeParams) -> torch.Tensor:
        normalize = self.default_normalize if p.normalize is None else p.normalize
        rescale = self.default_rescale if p.rescale is None else p.rescale
        # One [K, ...] stack of this tensor's sparsified task vectors — a small multiple of one tensor, never a
        # model — reduced along dim 0 exactly as mergekit does, so low-precision sums round the same way.
        deltas = torch.stack([
            self._sparsified(x, i, 1.0 if p.densities is None else p.densities[i], p, rescale)
            for i in range(len(x.deltas))
        ])
        weights = torch.tensor(p.weights, dtype=deltas.dtype, device=deltas.device)
        weights = weights.view(-1, *([1] * (deltas.dim() - 1)))
        deltas.mul_(weights)
        if self.consensus:
            majority = (deltas.sum(dim=0) >= 0).to(deltas.dtype) * 2 - 1
            agree = deltas.sign() == majority  # a dropped (zero) entry never agrees
            mixed = (deltas * agree).sum(dim=0)
            divisor = (weights * agree).sum(dim=0)
            divisor[divisor == 0] = 1
        else:
            mixed = deltas.sum(dim=0)
            divisor = weights.sum(dim=0)
            divisor[divisor.abs() < 1e-8] = 1
        if normalize:
            mixed /= divisor
        if p.lam != 1:
            mixed *= p.lam
        return (x.base + mixed).to(x.base.dtype)


@dataclass(frozen=True)
class Linear:
    """Model soup: θ = Σ wᵢθᵢ / Σ wᵢ over the sources (the base is not one of them); no normalization gives Σ wᵢθᵢ."""

    default_normalize: bool = True
    sparsify = None
    uses_density = False
    uses_base = False

    def merge(self, x: TensorInputs, p: MergeParams) -> torch.Tensor:
        out = sum(w * (x.base + d) for w, d in zip(p.weights, x.deltas, strict=True))
        normalize = self.default_normalize if p.normalize is None else p.normalize
        total = sum(p.weights)
        if normalize and abs(total) >= 1e-8:
            out = out / total
        return out.to(x.base.dtype)


@dataclass(frozen=True)
class Slerp:
    """Spherical interpolation from the base (t = 0) to the single source (t = 1), one angle per whole tensor;
    linear interpolation when the two are (anti)parallel. t is the source's weight."""

    dot_threshold: float = 0.9995
    eps: float = 1e-8
    sparsify = None
    uses_density = False
    uses_base = True

    def merge(self, x: TensorInputs, p: MergeParams) -> torch.Tensor:
        if len(x.deltas) != 1:
            raise ValueError(f"slerp merges the base with exactly one source, got {len(x.deltas)} sources")
        dtype = torch.float64 if x.base.dtype == torch.float64 else torch.float32
        a = x.base.to(dtype)
        b = (x.base + x.deltas[0]).to(dtype)
        t = float(p.weights[0])
        na, nb = a.norm(), b.norm()
        na = na if na > self.eps else torch.ones_like(na)
        nb = nb if nb > self.eps else torch.ones_like(nb)
        dot = ((a / na) * (b / nb)).sum().clamp(-1, 1)
        if dot.abs() > self.dot_threshold:
            return ((1 - t) * a + t * b).to(x.base.dtype)
        theta = torch.acos(dot)
        s = torch.sin(theta)
        return (torch.sin((1 - t) * theta) / s * a + torch.sin(t * theta) / s * b).to(x.base.dtype)
