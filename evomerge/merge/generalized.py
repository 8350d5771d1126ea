"""The generalized task-arithmetic merge that task arithmetic, TIES, DARE, Breadcrumbs and DELLA are settings of.

θ = θ₀ + λ · Σᵢ wᵢ·mᵢ·S(τᵢ) / D, where S sparsifies, mᵢ is the TIES sign-agreement mask (all ones without
consensus), and D = Σᵢ wᵢ·mᵢ when normalizing (1 otherwise; a zero divisor counts as 1). This is mergekit's
weighted form; the TIES paper's disjoint mean is the case wᵢ = 1 with normalization.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property

import torch

from evomerge.merge import kernels
from evomerge.merge.sparsify import (
    della_drop,
    keep_threshold,
    random_drop,
    source_seed,
    trim,
)
from evomerge.merge.topk import MagnitudeIndex, window_mask


@dataclass(frozen=True)
class TensorInputs:
    """What one output tensor is merged from."""

    base: torch.Tensor
    # [K, *shape]: the sources' task vectors, stacked — or a function that computes them (a streaming pool reads
    # them from the files; a merge that can subtract as it reads, from `sources`, never asks: see `deltas`)
    task_vectors: torch.Tensor | Callable[[], torch.Tensor]
    order: Callable[[str], list[MagnitudeIndex]] | None = None  # 'desc'/'asc' → each source's magnitude index
    ranks: Callable[[str], torch.Tensor] | None = None  # 'row_asc' → stacked per-row ranks [K, *shape] (DELLA)
    seed: int = 0  # per (recipe, tensor): random-drop masks and DELLA's generator derive from it
    generator: torch.Generator | None = None  # DELLA's random draws
    # source i's own tensor, as stored: a merge that is exactly one source returns it, not base + (source − base),
    # which low-precision rounding can move by an ulp of the base
    sources: Callable[[int], torch.Tensor] | None = None
    streaming: bool = False  # the pool reads every tensor from its files: reading sources beats stacking τ first

    @cached_property
    def deltas(self) -> torch.Tensor:
        tv = self.task_vectors
        return tv() if callable(tv) else tv

    def magnitude_index(self, kind: str) -> list[MagnitudeIndex]:
        """Each source's magnitude index, 'desc' (TIES) or 'asc' (Breadcrumbs)."""
        if self.order is None:
            raise ValueError("this operator trims by magnitude rank: TensorInputs.order is required")
        return self.order(kind)

    def magnitude_ranks(self, kind: str) -> torch.Tensor:
        """The stacked per-row magnitude ranks ('row_asc', DELLA's keep probabilities)."""
        if self.ranks is None:
            raise ValueError("this operator sparsifies by magnitude rank: TensorInputs.ranks is required")
        return self.ranks(kind)


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


def _into(result: torch.Tensor, out: torch.Tensor | None) -> torch.Tensor:
    if out is None:
        return result
    out.copy_(result)
    return out


def _endpoint(x: TensorInputs, source: int | None, out: torch.Tensor | None) -> torch.Tensor | None:
    """Source `source`'s own tensor (into `out`) when the merge is exactly that source and it is available."""
    if source is None or x.sources is None:
        return None
    return _into(x.sources(source).to(x.base.dtype), out)


def _single(weights: tuple[float, ...]) -> int | None:
    """The index of the only nonzero weight, or None."""
    nonzero = [i for i, w in enumerate(weights) if w != 0]
    return nonzero[0] if len(nonzero) == 1 else None


