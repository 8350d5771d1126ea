"""LoRA merging in weight space (ΔW = B·A per adapter, merged per target module) and the scoring of a merged
model, for the merge service.

Black-box merge of N adapters with per-adapter sparsity α and scale β, per target module:
    A_m = Σ βᵢ S_αᵢ(Aᵢ),   B_m = Σ βᵢ sᵢ Bᵢ,   ΔW = B_m A_m
where S_α keeps the top-α fraction of |Aᵢ| (per tensor, no rescale) and sᵢ = lora_alpha / r is adapter i's own
LoRA scaling (with one common scaling this is exactly s·B_m·A_m). The white-box baselines (task arithmetic, TIES)
merge the full products ΔWᵢ = sᵢ BᵢAᵢ instead; they need the weights, so only the provider side (or a user who
has the weights) can run them.
"""

from __future__ import annotations

import json
import queue
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file

from evomerge.errors import ConfigError
from evomerge.fitness.native import EncodedBatch, encode_teacher_forced

ADAPTER_CONFIG, ADAPTER_WEIGHTS = "adapter_config.json", "adapter_model.safetensors"


@dataclass
class ModuleStack:
    """One target module's adapters, stacked: A [N, r, in], B [N, out, r], and |A| sorted descending per adapter
    (so the top-α threshold of any α is a lookup, not a sort per candidate)."""

    A: torch.Tensor
    B: torch.Tensor
    sorted_abs_A: torch.Tensor  # [N, r*in]


class LoraRepository:
    """A directory of PEFT adapters (one folder each, sharing the base and target modules), read into memory."""

    def __init__(self, path: Path):
        self.path = Path(path)
        dirs = sorted(d for d in self.path.iterdir() if (d / ADAPTER_CONFIG).is_file()) if self.path.is_dir() else []
        if not dirs:
            raise ConfigError(f"{self.path}: no PEFT adapters found (expected folders holding {ADAPTER_CONFIG} and "
                              f"{ADAPTER_WEIGHTS})")
        self.ids = [d.name for d in dirs]
        per_adapter = [self._read(d) for d in dirs]
        self.scalings = torch.tensor([s for s, _ in per_adapter])
        modules = set(per_adapter[0][1])
        for d, (_, mods) in zip(dirs, per_adapter, strict=True):
            if set(mods) != modules:
                raise ConfigError(f"{d}: targets other modules than {dirs[0].name}; every adapter of a repository "
                                  "must target the same modules")
        self.modules: dict[str, ModuleStack] = {}
        for name in sorted(modules):
            A = torch.stack([mods[name][0] for _, mods in per_adapter]).float()
            B = torch.stack([mods[name][1] for _, mods in per_adapter]).float()
            self.modules[name] = ModuleStack(A, B, A.abs().flatten(1).sort(dim=1, descending=True).values)

    @staticmethod
    def _read(d: Path) -> tuple[float, dict[str, tuple[torch.Tensor, torch.Tensor]]]:
        """(scaling, {base parameter name: (A, B)}) of one adapter."""
        cfg = json.loads((d / ADAPTER_CONFIG).read_text())
        if cfg.get("use_rslora") or cfg.get("use_dora"):
            raise ConfigError(f"{d / ADAPTER_CONFIG}: rsLoRA/DoRA adapters are not supported (plain LoRA expected)")
        weights = load_file(str(d / ADAPTER_WEIGHTS))
        mods: dict[str, list] = {}
        for key, t in weights.items():
            for part, slot in ((".lora_A.weight", 0), (".lora_B.weight", 1)):
                if key.endswith(part):
                    # base_model.model.<module path>.lora_A.weight -> <module path>.weight
                    name = key.removeprefix("base_model.model.").removesuffix(part) + ".weight"
                    mods.setdefault(name, [None, None])[slot] = t
        if not mods or any(a is None or b is None for a, b in mods.values()):
            raise ConfigError(f"{d / ADAPTER_WEIGHTS}: expected lora_A and lora_B weights for every module")
        return cfg["lora_alpha"] / cfg["r"], {k: (a, b) for k, (a, b) in mods.items()}

    def __len__(self) -> int:
        return len(self.ids)

    def full_deltas(self) -> dict[str, torch.Tensor]:
        """{module: [N, out, in]} the per-adapter updates sᵢ BᵢAᵢ (white-box baselines)."""
        s = self.scalings.view(-1, 1, 1)
        return {name: s * torch.bmm(m.B, m.A) for name, m in self.modules.items()}


