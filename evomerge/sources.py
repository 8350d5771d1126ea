"""SourcePool: a base model and its fine-tunes, loaded once, with task vectors cached per source.

Layer groups come from tensor names, not from one architecture: `...layers.<i>.` / `...h.<i>.` / `...blocks.<i>.`
are transformer blocks; names with `embed`/`wte`/`wpe` are embeddings; everything else (final norm, LM head) is
the head.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import psutil
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from evomerge.errors import SourceError

_BLOCK = re.compile(r"(?:^|\.)(?:layers|h|blocks|layer)\.(\d+)\.")
_EMBED = re.compile(r"embed|wte|wpe")


def block_index(name: str) -> int | None:
    m = _BLOCK.search(name)
    return int(m.group(1)) if m else None


def layer_group(name: str, granularity: str | int, n_blocks: int) -> str:
    """The group a tensor belongs to: 'all' | 'embed' | 'head' | 'layers.<a>-<b>' | (granularity 'tensor') its name."""
    if granularity == "model":
        return "all"
    if granularity == "tensor":
        return name
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


def shards(path: Path) -> list[Path]:
    """The safetensors files of a Hugging Face checkpoint directory; refuses pickle-only checkpoints."""
    path = Path(path)
    if not path.is_dir():
        raise SourceError(f"{path}: not a directory (expected a Hugging Face model directory)")
    index = path / "model.safetensors.index.json"
    if index.exists():
        try:
            files = sorted(set(_json(index)["weight_map"].values()))
        except (KeyError, TypeError, AttributeError):
            raise SourceError(f"{index}: expected a safetensors index with a \"weight_map\"") from None
        if not all(isinstance(f, str) and "/" not in f and f not in (".", "..") for f in files):
            raise SourceError(f"{index}: weight_map must name files in the model directory")
        return [path / f for f in files]
    if (path / "model.safetensors").exists():
        return [path / "model.safetensors"]
    if any(path.glob("*.bin")) or any(path.glob("*.pt")):
        raise SourceError(f"{path}: only pickle weights (.bin/.pt) found; evomerge loads safetensors only, "
                          "because unpickling can run arbitrary code. Convert the checkpoint to safetensors.")
    raise SourceError(f"{path}: no model.safetensors or model.safetensors.index.json found")


def load_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Load a Hugging Face checkpoint directory (single or sharded safetensors) into memory."""
    sd: dict[str, torch.Tensor] = {}
    for shard in shards(path):
        sd.update(load_file(shard))
    return sd


@dataclass(frozen=True)
class _Meta:
    """Shape and dtype of a tensor that has not been read (for compatibility checks)."""

    shape: tuple
    dtype: torch.dtype | None

    def is_floating_point(self) -> bool:
        return self.dtype is not None and self.dtype.is_floating_point


_DTYPES = {"F16": torch.float16, "BF16": torch.bfloat16, "F32": torch.float32, "F64": torch.float64,
           "I64": torch.int64, "I32": torch.int32, "U8": torch.uint8, "BOOL": torch.bool}


class MappedCheckpoint:
    """A checkpoint read tensor by tensor from memory-mapped safetensors files, for sources that do not fit."""

    def __init__(self, path: Path):
        self._where = {}
        for shard in shards(path):
            f = safe_open(shard, framework="pt")
            for name in f.keys():  # noqa: SIM118 — a safetensors file handle, not a mapping
                self._where[name] = f
        self.meta = {n: _Meta(tuple(f.get_slice(n).get_shape()), _DTYPES.get(f.get_slice(n).get_dtype()))
                     for n, f in self._where.items()}

    def __getitem__(self, name: str) -> torch.Tensor:
        return self._where[name].get_tensor(name)


def checkpoint_dtype(path: Path) -> torch.dtype:
    """The dtype of a checkpoint's first floating-point tensor, from its files' headers (nothing is read)."""
    meta = MappedCheckpoint(Path(path)).meta
    return next(m.dtype for m in meta.values() if m.is_floating_point() and m.dtype is not None)


class _Lazy(Mapping):
    """A read-only name → tensor mapping that computes each tensor when asked (streaming mode)."""

    def __init__(self, names: list[str], load, keep_last: bool = False):
        self._names, self._load = names, load
        # keep_last: the last tensor asked for is kept, so a merge that reads it twice in a row (the base, once for
        # the task vectors and once for the sum) reads the file once
        self._keep_last = keep_last
        self._last: tuple[str | None, torch.Tensor | None] = (None, None)

    @cached_property
    def _known(self) -> set[str]:
        return set(self._names)

    def __getitem__(self, name: str) -> torch.Tensor:
        if name not in self._known:
            raise KeyError(name)
        if not self._keep_last:
            return self._load(name)
        last_name, last = self._last
        if last is None or last_name != name:
            last = self._load(name)
            self._last = (name, last)
        return last

    def __iter__(self):
        return iter(self._names)

    def __len__(self) -> int:
        return len(self._names)


