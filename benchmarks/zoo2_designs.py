"""Zoo v2 designs: which training lets a merge compose two experts' skills (issue 18).

Builds one design of zoo v2's tasks and models (a base, a language expert `lang`, a math expert `math`; 12-layer
Llama, hidden 64, as `evomerge zoo build --profile zoo2`), then prints, for each source and a grid of merges
(task arithmetic with one weight per expert, and "layer bands": the language expert everywhere but a middle band
of layers, which takes the math expert instead), the held-out accuracy on every task and on each step of the
composed chain, scored teacher-forced one step at a time: `read` (the operands in digits), `t1` (the step into the
sum), `sum`, `t2` (the step into writing), `write` (the sum as a word) and `eos`. Each line is JSON.

    python benchmarks/zoo2_designs.py J --out /tmp/zoo2-J     # ~8 CPU-minutes on 1 thread

With `--out`, the models (Hugging Face directories), the composed task's search and held-out splits, and `ps.yaml`,
`dfs.yaml` and `m2n2.yaml` (as experiments/zoo2_ps.yaml, zoo2_dfs.yaml and zoo2_m2n2.yaml run them, on these models)
are written there: `evomerge run /tmp/zoo2-J/ps.yaml`.

The designs (VARIANTS) are the steps of one investigation, each a change to the one before it; what each measured
is in benchmarks/README.md, "Zoo v2". The chosen one, J, is the `zoo2` profile (its tasks, chain neighbours and
vocabulary are evomerge.zoo's own; `ZooSpec.pack` is this script's packing with the copy learned and EOS between
examples), with one change: the profile checks its stopping targets on all 200 search examples, this script on the
first 100 (with 100, the profile builds this script's J byte for byte; with 200 the math expert trains 850 steps,
not 400, and reaches 0.953 on held-out addition, not 0.897).
"""

from __future__ import annotations

import argparse
import itertools
import json
import random
import time
from pathlib import Path

import torch

from evomerge.fitness.native import encode_teacher_forced, exact_match_teacher_forced
from evomerge.zoo import build as B
from evomerge.zoo import tasks as T
from evomerge.zoo.families import make_model
from evomerge.zoo.tokenizer import build_char_tokenizer

W = T.NUMBER_WORDS
EOS = T.TURN_END  # the zoo tokenizer's EOS, as text (it encodes to the one token)

DEFAULTS = {"steps": "unmarked", "expert_eos": True, "prefix": 0.0, "sep": "=", "neighbour": 0.0, "copy_loss": False,
            "vocab": 0, "mix": (3.0, 1.0, 1.0, 1.0), "expert_lr": 1e-3, "expert_steps": 800, "keep": 1.0}
VARIANTS: dict[str, dict] = {
    # the chain's steps as tasks of their own: reading without a marker (qx+ab= -> 57+12), writing with the marker
    # after the digits (57+12=e: -> qx+ab); word_add: w:qx+ab= -> 57+12=69=e:xe
    "B": {},
    "C": {"expert_eos": False},  # experts not trained to end an answer (their EOS is the base's)
    "D": {"expert_eos": False, "prefix": 0.5},  # half of all training rows after a random other example and '='
    "F": {"prefix": 0.5, "mix": (3.0, 1.0, 1.0, 0.3)},  # experts end answers again; the base sees less word_add
    # the chain made of the tasks' own prompts, one turn each, ended by EOS as every answer is:
    # w:k:qx+ab= -> 57+12</s>57+12=69</s>e:69=xe ; the random prefixes end with EOS too
    "G": {"steps": "turns", "prefix": 0.5, "sep": EOS, "mix": (3.0, 1.0, 1.0, 0.3)},
}
# half of the prefixes a chain neighbour: the decode whose answer an add's prompt is, the add whose sum an
# encode's prompt is (documents that reuse what came before)
VARIANTS["H"] = {**VARIANTS["G"], "neighbour": 0.5}
# + the copy of the neighbour's answer into the prompt is learned too (loss on it, as a language model's on
# every token), + every one-number prompt of encode and decode 10 times in training (the vocabulary: the
# splits, disjoint by prompt, otherwise hold the 100 one-number prompts once among 4,000 rows)
VARIANTS["I"] = {**VARIANTS["H"], "copy_loss": True, "vocab": 10}
VARIANTS["J"] = {**VARIANTS["I"], "expert_lr": 4e-4, "expert_steps": 1500}  # smaller task vectors
VARIANTS["K"] = {**VARIANTS["I"], "expert_lr": 2e-4, "expert_steps": 2500}
VARIANTS["L"] = {**VARIANTS["J"], "keep": 3.0}  # a KL term 3x as strong: vectors that leave the other's tasks alone
VARIANTS["M"] = {**VARIANTS["J"], "vocab": 30}  # the vocabulary 30 times over
TASKS = ("add", "encode", "decode", "word_add")
SEGMENTS = ("read", "t1", "sum", "t2", "write", "eos")


