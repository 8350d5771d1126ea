"""Sparsification of one task-vector tensor: magnitude trim (TIES), outlier trim (Breadcrumbs), random drop (DARE),
magnitude-ranked random drop (DELLA).

The magnitude-based trims select by rank; evomerge.merge.topk turns a rank into a key the kernel compares with,
without storing a rank per entry. DELLA's per-row ranks are still stored (int32, `magnitude_ranks`).
"""

from __future__ import annotations

import torch


def magnitude_ranks(delta: torch.Tensor) -> torch.Tensor:
    """int32 rank of each entry of |delta| within its row, ascending (DELLA's per-row keep probabilities)."""
    w = delta.abs()
    w = w.unsqueeze(0) if w.dim() < 2 else w
    return torch.argsort(w, dim=1).argsort(dim=1).to(torch.int32)  # in the tensor's dtype, as mergekit's DELLA


def _rescaled(delta: torch.Tensor, kept: torch.Tensor, mode: str, keep_prob) -> torch.Tensor:
    """'inverse': divide by the keep probability (DARE/DELLA papers); 'l1': match the original L1 norm (mergekit);
    'none': as kept."""
    if mode == "none":
        return kept
    if mode == "inverse":
        return kept / keep_prob
    if mode == "l1":
        before, after = delta.abs().sum(), kept.abs().sum()
        if before < 1e-7 or after < 1e-7:
            return kept
        return kept * (before / after)
    raise ValueError(f"rescale must be 'inverse', 'l1' or 'none', got {mode!r}")


def trim(delta: torch.Tensor, keep: torch.Tensor, rescale: str, density: float) -> torch.Tensor:
    """A magnitude trim (TIES) or outlier trim (Breadcrumbs) given its keep mask (evomerge.merge.topk)."""
    if density >= 1:
        return delta
    if density <= 0:
        return torch.zeros_like(delta)
    return _rescaled(delta, delta * keep, rescale, density)


def _work_dtype(delta: torch.Tensor) -> torch.dtype:
    # torch.bernoulli lacks fp16 on CPU; mergekit draws in fp32 there, and so do we so that masks agree.
    return delta.dtype if delta.device.type != "cpu" or delta.dtype == torch.bfloat16 else torch.float32


_M32 = 0xFFFFFFFF


def _mix32(x: torch.Tensor) -> torch.Tensor:
    """A 32-bit integer hash (two multiply-xorshift rounds) on int64 tensors holding uint32 values."""
    x = (((x >> 16) ^ x) * 0x45D9F3B) & _M32
    x = (((x >> 16) ^ x) * 0x45D9F3B) & _M32
    return (x >> 16) ^ x


def keep_threshold(density: float) -> int:
    """Entries whose hash is below this are kept: probability density (2³² keeps everything)."""
    return 1 << 32 if density >= 1 else max(0, round(density * (1 << 32)))


def hash_keep(index: torch.Tensor, seed, threshold) -> torch.Tensor:
    """DARE's Bernoulli keep mask as a pure function of (seed, flat index): identical on every worker and device,
    computable in parallel inside the fused kernel, and far cheaper than drawing from a sequential RNG."""
    return _mix32(_mix32(index & _M32) ^ seed) < threshold


def source_seed(tensor_seed: int, source: int) -> int:
    """The mask seed of one source for one tensor (tensor_seed is per recipe and tensor)."""
    return int(_mix32(torch.tensor((tensor_seed ^ (0x9E3779B1 * (source + 1))) & _M32)).item())


def keep_mask(shape, density: float, seed: int, device=None) -> torch.Tensor:
    """The keep mask of a whole tensor (bool, `shape`)."""
    n = 1
    for s in shape:
        n *= s
    index = torch.arange(n, dtype=torch.int64, device=device)
    return hash_keep(index, seed, keep_threshold(density)).view(shape)


def random_drop(delta: torch.Tensor, density: float, seed: int, rescale: str = "inverse") -> torch.Tensor:
    """DARE: keep each entry with probability `density` (mask from `hash_keep`)."""
    if density >= 1:
        return delta
    work = _work_dtype(delta)
    mask = keep_mask(delta.shape, density, seed, delta.device)
    d = delta.to(work)
    return _rescaled(d, d * mask, rescale, density).to(delta.dtype)


def della_drop(delta: torch.Tensor, density: float, epsilon: float, row_rank_asc: torch.Tensor,
               generator: torch.Generator | None, rescale: str = "inverse") -> torch.Tensor:
    """DELLA MagPrune: keep probability rises linearly with the magnitude rank within each row, from
    density − ε (smallest) to density + ε (largest)."""
    if density >= 1:
        return delta
    if density <= 0:
        return torch.zeros_like(delta)
    if density + epsilon >= 1 or density - epsilon <= 0:
        raise ValueError(f"DELLA needs density ± epsilon inside (0, 1); got density {density}, epsilon {epsilon}")
    work = _work_dtype(delta)
    d = delta.to(work)
    d2 = d.unsqueeze(0) if d.dim() < 2 else d
    ranks = row_rank_asc.to(work) + 1
    lo, hi = ranks.min(dim=1, keepdim=True).values, ranks.max(dim=1, keepdim=True).values
    probs = (density - epsilon) + ((ranks - lo) / (hi - lo)).clamp(0, 1) * 2 * epsilon
    mask = torch.bernoulli(probs, generator=generator).to(work)
    return _rescaled(d2, d2 * mask, rescale, probs).to(delta.dtype).reshape(delta.shape)
