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
    x = TensorInputs(base=base, deltas=deltas,
                     order=lambda kind: [MagnitudeIndex.build(d, kind == "desc") for d in deltas],
                     ranks=lambda kind: torch.stack([magnitude_ranks(d) for d in deltas]),
                     seed=seed or 0, generator=None if seed is None else torch.Generator().manual_seed(seed))
    return OPERATORS[operator].merge(x, MergeParams(weights=tuple(weights), densities=tuple(densities), **params))


def _share_masks(monkeypatch, shape, densities, seed):
    """mergekit draws each DARE mask with one torch.bernoulli call per source, in source order: hand it ours."""
    masks = iter([keep_mask(shape, d, source_seed(seed, i)) for i, d in enumerate(densities) if d < 1])
    monkeypatch.setattr(torch, "bernoulli", lambda p, *a, **k: next(masks).to(p.dtype))


def _stable_sorts(monkeypatch):
    """mergekit's magnitude trims sort with torch's unstable sort, which keeps an arbitrary subset of the entries
    tied in magnitude at the threshold; evomerge breaks such ties by index, as a stable sort does: hand it that."""
    sort, argsort = torch.sort, torch.argsort
    monkeypatch.setattr(torch, "sort", lambda *a, **k: sort(*a, **{**k, "stable": True}))
    monkeypatch.setattr(torch, "argsort", lambda *a, **k: argsort(*a, **{**k, "stable": True}))


@pytest.fixture(autouse=True)
def _mergekit_sorts_stably(monkeypatch):
    _stable_sorts(monkeypatch)


def _mergekit(method, base, models, weights, densities, **params):
    return merge_tensors([base, *models], method, base_index=0,
                         parameters={"weight": list(weights), "density": list(densities), **params})


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("densities", [(1.0, 1.0, 1.0), (0.5, 0.3, 0.8), (0.02, 0.05, 0.01)])
@pytest.mark.parametrize("normalize", [True, False])
def test_ties_equals_mergekit(dtype, shape, densities, normalize):
    base, models = _random_inputs(shape, 3, dtype, seed=hash((shape, densities)) % 1000)
    weights = (0.7, 1.3, -0.4)  # not summing to 1, one negative
    ours = _ours("ties", base, models, weights, densities, normalize=normalize, lam=0.9)
    ref = _mergekit("ties", base, models, weights, densities, normalize=normalize, **{"lambda": 0.9})
    tol = 1e-6 if dtype == torch.float32 else 1e-2
    torch.testing.assert_close(ours, ref.to(dtype), rtol=tol, atol=tol)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("shape", SHAPES)
def test_task_arithmetic_equals_mergekit(dtype, shape):
    base, models = _random_inputs(shape, 3, dtype, seed=1)
    weights = (0.2, 0.9, 0.5)
    ours = _ours("task_arithmetic", base, models, weights, (1.0, 1.0, 1.0), lam=1.1)
    ref = _mergekit("task_arithmetic", base, models, weights, (1.0, 1.0, 1.0), **{"lambda": 1.1})
    tol = 1e-6 if dtype == torch.float32 else 1e-2
    torch.testing.assert_close(ours, ref.to(dtype), rtol=tol, atol=tol)


@pytest.mark.parametrize("method", ["dare_ties", "dare_linear"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("rescale", ["l1", "none"])
def test_dare_equals_mergekit_with_a_shared_mask(method, dtype, shape, rescale, monkeypatch):
    base, models = _random_inputs(shape, 3, dtype, seed=2)
    weights, densities = (0.6, 1.0, 0.3), (0.5, 0.9, 0.2)
    seed = tensor_seed(11, "some.tensor")
    ours = _ours(method, base, models, weights, densities, seed=seed, rescale=rescale, normalize=True)
    _share_masks(monkeypatch, shape, densities, seed)
    ref = _mergekit(method, base, models, weights, densities, rescale=(rescale == "l1"), normalize=True)
    tol = 1e-6 if dtype == torch.float32 else 1e-2
    torch.testing.assert_close(ours, ref.to(dtype), rtol=tol, atol=tol)


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
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("densities", [(0.5, 0.3, 0.8), (0.9, 0.95, 0.99)])
def test_breadcrumbs_equals_mergekit(method, dtype, shape, densities):
    base, models = _random_inputs(shape, 3, dtype, seed=4)
    weights = (0.5, 1.2, 0.7)
    ours = _ours(method, base, models, weights, densities, gamma=0.05, normalize=True)
    ref = _mergekit(method, base, models, weights, densities, gamma=0.05, normalize=True)
    torch.testing.assert_close(ours, ref.to(dtype), rtol=_tol(dtype), atol=_tol(dtype))


@pytest.mark.parametrize("method", ["della", "della_linear"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("shape", [(16, 24), (3, 5, 11)])
def test_della_equals_mergekit_with_a_shared_mask(method, dtype, shape):
    base, models = _random_inputs(shape, 3, dtype, seed=5)
    weights, densities = (0.6, 1.0, 0.3), (0.5, 0.6, 0.4)
    seed = tensor_seed(3, "della.tensor")
    ours = _ours(method, base, models, weights, densities, seed=seed, epsilon=0.1, rescale="l1")
    torch.manual_seed(seed)
    ref = _mergekit(method, base, models, weights, densities, epsilon=0.1, rescale=True)
    torch.testing.assert_close(ours, ref.to(dtype), rtol=_tol(dtype), atol=_tol(dtype))


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
    torch.testing.assert_close(ours, ref, rtol=1e-6, atol=1e-6)


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