def _numbers(rng: random.Random) -> list[int]:
    return [rng.randint(0, 99) for _ in range(rng.randint(1, 2))]


def _two_operands(rng: random.Random) -> tuple[int, int]:
    a = rng.randint(0, 99)
    return a, rng.randint(0, 99 - a)


def generators(steps: str) -> dict:
    """The task generators of a design: 'unmarked' steps or the tasks' own prompts as 'turns'."""
    if steps == "turns":  # zoo v2's own tasks (w:k:qx+ab= -> 57+12</s>57+12=69</s>e:69=xe)
        return {t: T.TASKS[t] for t in TASKS}

    def decode(rng):
        ns = _numbers(rng)
        return {"prompt": "+".join(W[n] for n in ns) + "=", "answer": "+".join(map(str, ns))}

    def encode(rng):
        ns = _numbers(rng)
        return {"prompt": "+".join(map(str, ns)) + "=e:", "answer": "+".join(W[n] for n in ns)}

    def word_add(rng):
        a, b = _two_operands(rng)
        return {"prompt": f"w:{W[a]}+{W[b]}=", "answer": f"{a}+{b}={a + b}=e:{W[a + b]}"}
    return {"add": T.make_add, "encode": encode, "decode": decode, "word_add": word_add}


def with_prefixes(rows: list[dict], task: str, pool: list[dict], cfg: dict, seed: str) -> list[dict]:
    """A share `prefix` of the rows after another example and the separator (packing, without its cost); of those,
    a share `neighbour` after their chain neighbour, whose copy into the prompt is learned with `copy_loss`."""
    rng = random.Random(seed)
    out = []
    for r in rows:
        if cfg["prefix"] and rng.random() < cfg["prefix"]:
            o = T.chain_neighbour(task, r, rng) if rng.random() < cfg["neighbour"] else None
            if o is not None and cfg["copy_loss"]:
                r = {"prompt": o["prompt"] + o["answer"] + cfg["sep"], "answer": r["prompt"] + r["answer"]}
            else:
                o = o or rng.choice(pool)
                r = {"prompt": o["prompt"] + o["answer"] + cfg["sep"] + r["prompt"], "answer": r["answer"]}
        out.append(r)
    return out


