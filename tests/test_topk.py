"""Exact magnitude selection from a sparse sample of the sorted magnitudes (evomerge.merge.topk)."""

import pytest
import torch

from evomerge.merge import kernels
from evomerge.merge.topk import STRIDE, MagnitudeIndex, window_mask


def _stable_ranks(delta: torch.Tensor, descending: bool) -> torch.Tensor:
    a = delta.reshape(-1).abs().float()
    order = torch.sort(a, descending=descending, stable=True).indices
    ranks = torch.empty_like(order)
    ranks[order] = torch.arange(a.numel())
    return ranks.view(delta.shape)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("descending", [True, False])
@pytest.mark.parametrize("compiled", [False, True])
def test_rank_window_equals_a_stable_sort(dtype, descending, compiled, monkeypatch):
    # 40 000 entries with heavy ties (bf16/fp16 of small values, plus exact zeros and repeated values), so that the
    # thresholds fall inside tie groups and across many samples
    monkeypatch.setattr(kernels, "COMPILE_MIN", 1 if compiled else 1 << 40)
    g = torch.Generator().manual_seed(0)
    delta = (0.01 * torch.randn(200, 200, generator=g)).to(dtype)
    delta.view(-1)[::7] = 0
    delta.view(-1)[::11] = delta.view(-1)[5]
    n = delta.numel()
    ranks = _stable_ranks(delta, descending)
    idx = MagnitudeIndex.build(delta, descending)
    assert idx.nbytes() <= n // STRIDE * 24 + 64  # a few bytes per STRIDE entries, not per entry
    for lo, hi in [(0, n), (0, 0), (0, 1), (0, n // 2), (0, STRIDE), (STRIDE * 3 + 17, n - 5), (n - 1, n),
                   (1234, 29871), (0, n - 1)]:
        keep = window_mask(delta, idx, lo, hi)
        assert int(keep.sum()) == hi - lo
        assert torch.equal(keep, (ranks >= lo) & (ranks < hi)), (lo, hi)


def test_cache_is_under_one_byte_per_parameter():
    delta = torch.randn(1024, 1024).to(torch.bfloat16)
    assert MagnitudeIndex.build(delta, True).nbytes() / delta.numel() < 0.1
