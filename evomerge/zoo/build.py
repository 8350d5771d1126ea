"""Builds the tiny model zoo: a base pretrained on a mixture of skills and one full fine-tune per skill — Llama by
default, or any family of `evomerge.zoo.families` (`ZooSpec.family`).

Everything is deterministic from `ZooSpec.seed` and runs on CPU in a couple of minutes. Each model is saved as a
standard Hugging Face directory (safetensors + config + tokenizer) under the zoo directory, with `zoo.json`
recording the spec and every model's accuracy per task.
"""

from __future__ import annotations

import collections
import contextlib
import hashlib
import json
import math
import os
import random
import shutil
import subprocess
import sys
import time
from pathlib import Path

import torch
from pydantic import BaseModel, ConfigDict, model_validator

from evomerge.fitness.native import encode_teacher_forced, exact_match_teacher_forced
from evomerge.zoo.families import FAMILIES, make_model
from evomerge.zoo.tasks import TURN_END, chain_neighbour, make_splits, vocabulary
from evomerge.zoo.tokenizer import build_char_tokenizer

ZOO_FORMAT = 2  # bump when the build changes in a way that invalidates cached zoos


class ZooSpec(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    seed: int = 0
    tasks: tuple[str, ...] = ("add", "cipher", "reverse")
    hidden: int = 128
    layers: int = 4
    heads: int = 4
    intermediate: int = 256
    batch: int = 64
    # Pretraining stops once the base reaches `base_target` mean accuracy (checked every `check_every` steps),
    # so that its competence — and the room left for merging — does not depend on the seed's luck.
    base_lr: float = 2e-3
    base_max_steps: int = 2000
    base_target: float = 0.35
    check_every: int = 100
    # Addition is learned last; oversampling it keeps the base balanced across skills.
    mixture_weights: tuple[float, ...] = (4.0, 1.0, 1.0)
    expert_lr: float = 2e-4
    expert_steps: int = 300
    sizes: dict[str, int] = {"train": 4000, "search": 300, "heldout": 300}
    # the architecture (evomerge.zoo.families) and tokenizer convention (None: the family's own)
    family: str = "llama"
    convention: str | None = None
    # Zoo v2's fields; their defaults build the first zoos exactly as before (same fingerprints, same bytes).
    # expert name -> the tasks it is fine-tuned on, in equal parts (None: one expert per task, named for it); a
    # task no expert trains on is a composed skill, which no source is trained for
    experts: dict[str, tuple[str, ...]] | None = None
    # fine-tuning stops once the expert's mean search accuracy on its own tasks reaches this, checked every
    # `check_every` steps (None: all `expert_steps`)
    expert_target: float | None = None
    # weight of a term that keeps the expert's predictions on the other tasks' answers at the base's (KL to the base,
    # "learning without forgetting"): its task vector then holds its skill, not the forgetting of the others, so
    # that experts can be merged (0: plain fine-tuning)
    expert_keep: float = 0.0
    # Build with portable kernels (PORTABLE_ENV, in a process of its own: the settings must be in place before torch
    # and MKL start), at about 1.7x the build time: the same bits on the AVX2 and AVX-512 code paths (measured).
    # Training is where CPUs part ways: the SIMD width changes the rounding of every step; a search on given weights
    # is not affected (benchmarks/README.md, "Across CPUs").
    portable: bool = False
    # Training text as packed documents are (zoo v2): a share `pack` of the training rows comes after another example
    # of the experts' tasks and EOS, so that a skill is learned in context, not only at a sequence's start; a share
    # `pack_chain` of those after their neighbour in the composed chain (`tasks.chain_neighbour`), the copy of its
    # answer into the row's prompt learned as well. `vocab_repeats`: the language's one-word examples
    # (`tasks.vocabulary`) that many times more in training. What each changed: benchmarks/README.md, "Zoo v2".
    pack: float = 0.0
    pack_chain: float = 0.0
    vocab_repeats: int = 0
    # the search examples per task that the stopping targets are checked on (fewer: a noisier stop, and an expert
    # that met its target on them may stay below it on held-out examples)
    check_examples: int = 100

    @model_validator(mode="after")
    def _experts_train_on_zoo_tasks(self) -> ZooSpec:
        for name, own in self.expert_tasks().items():
            if not own or not set(own) <= set(self.tasks):
                raise ValueError(f"experts.{name}: expected some of the zoo's tasks {list(self.tasks)}, got {own}")
        return self

    def fingerprint(self) -> str:
        # fields added later count only when set, so that the zoos built before them keep their fingerprint (cache)
        dump = self.model_dump(exclude={k for k in _LATER_FIELDS
                                        if getattr(self, k) == type(self).model_fields[k].default})
        if self.family != type(self).model_fields["family"].default:
            # the family's architecture config too: a change to it (say, GPT-2's dropout) must not reuse a zoo built
            # before it
            tok = build_char_tokenizer(self.convention or FAMILIES[self.family].convention)
            arch = FAMILIES[self.family].config(self, tok).to_diff_dict()
            dump["architecture"] = {k: v for k, v in arch.items() if k != "transformers_version"}
        blob = json.dumps({"format": ZOO_FORMAT, **dump}, sort_keys=True, default=str)
        return hashlib.sha256(blob.encode()).hexdigest()[:12]

    def expert_tasks(self) -> dict[str, tuple[str, ...]]:
        """Each expert's name and the tasks it is fine-tuned on."""
        return dict(self.experts) if self.experts is not None else {t: (t,) for t in self.tasks}

    def kept_tasks(self, expert: str) -> list[str]:
        """The tasks whose answers `expert` keeps near the base's (its KL term): the other experts' tasks, not its
        own and not the composed task's, which a merge is to improve."""
        own = self.expert_tasks()[expert]
        return [t for t in dict.fromkeys(t for e, ts in self.expert_tasks().items() if e != expert for t in ts)
                if t not in own]


_LATER_FIELDS = ("family", "convention", "experts", "expert_target", "expert_keep", "portable", "pack", "pack_chain",
                 "vocab_repeats", "check_examples")

# torch's kernels without SIMD dispatch, MKL's conditional numerical reproducibility, oneDNN at a common ISA
PORTABLE_ENV = {"ATEN_CPU_CAPABILITY": "default", "MKL_CBWR": "COMPATIBLE", "ONEDNN_MAX_CPU_ISA": "SSE41"}


ZOO2_TASKS = ("add", "encode", "decode", "word_add")
ZOO2_EXPERTS = {"lang": ("encode", "decode"), "math": ("add",)}

PROFILES = {
    "default": ZooSpec(),
    # A much smaller, faster zoo for tests: same pipeline, weaker models.
    "tiny": ZooSpec(hidden=96, intermediate=192, layers=2, base_lr=3e-3, base_max_steps=800, base_target=0.3,
                    expert_lr=1e-3, expert_steps=100, check_every=50,
                    sizes={"train": 2000, "search": 60, "heldout": 60}),
    # Zoo v2, the evolutionary-merge paper's setting: deeper, narrower models (12 layers, so that one layer is a
    # small part of the network); a language expert (numbers written as words and read back), a math expert
    # (addition in digits), both fine-tuned with their drift on the other's skill held back (`expert_keep`), and
    # addition posed and answered in the language (`word_add`, worked as a chain of the other tasks' turns), which
    # the base barely knows and no expert is trained on: a merge must take the language from one and the sums from
    # the other. Trained on packed text (a skill learned in context carries into the chain), the experts at a small
    # learning rate (smaller task vectors interfere less): benchmarks/README.md, "Zoo v2", measured each choice.
    "zoo2": ZooSpec(tasks=ZOO2_TASKS, hidden=64, intermediate=128, layers=12, heads=4, base_lr=2e-3,
                    base_max_steps=1500, base_target=0.18, check_every=50, mixture_weights=(3.0, 1.0, 1.0, 0.3),
                    expert_lr=4e-4, expert_steps=1500, expert_target=0.97, expert_keep=1.0, experts=ZOO2_EXPERTS,
                    sizes={"train": 4000, "search": 200, "heldout": 300}, pack=0.5, pack_chain=0.5,
                    vocab_repeats=10, check_examples=200),
    # the default zoo built with portable kernels: the same models on AVX2 and AVX-512 CPUs, at ~1.7x the build time
    "portable": ZooSpec(portable=True),
    # zoo v2's code path at tiny sizes, for tests (seconds; near-chance models)
    "zoo2-tiny": ZooSpec(tasks=ZOO2_TASKS, hidden=16, intermediate=32, layers=12, heads=2, batch=16, base_lr=3e-3,
                         base_max_steps=30, base_target=1.1, check_every=10, mixture_weights=(3.0, 1.0, 1.0, 0.3),
                         expert_lr=1e-3, expert_steps=20, expert_target=0.97, expert_keep=1.0, experts=ZOO2_EXPERTS,
                         sizes={"train": 200, "search": 20, "heldout": 20}, pack=0.5, pack_chain=0.5,
                         vocab_repeats=1),
}


def evomerge_home() -> Path:
    return Path(os.environ.get("EVOMERGE_HOME", Path.home() / ".cache" / "evomerge"))


def zoo_dir(spec: ZooSpec) -> Path:
    return evomerge_home() / "zoo" / spec.fingerprint()


def task_splits(spec: ZooSpec) -> dict[str, dict[str, list[dict[str, str]]]]:
    return {t: make_splits(t, spec.seed, spec.sizes) for t in spec.tasks}


def training_rows(spec: ZooSpec, data: dict) -> dict[str, list[dict[str, str]]]:
    """Each task's training rows as the models see them: the train split, the vocabulary repeats, and the packing
    (`ZooSpec.pack`); the train split alone when the spec sets none of these."""
    rows = {t: s["train"] + vocabulary(t) * spec.vocab_repeats for t, s in data.items()}
    if not spec.pack:
        return rows
    trained = {t for own in spec.expert_tasks().values() for t in own}
    pool = [r for t in spec.tasks if t in trained for r in rows[t]]
    return {t: _packed(r, t, pool, spec) for t, r in rows.items()}


def _packed(rows: list[dict], task: str, pool: list[dict], spec: ZooSpec) -> list[dict]:
    rng = random.Random(task)
    out = []
    for r in rows:
        if rng.random() < spec.pack:
            before = chain_neighbour(task, r, rng) if rng.random() < spec.pack_chain else None
            if before is not None:  # the copy into the prompt is part of the answer learned
                r = {"prompt": before["prompt"] + before["answer"] + TURN_END, "answer": r["prompt"] + r["answer"]}
            else:
                before = rng.choice(pool)
                r = {"prompt": before["prompt"] + before["answer"] + TURN_END + r["prompt"], "answer": r["answer"]}
        out.append(r)
    return out


MC_CHOICES = 4  # multiple-choice variants: the answer and three other answers of the split


def write_task_data(spec: ZooSpec, out: Path) -> None:
    """Write each task's splits as JSONL: out/<task>/<split>.jsonl, and a multiple-choice variant of every search and
    held-out split as out/<task>_mc/<split>.jsonl."""
    from evomerge.fitness.tasks import to_multiple_choice

    for task, splits in task_splits(spec).items():
        for split, rows in splits.items():
            _write_jsonl(out / task / f"{split}.jsonl", rows)
            if split != "train":
                _write_jsonl(out / f"{task}_mc" / f"{split}.jsonl",
                             to_multiple_choice(rows, MC_CHOICES, seed=f"{spec.seed}:{task}:{split}"))


def _write_jsonl(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")


def _encode_train(tokenizer, rows: list[dict]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Pre-pad a task's training rows once: ids, attention mask, labels (loss on answer + EOS only), encoded as
    scoring encodes them, in the tokenizer's own convention."""
    enc = encode_teacher_forced(tokenizer, rows)
    labels = torch.full_like(enc.input_ids, -100)
    labels[:, 1:][enc.target_mask] = enc.input_ids[:, 1:][enc.target_mask]
    return enc.input_ids, enc.attention_mask, labels


def _sample_batch(pools, weights, batch: int, gen: torch.Generator):
    """Draw a batch from the task pools in proportion to `weights`; trims the common padding."""
    counts = torch.multinomial(torch.tensor(weights, dtype=torch.float), batch, replacement=True, generator=gen)
    parts = []
    for k, (ids, attn, labels) in enumerate(pools):
        n = int((counts == k).sum())
        if n:
            idx = torch.randint(0, ids.shape[0], (n,), generator=gen)
            parts.append((ids[idx], attn[idx], labels[idx]))
    width = max(int(a.sum(1).max()) for _, a, _ in parts)
    fill = (pools[0][0][0, -1].item(), 0, -100)  # pad id, attention 0, ignored label

    def fit(t: torch.Tensor, value: int) -> torch.Tensor:
        t = t[:, :width]
        return torch.nn.functional.pad(t, (0, width - t.shape[1]), value=value)

    return tuple(torch.cat([fit(p[j], fill[j]) for p in parts]) for j in range(3))


def accuracy_per_task(model, encoded: dict[str, object]) -> dict[str, float]:
    model.eval()
    acc = {t: float(exact_match_teacher_forced(model, enc).float().mean()) for t, enc in encoded.items()}
    model.train()
    return acc


def _keep_loss(model, teacher, pools, batch: int, gen: torch.Generator) -> torch.Tensor:
    """KL(teacher || model) at the answer positions of a batch drawn from `pools` (the tasks not trained on)."""
    ids, attn, labels = _sample_batch(pools, [1.0] * len(pools), batch, gen)
    with torch.no_grad():
        target = torch.log_softmax(teacher(input_ids=ids, attention_mask=attn).logits[:, :-1], -1)
    own = torch.log_softmax(model(input_ids=ids, attention_mask=attn).logits[:, :-1], -1)
    kl = (target.exp() * (target - own)).sum(-1)
    return kl[labels[:, 1:] != -100].mean()


def _train(model, pools, weights, steps, lr, spec, seed, *, stop=None, keep=None) -> int:
    """AdamW with warmup + cosine decay. `stop(step)` may end training early; returns the steps taken. `keep`:
    (teacher, pools, weight) adds weight × KL(teacher || model) on half a batch of those pools at every step."""
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0, betas=(0.9, 0.98))
    warm = max(1, steps // 20)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warm) * 0.5 * (1 + math.cos(math.pi * min(s, steps) / steps))
    )
    model.train()
    for step in range(1, steps + 1):
        ids, attn, labels = _sample_batch(pools, weights, spec.batch, gen)
        loss = model(input_ids=ids, attention_mask=attn, labels=labels).loss
        if keep is not None:
            teacher, others, weight = keep
            loss = loss + weight * _keep_loss(model, teacher, others, spec.batch // 2, gen)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        if stop is not None and step % spec.check_every == 0 and stop(step):
            return step
    return steps


def _target_reached(model, checks: dict, target: float, what: str, log):
    """A `stop` for `_train`: true once the model's mean search accuracy over `checks` reaches `target`."""

    def reached(step: int) -> bool:
        acc = accuracy_per_task(model, checks)
        mean = sum(acc.values()) / len(acc)
        log(f"{what} {step}: search accuracy {mean:.3f} " + " ".join(f"{k}={v:.2f}" for k, v in acc.items()))
        return mean >= target

    return reached


# Training runs on this many torch threads whatever the machine or the caller set: the thread count splits reductions
# differently, and so changes the trained bits (zoo v2's models differ between 1 and 2 threads; measured). One is
# also the fastest for these tiny models on shared cores.
BUILD_THREADS = 1
# processes training experts at once (None: one per core, at most one per expert, when the experts train for
# PARALLEL_MIN_STEPS steps or more: a process costs seconds to start, more than a short fine-tune); 1: one after
# the other
BUILD_WORKERS: int | None = None
PARALLEL_MIN_STEPS = 200


@contextlib.contextmanager
def torch_threads(n: int):
    """Run the block on `n` torch threads, then restore the caller's count."""
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def build_zoo(spec: ZooSpec, out: Path | None = None, log=print, force: bool = False) -> Path:
    """Build (or reuse) the zoo for `spec`; returns its directory."""
    out = out or zoo_dir(spec)
    if (out / "zoo.json").exists() and not force:
        return out
    if spec.portable and any(os.environ.get(k) != v for k, v in PORTABLE_ENV.items()):
        return _build_portable(spec, out, log, force)
    with torch_threads(BUILD_THREADS):
        return _build(spec, out, log)


def _build(spec: ZooSpec, out: Path, log) -> Path:
    t0 = time.time()
    tmp = out.with_name(out.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    torch.manual_seed(spec.seed)
    try:
        tok, train, checks, heldout = _encodings(spec)
        base = make_model(spec.family, spec, tok)
        pools = [train[t] for t in spec.tasks]

        steps = _train(base, pools, spec.mixture_weights, spec.base_max_steps, spec.base_lr, spec, spec.seed,
                       stop=_target_reached(base, checks, spec.base_target, "base step", log))
        report = {"spec": spec.model_dump(), "fingerprint": spec.fingerprint(), "base_steps": steps, "models": {}}
        _save(base, tok, tmp / "base")
        report["models"]["base"] = accuracy_per_task(base, heldout)
        base_state = {k: v.detach().clone() for k, v in base.state_dict().items()}
        for name, (acc, steps) in _train_experts(spec, base_state, tmp, (tok, train, checks, heldout), log).items():
            report["models"][name] = acc
            if spec.expert_target is not None:
                report.setdefault("expert_steps", {})[name] = steps
        report["build_seconds"] = round(time.time() - t0, 1)
        (tmp / "zoo.json").write_text(json.dumps(report, indent=2))
        shutil.rmtree(out, ignore_errors=True)
        tmp.rename(out)  # atomic publish: a killed build never leaves a half-written zoo behind
        return out
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _encodings(spec: ZooSpec):
    """The tokenizer and each task's encoded training rows, stopping checks and held-out examples."""
    tok = build_char_tokenizer(spec.convention or FAMILIES[spec.family].convention)
    data = task_splits(spec)
    train = {t: _encode_train(tok, rows) for t, rows in training_rows(spec, data).items()}
    checks = {t: encode_teacher_forced(tok, s["search"][: spec.check_examples]) for t, s in data.items()}
    heldout = {t: encode_teacher_forced(tok, s["heldout"]) for t, s in data.items()}
    return tok, train, checks, heldout


def _train_expert(spec: ZooSpec, i: int, name: str, base_state: dict, enc, tmp: Path, log) -> tuple[dict, int]:
    """Fine-tune expert `i` from the base's weights and save it under `tmp/name`; (held-out accuracy, steps)."""
    tok, train, checks, heldout = enc
    own = spec.expert_tasks()[name]
    expert = make_model(spec.family, spec, tok)
    expert.load_state_dict(base_state)
    stop = None if spec.expert_target is None else _target_reached(expert, {t: checks[t] for t in own},
                                                                   spec.expert_target, f"{name} step", log)
    others = [train[t] for t in spec.kept_tasks(name)]
    keep = None
    if spec.expert_keep and others:
        teacher = make_model(spec.family, spec, tok)
        teacher.load_state_dict(base_state)
        keep = (teacher.eval(), others, spec.expert_keep)
    steps = _train(expert, [train[t] for t in own], [1.0] * len(own), spec.expert_steps, spec.expert_lr, spec,
                   spec.seed * 1000 + i + 1, stop=stop, keep=keep)
    _save(expert, tok, tmp / name)
    acc = accuracy_per_task(expert, heldout)
    log(f"expert {name}: " + " ".join(f"{k}={v:.2f}" for k, v in acc.items()))
    return acc, steps


def _train_expert_child(spec_json: str, i: int, name: str, base_blob: bytes, tmp: str, lines) -> tuple[dict, int]:
    """`_train_expert` in a worker process (its log lines sent back through `lines`)."""
    from safetensors.torch import load

    torch.set_num_threads(BUILD_THREADS)
    spec = ZooSpec.model_validate_json(spec_json)
    torch.manual_seed(spec.seed * 1000 + i + 1)  # the global stream is not used by training; seeded all the same
    return _train_expert(spec, i, name, load(base_blob), _encodings(spec), Path(tmp), lines.put)


def _train_experts(spec: ZooSpec, base_state: dict, tmp: Path, enc, log) -> dict[str, tuple[dict, int]]:
    """Every expert, fine-tuned from the base: at once, one process per core, when there are several cores. Each
    trains on one thread from its own seed and draws nothing from the global random stream (the families have no
    dropout), so running them at once gives the same bytes as one after the other (tested)."""
    names = list(spec.expert_tasks())
    if BUILD_WORKERS is not None:
        workers = min(len(names), BUILD_WORKERS)
    else:
        workers = min(len(names), os.cpu_count() or 1) if spec.expert_steps >= PARALLEL_MIN_STEPS else 1
    if workers < 2:
        return {n: _train_expert(spec, i, n, base_state, enc, tmp, log) for i, n in enumerate(names)}
    import multiprocessing
    import queue
    from concurrent.futures import ProcessPoolExecutor

    from safetensors.torch import save

    blob = save(base_state)
    ctx = multiprocessing.get_context("spawn")  # not fork: the parent's torch threads must not be inherited
    others = set(multiprocessing.active_children())
    with ctx.Manager() as manager, ProcessPoolExecutor(workers, mp_context=ctx, initializer=_ignore_interrupts) as pool:
        lines = manager.Queue()
        futures = {n: pool.submit(_train_expert_child, spec.model_dump_json(), i, n, blob, str(tmp), lines)
                   for i, n in enumerate(names)}
        try:
            while not all(f.done() for f in futures.values()) or not lines.empty():
                with contextlib.suppress(queue.Empty):
                    log(lines.get(timeout=0.2))
            return {n: f.result() for n, f in futures.items()}
        except BaseException:  # Ctrl-C (the workers ignore it: one message, from here), a failed expert
            pool.shutdown(wait=False, cancel_futures=True)
            for child in set(multiprocessing.active_children()) - others:  # no expert trains on after the build
                child.terminate()
            raise


def _ignore_interrupts() -> None:
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _build_portable(spec: ZooSpec, out: Path, log, force: bool) -> Path:
    """`build_zoo` in a child process started with PORTABLE_ENV, its log lines passed on."""
    code = ("import sys; from pathlib import Path; from evomerge.zoo.build import ZooSpec, build_zoo; "
            "build_zoo(ZooSpec.model_validate_json(sys.argv[1]), Path(sys.argv[2]), force=sys.argv[3] == '1')")
    env = {**os.environ, **PORTABLE_ENV, "OMP_NUM_THREADS": str(BUILD_THREADS)}
    with subprocess.Popen([sys.executable, "-c", code, spec.model_dump_json(), str(out), "1" if force else "0"],
                          env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) as proc:
        assert proc.stdout is not None
        tail: collections.deque[str] = collections.deque(maxlen=20)  # the last lines, for the error
        for line in proc.stdout:
            line = line.rstrip()
            tail.append(line)
            if "Writing model shards" not in line:
                log(line)
    if proc.returncode:
        raise RuntimeError(f"the portable zoo build failed (exit {proc.returncode}):\n" + "\n".join(tail))
    return out


def _save(model, tok, path: Path) -> None:
    model.generation_config.pad_token_id = tok.pad_token_id
    model.save_pretrained(path, safe_serialization=True)
    tok.save_pretrained(path)


def family_spec(family: str, profile: str = "ci"):
    """A zoo spec for `family`: 'ci' (seconds: tiny, few steps, near-chance models; checks the pipeline; a base and
    two experts, add and reverse) or 'bench' (a minute or two: a base stopped early on the three skills, then one
    expert per skill, fine-tuned until it masters its skill (or 400 steps) while a KL term to the base keeps its
    predictions on the other skills — so that each task vector holds one skill and a merge has skills to compose;
    for benchmarks/families.py)."""
    if profile == "ci":
        return ZooSpec(family=family, tasks=("add", "reverse"), mixture_weights=(2.0, 1.0), hidden=32,
                       intermediate=64, layers=2, heads=4, batch=32, base_lr=3e-3, base_max_steps=60, base_target=1.1,
                       check_every=1000, expert_lr=3e-3, expert_steps=30,
                       sizes={"train": 400, "search": 20, "heldout": 20})
    if profile == "bench":
        mixture = FAMILIES[family].mixture or ZooSpec.model_fields["mixture_weights"].default
        return ZooSpec(family=family, mixture_weights=mixture, hidden=96, intermediate=192, layers=4, heads=4,
                       batch=64, base_lr=2e-3, base_max_steps=1500, base_target=0.35, check_every=50,
                       expert_lr=1e-3, expert_steps=400, expert_target=0.95, expert_keep=1.0,
                       sizes={"train": 3000, "search": 150, "heldout": 300})
    raise ValueError(f"unknown family profile {profile!r}; expected 'ci' or 'bench'")
