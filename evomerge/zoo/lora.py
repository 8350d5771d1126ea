"""The zoo's LoRA repository: many PEFT-format adapters of the zoo's base, for black-box merging
(evomerge.blackbox).

Adapters are trained on variants of the zoo's three skills (a second seed, the easy or the hard half of the
training split) and on distractor skills unrelated to them (copy, sort, shift, ...). Each is saved with peft's
`save_pretrained` (adapter_config.json + adapter_model.safetensors) under an opaque id (`lora-07`): the merge
service lists ids only, so a client cannot tell from a name which adapter is which. `repo.json` beside them is the
provider's manifest (what each adapter was trained on, its accuracy); the service never sends it.

The repository is cached apart from the zoo (`$EVOMERGE_HOME/lora/<fingerprint>`), so building it leaves the
zoo's cached models and numbers untouched. Everything is deterministic from the spec.
"""

from __future__ import annotations

import hashlib
import json
import random
import shutil
import time
from collections.abc import Callable
from pathlib import Path

import torch
from pydantic import BaseModel, ConfigDict

from evomerge.fitness.native import encode_teacher_forced
from evomerge.zoo.build import (
    BUILD_THREADS,
    PROFILES,
    _encode_train,
    _train,
    accuracy_per_task,
    build_zoo,
    evomerge_home,
    task_splits,
    torch_threads,
    training_rows,
)
from evomerge.zoo.tasks import LETTERS, _word

LORA_FORMAT = 1
TARGET_MODULES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


# -- distractor skills: unrelated to add / cipher / reverse, with their own prompt prefixes --------------------------
def _digits(rng: random.Random, lo: int, hi: int) -> str:
    return "".join(rng.choice("0123456789") for _ in range(rng.randint(lo, hi)))


DISTRACTORS: dict[str, Callable[[random.Random], dict[str, str]]] = {
    "copy": lambda r: (lambda w: {"prompt": f"k:{w}=", "answer": w})(_word(r, 3, 8)),
    "sort": lambda r: (lambda w: {"prompt": f"s:{w}=", "answer": "".join(sorted(w))})(_word(r, 3, 8)),
    "shift": lambda r: (lambda w: {"prompt": f"h:{w}=", "answer": "".join(
        LETTERS[(LETTERS.index(c) + 1) % 26] for c in w)})(_word(r, 3, 7)),
    "length": lambda r: (lambda w: {"prompt": f"l:{w}=", "answer": str(len(w))})(_word(r, 1, 12)),
    "double": lambda r: (lambda w: {"prompt": f"d:{w}=", "answer": w + w})(_word(r, 2, 6)),
    "digitrev": lambda r: (lambda n: {"prompt": f"n:{n}=", "answer": n[::-1]})(_digits(r, 3, 7)),
}

# Variants of the zoo's skills: a filter on the zoo's own training split (so no search or held-out example leaks in).
VARIANTS: dict[str, Callable[[dict[str, str]], bool]] = {
    "full": lambda ex: True,
    "easy": lambda ex: len(ex["answer"]) <= 5 if not ex["prompt"][0].isdigit() else int(ex["answer"]) < 100,
    "hard": lambda ex: len(ex["answer"]) > 5 if not ex["prompt"][0].isdigit() else int(ex["answer"]) >= 100,
}