def segment_masks(tok, rows: list[dict], enc, steps: str) -> dict[str, torch.Tensor]:
    """For each step of the chain, the target positions of the held-out word_add rows that belong to it."""
    masks = {k: torch.zeros_like(enc.target_mask) for k in SEGMENTS}
    for i, r in enumerate(rows):
        start = len(tok.encode(r["prompt"]))  # special prefix + prompt tokens; position p predicts token p + 1
        a = "".join("|" if t == tok.eos_token_id else tok.convert_ids_to_tokens(t)
                    for t in tok.encode(r["answer"], add_special_tokens=False))  # one character per token
        if steps == "turns":  # 57+12|57+12=69|e:69=xe
            i1, j1, i2, j2 = a.index("|"), a.index("=") + 1, a.rindex("|"), a.rindex("=") + 1
        else:  # 57+12=69=e:xe
            i1 = a.index("=")
            i2 = a.index("=e:")
            j1, j2 = i1 + 1, i2 + 3
        bounds = {"read": (0, i1), "t1": (i1, j1), "sum": (j1, i2), "t2": (i2, j2), "write": (j2, len(a)),
                  "eos": (len(a), len(a) + 1)}
        for k, (lo, hi) in bounds.items():
            masks[k][i, start - 1 + lo : start - 1 + hi] = True
    return masks


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("variant", choices=sorted(VARIANTS))
    ap.add_argument("--out", type=Path, help="write the models, the composed task's splits and ps.yaml here")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--expert-seeds", default="1,2",
                    help="the experts' training seeds, lang then math (the zoo build's: 1,2); the design table's rows "
                    "B-K were measured with 1001,1002")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    cfg = {**DEFAULTS, **VARIANTS[args.variant]}
    print(json.dumps({"variant": args.variant, **cfg}), flush=True)
    T.TASKS.update(generators(cfg["steps"]))  # this process only: the splits below are generated from these
    spec = B.ZooSpec(tasks=TASKS, hidden=64, intermediate=128, layers=12, heads=4, base_lr=2e-3, base_max_steps=1500,
                     base_target=0.18, check_every=50, mixture_weights=cfg["mix"], expert_lr=cfg["expert_lr"],
                     expert_steps=cfg["expert_steps"], expert_target=0.97, expert_keep=cfg["keep"],
                     experts=B.ZOO2_EXPERTS, sizes={"train": 4000, "search": 200, "heldout": 300})
    torch.manual_seed(spec.seed)
    tok = build_char_tokenizer("zoo")
    data = B.task_splits(spec)
    for t, fmt in (("encode", lambda n: (f"e:{n}=", W[n])), ("decode", lambda n: (f"k:{W[n]}=", str(n)))):
        data[t]["train"] += [dict(zip(("prompt", "answer"), fmt(n), strict=True)) for n in range(100)] * cfg["vocab"]
    pool = [r for t in ("add", "encode", "decode") for r in data[t]["train"]]
    train = {t: B._encode_train(tok, with_prefixes(s["train"], t, pool, cfg, t)) for t, s in data.items()}
    checks = {t: encode_teacher_forced(tok, s["search"][:100]) for t, s in data.items()}
    held = {t: encode_teacher_forced(tok, s["heldout"]) for t, s in data.items()}
    chain = held["word_add"]
    masks = segment_masks(tok, data["word_add"]["heldout"], chain, cfg["steps"])

    @torch.no_grad()
    def report(model, name: str) -> dict:
        model.eval()
        acc = {t: round(float(exact_match_teacher_forced(model, e).float().mean()), 3) for t, e in held.items()}
        ok = model(input_ids=chain.input_ids, attention_mask=chain.attention_mask).logits[:, :-1].argmax(-1) \
            == chain.input_ids[:, 1:]
        acc |= {f"step_{k}": round(float((ok | ~m).all(-1).float().mean()), 3) for k, m in masks.items()}
        print(json.dumps({"model": name, **acc}), flush=True)
        return acc

    t0 = time.time()
    base = make_model("llama", spec, tok)
    steps = B._train(base, [train[t] for t in TASKS], spec.mixture_weights, spec.base_max_steps, spec.base_lr,
                     spec, spec.seed, stop=B._target_reached(base, checks, spec.base_target, "base", lambda _: None))
    print(json.dumps({"base_steps": steps, "seconds": round(time.time() - t0)}), flush=True)
    sources = {"base": report(base, "base")}
    experts = {}
    seeds = [int(x) for x in args.expert_seeds.split(",")]
    for i, (name, own) in enumerate(spec.expert_tasks().items()):
        ex = make_model("llama", spec, tok)
        ex.load_state_dict(base.state_dict())
        pools = [train[t] for t in own]
        if not cfg["expert_eos"]:  # the answers' tokens only: the expert leaves the end of an answer to the base
            pools = [(ids, attn, labels.masked_fill(labels == tok.eos_token_id, -100)) for ids, attn, labels in pools]
        n = B._train(ex, pools, [1.0] * len(own), spec.expert_steps, spec.expert_lr, spec, seeds[i],
                     stop=B._target_reached(ex, {t: checks[t] for t in own}, spec.expert_target, name, lambda _: None),
                     keep=(base.eval(), [train[t] for t in spec.kept_tasks(name)], spec.expert_keep))
        print(json.dumps({f"{name}_steps": n, "seconds": round(time.time() - t0)}), flush=True)
        sources[name], experts[name] = report(ex, name), ex

    merged = make_model("llama", spec, tok)
    theta = base.state_dict()
    vec = {e: {k: v - theta[k] for k, v in m.state_dict().items()} for e, m in experts.items()}

    def layer(key: str) -> int | None:
        return int(key.split(".layers.")[1].split(".")[0]) if ".layers." in key else None

    def merge(w_lang, w_math) -> torch.nn.Module:
        """Task arithmetic with weights per layer (functions of the layer index; None: embeddings, norm, head)."""
        merged.load_state_dict({k: v + w_lang(layer(k)) * vec["lang"][k] + w_math(layer(k)) * vec["math"][k]
                                for k, v in theta.items()})
        return merged

    best = max(r["word_add"] for r in sources.values())
    merges = {}
    for wl, wm in itertools.product((0.5, 1.0), (0.5, 1.0, 1.5)):
        merges[f"TA lang={wl} math={wm}"] = report(merge(lambda _, w=wl: w, lambda _, w=wm: w),
                                                   f"TA lang={wl} math={wm}")
    for lo, hi in ((1, 11), (2, 10), (3, 9), (4, 8)):  # layer swapping: math in layers lo..hi-1, lang elsewhere
        name = f"band math {lo}-{hi - 1}"
        merges[name] = report(merge(lambda i, lo=lo, hi=hi: 1.0 if i is None or not lo <= i < hi else 0.0,
                                    lambda i, lo=lo, hi=hi: 1.0 if i is not None and lo <= i < hi else 0.0), name)
    top = max(merges, key=lambda k: merges[k]["word_add"])
    print(json.dumps({"best_source": best, "best_merge": top, "word_add": merges[top]["word_add"],
                      "seconds": round(time.time() - t0)}), flush=True)
    if args.out:
        write_out(args.out, base, experts, tok, data["word_add"])


