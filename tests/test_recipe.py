import numpy as np

from evomerge.config import SpaceConfig
from evomerge.recipe import GroupParams, Recipe
from evomerge.sources import group_names, layer_group
from evomerge.spaces.layer_weights import LayerWeightsSpace


def test_recipe_json_round_trip():
    r = Recipe(operator="dare_ties", granularity=2, lam=0.9, normalize=True, rescale="l1", seed=7,
               groups={"embed": GroupParams(weights=(0.1, -0.2), densities=(0.5, 1.0)),
                       "layers.0-1": GroupParams(weights=(1.0, 0.25))})
    back = Recipe.from_json(r.to_json())
    assert back == r
    assert back.to_json() == r.to_json()


def test_layer_groups_from_names():
    assert layer_group("model.layers.3.mlp.up_proj.weight", "layer", 4) == "layers.3-3"
    assert layer_group("model.layers.3.mlp.up_proj.weight", 2, 4) == "layers.2-3"
    assert layer_group("transformer.h.0.attn.c_attn.weight", "layer", 2) == "layers.0-0"
    assert layer_group("model.embed_tokens.weight", "layer", 4) == "embed"
    assert layer_group("transformer.wte.weight", "layer", 4) == "embed"
    assert layer_group("lm_head.weight", "layer", 4) == "head"
    assert layer_group("model.norm.weight", 2, 4) == "head"
    assert layer_group("anything", "model", 4) == "all"
    assert group_names(3, 4) == ["embed", "layers.0-2", "layers.3-3", "head"]


def test_space_decodes_genome_into_ranges():
    cfg = SpaceConfig(operator="ties", granularity="layer", weight_range=(-1.0, 1.0), density_range=(0.2, 0.6))
    space = LayerWeightsSpace(cfg, n_sources=3, n_blocks=2)
    # embed, 2 blocks, head × (3 sources × (weight, density) + a scale, as TIES normalizes)
    assert space.dim == 4 * (3 * 2 + 1)
    x = np.linspace(0, 1, space.dim)
    r = space.decode(x, seed=5)
    assert r.seed == 5 and set(r.groups) == {"embed", "layers.0-0", "layers.1-1", "head"}
    g = r.groups["embed"]
    assert np.allclose(g.weights, -1 + 2 * x[:3])
    assert np.allclose(g.densities, 0.2 + 0.4 * x[3:6])
    assert np.isclose(g.scale, 2 * x[6])  # scale_range [0, 2]
    assert all(-1 <= w <= 1 for p in r.groups.values() for w in p.weights)


def test_space_without_density_for_task_arithmetic():
    space = LayerWeightsSpace(SpaceConfig(operator="task_arithmetic", granularity="model"), 3, 4)
    assert space.dim == 3
    assert space.decode(np.full(3, 0.5)).groups["all"].densities is None


def test_encoded_seeds_decode_back_with_the_scale_gene_at_one():
    space = LayerWeightsSpace(SpaceConfig(operator="ties", granularity="layer"), n_sources=3, n_blocks=2)
    x = space.encode([0.0, 1.0, 0.0], [0.5, 1.0, 0.5])
    assert x.shape == (space.dim,)
    for g in space.decode(x).groups.values():
        assert np.allclose(g.weights, (0, 1, 0)) and np.allclose(g.densities, (0.5, 1, 0.5)) and g.scale == 1.0
