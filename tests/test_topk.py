"""Exact magnitude selection from one-byte rank buckets (evomerge.merge.topk)."""

import pytest
import torch

from evomerge.merge.topk import BUCKETS, MagnitudeIndex, window_mask


def _stable_ranks(delta: torch.Tensor, descending: bool) -> torch.Tensor:
    a = delta.reshape(-1).abs().float()
    order = torch.sort(a, descending=descending, stable=True).indices
    ranks = torch.empty_like(order)
    ranks[order] = torch.arange(a.numel())
    return ranks.view(delta.shape)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("descending", [True, False])
def test_rank_window_equals_a_stable_sort(dtype, descending):
    # 40 000 entries with heavy ties (bf16/fp16 of small values, plus exact zeros and repeated values), so that the
    # thresholds fall inside tie groups and across many buckets
    g = torch.Generator().manual_seed(0)
    delta = (0.01 * torch.randn(200, 200, generator=g)).to(dtype)
    delta.view(-1)[::7] = 0
    delta.view(-1)[::11] = delta.view(-1)[5]
    n = delta.numel()
    ranks = _stable_ranks(delta, descending)
    idx = MagnitudeIndex.build(delta, descending)
    assert idx.nbytes() == n  # one byte per entry
    step = n // BUCKETS
    for lo, hi in [(0, n), (0, 0), (0, 1), (0, n // 2), (0, step), (step * 3 + 17, n - 5), (n - 1, n),
                   (1234, 29871), (0, n - 1),
                   *sorted(torch.randint(0, n + 1, (2,), generator=g).tolist() for _ in range(20))]:
        lo, hi = min(lo, hi), max(lo, hi)
        keep = window_mask(delta, idx, lo, hi)
        assert int(keep.sum()) == hi - lo
        assert torch.equal(keep, (ranks >= lo) & (ranks < hi)), (lo, hi)


def test_small_tensors_keep_exact_ranks():
    delta = torch.tensor([0.3, -0.1, 0.3, 0.2, -0.3])
    idx = MagnitudeIndex.build(delta, True)
    assert [int(window_mask(delta, idx, 0, k).sum()) for k in range(6)] == list(range(6))
    assert window_mask(delta, idx, 0, 2).tolist() == [True, False, True, False, False]  # ties: lower index first


@pytest.mark.parametrize("descending", [True, False])
def test_selection_with_nan_magnitudes_keeps_the_sorts_order(descending):
    from evomerge.merge.topk import _kth

    v = torch.tensor([0.5, float("nan"), 0.2, 0.5, 0.9, float("nan"), 0.1])
    order = torch.sort(v, descending=descending, stable=True).indices
    assert [_kth(v, r, descending) for r in range(len(v))] == order.tolist()
