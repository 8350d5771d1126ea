"""SourcePool: a base model and its fine-tunes, loaded once, with task vectors cached per source.

Layer groups come from tensor names, not from one architecture: `...layers.<i>.` / `...h.<i>.` / `...blocks.<i>.`
are transformer blocks; names with `embed`/`wte`/`wpe` are embeddings; everything else (final norm, LM head) is
the head.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch
from safetensors.torch import load_file

from evomerge.errors import SourceError
from evomerge.merge.sparsify import magnitude_ranks

_BLOCK = re.compile(r"(?:^|\.)(?:layers|h|blocks|layer)\.(\d+)\.")
_EMBED = re.compile(r"embed|wte|wpe")


def block_index(name: str) -> int | None:
    m = _BLOCK.search(name)
    return int(m.group(1)) if m else None


def layer_group(name: str, granularity: str | int, n_blocks: int) -> str:
    """The group a tensor belongs to: 'all' | 'embed' | 'head' | 'layers.<a>-<b>'."""
    if granularity == "model":
        return "all"
    idx = block_index(name)
    if idx is None:
        return "embed" if _EMBED.search(name) else "head"
    size = 1 if granularity == "layer" else int(granularity)
    lo = (idx // size) * size
    return f"layers.{lo}-{min(lo + size, n_blocks) - 1}"


def group_names(granularity: str | int, n_blocks: int) -> list[str]:
    if granularity == "model":
        return ["all"]
    size = 1 if granularity == "layer" else int(granularity)
    blocks = [f"layers.{lo}-{min(lo + size, n_blocks) - 1}" for lo in range(0, n_blocks, size)]
    return ["embed", *blocks, "head"]


def load_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Load a Hugging Face checkpoint directory (single or sharded safetensors)."""
    path = Path(path)
    if not path.is_dir():
        raise SourceError(f"{path}: not a directory (expected a Hugging Face model directory)")
    index = path / "model.safetensors.index.json"
    if index.exists():
        shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        sd: dict[str, torch.Tensor] = {}
        for shard in shards:
            sd.update(load_file(path / shard))
        return sd
    single = path / "model.safetensors"
    if single.exists():
        return load_file(single)
    if any(path.glob("*.bin")) or any(path.glob("*.pt")):
        raise SourceError(f"{path}: only pickle weights (.bin/.pt) found; evomerge loads safetensors only, "
                          "because unpickling can run arbitrary code. Convert the checkpoint to safetensors.")
    raise SourceError(f"{path}: no model.safetensors or model.safetensors.index.json found")


class SourcePool:
    """Base weights and task vectors τᵢ = θᵢ − θ₀, kept in the base's dtype on one device."""

    def __init__(self, base: Path, sources: list[Path], device: str | torch.device = "cpu"):
        self.base_path, self.source_paths = Path(base), [Path(s) for s in sources]
        base_sd = load_state_dict(self.base_path)
        self.base = {k: v.to(device) for k, v in base_sd.items() if v.is_floating_point()}
        # Task vectors stacked per tensor, [K, *shape]: a weighted sum over sources is then one BLAS pass, and
        # source i's task vector is the contiguous view stacked[name][i].
        self.stacked: dict[str, torch.Tensor] = {}
        for i, src in enumerate(self.source_paths):
            sd = load_state_dict(src)
            check_compatible(self.base_path, base_sd, src, sd)
            for k, b in self.base.items():
                if i == 0:
                    self.stacked[k] = torch.empty((len(sources), *b.shape), dtype=b.dtype, device=device)
                torch.sub(sd[k].to(device), b, out=self.stacked[k][i])
            del sd
        self.deltas = [{k: v[i] for k, v in self.stacked.items()} for i in range(len(sources))]
        self.n_blocks = 1 + max((block_index(k) or 0) for k in self.base)
        self._ranks: dict[tuple[str, str], torch.Tensor] = {}

    @property
    def n_sources(self) -> int:
        return len(self.deltas)

    def magnitude_ranks(self, name: str, kind: str) -> torch.Tensor:
        """Magnitude ranks of every source's τ[name], stacked [K, *shape], computed once: the sources never change
        during a search."""
        key = (name, kind)
        if key not in self._ranks:
            self._ranks[key] = torch.stack([magnitude_ranks(d[name], kind) for d in self.deltas])
        return self._ranks[key]


def _json(path: Path) -> dict:
    return json.loads(path.read_text()) if path.is_file() else {}


def _vocab(path: Path) -> dict | None:
    return _json(path / "tokenizer.json").get("model", {}).get("vocab") or None


def check_compatible(base_path: Path, base: dict, path: Path, sd: dict) -> None:
    """Raise SourceError listing every difference that makes `path` unmergeable with the base: architecture,
    vocabulary and tokenizer, and per tensor name: missing, extra, shape, dtype."""
    problems = []
    bc, sc = _json(base_path / "config.json"), _json(path / "config.json")
    for key in ("model_type", "vocab_size"):
        if key in bc and key in sc and bc[key] != sc[key]:
            problems.append(f"config {key} {sc[key]!r} != base {bc[key]!r}")
    bv, sv = _vocab(base_path), _vocab(path)
    if bv is not None and sv is not None and bv != sv:
        differ = sum(1 for t in set(bv) | set(sv) if bv.get(t) != sv.get(t))
        problems.append(f"tokenizer vocabulary differs from the base's ({differ} tokens differ)")
    for k in sorted(set(base) - set(sd)):
        problems.append(f"{k}: missing")
    for k in sorted(set(sd) - set(base)):
        problems.append(f"{k}: not in base")
    for k in sorted(set(base) & set(sd)):
        if base[k].shape != sd[k].shape:
            problems.append(f"{k}: shape {tuple(sd[k].shape)} != base {tuple(base[k].shape)}")
        elif base[k].dtype != sd[k].dtype:
            problems.append(f"{k}: dtype {sd[k].dtype} != base {base[k].dtype}")
    if problems:
        raise SourceError(f"{path} is not compatible with base {base_path}: " + "; ".join(problems))
