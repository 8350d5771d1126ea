"""Exact magnitude selection (TIES' top-k, Breadcrumbs' window) from one byte per entry.

Entries are ordered by |τ| (descending for TIES, ascending for Breadcrumbs), ties by flat index — the order of a
stable sort. "Rank < k" is then "key < key of the entry at rank k", with key = (|τ|, index): a compare the fused
kernel makes while it reads τ, so no per-entry rank is read while merging. The key at rank k is found exactly in
one pass per candidate: `MagnitudeIndex` stores each entry's rank bucket (rank · 256 // n, one byte), so the entries
that can hold rank k are the ~n/256 of its bucket — one byte-compare over the tensor finds them, a small sort
orders them. Cache: 1 byte per parameter and source (an int32 rank per entry took 4).

mergekit sorts with torch's unstable sort, so among entries of *equal* magnitude at the threshold it keeps an
arbitrary subset (different on CPU and GPU); the results are equal to mergekit's under a stable sort.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

BUCKETS = 256  # one byte per entry


@dataclass(frozen=True)
class MagnitudeIndex:
    """One source tensor's rank buckets: codes[i] = rank(i) · 256 // n in the order, as uint8."""

    n: int
    descending: bool
    codes: torch.Tensor  # uint8, flat

    @classmethod
    def build(cls, delta: torch.Tensor, descending: bool) -> MagnitudeIndex:
        a = delta.detach().reshape(-1).abs()
        n = a.numel()
        w = a.float() if a.device.type == "cpu" and a.dtype != torch.float64 else a
        order = torch.sort(w, descending=descending, stable=True).indices
        codes = torch.empty(n, dtype=torch.uint8, device=a.device)
        codes[order] = (torch.arange(n, device=a.device) * BUCKETS // max(n, 1)).to(torch.uint8)
        return cls(n, descending, codes)

    def nbytes(self) -> int:
        return self.codes.numel() * self.codes.element_size()

    def key(self, delta: torch.Tensor, rank: int) -> tuple[float, int]:
        """(|τ|, flat index) of the entry at `rank` in this order; rank n gives a key after every entry."""
        if rank <= 0:  # nothing precedes it
            return (float("inf"), 0) if self.descending else (-1.0, 0)
        if rank >= self.n:  # everything precedes it
            return (-1.0, 0) if self.descending else (float("inf"), self.n)
        b = rank * BUCKETS // self.n
        first = -(-b * self.n // BUCKETS)  # the bucket's first rank
        members = _members(self.codes, b)  # index order
        mv = delta.reshape(-1)[members].abs()
        at = _kth(mv.float() if mv.dtype != torch.float64 else mv, rank - first, self.descending)
        return mv[at].item(), int(members[at])


def _members(codes: torch.Tensor, b: int) -> torch.Tensor:
    """Flat indices of the entries in bucket b, ascending. On CPU through NumPy: its byte compare and flatnonzero
    run ~4x faster than torch's `(codes == b).nonzero()` here, and this scan is most of a TIES candidate's cost."""
    if codes.device.type == "cpu":
        return torch.from_numpy(np.flatnonzero(codes.numpy() == b))
    return (codes == b).nonzero().view(-1)


def _kth(values: torch.Tensor, r: int, descending: bool) -> int:
    """Position of the r-th entry of `values` in the stable order (by value, ties by position): a selection, not
    a sort — the value by partition, then its place among the entries equal to it."""
    if values.device.type != "cpu":
        return int(torch.sort(values, descending=descending, stable=True).indices[r])
    v = values.numpy()
    if np.isnan(v).any():  # NaN magnitudes: NumPy and torch order them differently; keep the sort's order
        return int(torch.sort(values, descending=descending, stable=True).indices[r])
    m = v.size
    t = np.partition(v, m - 1 - r if descending else r)[m - 1 - r if descending else r]
    before = int(np.count_nonzero(v > t if descending else v < t))
    return int(np.flatnonzero(v == t)[r - before])


def precedes(a: torch.Tensor, index: torch.Tensor, t, j, descending: bool) -> torch.Tensor:
    """Whether each entry (|τ| = a, flat index) comes before the key (t, j) in the order."""
    before = a > t if descending else a < t
    return before | ((a == t) & (index < j))


def window_mask(delta: torch.Tensor, idx: MagnitudeIndex, lo: int, hi: int) -> torch.Tensor:
    """Boolean mask of the entries with rank in [lo, hi) — the reference path's trim masks."""
    a = delta.abs()
    index = torch.arange(delta.numel(), device=delta.device).view(delta.shape)
    (tl, jl), (th, jh) = idx.key(delta, lo), idx.key(delta, hi)
    return ~precedes(a, index, tl, jl, idx.descending) & precedes(a, index, th, jh, idx.descending)
