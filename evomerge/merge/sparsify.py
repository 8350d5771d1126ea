"""Sparsification of one task-vector tensor: magnitude trim (TIES) and random drop (DARE)."""

from __future__ import annotations

import torch


def magnitude_order(delta: torch.Tensor) -> torch.Tensor:
    """Flat indices of `delta` by descending magnitude — computed once per source and tensor."""
    # Ranked in fp32 with torch.argsort exactly as mergekit does, so ties (common in bf16) break the same way.
    return torch.argsort(delta.abs().reshape(-1).float(), descending=True)


def magnitude_trim(delta: torch.Tensor, density: float, order: torch.Tensor) -> torch.Tensor:
    """Keep the top `density` fraction of |delta| (at least one entry when density > 0), no rescale.

    With `order` precomputed, one candidate's trim is a scatter and a multiply instead of a sort.
    """
    if density >= 1:
        return delta
    if density <= 0 or delta.numel() == 0:
        return torch.zeros_like(delta)
    k = max(1, int(density * delta.numel()))  # mergekit's rule, so results match it exactly
    mask = torch.zeros(delta.numel(), dtype=delta.dtype, device=delta.device)
    mask[order[:k]] = 1
    return delta * mask.view_as(delta)


def random_drop(delta: torch.Tensor, density: float, generator: torch.Generator, rescale: str) -> torch.Tensor:
    """DARE: keep each entry with probability `density`.

    rescale: "inverse" multiplies kept entries by 1/density (the DARE paper); "l1" rescales to the tensor's
    original L1 norm (mergekit ≥ 2025); "none" keeps them as they are.
    """
    if density >= 1:
        return delta
    # torch.bernoulli lacks fp16 on CPU; mergekit draws in fp32 there, and so do we so that masks agree.
    work = delta.dtype if delta.device.type != "cpu" or delta.dtype == torch.bfloat16 else torch.float32
    mask = torch.bernoulli(torch.full(delta.shape, density, dtype=work, device=delta.device), generator=generator)
    kept = delta.to(work) * mask
    if rescale == "inverse":
        kept = kept / density
    elif rescale == "l1":
        before, after = delta.to(work).abs().sum(), kept.abs().sum()
        if before >= 1e-7 and after >= 1e-7:
            kept = kept * (before / after)
    elif rescale != "none":
        raise ValueError(f"rescale must be 'inverse', 'l1' or 'none', got {rescale!r}")
    return kept.to(delta.dtype)
