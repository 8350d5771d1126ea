"""The scale profile (built at test size): sharded bf16 Llama checkpoints whose task vectors are sparse and
low-rank, loadable by transformers and by the merge, with header sizes the memory plan reads."""

import json

import torch
from transformers import AutoModelForCausalLM

from evomerge.merge.materialize import Merger
from evomerge.merge.memory import CheckpointSize
from evomerge.recipe import Recipe
from evomerge.sources import SourcePool
from evomerge.zoo.scale import MODELS, SCALE_PROFILES, build_scale, tensor_shapes


def test_scale_profile_builds_sharded_sparse_low_rank_experts(evomerge_home):
    spec = SCALE_PROFILES["scale-tiny"]
    out = build_scale(spec, log=lambda *_: None)
    assert build_scale(spec, log=lambda *_: None) == out  # cached
    index = json.loads((out / "base" / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) > 1  # sharded
    params = sum(torch.Size(s).numel() for s in tensor_shapes(spec).values())
    size = CheckpointSize.of(out / "base")
    assert (size.params, size.bytes, size.dtype_bytes) == (params, 2 * params, 2)
    model = AutoModelForCausalLM.from_pretrained(out / "e0")
    assert sum(p.numel() for p in model.parameters()) == params and model.dtype == torch.bfloat16

    pool = SourcePool(out / "base", [out / m for m in MODELS[1:]])
    name = "model.layers.1.mlp.up_proj.weight"
    for i in range(3):
        tv = pool.stacked[name][i].float()
        rows = (tv != 0).any(dim=1).float().mean().item()
        assert 0.1 < rows <= spec.row_fraction + 0.01  # sparse: a quarter of the rows at most
        s = torch.linalg.svdvals(tv)
        assert s[spec.rank] < 0.05 * s[0]  # low-rank (up to bf16 rounding of base + delta)
    assert not torch.equal(pool.stacked[name][0], pool.stacked[name][1])
    live = AutoModelForCausalLM.from_pretrained(out / "base")
    Merger(pool).materialize(Recipe(operator="ties", groups={"all": {"weights": (0.5, 0.5, 0.5),
                                                                       "densities": (0.3, 0.3, 0.3)}}), live)
    ids = torch.tensor([[1, 5, 6, 7]])
    assert torch.isfinite(live(input_ids=ids).logits).all()
