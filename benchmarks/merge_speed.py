"""Per-candidate merge cost: evomerge's in-place materialization vs mergekit 0.1.5 and a fused torch floor.

A Llama-shaped model (~106M parameters: hidden 768, 8 layers, MLP 2048, vocabulary 32000), base + 3 experts,
fp32, CPU. Every figure is the median of several repetitions after a warm-up (evomerge's magnitude ranks are
computed during the warm-up, once per source, as in a search). Ratios compare figures taken in the same run.

    python benchmarks/merge_speed.py            # full size
    python benchmarks/merge_speed.py --small    # a quick 8M-parameter check
    python benchmarks/merge_speed.py --dtype bfloat16   # the same models cast to bf16, as real checkpoints ship
"""

from __future__ import annotations

import argparse
import tempfile
import threading
import time
from pathlib import Path

import psutil
import torch
from common import median_seconds  # benchmarks/common.py (scripts run from benchmarks/)
from transformers import LlamaConfig, LlamaForCausalLM

from evomerge.merge.materialize import Merger
from evomerge.recipe import Recipe
from evomerge.sources import SourcePool


def peak_extra_bytes(fn) -> int:
    """Peak resident memory above the starting level while `fn` runs (sampled every millisecond)."""
    proc = psutil.Process()
    start = proc.memory_info().rss
    peak = start
    done = threading.Event()

    def sample():
        nonlocal peak
        while not done.is_set():
            peak = max(peak, proc.memory_info().rss)
            time.sleep(0.001)

    th = threading.Thread(target=sample)
    th.start()
    try:
        fn()
    finally:
        done.set()
        th.join()
    return max(0, peak - start)


def build(tmp: Path, small: bool) -> tuple[LlamaConfig, list[dict[str, torch.Tensor]]]:
    cfg = LlamaConfig(vocab_size=8000 if small else 32000, hidden_size=256 if small else 768,
                      intermediate_size=704 if small else 2048, num_hidden_layers=4 if small else 8,
                      num_attention_heads=8 if small else 12, num_key_value_heads=8 if small else 12,
                      tie_word_embeddings=False)
    torch.manual_seed(0)
    base = LlamaForCausalLM(cfg)
    sds = [{k: v.clone() for k, v in base.state_dict().items()}]
    base.save_pretrained(tmp / "base")
    for i in range(3):
        g = torch.Generator().manual_seed(i + 1)
        sd = {k: v + 0.01 * torch.randn(v.shape, generator=g) for k, v in sds[0].items()}
        base.load_state_dict(sd)
        base.save_pretrained(tmp / f"e{i}")
        sds.append(sd)
    return cfg, sds


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--small", action="store_true")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--skip-mergekit-ties", action="store_true", help="mergekit's TIES takes ~40 s per merge")
    ap.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default="float32",
                    help="merge in this dtype (both evomerge and mergekit; the models are cast when loaded)")
    args = ap.parse_args()
    dtype = getattr(torch, args.dtype)
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        cfg, sds = build(tmp, args.small)
        sds = [{k: v.to(dtype) for k, v in sd.items()} for sd in sds]
        n_params = sum(v.numel() for v in sds[0].values())
        print(f"{n_params / 1e6:.1f}M parameters, base + 3 experts, {args.dtype}, {torch.get_num_threads()} threads")
        pool = SourcePool(tmp / "base", [tmp / f"e{i}" for i in range(3)], dtype=dtype)
        live = LlamaForCausalLM(cfg).to(dtype)
        merger = Merger(pool)
        w = (0.5, 0.3, 0.4)
        recipes = {
            "linear": Recipe.uniform("linear", 3, 1.0),
            "task_arithmetic": Recipe(operator="task_arithmetic", groups={"all": {"weights": w}}),
            "ties": Recipe(operator="ties", groups={"all": {"weights": w, "densities": (0.5, 0.4, 0.6)}}),
            "dare_ties": Recipe(operator="dare_ties", groups={"all": {"weights": w, "densities": (0.5, 0.4, 0.6)}}),
        }
        # as in a search: NaN/Inf are caught at the logits, so no separate scan of the weights
        ours = {name: median_seconds(lambda r=r: merger.materialize(r, live, check_finite=False), args.reps)
                for name, r in recipes.items()}

        largest = max(v.numel() * v.element_size() for v in pool.base.values())
        extra = {name: peak_extra_bytes(lambda r=r: merger.materialize(r, live, check_finite=False))
                 for name, r in recipes.items()}

        # The floor: one fused pass per tensor, base + Σ wᵢτᵢ written into a preallocated output.
        stacked = {k: torch.stack([pool.deltas[i][k].reshape(-1) for i in range(3)]) for k in pool.base}
        wt = torch.tensor(w, dtype=dtype)
        out = {k: torch.empty(v.numel(), dtype=dtype) for k, v in pool.base.items()}

        def floor():
            for k, b in pool.base.items():
                torch.addmv(b.reshape(-1), stacked[k].t(), wt, out=out[k])

        floor_s = median_seconds(floor, args.reps)

        from mergekit.merge_methods.api import merge_state_dicts

        mk_params = {
            "linear": {"weight": [1.0, 1.0, 1.0]},
            "task_arithmetic": {"weight": list(w)},
            "ties": {"weight": list(w), "density": [0.5, 0.4, 0.6]},
            "dare_ties": {"weight": list(w), "density": [0.5, 0.4, 0.6]},
        }
        ids = [f"e{i}" for i in range(3)]
        theirs = {}
        for name, params in mk_params.items():
            if name == "ties" and args.skip_mergekit_ties:
                continue
            models = dict(zip(ids, sds[1:], strict=True))
            base = None
            if name != "linear":  # linear merges the models themselves; the others merge task vectors onto a base
                models, base = {"base": sds[0], **models}, "base"
            per_input = {key: dict(zip(ids, vals, strict=True)) for key, vals in params.items()}
            theirs[name] = median_seconds(lambda m=models, b=base, n=name, p=per_input: merge_state_dicts(m, n, base=b, parameters=p),
                                  1 if name == "ties" else args.reps)

        gbytes = 5 * n_params * dtype.itemsize / 1e9  # task arithmetic reads base + 3 task vectors, writes 1
        print(f"\nfused torch task-arithmetic floor: {floor_s:.3f} s ({gbytes / floor_s:.1f} GB/s)")
        print(f"{'operator':16s} {'evomerge s':>11s} {'mergekit s':>11s} {'speed-up':>9s} {'/ floor':>8s}")
        for name in recipes:
            mk = theirs.get(name)
            print(f"{name:16s} {ours[name]:11.3f} {mk if mk else float('nan'):11.3f} "
                  f"{(mk / ours[name]) if mk else float('nan'):8.1f}x {ours[name] / floor_s:7.2f}x")
        print(f"\nTIES / evomerge task arithmetic: {ours['ties'] / ours['task_arithmetic']:.2f}x")
        print(f"extra peak memory during one materialization, in units of the largest tensor "
              f"({largest / 1e6:.0f} MB): " + ", ".join(f"{k} {v / largest:.1f}" for k, v in extra.items()))


if __name__ == "__main__":
    main()