class AdapterPlan(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")
    # a zoo task (add/cipher/reverse), a distractor name, or one of the zoo's experts (zoo v2's lang, math): its
    # tasks, with the expert's own KL term to the base on the other experts' tasks (a LoRA version of the expert)
    task: str
    variant: str = "full"  # zoo tasks: full | easy | hard
    seed: int = 0


def _default_plan() -> tuple[AdapterPlan, ...]:
    related = [AdapterPlan(task=t, variant=v, seed=s) for t in ("add", "cipher", "reverse")
               for v, s in (("full", 0), ("full", 1), ("easy", 0), ("hard", 0))]
    distract = [AdapterPlan(task=t, seed=s) for t in DISTRACTORS for s in (0, 1)]
    return tuple(related + distract)


class LoraSpec(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    zoo: str = "default"  # the zoo profile whose base the adapters belong to
    rank: int = 8
    alpha: int = 16
    lr: float = 3e-3
    steps: int = 120
    distractor_train: int = 2000
    eval_examples: int = 200
    adapters: tuple[AdapterPlan, ...] = _default_plan()

    def fingerprint(self) -> str:
        zoo_fp = PROFILES[self.zoo].fingerprint()
        blob = json.dumps({"format": LORA_FORMAT, "zoo": zoo_fp, **self.model_dump()}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:12]


LORA_PROFILES = {
    "default": LoraSpec(),
    # for tests: 4 adapters on the tiny zoo's base, a few seconds
    "tiny": LoraSpec(zoo="tiny", steps=25, eval_examples=60,
                     adapters=(AdapterPlan(task="add"), AdapterPlan(task="cipher"), AdapterPlan(task="reverse"),
                               AdapterPlan(task="copy"))),
    # zoo v2: LoRA versions of its two experts (two seeds each: the language expert's encode + decode, the math
    # expert's add, each with the expert's KL term) and two distractors whose prompts differ from zoo v2's (`k:` is
    # its decode prompt, so not `copy`), for black-box merging on the composed task (benchmarks/methods.py)
    "zoo2": LoraSpec(zoo="zoo2", rank=16, alpha=32, lr=5e-3, steps=500,
                     adapters=(AdapterPlan(task="lang"), AdapterPlan(task="lang", seed=1), AdapterPlan(task="math"),
                               AdapterPlan(task="math", seed=1), AdapterPlan(task="sort"), AdapterPlan(task="shift"))),
}


def lora_dir(spec: LoraSpec) -> Path:
    return evomerge_home() / "lora" / spec.fingerprint()


def adapter_id(i: int) -> str:
    return f"lora-{i:02d}"


def distractor_rows(task: str, seed: int, n: int) -> list[dict[str, str]]:
    rng = random.Random(f"{task}:{seed}")
    seen, rows = set(), []
    while len(rows) < n:
        ex = DISTRACTORS[task](rng)
        if ex["prompt"] not in seen:
            seen.add(ex["prompt"])
            rows.append(ex)
    return rows


def _pools_for(plan: AdapterPlan, spec: LoraSpec, data: dict) -> tuple[list[list[dict[str, str]]], list[str]]:
    """The training rows of an adapter, one list per task (sampled equally), and the tasks whose answers it is to
    keep near the base's (an expert's KL term; none for a task or a distractor). `data`: the zoo's training rows
    per task (`training_rows`: packed as the zoo's own models saw them)."""
    if plan.task in DISTRACTORS:
        return [distractor_rows(plan.task, plan.seed, spec.distractor_train)], []
    zspec = PROFILES[spec.zoo]
    experts = zspec.expert_tasks() if zspec.experts is not None else {}
    if plan.task in experts:
        return ([[ex for ex in data[t] if VARIANTS[plan.variant](ex)] for t in experts[plan.task]],
                zspec.kept_tasks(plan.task))
    if plan.task not in data:
        raise ValueError(f"adapter task {plan.task!r}: expected a zoo task {sorted(data)}, an expert "
                         f"{sorted(experts)} or a distractor {sorted(DISTRACTORS)}")
    return [[ex for ex in data[plan.task] if VARIANTS[plan.variant](ex)]], []


def build_lora_repo(spec: LoraSpec, out: Path | None = None, log=print, force: bool = False) -> Path:
    """Build (or reuse) the LoRA repository for `spec`; returns its directory (one folder per adapter id)."""
    from evomerge.errors import require_extra

    require_extra("blackbox", "building a LoRA repository", ("peft",))
    out = out or lora_dir(spec)
    if (out / "repo.json").exists() and not force:
        return out
    with torch_threads(BUILD_THREADS):  # as the zoo: the same adapters whatever the caller's thread count
        return _build_repo(spec, out, log)


def _build_repo(spec: LoraSpec, out: Path, log) -> Path:
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    zspec = PROFILES[spec.zoo]
    base_dir = build_zoo(zspec, log=log) / "base"
    t0 = time.time()
    tmp = out.with_name(out.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        from evomerge.zoo.tokenizer import build_char_tokenizer

        tok = build_char_tokenizer()
        data = task_splits(zspec)
        heldout = {t: encode_teacher_forced(tok, s["heldout"]) for t, s in data.items()}
        train = training_rows(zspec, data)
        manifest = {"spec": spec.model_dump(), "fingerprint": spec.fingerprint(), "base": str(base_dir),
                    "adapters": {}}
        for i, plan in enumerate(spec.adapters):
            torch.manual_seed(1000 + i)  # LoRA A's random init
            model = AutoModelForCausalLM.from_pretrained(base_dir)
            cfg = LoraConfig(r=spec.rank, lora_alpha=spec.alpha, target_modules=list(TARGET_MODULES),
                             lora_dropout=0.0, bias="none")
            pm = get_peft_model(model, cfg)
            rows, kept = _pools_for(plan, spec, train)
            pools = [_encode_train(tok, r) for r in rows]
            keep = None
            if kept and zspec.expert_keep:  # the expert's recipe: KL to the base on the other experts' tasks
                teacher = AutoModelForCausalLM.from_pretrained(base_dir).eval()
                keep = (teacher, [_encode_train(tok, train[t]) for t in kept], zspec.expert_keep)
            _train(pm, pools, [1.0] * len(pools), spec.steps, spec.lr, zspec, 7919 * (i + 1) + plan.seed, keep=keep)
            checks = dict(heldout)
            if plan.task in DISTRACTORS:  # its own skill, on fresh examples
                checks[plan.task] = encode_teacher_forced(tok, distractor_rows(plan.task, 10_000 + plan.seed,
                                                                              spec.eval_examples))
            acc = accuracy_per_task(pm, checks)
            pm.save_pretrained(tmp / adapter_id(i))
            manifest["adapters"][adapter_id(i)] = {**plan.model_dump(), "accuracy": acc}
            log(f"{adapter_id(i)} {plan.task}/{plan.variant}/s{plan.seed}: "
                + " ".join(f"{k}={v:.2f}" for k, v in acc.items()))
        manifest["build_seconds"] = round(time.time() - t0, 1)
        (tmp / "repo.json").write_text(json.dumps(manifest, indent=2))
        shutil.rmtree(out, ignore_errors=True)
        tmp.rename(out)  # atomic publish, as the zoo does
        return out
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
