"""The scale profile: a randomly initialised Llama-shaped base (about 1B parameters in bf16) and three "experts"
whose task vectors are sparse and low-rank, written as sharded safetensors — a rehearsal of real-model sizes.

Nothing is trained: the point is memory and bandwidth at real shapes. Each expert changes a different random
subset of each matrix's rows by a rank-r product, and the experts share half of their rows, so TIES' sign
election and trimming have real work to do. The build streams: every tensor of every model is generated from a
seed derived from (profile, tensor name), one shard of each model at a time, so peak memory is about four shards
(≈ 4 × `shard_bytes`), never a model.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from pathlib import Path

import torch
from pydantic import BaseModel, ConfigDict
from safetensors.torch import save_file
from transformers import LlamaConfig

from evomerge.zoo.build import evomerge_home
from evomerge.zoo.tokenizer import build_char_tokenizer

SCALE_FORMAT = 1
MODELS = ("base", "e0", "e1", "e2")


class ScaleSpec(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    seed: int = 0
    hidden: int = 2048
    intermediate: int = 5632
    layers: int = 16
    heads: int = 16
    kv_heads: int = 16
    vocab: int = 32000
    rank: int = 8  # of each expert's change to a matrix
    row_fraction: float = 0.25  # of a matrix's rows an expert changes
    scale: float = 0.02  # of the change, relative to the base's init std (0.02)
    shard_bytes: int = 500_000_000

    def fingerprint(self) -> str:
        blob = json.dumps({"format": SCALE_FORMAT, **self.model_dump()}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:12]

    def config(self) -> LlamaConfig:
        return LlamaConfig(vocab_size=self.vocab, hidden_size=self.hidden, intermediate_size=self.intermediate,
                           num_hidden_layers=self.layers, num_attention_heads=self.heads,
                           num_key_value_heads=self.kv_heads, tie_word_embeddings=False, dtype="bfloat16",
                           bos_token_id=1, eos_token_id=2, pad_token_id=0)


SCALE_PROFILES = {
    "scale": ScaleSpec(),  # 0.95B parameters, 1.9 GB per model in bf16
    "scale-tiny": ScaleSpec(hidden=64, intermediate=160, layers=2, heads=4, kv_heads=4, vocab=512, rank=2,
                            shard_bytes=100_000),  # tests: the same pipeline, several shards
}


def scale_dir(spec: ScaleSpec) -> Path:
    return evomerge_home() / "scale" / spec.fingerprint()


def tensor_shapes(spec: ScaleSpec) -> dict[str, tuple[int, ...]]:
    """The state dict's names and shapes, in the order Llama lists them."""
    h, inter, kv = spec.hidden, spec.intermediate, spec.kv_heads * (spec.hidden // spec.heads)
    shapes: dict[str, tuple[int, ...]] = {"model.embed_tokens.weight": (spec.vocab, h)}
    for i in range(spec.layers):
        p = f"model.layers.{i}."
        shapes |= {p + "self_attn.q_proj.weight": (h, h), p + "self_attn.k_proj.weight": (kv, h),
                   p + "self_attn.v_proj.weight": (kv, h), p + "self_attn.o_proj.weight": (h, h),
                   p + "mlp.gate_proj.weight": (inter, h), p + "mlp.up_proj.weight": (inter, h),
                   p + "mlp.down_proj.weight": (h, inter), p + "input_layernorm.weight": (h,),
                   p + "post_attention_layernorm.weight": (h,)}
    shapes |= {"model.norm.weight": (h,), "lm_head.weight": (spec.vocab, h)}
    return shapes


def _gen(spec: ScaleSpec, name: str, what: str) -> torch.Generator:
    digest = hashlib.sha256(f"{spec.seed}:{name}:{what}".encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") & (2**63 - 1))


def model_tensors(spec: ScaleSpec, name: str, shape: tuple[int, ...]) -> list[torch.Tensor]:
    """[base, e0, e1, e2] of one tensor, bf16. Norms stay at one in every model (no task vector there)."""
    if len(shape) == 1:
        ones = torch.ones(shape, dtype=torch.bfloat16)
        return [ones] * len(MODELS)
    base = torch.randn(shape, generator=_gen(spec, name, "base")) * 0.02
    rows = shape[0]
    shared = torch.randperm(rows, generator=_gen(spec, name, "shared"))[: int(rows * spec.row_fraction / 2)]
    out = [base.to(torch.bfloat16)]
    for e in range(len(MODELS) - 1):
        g = _gen(spec, name, f"expert{e}")
        own = torch.randperm(rows, generator=g)[: int(rows * spec.row_fraction / 2)]
        changed = torch.unique(torch.cat([shared, own]))
        a = torch.randn(len(changed), spec.rank, generator=g)
        b = torch.randn(spec.rank, shape[1], generator=g)
        delta = (a @ b) * (spec.scale * 0.02 / spec.rank**0.5)
        expert = base.clone()
        expert[changed] += delta
        out.append(expert.to(torch.bfloat16))
    return out


def build_scale(spec: ScaleSpec, out: Path | None = None, log=print, force: bool = False) -> Path:
    """Build (or reuse) the scale profile: `out`/{base,e0,e1,e2}, each a sharded Hugging Face directory."""
    out = out or scale_dir(spec)
    if (out / "scale.json").exists() and not force:
        return out
    t0 = time.perf_counter()
    tmp = out.with_name(out.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    shapes = tensor_shapes(spec)
    shards: list[list[str]] = [[]]
    size = 0
    for name, shape in shapes.items():
        n = 2 * torch.Size(shape).numel()
        if shards[-1] and size + n > spec.shard_bytes:
            shards.append([])
            size = 0
        shards[-1].append(name)
        size += n
    files = [f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))]
    tok = build_char_tokenizer()
    for m in MODELS:
        d = tmp / m
        d.mkdir(parents=True)
        spec.config().save_pretrained(d)
        tok.save_pretrained(d)
    for file, names in zip(files, shards, strict=True):
        per_model = {m: {} for m in MODELS}
        for name in names:
            for m, t in zip(MODELS, model_tensors(spec, name, shapes[name]), strict=True):
                per_model[m][name] = t
        for m in MODELS:
            save_file(per_model[m], tmp / m / file, metadata={"format": "pt"})
        del per_model
        log(f"wrote {file} ({len(names)} tensors) of {len(MODELS)} models")
    total = sum(2 * torch.Size(s).numel() for s in shapes.values())
    index = {"metadata": {"total_size": total},
             "weight_map": {n: f for f, names in zip(files, shards, strict=True) for n in names}}
    for m in MODELS:
        (tmp / m / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))
    params = sum(torch.Size(s).numel() for s in shapes.values())
    report = {"spec": spec.model_dump(), "params": params, "bytes_per_model": total,
              "build_seconds": round(time.perf_counter() - t0, 1)}
    (tmp / "scale.json").write_text(json.dumps(report, indent=2))
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    return out