def should_stream(paths: list[Path], available: int | None = None) -> bool:
    """Stream when the cached task vectors and ranks (≈ 2 bytes of cache per source byte, plus the base) would
    take more than 80% of the memory available now."""
    sizes = [sum(f.stat().st_size for f in shards(p)) for p in paths]
    needed = sizes[0] + 2 * sum(sizes[1:])
    if available is None:
        available = psutil.virtual_memory().available
    return needed > 0.8 * available


class SourcePool:
    """Base weights and task vectors τᵢ = θᵢ − θ₀, kept in the base's dtype on one device.

    In memory by default. With `stream=True` (or `None` when they would not fit, see `should_stream`), nothing is
    cached: each tensor is read from memory-mapped safetensors when a merge needs it — slower, within memory.
    """

    def __init__(self, base: Path, sources: list[Path], device: str | torch.device = "cpu",
                 stream: bool | None = False, dtype: torch.dtype | None = None):
        self.base_path, self.source_paths = Path(base), [Path(s) for s in sources]
        self.device = device
        self._cast = dtype  # None: the checkpoints' own dtype
        self.base: Mapping[str, torch.Tensor]  # name -> base tensor (read on demand when streaming)
        self.stacked: Mapping[str, torch.Tensor]  # name -> [K, *shape] task vectors
        self.streaming = should_stream([self.base_path, *self.source_paths]) if stream is None else stream
        if self.streaming:
            self._init_streaming()
        else:
            self._init_in_memory()
        k = len(self.source_paths)
        self.deltas = [_Lazy(list(self.base), lambda n, i=i: self.stacked[n][i]) if self.streaming
                       else {name: v[i] for name, v in self.stacked.items()} for i in range(k)]
        self.n_blocks = 1 + max((block_index(name) or 0) for name in self.base)
        # the dtype a live model should hold merges in: that of the base's first floating tensor
        self.dtype = next(iter(self.base.values())).dtype
        self._checkpoints: list[MappedCheckpoint] | None = None  # opened when a merge first needs a source itself

    def _init_in_memory(self) -> None:
        base_sd = load_state_dict(self.base_path)
        self.base = {k: v.to(self.device, self._cast) for k, v in base_sd.items() if v.is_floating_point()}
        _check_finite(self.base_path, self.base)
        # Task vectors stacked per tensor, [K, *shape]: a weighted sum over sources is then one BLAS pass, and
        # source i's task vector is the contiguous view stacked[name][i].
        stacked: dict[str, torch.Tensor] = {}
        k = len(self.source_paths)
        for i, src in enumerate(self.source_paths):
            sd = load_state_dict(src)
            check_compatible(self.base_path, base_sd, src, sd, self._cast is not None)
            _check_finite(src, {name: sd[name] for name in self.base})
            for name, b in self.base.items():
                if i == 0:
                    stacked[name] = torch.empty((k, *b.shape), dtype=b.dtype, device=self.device)
                torch.sub(sd[name].to(self.device, b.dtype), b, out=stacked[name][i])
            del sd
        self.stacked = stacked

    def _init_streaming(self) -> None:
        base_ck = MappedCheckpoint(self.base_path)
        cks = [MappedCheckpoint(p) for p in self.source_paths]
        for p, ck in zip(self.source_paths, cks, strict=True):
            check_compatible(self.base_path, base_ck.meta, p, ck.meta, self._cast is not None)
        names = [n for n, m in base_ck.meta.items() if m.is_floating_point()]
        self.base = _Lazy(names, lambda n: base_ck[n].to(self.device, self._cast), keep_last=True)

        scratch: list[torch.Tensor] = []
        checked: set[str] = set()

        def task_vectors(name: str) -> torch.Tensor:
            """Each source read once, subtracted into one reused [K, ...] buffer: a fresh model-sized allocation per
            tensor cost more in page faults than the subtraction. Valid until the next tensor's task vectors."""
            b = self.base[name]
            size = len(cks) * b.numel()
            if not scratch or scratch[0].numel() < size or scratch[0].dtype != b.dtype:
                scratch[:] = [torch.empty(max(size, scratch[0].numel() if scratch else 0), dtype=b.dtype,
                                          device=self.device)]
            out = scratch[0][:size].view(len(cks), *b.shape)
            first = name not in checked  # each tensor checked once, when first read: NaN/Inf named by model
            if first:
                _check_finite(self.base_path, {name: b})
            for i, (p, ck) in enumerate(zip(self.source_paths, cks, strict=True)):
                t = ck[name]
                if first:
                    _check_finite(p, {name: t})
                torch.sub(t.to(self.device, self._cast), b, out=out[i])
            checked.add(name)
            return out

        self.stacked = _Lazy(names, task_vectors, keep_last=True)

    def source(self, name: str, i: int) -> torch.Tensor:
        """Source i's own tensor `name`, read from its file (memory-mapped) in the pool's dtype and device: a merge
        that is exactly one source returns this, not base + τᵢ, which rounding in bf16 can move off the source."""
        if self._checkpoints is None:
            self._checkpoints = [MappedCheckpoint(p) for p in self.source_paths]
        return self._checkpoints[i][name].to(device=self.device, dtype=self.base[name].dtype)

    @property
    def n_sources(self) -> int:
        return len(self.deltas)


