"""Real-model scale on CPU: the `scale` profile (Llama-shaped, ~1B parameters, bf16, sharded; base + 3 sparse
low-rank experts) merged, scored, exported and reloaded, with peak memory against the memory plan.

    python benchmarks/scale.py                          # the 1B profile (7.6 GB on disk, ~11 GB of RAM)
    python benchmarks/scale.py --profile scale-tiny     # seconds: what CI runs (tests/test_scale_benchmark.py)

Figures: per-candidate materialization (task arithmetic, TIES, DARE-TIES) over this run's copy-bandwidth floor
((K + 2) model sizes moved at the bandwidth of a large torch copy, measured here); peak RSS of the in-memory
phase over the plan's prediction for it; the memory-mapped layout's task-arithmetic time over the in-memory one;
seconds from nothing loaded to the first scored example; export (sharded) and reload; mergekit parity on a sample
of tensors. Ends with one JSON line {"summary": {...}}, also written to --out.
"""

from __future__ import annotations

import argparse
import gc
import json
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from common import median_seconds  # benchmarks/common.py (scripts run from benchmarks/)
from transformers import AutoModelForCausalLM, AutoTokenizer

from evomerge.fitness.native import encode_teacher_forced, exact_match_teacher_forced
from evomerge.merge.materialize import Merger
from evomerge.merge.memory import plan_memory, runtime_bytes
from evomerge.recipe import Recipe
from evomerge.sources import SourcePool
from evomerge.zoo.scale import MODELS, SCALE_PROFILES, build_scale

W, D = (0.5, 0.3, 0.4), (0.5, 0.4, 0.6)
RECIPES = {
    "task_arithmetic": Recipe(operator="task_arithmetic", groups={"all": {"weights": W}}),
    "ties": Recipe(operator="ties", groups={"all": {"weights": W, "densities": D}}),
    "dare_ties": Recipe(operator="dare_ties", groups={"all": {"weights": W, "densities": D}}),
}
BATCH, EXAMPLES = 8, [{"prompt": "12+34=", "answer": "46"}] * 8


def peak_rss() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