def write_out(out: Path, base, experts: dict, tok, word_add: dict) -> None:
    for name, model in {"base": base, **experts}.items():
        B._save(model, tok, out / name)
    for split in ("search", "heldout"):
        B._write_jsonl(out / "data" / "word_add" / f"{split}.jsonl", word_add[split])
    spaces = Path(__file__).resolve().parents[1] / "search_spaces"
    fitness = (f"fitness:\n  type: native\n  tasks: {{word_add: {out / 'data' / 'word_add'}}}\n"
               "  search_split: search\n  heldout_split: heldout\n")
    head = "seed: 0\nthreads: 1\nsources:\n"
    experts = f"  models: [{out / 'lang'}, {out / 'math'}]\n"
    budget = "popsize: 13, generations: 15"  # experiments/zoo2_*.yaml's: 195 candidates
    (out / "ps.yaml").write_text(  # as experiments/zoo2_ps.yaml
        f"name: zoo2_design_ps\n{head}  base: {out / 'base'}\n{experts}"
        f"space: {spaces / 'ps_layer_task_arithmetic.yaml'}\noptimizer: {{type: cma, {budget}}}\n{fitness}")
    (out / "dfs.yaml").write_text(  # as experiments/zoo2_dfs.yaml
        f"name: zoo2_design_dfs\n{head}{experts}space: {spaces / 'dfs_matrix_binary.yaml'}\n"
        f"optimizer: {{type: cma_wm, {budget}}}\n{fitness}")
    (out / "m2n2.yaml").write_text(  # as experiments/zoo2_m2n2.yaml
        f"name: zoo2_design_m2n2\n{head}  base: {out / 'base'}\n{experts}space: {{type: mosaic}}\n"
        f"optimizer: {{type: m2n2, {budget}, steady_state: true,\n"
        "            m2n2: {alpha: 1.0, attraction: true, split_point: true, crossover: true}}\n" + fitness)

if __name__ == "__main__":
    main()