def sparsify_mask(stack: ModuleStack, alpha: torch.Tensor) -> torch.Tensor:
    """[N, r, in] keep-mask of the top-αᵢ fraction of |Aᵢ| (α = 0 keeps nothing, α = 1 everything)."""
    n = stack.sorted_abs_A.shape[1]
    k = torch.round(alpha * n).long().clamp(0, n)
    thr = stack.sorted_abs_A.gather(1, (k - 1).clamp(min=0).unsqueeze(1)).squeeze(1)
    thr = torch.where(k > 0, thr, torch.full_like(thr, float("inf")))
    return stack.A.abs() >= thr.view(-1, 1, 1)


def blackbox_deltas(repo: LoraRepository, alpha, beta) -> dict[str, torch.Tensor]:
    """{module: ΔW} of the asymmetric-sparsity merge (module docstring)."""
    alpha = torch.as_tensor(alpha, dtype=torch.float32)
    beta = torch.as_tensor(beta, dtype=torch.float32)
    out = {}
    for name, m in repo.modules.items():
        A_m = torch.einsum("n,nri->ri", beta, m.A * sparsify_mask(m, alpha))
        B_m = torch.einsum("n,nor->or", beta * repo.scalings, m.B)
        out[name] = B_m @ A_m
    return out


def task_arithmetic_deltas(full: dict[str, torch.Tensor], lam: float) -> dict[str, torch.Tensor]:
    return {name: lam * d.sum(0) for name, d in full.items()}


def ties_deltas(full: dict[str, torch.Tensor], density: float, lam: float) -> dict[str, torch.Tensor]:
    """TIES (the paper's variant, Yadav et al.): trim to the top-d of |ΔWᵢ| per tensor, elect the sign of the sum,
    disjoint mean over the agreeing adapters."""
    out = {}
    for name, d in full.items():
        flat = d.flatten(1)
        k = max(1, round(density * flat.shape[1]))
        thr = flat.abs().topk(k, dim=1).values[:, -1:]
        trimmed = (flat * (flat.abs() >= thr)).view_as(d)
        sign = torch.sign(trimmed.sum(0))
        sign[sign == 0] = 1
        agree = (torch.sign(trimmed) == sign) & (trimmed != 0)
        count = agree.sum(0).clamp(min=1)
        out[name] = lam * (trimmed * agree).sum(0) / count
    return out


# -- a live model per request ---------------------------------------------------------------------------------------
class ModelPool:
    """`replicas` copies of the base model. A request takes one copy for itself, writes W₀ + ΔW into it, scores,
    and gives it back: two requests never share a live model, so one merge cannot leak into another's answer."""

    def __init__(self, base_dir: Path, modules: list[str], replicas: int = 1):
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(base_dir)
        self._free: queue.Queue = queue.Queue()
        first = None
        for _ in range(replicas):
            model = AutoModelForCausalLM.from_pretrained(base_dir).eval()
            model.requires_grad_(False)
            self._free.put(model)
            first = first or model
        params = dict(first.named_parameters())
        missing = [m for m in modules if m not in params]
        if missing:
            raise ConfigError(f"{base_dir}: the adapters target {missing[0]}, which the base model lacks "
                              "(adapters of another base?)")
        self.base_weights = {m: params[m].detach().clone() for m in modules}  # W₀, shared and read-only

    @contextmanager
    def merged(self, deltas: dict[str, torch.Tensor]):
        model = self._free.get()
        try:
            params = dict(model.named_parameters())
            with torch.no_grad():
                for name, w0 in self.base_weights.items():
                    params[name].copy_(w0 + deltas[name] if name in deltas else w0)
            yield model
        finally:
            self._free.put(model)


@torch.no_grad()
def score_examples(model, enc: EncodedBatch, batch_size: int = 128) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-example mean cross-entropy over the answer tokens (+ EOS) and per-example exact match of greedy decoding,
    both from one teacher-forced forward pass per batch."""
    losses, correct = [], []
    for i in range(0, enc.input_ids.shape[0], batch_size):
        ids, mask = enc.input_ids[i : i + batch_size], enc.target_mask[i : i + batch_size]
        logits = model(input_ids=ids, attention_mask=enc.attention_mask[i : i + batch_size]).logits[:, :-1].float()
        if not torch.isfinite(logits).all():
            raise FloatingPointError("the merged model produced non-finite logits")
        ce = torch.nn.functional.cross_entropy(logits.transpose(1, 2), ids[:, 1:], reduction="none")
        losses.append((ce * mask).sum(1) / mask.sum(1))
        correct.append(((logits.argmax(-1) == ids[:, 1:]) | ~mask).all(-1))
    return torch.cat(losses), torch.cat(correct)


def encode(tokenizer, examples: list[dict]) -> EncodedBatch:
    return encode_teacher_forced(tokenizer, examples)