def weighted_sum(base: torch.Tensor, deltas: torch.Tensor, coef: list[float], beta: float = 1.0,
                 out: torch.Tensor | None = None) -> torch.Tensor:
    """beta·base + Σᵢ coefᵢ·deltasᵢ in one streaming pass (a BLAS matrix-vector product) where the dtype allows."""
    if base.dtype in (torch.float32, torch.float64):
        target = out if out is not None and out.is_contiguous() else torch.empty_like(base)
        c = torch.tensor(coef, dtype=base.dtype, device=base.device)
        torch.addmv(base.reshape(-1), deltas.reshape(len(coef), -1).t(), c, beta=beta, out=target.view(-1))
        return target if target is out else _into(target, out)
    c = torch.tensor(coef, dtype=deltas.dtype, device=deltas.device).view(-1, *([1] * base.dim()))
    return _into((beta * base + (deltas * c).sum(dim=0)).to(base.dtype), out)


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

    def merge(self, x: TensorInputs, p: MergeParams, out: torch.Tensor | None = None) -> torch.Tensor:
        normalize = self.default_normalize if p.normalize is None else p.normalize
        rescale = self.default_rescale if p.rescale is None else p.rescale
        exact = _endpoint(x, self._only_source(p, normalize), out)
        if exact is not None:
            return exact
        if self.sparsify is None and not self.consensus and x.base.dtype in (torch.float32, torch.float64):
            total = sum(p.weights)
            scale = p.lam / total if normalize and abs(total) >= 1e-8 else p.lam
            return weighted_sum(x.base, x.deltas, [w * scale for w in p.weights], out=out)
        if self.sparsify in (None, "magnitude", "outliers", "random") and rescale in ("none", "inverse"):
            return self._fused(x, p, normalize, rescale, out)
        return _into(self._reference(x, p, normalize, rescale), out)

    def _only_source(self, p: MergeParams, normalize: bool) -> int | None:
        """The source this merge equals exactly: one nonzero weight, that source untrimmed, a total scale of one
        (normalizing divides its weight out: TIES keeps every entry of a lone source, as all agree with it)."""
        i = _single(p.weights)
        if i is None or abs(p.weights[i]) < 1e-8 or (p.densities is not None and p.densities[i] < 1):
            return None
        return i if p.lam * (1.0 if normalize else p.weights[i]) == 1 else None

    # -- the fused path: one read of the inputs, one write of the output, everything else in cache -------------
    def _fused(self, x: TensorInputs, p: MergeParams, normalize: bool, rescale: str, out) -> torch.Tensor:
        k = len(p.weights)
        dens = p.densities or (1.0,) * k
        dev = x.base.device
        dtype = x.base.dtype
        work = torch.float64 if dtype == torch.float64 else torch.float32
        n = x.base.numel()
        # streaming, and no trim that ranks τ: the kernel reads the sources and subtracts the base as it goes (one
        # pass over the files instead of writing τ and reading it back)
        read = x.sources if x.streaming and self.sparsify in (None, "random") else None
        from_sources = read is not None
        if read is not None:
            deltas = [read(i).reshape(-1) for i in range(k)]
        else:
            deltas = list(x.deltas.reshape(k, -1))
        # mergekit multiplies by the weights in the tensors' dtype; rounding them the same way keeps results equal
        wq = torch.tensor(p.weights, dtype=dtype)
        wsum = wq.view(-1, *([1] * x.base.dim())).sum(dim=0).reshape(-1)[0].to(dev, work)  # as mergekit reduces it
        wq = wq.to(work)
        inverse = rescale == "inverse" and self.sparsify is not None
        keep_prob = torch.tensor([d if 0 < d < 1 else 1.0 for d in dens], dtype=work, device=dev) if inverse else None
        lo = torch.zeros(k, dtype=torch.int64)
        hi = torch.full((k,), n, dtype=torch.int64)
        keys = seeds = None
        descending = self.sparsify != "outliers"
        if self.sparsify in ("magnitude", "outliers"):
            index = x.magnitude_index("desc" if descending else "asc")
            for i, d in enumerate(dens):
                lo[i], hi[i] = self._rank_window(d, n, p.gamma)
            bounds = [(index[i].key(deltas[i], int(lo[i])), index[i].key(deltas[i], int(hi[i]))) for i in range(k)]
            from_start = bool((lo == 0).all())
            keys = (None if from_start else torch.tensor([b[0][0] for b in bounds], dtype=dtype, device=dev),
                    None if from_start else torch.tensor([b[0][1] for b in bounds], dtype=torch.int64, device=dev),
                    torch.tensor([b[1][0] for b in bounds], dtype=dtype, device=dev),
                    torch.tensor([b[1][1] for b in bounds], dtype=torch.int64, device=dev))
        elif self.sparsify == "random":
            seeds = torch.tensor([source_seed(x.seed, i) for i in range(k)], dtype=torch.int64, device=dev)
            for i, d in enumerate(dens):
                hi[i] = keep_threshold(d)
        result = out if out is not None and out.is_contiguous() else torch.empty_like(x.base)
        lam = None if p.lam == 1 else torch.tensor(p.lam, dtype=work, device=dev)
        kernels.run(x.base.reshape(-1), deltas, keys, seeds, keep_prob, wq.to(dev), wsum, lo.to(dev), hi.to(dev),
                    lam, self.consensus, normalize, result.view(-1), descending, from_sources)
        return result if out is None or result is out else _into(result, out)

    def _rank_window(self, density: float, n: int, gamma: float) -> tuple[int, int]:
        """The magnitude ranks [lo, hi) a trim keeps (descending for TIES, ascending for Breadcrumbs)."""
        if density >= 1:
            return 0, n
        if self.sparsify == "magnitude":
            return 0, (0 if density <= 0 or n == 0 else max(1, int(density * n)))  # mergekit's rule
        target, top = int(density * n), int(gamma * n)
        lo = max(0, n - target - top)  # less outlier removal when needed to keep the density
        return lo, lo + target

    # -- the reference path: whole tensors, exactly mergekit's sequence of operations -----------------------------
    def _sparsified(self, x: TensorInputs, i: int, density: float, p: MergeParams, rescale: str) -> torch.Tensor:
        delta = x.deltas[i]
        if self.sparsify in ("magnitude", "outliers"):
            index = x.magnitude_index("desc" if self.sparsify == "magnitude" else "asc")[i]
            lo, hi = self._rank_window(density, delta.numel(), p.gamma)
            return trim(delta, window_mask(delta, index, lo, hi), rescale, density)
        if self.sparsify == "random":
            return random_drop(delta, density, source_seed(x.seed, i), rescale)
        if self.sparsify == "della":
            return della_drop(delta, density, p.epsilon, x.magnitude_ranks("row_asc")[i], x.generator, rescale)
        return delta

    def _reference(self, x: TensorInputs, p: MergeParams, normalize: bool, rescale: str) -> torch.Tensor:
        # One [K, ...] stack of this tensor's sparsified task vectors — a small multiple of one tensor, never a
        # model — reduced along dim 0 exactly as mergekit does, so low-precision sums round the same way.
        deltas = torch.stack([
            self._sparsified(x, i, 1.0 if p.densities is None else p.densities[i], p, rescale)
            for i in range(x.deltas.shape[0])
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

    def merge(self, x: TensorInputs, p: MergeParams, out: torch.Tensor | None = None) -> torch.Tensor:
        # Σ wᵢθᵢ = (Σ wᵢ)·θ₀ + Σ wᵢτᵢ: one streaming pass over the stacked task vectors
        normalize = self.default_normalize if p.normalize is None else p.normalize
        i = _single(p.weights)
        exact = _endpoint(x, i if i is not None and (normalize or p.weights[i] == 1) else None, out)
        if exact is not None:
            return exact
        total = sum(p.weights)
        scale = 1 / total if normalize and abs(total) >= 1e-8 else 1.0
        return weighted_sum(x.base, x.deltas, [w * scale for w in p.weights], beta=total * scale, out=out)


@dataclass(frozen=True)
class Slerp:
    """Spherical interpolation from the base (t = 0) to the single source (t = 1), one angle per whole tensor;
    linear interpolation when the two are (anti)parallel. t is the source's weight."""

    dot_threshold: float = 0.9995
    eps: float = 1e-8
    sparsify = None
    uses_density = False
    uses_base = True

    def merge(self, x: TensorInputs, p: MergeParams, out: torch.Tensor | None = None) -> torch.Tensor:
        if p.weights[0] == 0:
            return x.base.clone() if out is None else _into(x.base, out)
        exact = _endpoint(x, 0 if p.weights[0] == 1 else None, out)
        return exact if exact is not None else _into(self._slerp(x, p), out)

    def _slerp(self, x: TensorInputs, p: MergeParams) -> torch.Tensor:
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
