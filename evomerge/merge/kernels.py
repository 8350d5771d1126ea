"""The fused per-tensor kernel of the generalized merge (trim/drop → weight → sign election → mean → add).

One function, used two ways: eagerly on cache-sized chunks (small tensors, tests, no compiler), and compiled by
torch.compile (Inductor) for large tensors, where it becomes one loop that reads each input once and writes the
output once — measured at 1.0–1.3× the time of a BLAS weighted sum (benchmarks/README.md). Shapes are dynamic
and the weights are tensors, so a search compiles once per (number of sources, operator) and never again.
"""

from __future__ import annotations

import logging
import os

import torch

from evomerge.merge.sparsify import hash_keep
from evomerge.merge.topk import precedes

log = logging.getLogger(__name__)

CHUNK = 1 << 16  # elements per eager step: the temporaries of one step stay in cache
COMPILE_MIN = 1 << 18  # tensors at least this large use the compiled kernel


def combine(base, deltas: list[torch.Tensor], keys: tuple | None, seeds: torch.Tensor | None,
            offset: torch.Tensor, keep_prob: torch.Tensor | None, weights: torch.Tensor, wsum: torch.Tensor,
            lo: torch.Tensor, hi: torch.Tensor, lam: torch.Tensor | None, consensus: bool, normalize: bool,
            descending: bool = True, from_sources: bool = False) -> torch.Tensor:
    """θ₀ + λ·Σ agreeing tᵢ / Σ agreeing wᵢ with tᵢ = wᵢ·(τᵢ·keepᵢ / dᵢ), in mergekit's order of operations.

    keepᵢ, for magnitude and outlier trims (`keys` = (t_lo, j_lo, t_hi, j_hi), one entry per source): the entry's
    magnitude rank lies in [lo, hi), i.e. its key (|τ|, index) is not before (t_lo, j_lo) and is before (t_hi, j_hi)
    (evomerge.merge.topk); for random drops (`seeds`), hash(seedᵢ, offset + index) < hiᵢ. Either mask is computed
    here, inside the one loop, not read from memory.
    The entries agreeing with the majority sign are the positive ones when Σt ≥ 0, else the negative ones, so the
    sums of clamped values add exactly the numbers mergekit's masked sum adds.

    Arithmetic is in fp32 (fp64 for fp64 tensors); for bf16 and fp16 tensors every value mergekit stores in the
    tensors' dtype is rounded to it here at the same step (`low`), and sums accumulate in fp32 in source order as
    torch's reductions do, so the result is mergekit's bit for bit in every dtype."""
    dtype = base.dtype
    work = torch.float64 if dtype == torch.float64 else torch.float32

    def low(x):  # what storing x in the tensors' dtype does (nothing for fp32/fp64)
        return x if dtype == work else x.to(dtype).to(work)

    ts = []
    index = None
    if seeds is not None or keys is not None:
        index = torch.arange(base.numel(), dtype=torch.int64, device=base.device) + offset
    for i, d in enumerate(deltas):
        if from_sources:  # d is source i itself: its task vector as the pool stores it (the difference, rounded)
            d = (d.to(work) - base.to(work)).to(dtype)
        t = d.to(work)
        if keys is not None and index is not None:
            a = d.abs()
            keep = precedes(a, index, keys[2][i], keys[3][i], descending)
            if keys[0] is not None:  # None: the window starts at rank 0 (TIES), nothing to exclude below it
                keep = keep & ~precedes(a, index, keys[0][i], keys[1][i], descending)
            t = t * keep
        if seeds is not None and index is not None:
            t = t * hash_keep(index, seeds[i], hi[i])
        if keep_prob is not None:  # the papers' 1/p rescale, before weighting (as the step-by-step path)
            t = low(t / keep_prob[i])
        ts.append(low(t * weights[i]))
    total = ts[0]
    for t in ts[1:]:
        total = total + t
    if consensus:
        majority = low(total) >= 0
        pos, neg = ts[0].clamp(min=0), ts[0].clamp(max=0)
        wpos, wneg = weights[0] * (ts[0] > 0), weights[0] * (ts[0] < 0)
        for i in range(1, len(ts)):
            pos, neg = pos + ts[i].clamp(min=0), neg + ts[i].clamp(max=0)
            wpos, wneg = wpos + weights[i] * (ts[i] > 0), wneg + weights[i] * (ts[i] < 0)
        mixed = low(torch.where(majority, pos, neg))
        if normalize:
            divisor = low(torch.where(majority, wpos, wneg))
            mixed = low(mixed / torch.where(divisor == 0, 1.0, divisor))
    else:
        mixed = low(total)
        if normalize:
            mixed = low(mixed / torch.where(wsum.abs() < 1e-8, 1.0, wsum))
    if lam is not None:  # None: λ = 1, whose multiply and rounding change nothing (and cost ~10% in bf16)
        mixed = low(mixed * lam)
    return (base.to(work) + mixed).to(dtype)


def combine_into(out: torch.Tensor, *args) -> None:
    """combine(*args) written into `out`. Compiled, the loop stores straight into `out`: returning a new tensor
    and copying it cost a model-sized allocation (page faults) and a second pass — 3x the kernel's time here."""
    out.copy_(combine(*args))


_compiled = None
_compile_failed = False


def _compile_enabled() -> bool:
    return os.environ.get("EVOMERGE_COMPILE", "1") != "0" and not _compile_failed


def run(base: torch.Tensor, deltas, keys, seeds, keep_prob, weights, wsum, lo, hi, lam, consensus, normalize,
        out: torch.Tensor, descending: bool = True, from_sources: bool = False) -> torch.Tensor:
    """Write combine(...) for the flat tensors into `out` (flat), compiled when large, else chunk by chunk."""
    global _compiled, _compile_failed
    n = base.numel()
    args = (keep_prob, weights, wsum, lo, hi, lam, consensus, normalize)
    if n >= COMPILE_MIN and _compile_enabled():
        try:
            if _compiled is None:
                # without emulate_precision_casts Inductor drops the bf16/fp16 roundings `combine` makes on purpose
                _compiled = torch.compile(combine_into, dynamic=True, options={"emulate_precision_casts": True})
            zero = torch.zeros((), dtype=torch.int64, device=base.device)
            _compiled(out, base, deltas, keys, seeds, zero, *args, descending, from_sources)
            return out
        except Exception as e:  # noqa: BLE001 — no C++ compiler, unsupported device…: fall back, say so once
            _compile_failed = True
            log.warning("torch.compile of the merge kernel failed (%s); merging eagerly, which is slower", e)
    for s in range(0, n, CHUNK):
        end = min(s + CHUNK, n)
        offset = torch.tensor(s, dtype=torch.int64, device=base.device)
        out[s:end] = combine(base[s:end], [d[s:end] for d in deltas], keys, seeds, offset, *args, descending,
                             from_sources)
    return out
