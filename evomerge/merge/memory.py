"""The memory plan: what each worker of a run will hold, computed before anything is loaded.

Sizes come from the sources' safetensors headers (8 bytes of length, then JSON: dtype, shape, offsets per tensor)
and config.json, never from the weights. Two layouts exist in the code, and the plan prices both:

- in memory: the base and every source's task vector stay resident (SourcePool's default);
- memory-mapped: nothing is cached; each merge reads a tensor of every source from the files (`sources.stream`),
  so only one tensor's worth of each source is resident at a time (plus the OS's reclaimable page cache).

A run's process also holds its runtime (Python, torch, transformers, the fitness's data), measured here as this
process's resident memory after importing what a worker imports — which depends on the machine and versions.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass, field, replace
from pathlib import Path

from evomerge.errors import ConfigError, SourceError

_BYTES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1, "BOOL": 1,
          "F8_E4M3": 1, "F8_E5M2": 1}
_FLOAT = {"F64", "F32", "F16", "BF16", "F8_E4M3", "F8_E5M2"}
GB = 1e9
# torch.compile's resident cost once the merge kernels are compiled (tensors of at least kernels.COMPILE_MIN
# entries): measured 0.17 GB with torch 2.13 on x86-64 CPU (Inductor, its C++ toolchain state); machine-dependent
COMPILER_BYTES = 170_000_000


def read_header(path: Path) -> dict[str, dict]:
    """name -> {"dtype", "shape"} of one safetensors file, from its header only."""
    with open(path, "rb") as f:
        raw = f.read(8)
        if len(raw) != 8:
            raise SourceError(f"{path}: not a safetensors file (shorter than its 8-byte header length)")
        (n,) = struct.unpack("<Q", raw)
        if n > 100_000_000:
            raise SourceError(f"{path}: not a safetensors file (header length {n} bytes)")
        header = json.loads(f.read(n))
    return {k: v for k, v in header.items() if k != "__metadata__"}


@dataclass(frozen=True)
class CheckpointSize:
    """The floating-point tensors of a checkpoint: what the merge holds per source."""

    params: int
    bytes: int
    largest: int  # elements of the largest tensor
    dtype_bytes: int

    @classmethod
    def of(cls, model_dir: Path) -> CheckpointSize:
        from evomerge.sources import shards

        params = nbytes = largest = 0
        width = 0
        for shard in shards(Path(model_dir)):
            for t in read_header(shard).values():
                if t["dtype"] not in _FLOAT:
                    continue
                n = 1
                for s in t["shape"]:
                    n *= s
                params += n
                nbytes += n * _BYTES[t["dtype"]]
                largest = max(largest, n)
                width = width or _BYTES[t["dtype"]]
        return cls(params, nbytes, largest, width or 4)


@dataclass(frozen=True)
class Term:
    name: str
    bytes: int
    why: str


@dataclass
class MemoryPlan:
    device: str
    capacity: int  # bytes one worker may use on its device
    workers: int  # workers sharing the device
    layouts: dict[str, list[Term]] = field(default_factory=dict)
    forced: str | None = None  # the layout sources.stream asks for, if not auto

    def total(self, layout: str) -> int:
        return sum(t.bytes for t in self.layouts[layout])

    @property
    def chosen(self) -> str | None:
        """The layout the run will use: the one asked for, else the first that fits (in memory before mapped)."""
        names = [self.forced] if self.forced else list(self.layouts)
        return next((n for n in names if self.total(n) <= self.capacity), None)

    def render(self) -> str:
        lines = [(f"memory plan per worker ({self.workers} worker(s) on {self.device}, "
                  f"{self.capacity / GB:.2f} GB each):")]
        for name, terms in self.layouts.items():
            mark = "fits" if self.total(name) <= self.capacity else "does not fit"
            lines.append(f"  {name}: {self.total(name) / GB:.3f} GB ({mark})")
            lines += [f"    {t.name:18s} {t.bytes / GB:9.3f} GB  {t.why}" for t in terms if t.bytes]
        chosen = self.chosen
        lines.append(f"  layout: {chosen}" if chosen else f"  {self.refusal()}")
        return "\n".join(lines)

    def refusal(self) -> str:
        """One line: why nothing fits, the largest term, and what would make it fit."""
        name = self.forced or min(self.layouts, key=self.total)
        largest = max(self.layouts[name], key=lambda t: t.bytes)
        need = self.total(name)
        return (f"memory plan: the run does not fit: {name} needs {need / GB:.2f} GB per worker, "
                f"{self.capacity / GB:.2f} GB available ({self.workers} worker(s) on {self.device}); largest term: "
                f"{largest.name} {largest.bytes / GB:.2f} GB ({largest.why}); it fits with "
                f"{need / GB:.2f} GB per worker — fewer workers per device, a larger device"
                + (", or sources.stream: true (memory-mapped)" if name != "memory-mapped" else "")
                + (", or fewer/smaller fitness batches" if largest.name == "activations" else ""))


# The resident set of a CPU run grows by about this much per scoring thread once scoring starts, whatever the
# model's size: glibc's per-thread arenas and torch's caches (measured 2026-11-30: the quickstart, 2 threads, grew
# 0.466 -> 0.544 GB with activations of 0.02 GB; a tiny-zoo run with 1 thread about half as much).
HEAP_GROWTH_PER_THREAD = 30 * 2**20


def runtime_bytes(model_dir: Path | None = None) -> int:
    """This process's resident memory once a run's modules are imported (the fixed cost of any worker; with the
    local executor the run's own process is its worker). With `model_dir`, its architecture is first built on the
    meta device (no memory for weights), which imports its modeling code as a worker will: ~90 MB that the plan
    missed before (the quickstart measured 18% above its plan)."""
    import psutil

    if model_dir is not None:
        import torch
        from transformers import AutoConfig, AutoModelForCausalLM

        with torch.device("meta"):
            AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(model_dir))

    return psutil.Process().memory_info().rss


def config_of(model_dir: Path) -> dict:
    p = Path(model_dir) / "config.json"
    cfg = json.loads(p.read_text()) if p.is_file() else {}
    return cfg.get("text_config", cfg)


def activation_bytes(model_dir: Path, batch: int, seq: int, dtype_bytes: int, generate_tokens: int = 0) -> int:
    """Peak activations of one no-grad forward over batch × seq tokens (logits in fp32 and the widest layer's
    temporaries), plus the KV cache when generating."""
    c = config_of(model_dir)
    h = c.get("hidden_size", 0)
    inter = c.get("intermediate_size", 4 * h)
    vocab = c.get("vocab_size", 0)
    layers = c.get("num_hidden_layers", 0)
    heads = c.get("num_attention_heads", 1)
    kv = c.get("num_key_value_heads", heads)
    head_dim = c.get("head_dim") or (h // heads if heads else 0)
    tokens = batch * (seq + generate_tokens)
    logits = tokens * vocab * (dtype_bytes + 4 + 1)  # the model's logits, a float copy, the finite check
    # one decoder layer's peak in an eager forward: residual, norm, q/k/v with their rotary copies, attention output
    # and projection (~8 × hidden), gate, up, activation and product (4 × intermediate), scores and softmax
    layer = tokens * (8 * h + 4 * inter) * dtype_bytes + 2 * batch * heads * (seq + generate_tokens) ** 2 * 4
    kv_cache = 2 * layers * tokens * kv * head_dim * dtype_bytes if generate_tokens else 0
    return logits + layer + kv_cache


def rank_cache_bytes(operators: set[str], params: int, sources: int) -> tuple[int, str]:
    from evomerge.merge import OPERATORS

    b, why = 0, []
    kinds = {OPERATORS[o].sparsify for o in operators if o in OPERATORS} & {"magnitude", "outliers"}
    if kinds:  # one byte per parameter and source for each order used (TIES: descending, Breadcrumbs: ascending)
        b += len(kinds) * sources * params
        why.append(f"magnitude rank buckets, {len(kinds)} B/param/source")
    if any(OPERATORS[o].sparsify == "della" for o in operators if o in OPERATORS):
        b += sources * params * 4
        why.append("DELLA int32 per-row ranks, 4 B/param/source")
    return b, "; ".join(why) or "no magnitude-ranked operator"


def plan_memory(base: Path, sources: list[Path], *, operators: set[str], batch: int, seq: int,
                generate_tokens: int = 0, device: str = "cpu", capacity: int | None = None, workers: int = 1,
                stream: bool | None = None, runtime: int | None = None, threads: int = 1,
                dtype_bytes: int | None = None) -> MemoryPlan:
    """The plan for one worker merging `sources` onto `base` (sizes from headers, nothing loaded). `dtype_bytes`:
    the width the experiment casts the sources to (its `dtype`), else None: the checkpoints' own."""
    b = CheckpointSize.of(base)
    k = len(sources)
    for s in sources:
        if CheckpointSize.of(s).params != b.params:
            raise SourceError(f"{s}: {CheckpointSize.of(s).params} floating-point parameters, base {base} has "
                              f"{b.params} (not mergeable)")
    if dtype_bytes is not None:  # the pool holds the base, the task vectors and the live model cast to it
        b = replace(b, bytes=b.params * dtype_bytes, dtype_bytes=dtype_bytes)
    if capacity is None:
        capacity = device_capacity(device) // workers
    runtime = runtime_bytes(base) if runtime is None else runtime
    ranks, ranks_why = rank_cache_bytes(operators, b.params, k)
    act = activation_bytes(base, batch, seq, b.dtype_bytes, generate_tokens)
    big = b.largest
    from evomerge.merge import kernels

    compiled = big >= kernels.COMPILE_MIN and kernels._compile_enabled()
    common = [
        Term("runtime", runtime, "Python, torch, transformers and the fitness data (measured in this process)"),
        Term("compiler", COMPILER_BYTES if compiled else 0, "torch.compile of the merge kernels (measured once)"),
        Term("live model", b.bytes, f"{b.params / 1e6:.1f}M parameters, {b.dtype_bytes} B each"),
        Term("rank cache", ranks, ranks_why),
        Term("activations", act, f"fitness batch {batch} × {seq + generate_tokens} tokens"),
        Term("heap growth", HEAP_GROWTH_PER_THREAD * threads if device == "cpu" else 0,
             f"what a CPU process's heap keeps once scoring starts, {threads} thread(s) (arenas, caches; measured)"),
    ]
    # One source's state dict is resident while the pool loads, before the live model exists (same size): not
    # counted twice. While merging: the largest tensor's temporaries — its magnitude sort when a sample is built
    # (fp32 copy, values, int64 order) and the kernel's output.
    transient = Term("transient", big * (4 + 4 + 8 + 2 * b.dtype_bytes) if ranks else 2 * big * b.dtype_bytes,
                     f"the largest tensor ({big / 1e6:.1f}M entries): its sort and merge temporaries")
    in_memory = [
        Term("base", b.bytes, "the base's floating-point tensors"),
        Term("task vectors", k * b.bytes, f"{k} sources × {b.bytes / GB:.3f} GB"),
        transient,
    ]
    mapped = [
        Term("per-tensor reads", (2 * k + 2) * big * b.dtype_bytes,
             f"the largest tensor of the base and {k} sources, read for each merge (mapped pages beyond it are "
             "the OS's reclaimable cache)"),
        transient,
    ]
    layouts = {"in memory": common + in_memory, "memory-mapped": common + mapped}
    forced = None if stream is None else ("memory-mapped" if stream else "in memory")
    return MemoryPlan(device=device, capacity=capacity, workers=workers, layouts=layouts, forced=forced)


def device_capacity(device: str) -> int:
    """Bytes of the device: the GPU's memory, or this machine's RAM."""
    if device.startswith("cuda"):
        import torch

        return torch.cuda.get_device_properties(torch.device(device)).total_memory
    import psutil

    return psutil.virtual_memory().total


def parse_size(text: str, what: str) -> int:
    """'141GB', '24 GiB', '8e9' -> bytes."""
    t = text.strip().lower().replace(" ", "")
    for suffix, mult in (("gib", 2**30), ("gb", 1e9), ("mib", 2**20), ("mb", 1e6), ("g", 1e9), ("", 1)):
        if t.endswith(suffix):
            try:
                return int(float(t[: len(t) - len(suffix)] if suffix else t) * mult)
            except ValueError:
                break
    raise ConfigError(f"{what}: expected a size such as 141GB or 24GiB, got {text!r}")


def token_length(tokenizer, tasks: dict[str, dict[str, list[dict]]], limit: int = 2000) -> int:
    """The longest <s> prompt answer </s> row of the tasks' examples (the first `limit` of each split)."""
    longest = 1
    for split in tasks.values():
        for examples in split.values():
            for ex in examples[:limit] if isinstance(examples, list) else []:
                longest = max(longest, 2 + len(tokenizer.encode(ex.get("prompt", ""), add_special_tokens=False))
                              + len(tokenizer.encode(str(ex.get("answer", "")), add_special_tokens=False)))
    return longest


def has_cuda() -> bool:
    import torch

    return torch.cuda.is_available()
