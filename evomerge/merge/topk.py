"""Exact magnitude selection (TIES' top-k, Breadcrumbs' window) from a sparse sample of the sorted magnitudes.

Entries are ordered by |τ| (descending for TIES, ascending for Breadcrumbs), ties by flat index — the order of a
stable sort. "Rank < k" is then "key < key of the entry at rank k", with key = (|τ|, index): a compare the fused
kernel makes while it reads τ, so no per-entry rank is stored or read. The key at rank k is found exactly in one
pass per candidate: `MagnitudeIndex` keeps |τ| at every STRIDE-th rank (and the rank where that value starts), so
the entries that can hold rank k are those whose |τ| lies between two samples — a few hundred, selected with one
compare over the tensor, then sorted. Cache: at most 16 bytes per STRIDE entries (≤ 0.0625 byte per parameter and
source; 0.039 in bf16), instead of the 4-byte rank of every entry.

mergekit sorts with torch's unstable sort, so among entries of *equal* magnitude at the threshold it keeps an
arbitrary subset (different on CPU and GPU); the results are equal to mergekit's under a stable sort.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

STRIDE = 256  # ranks between samples: the cache's size vs the entries sorted per candidate


@dataclass(frozen=True)
class MagnitudeIndex:
    """One source tensor's sorted-magnitude sample. `values[q]` = |τ| at rank q·STRIDE (the last sample: rank
    n − 1); `first[q]` = the rank of the first entry with that |τ|."""

    n: int
    descending: bool
    values: torch.Tensor  # [m], τ's dtype: compares with |τ| are exact
    first: torch.Tensor  # int64 [m]

    @classmethod
    def build(cls, delta: torch.Tensor, descending: bool) -> MagnitudeIndex:
        a = delta.detach().reshape(-1).abs()
        n = a.numel()
        asc = torch.sort(a.float() if a.device.type == "cpu" and a.dtype != torch.float64 else a).values.to(a.dtype)
        ranks = torch.arange(0, n, STRIDE, device=a.device)
        if n and ranks[-1] != n - 1:
            ranks = torch.cat([ranks, torch.tensor([n - 1], device=a.device)])
        if descending:
            values = asc[n - 1 - ranks]
            first = n - torch.searchsorted(asc, values, right=True)  # entries with a larger |τ| come first
        else:
            values = asc[ranks]
            first = torch.searchsorted(asc, values, right=False)
        return cls(n, descending, values.clone(), first.cpu())

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (self.values, self.first))

    def key(self, delta: torch.Tensor, rank: int) -> tuple[float, int]:
        """(|τ|, flat index) of the entry at `rank` in this order; rank n gives a key after every entry."""
        if rank <= 0:  # nothing precedes it
            return (float("inf"), 0) if self.descending else (-1.0, 0)
        if rank >= self.n:  # everything precedes it
            return (-1.0, 0) if self.descending else (float("inf"), self.n)
        q = rank // STRIDE
        v0, v1 = self.values[q], self.values[q + 1]
        d = delta.reshape(-1)
        lo, hi = (v1, v0) if self.descending else (v0, v1)
        from evomerge.merge import kernels  # kernels imports this module

        members = kernels.abs_in_range(d, lo, hi).nonzero().view(-1)  # entries whose |τ| lies between the samples
        mv = d[members].abs()
        order = torch.sort(mv.float() if mv.dtype != torch.float64 else mv, descending=self.descending,
                           stable=True).indices
        at = order[rank - int(self.first[q])]
        return mv[at].item(), int(members[at])


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