def copy_bandwidth(nbytes: int = 512 * 2**20) -> float:
    """Bytes moved per second (read + write) by a large torch copy, median of 5."""
    src = torch.ones(nbytes // 2, dtype=torch.bfloat16)
    dst = torch.empty_like(src)
    return 2 * nbytes / median_seconds(lambda: dst.copy_(src), 5)


def mergekit_parity(pool: SourcePool, names: list[str]) -> dict[str, float]:
    """max |evomerge − mergekit| over a sample of tensors, per operator (mergekit sorting stably, as evomerge)."""
    from mergekit.merge_methods.api import merge_tensors

    merger = Merger(pool)
    sort, argsort = torch.sort, torch.argsort
    torch.sort = lambda *a, **k: sort(*a, **{**k, "stable": True})
    torch.argsort = lambda *a, **k: argsort(*a, **{**k, "stable": True})
    try:
        out = {}
        for op in ("task_arithmetic", "ties"):
            worst = 0.0
            for name in names:
                base = pool.base[name]
                models = [pool.source(name, i) for i in range(pool.n_sources)]  # the experts' own tensors
                params = {"weight": list(W), **({"density": list(D)} if op == "ties" else {})}
                ref = merge_tensors([base, *models], op, base_index=0, parameters=params)
                ours = merger.merged_tensor(RECIPES[op], name)
                worst = max(worst, (ours.float() - ref.float()).abs().max().item())
            out[op] = worst
        return out
    finally:
        torch.sort, torch.argsort = sort, argsort


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--profile", default="scale", choices=sorted(SCALE_PROFILES))
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "scale.json")
    args = ap.parse_args()
    spec = SCALE_PROFILES[args.profile]
    t0 = time.perf_counter()
    root = build_scale(spec, log=lambda m: print(f"build: {m}", flush=True))
    build_s = time.perf_counter() - t0
    base, experts = root / "base", [root / m for m in MODELS[1:]]
    k = len(experts)
    runtime = runtime_bytes(base)
    plan = plan_memory(base, experts, operators=set(RECIPES), batch=BATCH, seq=16, capacity=10**15,
                       runtime=runtime, threads=torch.get_num_threads())
    predicted = plan.total("in memory")
    print(plan.render(), flush=True)

    # -- in memory: load, first scored example, per-candidate materialization --------------------------------
    t_start = time.perf_counter()
    pool = SourcePool(base, experts)
    live = AutoModelForCausalLM.from_pretrained(base, dtype=pool.dtype).eval()
    tok = AutoTokenizer.from_pretrained(base)
    merger = Merger(pool)
    enc = encode_teacher_forced(tok, EXAMPLES)
    with torch.no_grad():
        merger.materialize(RECIPES["task_arithmetic"], live, check_finite=False)
        exact_match_teacher_forced(live, enc, batch_size=BATCH)
    first_scored_s = time.perf_counter() - t_start
    model_bytes = sum(v.numel() * v.element_size() for v in pool.base.values())
    bandwidth = copy_bandwidth()
    floor_s = (k + 2) * model_bytes / bandwidth
    times = {}
    for name, recipe in RECIPES.items():
        merger.materialize(recipe, live, check_finite=False)  # warm-up: compiles, builds the magnitude samples
        times[name] = median_seconds(lambda r=recipe, m=merger, lv=live: m.materialize(r, lv, check_finite=False),
                                     args.reps)
        print(f"{name}: {times[name]:.3f} s per candidate ({times[name] / floor_s:.2f}x the floor)", flush=True)
    with torch.no_grad():
        exact_match_teacher_forced(live, enc, batch_size=BATCH)
    rss = peak_rss()
    sample = [n for n in pool.base if n.endswith(("layers.0.self_attn.k_proj.weight", "layers.1.mlp.down_proj.weight",
                                                 "model.norm.weight"))]
    parity = mergekit_parity(pool, sample)

    # -- export (sharded) and reload ---------------------------------------------------------------------------
    merger.materialize(RECIPES["ties"], live, check_finite=False)
    with tempfile.TemporaryDirectory() as d:
        t1 = time.perf_counter()
        live.save_pretrained(d, max_shard_size=spec.shard_bytes)
        export_s = time.perf_counter() - t1
        shards = len(list(Path(d).glob("*.safetensors")))
        expected = {n: p.detach().clone() for n, p in list(live.named_parameters())[:4]}
        del live, merger, pool
        gc.collect()
        t1 = time.perf_counter()
        again = AutoModelForCausalLM.from_pretrained(d, dtype=torch.bfloat16)
        reload_s = time.perf_counter() - t1
        state = dict(again.named_parameters())
        reload_ok = shards > 1 and all(torch.equal(state[n], v) for n, v in expected.items())
        del again, state
        gc.collect()

    # -- memory-mapped: every tensor of every source read from the files for each merge --------------------------
    stream_pool = SourcePool(base, experts, stream=True)
    live = AutoModelForCausalLM.from_pretrained(base, dtype=stream_pool.dtype).eval()
    sm = Merger(stream_pool)
    stream_s = median_seconds(lambda: sm.materialize(RECIPES["task_arithmetic"], live, check_finite=False),
                              max(1, args.reps - 1))

    params = sum(v.numel() for v in stream_pool.base.values())
    summary = {
        "params": params,
        "ta_over_floor": round(times["task_arithmetic"] / floor_s, 3),
        "ties_over_floor": round(times["ties"] / floor_s, 3),
        "dare_ties_over_floor": round(times["dare_ties"] / floor_s, 3),
        "peak_rss_over_plan": round(rss / predicted, 3),
        "stream_over_memory": round(stream_s / times["task_arithmetic"], 3),
        "export_reload_ok": bool(reload_ok),
    }
    details = {
        "profile": args.profile, "seconds": {**{k_: round(v, 3) for k_, v in times.items()},
                                             "floor": round(floor_s, 3), "stream_task_arithmetic": round(stream_s, 3),
                                             "first_scored_example": round(first_scored_s, 2),
                                             "export": round(export_s, 2), "reload": round(reload_s, 2),
                                             "build_or_cache": round(build_s, 1)},
        "copy_bandwidth_gb_s": round(bandwidth / 1e9, 2), "peak_rss_gb": round(rss / 1e9, 3),
        "plan_in_memory_gb": round(predicted / 1e9, 3), "export_shards": shards,
        "mergekit_max_abs_diff": parity, "threads": torch.get_num_threads(),
        "machine": _machine(), "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "command": "python " + " ".join(sys.argv),
    }
    line = json.dumps({"summary": summary})
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"summary": summary, "details": details}, indent=2) + "\n")
    print(json.dumps(details, indent=2))
    print(line)


def _machine() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout
        return next(ln.split(":", 1)[1].strip() for ln in out.splitlines() if ln.startswith("Model name"))
    except (OSError, StopIteration):
        return platform.processor()


if __name__ == "__main__":
    main()