def _check_finite(path: Path, tensors: Mapping[str, torch.Tensor]) -> None:
    """A model with NaN or Inf weights is refused by name: every merge with it would fail, each with a message
    about the merged tensor that did not say which model was at fault."""
    for name, t in tensors.items():
        if not torch.isfinite(t).all():
            raise SourceError(f"{path}: {name} holds NaN or Inf values (expected finite weights)")


def _json(path: Path) -> dict:
    """A JSON object file of a checkpoint ({} when absent); SourceError when it is not one."""
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as e:
        raise SourceError(f"{path}: not valid JSON ({str(e)[:80]})") from None
    if not isinstance(data, dict):
        raise SourceError(f"{path}: expected a JSON object")
    return data


def preflight(base: Path | None, sources: list[Path], cast: bool = False) -> None:
    """Check the sources before a run writes anything: safetensors present (not pickle-only), config.json and
    the tokenizer readable, and every source's tensors (read from the file headers only) matching the base's (in
    dtype too, unless `cast`: the experiment sets one). A data flow (no base) checks each model on its own."""
    from transformers import AutoConfig, AutoTokenizer

    paths = [p for p in (base, *sources) if p is not None]
    metas = {}
    for p in paths:
        try:
            metas[p] = MappedCheckpoint(p).meta
            if not (p / "config.json").is_file():
                raise SourceError(f"{p}: no config.json (expected a Hugging Face model directory)")
            _json(p / "config.json")
            AutoConfig.from_pretrained(p)
        except SourceError:
            raise
        except Exception as e:  # noqa: BLE001 — safetensors and transformers raise many kinds; all mean the same
            raise SourceError(f"{p}: cannot read the checkpoint ({type(e).__name__}: {str(e)[:120]})") from None
    try:
        AutoTokenizer.from_pretrained(paths[0])
    except Exception as e:  # noqa: BLE001
        raise SourceError(f"{paths[0]}: cannot load its tokenizer ({type(e).__name__}: {str(e)[:120]})") from None
    if base is not None:
        for p in sources:
            check_compatible(base, metas[base], p, metas[p], cast)


def _vocab(path: Path) -> dict | None:
    return _json(path / "tokenizer.json").get("model", {}).get("vocab") or None


# config.json fields that make the same tensor mean another thing (or that explain why the tensors differ): two
# models that differ in one are not a base and its fine-tune (GPT-2 names them n_*)
_ARCHITECTURE_KEYS = ("model_type", "vocab_size", "num_hidden_layers", "n_layer", "hidden_size", "n_embd",
                      "intermediate_size", "num_attention_heads", "n_head", "num_key_value_heads", "head_dim",
                      "hidden_act", "tie_word_embeddings")


def check_compatible(base_path: Path, base: dict, path: Path, sd: dict, cast: bool = False) -> None:
    """Raise SourceError listing every difference that makes `path` unmergeable with the base: architecture,
    vocabulary and tokenizer, and per tensor name: missing, extra, shape, dtype (not with `cast`: every model is
    cast to the experiment's dtype when loaded)."""
    problems = []
    bc, sc = _json(base_path / "config.json"), _json(path / "config.json")
    for key in _ARCHITECTURE_KEYS:
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
    dtypes: dict[tuple, list[str]] = {}  # (source dtype, base dtype) -> tensors: one entry per pair, not per tensor
    for k in sorted(set(base) & set(sd)):
        if base[k].shape != sd[k].shape:
            problems.append(f"{k}: shape {tuple(sd[k].shape)} != base {tuple(base[k].shape)}")
        elif base[k].dtype != sd[k].dtype and not cast:
            dtypes.setdefault((sd[k].dtype, base[k].dtype), []).append(k)
    for (theirs, ours), names in dtypes.items():
        more = f" and {len(names) - 1} other tensors" if len(names) > 1 else ""
        problems.append(f"{names[0]}{more}: dtype {theirs} != base {ours} (set the experiment's dtype: float32, "
                        "bfloat16 or float16, to cast every model to one)")
    if problems:
        raise SourceError(f"{path} is not compatible with base {base_path}: " + "; ".join(problems))
