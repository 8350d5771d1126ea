"""Operator properties on real tiny models, and golden equality with mergekit 0.1.5's `merge_tensors`."""

import pytest
import torch
from mergekit.merge_methods.api import merge_tensors

from evomerge.merge import OPERATORS
from evomerge.merge.generalized import MergeParams, TensorInputs
from evomerge.merge.materialize import Merger, tensor_seed
from evomerge.merge.sparsify import keep_mask, magnitude_ranks, source_seed
from evomerge.merge.topk import MagnitudeIndex
from evomerge.recipe import GroupParams, Recipe
from evomerge.sources import SourcePool, load_state_dict

def _merged(pool: SourcePool, recipe: Recipe) -> dict[str, torch.Tensor]:
    m = Merger(pool)
    return {k: m.merged_tensor(recipe, k) for k in pool.base}


def _density(operator):
    return 1.0 if OPERATORS[operator].uses_density else None


@pytest.mark.parametrize("operator", sorted(OPERATORS))
def test_merging_a_model_with_itself_is_identity(tiny_zoo, operator):
    expert = load_state_dict(tiny_zoo / "add")
    copies = 1 if operator == "slerp" else 2  # slerp: base → one source; t = 1 is the source
    pool = SourcePool(tiny_zoo / "base", [tiny_zoo / "add"] * copies)
    weight = 1.0 if copies == 1 else 0.5
    normalize = True if operator == "linear" else False
    recipe = Recipe.uniform(operator, copies, weight, _density(operator), normalize=normalize)
    for k, v in _merged(pool, recipe).items():
        torch.testing.assert_close(v, expert[k], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("operator", sorted(op for op in OPERATORS if OPERATORS[op].uses_base))
def test_weight_zero_gives_the_base(tiny_zoo, operator):
    base = load_state_dict(tiny_zoo / "base")
    n = 1 if operator == "slerp" else 2
    pool = SourcePool(tiny_zoo / "base", [tiny_zoo / "add", tiny_zoo / "cipher"][:n])
    density = 0.7 if OPERATORS[operator].uses_density else None
    recipe = Recipe.uniform(operator, n, 0.0, density, normalize=False)
    for k, v in _merged(pool, recipe).items():
        torch.testing.assert_close(v, base[k], rtol=0, atol=1e-6)


def test_ties_density_one_single_source_equals_task_arithmetic(tiny_zoo):
    pool = SourcePool(tiny_zoo / "base", [tiny_zoo / "reverse"])
    ties = _merged(pool, Recipe.uniform("ties", 1, 0.8, 1.0, normalize=False, lam=1.3))
    ta = _merged(pool, Recipe.uniform("task_arithmetic", 1, 0.8, lam=1.3))
    for k in ties:
        torch.testing.assert_close(ties[k], ta[k], rtol=1e-6, atol=1e-6)  # BLAS vs fused: rounding only


def test_materialize_writes_in_place_and_is_deterministic(tiny_zoo):
    from transformers import AutoModelForCausalLM

    pool = SourcePool(tiny_zoo / "base", [tiny_zoo / "add", tiny_zoo / "cipher", tiny_zoo / "reverse"])
    model = AutoModelForCausalLM.from_pretrained(tiny_zoo / "base")
    ptrs = {n: p.data_ptr() for n, p in model.named_parameters()}
    recipe = Recipe(operator="dare_ties", granularity="layer", seed=3, normalize=True,
                    groups={g: GroupParams(weights=(0.3, 0.5, 0.7), densities=(0.4, 0.6, 0.9))
                            for g in ["embed", "layers.0-0", "layers.1-1", "layers.2-2", "layers.3-3", "head"]})
    Merger(pool).materialize(recipe, model)
    first = {n: p.detach().clone() for n, p in model.named_parameters()}
    assert {n: p.data_ptr() for n, p in model.named_parameters()} == ptrs  # no re-allocation
    Merger(pool).materialize(Recipe.uniform("task_arithmetic", 3, 0.1), model)
    Merger(pool).materialize(recipe, model)
    for n, p in model.named_parameters():
        assert torch.equal(p, first[n]), n  # same recipe → same weights (DARE masks seeded per recipe and tensor)


# --- golden tests against mergekit ------------------------------------------------------------------------------

SHAPES = [(7,), (16, 24), (3, 5, 11)]


def _random_inputs(shape, k, dtype, seed):
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(shape, generator=g).to(dtype)
    models = [(base.float() + 0.1 * torch.randn(shape, generator=g)).to(dtype) for _ in range(k)]
    return base, models


def _ours(operator, base, models, weights, densities, *, seed=None, **params):
    deltas = torch.stack([m - base for m in models])
    x = TensorInputs(base=base, task_vectors=deltas,
                     order=lambda kind: [MagnitudeIndex.build(d, kind == "desc") for d in deltas],
                     ranks=lambda kind: torch.stack([magnitude_ranks(d) for d in deltas]),
                     seed=seed or 0, generator=None if seed is None else torch.Generator().manual_seed(seed),
                     sources=lambda i: models[i])
    return OPERATORS[operator].merge(x, MergeParams(weights=tuple(weights), densities=tuple(densities), **params))


def _share_masks(monkeypatch, shape, densities, seed):
    """mergekit draws each DARE mask with one torch.bernoulli call per source, in source order: hand it ours."""
    masks = iter([keep_mask(shape, d, source_seed(seed, i)) for i, d in enumerate(densities) if d < 1])
    monkeypatch.setattr(torch, "bernoulli", lambda p, *a, **k: next(masks).to(p.dtype))


@pytest.fixture(autouse=True)
def _mergekit_sorts_stably(mergekit_sorts_stably):
    """Every golden test here compares with mergekit: its magnitude sorts are stable (tests/conftest.py)."""


def _mergekit(method, base, models, weights, densities, **params):
    return merge_tensors([base, *models], method, base_index=0,
                         parameters={"weight": list(weights), "density": list(densities), **params})


def _assert_bit_equal(ours, ref):
    assert ours.dtype == ref.dtype
    differ = (ours != ref).reshape(-1)
    if ours.dtype == torch.float32:
        # torch's CPU sum over sources adds the last numel mod (SIMD width ≤ 16) entries in another order (scalar
        # loop, 4 accumulators): in fp32 they may differ from mergekit in the last bit; every other entry is exact
        n = differ.numel()
        torch.testing.assert_close(ours.reshape(-1)[n - n % 16 :], ref.reshape(-1)[n - n % 16 :], rtol=1e-6, atol=1e-7)
        differ = differ[: n - n % 16]
    assert not differ.any(), (f"{int(differ.sum())} of {differ.numel()} entries differ, by up to "
                              f"{(ours.double() - ref.double()).abs().max().item():.3g}")


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("densities", [(1.0, 1.0, 1.0), (0.5, 0.3, 0.8), (0.02, 0.05, 0.01)])
@pytest.mark.parametrize("normalize", [True, False])
def test_ties_equals_mergekit(dtype, shape, densities, normalize):
    base, models = _random_inputs(shape, 3, dtype, seed=hash((shape, densities)) % 1000)
    weights = (0.7, 1.3, -0.4)  # not summing to 1, one negative
    ours = _ours("ties", base, models, weights, densities, normalize=normalize, lam=0.9)
    ref = _mergekit("ties", base, models, weights, densities, normalize=normalize, **{"lambda": 0.9})
    _assert_bit_equal(ours, ref)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("shape", SHAPES)
def test_task_arithmetic_equals_mergekit(dtype, shape):
    base, models = _random_inputs(shape, 3, dtype, seed=1)
    weights = (0.2, 0.9, 0.5)
    ours = _ours("task_arithmetic", base, models, weights, (1.0, 1.0, 1.0), lam=1.1)
    ref = _mergekit("task_arithmetic", base, models, weights, (1.0, 1.0, 1.0), **{"lambda": 1.1})
    if dtype == torch.float32:  # one BLAS pass (Σ(λwᵢ)τᵢ) rather than mergekit's steps: rounding differs
        torch.testing.assert_close(ours, ref, rtol=1e-6, atol=1e-6)
    else:
        _assert_bit_equal(ours, ref)


@pytest.mark.parametrize("method", ["dare_ties", "dare_linear"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("rescale", ["l1", "none"])
def test_dare_equals_mergekit_with_a_shared_mask(method, dtype, shape, rescale, monkeypatch):
    base, models = _random_inputs(shape, 3, dtype, seed=2)
    weights, densities = (0.6, 1.0, 0.3), (0.5, 0.9, 0.2)
    seed = tensor_seed(11, "some.tensor")
    ours = _ours(method, base, models, weights, densities, seed=seed, rescale=rescale, normalize=True)
    _share_masks(monkeypatch, shape, densities, seed)
    ref = _mergekit(method, base, models, weights, densities, rescale=(rescale == "l1"), normalize=True)
    _assert_bit_equal(ours, ref)


def test_dare_inverse_rescale_is_paper_exact():
    base, (m,) = _random_inputs((1000,), 1, torch.float32, seed=3)
    out = _ours("dare_linear", base, [m], (1.0,), (0.25,), seed=5, rescale="inverse")
    delta, got = m - base, out - base
    kept = got != 0
    torch.testing.assert_close(got[kept], delta[kept] / 0.25)
    assert 0.15 < kept.float().mean() < 0.35


def _tol(dtype):
    return 1e-6 if dtype == torch.float32 else 1e-2


@pytest.mark.parametrize("method", ["breadcrumbs", "breadcrumbs_ties"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("densities", [(0.5, 0.3, 0.8), (0.9, 0.95, 0.99)])
def test_breadcrumbs_equals_mergekit(method, dtype, shape, densities):
    base, models = _random_inputs(shape, 3, dtype, seed=4)
    weights = (0.5, 1.2, 0.7)
    ours = _ours(method, base, models, weights, densities, gamma=0.05, normalize=True)
    ref = _mergekit(method, base, models, weights, densities, gamma=0.05, normalize=True)
    _assert_bit_equal(ours, ref)


@pytest.mark.parametrize("method", ["della", "della_linear"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("shape", [(16, 24), (3, 5, 11)])
def test_della_equals_mergekit_with_a_shared_mask(method, dtype, shape):
    base, models = _random_inputs(shape, 3, dtype, seed=5)
    weights, densities = (0.6, 1.0, 0.3), (0.5, 0.6, 0.4)
    seed = tensor_seed(3, "della.tensor")
    ours = _ours(method, base, models, weights, densities, seed=seed, epsilon=0.1, rescale="l1")
    torch.manual_seed(seed)
    ref = _mergekit(method, base, models, weights, densities, epsilon=0.1, rescale=True)
    _assert_bit_equal(ours, ref)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("normalize", [True, False])
def test_linear_equals_mergekit(dtype, shape, normalize):
    base, models = _random_inputs(shape, 3, dtype, seed=6)
    weights = (0.2, 0.9, 0.5)
    ours = _ours("linear", base, models, weights, (1.0,) * 3, normalize=normalize)
    ref = merge_tensors(models, "linear", parameters={"weight": list(weights), "normalize": normalize})
    torch.testing.assert_close(ours, ref.to(dtype), rtol=_tol(dtype) * 10, atol=_tol(dtype) * 10)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("t", [0.0, 0.3, 1.0])
def test_slerp_equals_mergekit(dtype, shape, t):
    base, (other,) = _random_inputs(shape, 1, dtype, seed=7)
    other = (other.float() + torch.randn(shape)).to(dtype)  # a real angle, not the parallel fallback
    ours = _ours("slerp", base, [other], (t,), (1.0,))
    ref = merge_tensors([base, other], "slerp", base_index=0, parameters={"t": t})
    torch.testing.assert_close(ours, ref.to(dtype), rtol=_tol(dtype) * 10, atol=_tol(dtype) * 10)


def test_slerp_falls_back_to_linear_for_parallel_tensors():
    base = torch.randn(50)
    out = _ours("slerp", base, [2 * base], (0.25,), (1.0,))
    torch.testing.assert_close(out, 1.25 * base)


@pytest.mark.parametrize("method", ["ties", "dare_ties", "breadcrumbs_ties", "dare_linear"])
def test_compiled_kernel_equals_mergekit(method, monkeypatch):
    """Large tensors go through the torch.compile'd kernel; it must give mergekit's numbers too."""
    from evomerge.merge import kernels

    monkeypatch.setattr(kernels, "COMPILE_MIN", 1)
    monkeypatch.setattr(kernels, "_compile_failed", False)
    base, models = _random_inputs((96, 80), 3, torch.float32, seed=8)
    weights, densities = (0.6, 1.1, -0.3), (0.5, 0.3, 0.9)
    seed = tensor_seed(1, "big")
    ours = _ours(method, base, models, weights, densities, seed=seed, rescale="none", gamma=0.05, normalize=True)
    assert not kernels._compile_failed, "the compiled kernel fell back to eager"
    _share_masks(monkeypatch, (96, 80), densities, seed)
    params = {"rescale": False, "normalize": True, **({"gamma": 0.05} if "breadcrumbs" in method else {})}
    ref = _mergekit(method, base, models, weights, densities, **params)
    _assert_bit_equal(ours, ref)


# Real checkpoints are bf16 or fp16: the fused kernel must be mergekit's numbers there too, not fp32's. 4097×33
# runs eagerly over several cache-sized chunks (the last one partial); 1024×300 through the torch.compile'd kernel.
BIG = [(4097, 33), (1024, 300)]


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
@pytest.mark.parametrize("shape", BIG)
@pytest.mark.parametrize("method", ["ties", "dare_ties", "breadcrumbs", "breadcrumbs_ties"])
@pytest.mark.parametrize("densities", [(0.3, 0.5, 0.7, 0.2, 0.9), (0.02, 0.1, 0.05, 0.3, 0.01)])
def test_fused_kernel_equals_mergekit_bit_for_bit(dtype, shape, method, densities, monkeypatch):
    from evomerge.merge import kernels

    assert kernels.CHUNK < BIG[0][0] * BIG[0][1] < kernels.COMPILE_MIN <= BIG[1][0] * BIG[1][1]
    base, models = _random_inputs(shape, 5, dtype, seed=sum(shape))
    weights = (0.7, 1.3, -0.4, 0.25, 0.9)  # not summing to 1, one negative: sign votes near zero
    seed = tensor_seed(4, "big")
    gamma = {"gamma": 0.05} if "breadcrumbs" in method else {}
    ours = _ours(method, base, models, weights, densities, seed=seed, rescale="none", normalize=True, lam=0.9,
                 **gamma)
    _share_masks(monkeypatch, shape, densities, seed)
    ref = _mergekit(method, base, models, weights, densities, rescale=False, normalize=True, **{"lambda": 0.9},
                    **gamma)
    _assert_bit_equal(ours, ref)


def test_hash_masks_are_bernoulli_and_independent_across_seeds():
    n, d = 1_000_000, 0.3
    a = keep_mask((n,), d, source_seed(tensor_seed(1, "t"), 0))
    b = keep_mask((n,), d, source_seed(tensor_seed(2, "t"), 0))
    c = keep_mask((n,), d, source_seed(tensor_seed(1, "t"), 1))
    for m in (a, b, c):
        assert abs(m.float().mean().item() - d) < 0.003  # ±6 standard errors
    for x, y in ((a, b), (a, c)):
        assert abs((x & y).float().mean().item() - d * d) < 0.003  # joint keep rate of independent masks
    assert torch.equal(a, keep_mask((n,), d, source_seed(tensor_seed(1, "t"), 0)))  # a pure function of the seed


# --- endpoints: a merge that is exactly one model returns that model's tensor, not base + (source − base) --------


def _round_trip_is_off(base, model):
    return not torch.equal(base + (model - base), model)  # so that the tests below can fail


@pytest.mark.parametrize("operator", ["linear", "task_arithmetic", "ties", "dare_ties", "breadcrumbs_ties", "della"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_one_hot_weights_return_the_source_bit_for_bit(operator, dtype):
    base, models = _random_inputs((64, 33), 3, dtype, seed=9)
    assert _round_trip_is_off(base, models[1])
    normalize = operator in ("linear", "ties")
    weight = 0.37 if normalize else 1.0  # normalizing divides any lone weight out
    densities = (0.5, 1.0, 0.5)  # the others' densities do not matter: their weight is zero
    out = _ours(operator, base, models, (0.0, weight, 0.0), densities, seed=3, normalize=normalize)
    assert torch.equal(out, models[1])


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_slerp_endpoints_are_exact(dtype):
    base, (other,) = _random_inputs((64, 33), 1, dtype, seed=10)
    assert _round_trip_is_off(base, other)
    assert torch.equal(_ours("slerp", base, [other], (0.0,), (1.0,)), base)
    assert torch.equal(_ours("slerp", base, [other], (1.0,), (1.0,)), other)


def test_a_bf16_pool_materializes_a_one_hot_recipe_as_the_source_itself(tiny_zoo):
    from transformers import AutoModelForCausalLM

    paths = [tiny_zoo / "add", tiny_zoo / "cipher"]
    pool = SourcePool(tiny_zoo / "base", paths, dtype=torch.bfloat16)
    model = AutoModelForCausalLM.from_pretrained(tiny_zoo / "base", dtype=torch.bfloat16)
    recipe = Recipe(operator="task_arithmetic", groups={"all": GroupParams(weights=(0.0, 1.0))})
    Merger(pool).materialize(recipe, model)
    expert = {k: v.to(torch.bfloat16) for k, v in load_state_dict(paths[1]).items()}
    live = model.state_dict()
    assert any(_round_trip_is_off(pool.base[k], expert[k]) for k in pool.base)
    for k in pool.base:
        assert torch.equal(live[k], expert[k]), k


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("drop", [False, True])
def test_kernel_reading_sources_equals_stored_task_vectors(dtype, drop):
    """The streaming path hands the fused kernel the sources and lets it subtract the base as it reads; on a tensor
    large enough for the compiled kernel it must equal the kernel fed τ = source − base computed beforehand."""
    from evomerge.merge import kernels
    from evomerge.merge.sparsify import keep_threshold, source_seed

    n = kernels.COMPILE_MIN + 1001
    g = torch.Generator().manual_seed(3)
    base = torch.randn(n, generator=g).to(dtype)
    sources = [(base.float() + 0.01 * torch.randn(n, generator=g)).to(dtype) for _ in range(3)]
    deltas = [s - base for s in sources]
    w = torch.tensor([0.5, 0.3, 0.4]).to(dtype).float()
    seeds = torch.tensor([source_seed(7, i) for i in range(3)]) if drop else None
    hi = torch.tensor([keep_threshold(0.6)] * 3) if drop else torch.full((3,), n)
    keep = torch.full((3,), 0.6) if drop else None
    args = (None, seeds, keep, w, w.sum(), torch.zeros(3, dtype=torch.int64), hi, None, drop, False)
    stored = kernels.run(base, deltas, *args, torch.empty_like(base))
    read = kernels.run(base, sources, *args, torch.empty_like(base), True, True)
    assert torch.equal(stored, read)
