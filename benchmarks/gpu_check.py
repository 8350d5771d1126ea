"""The GPU check (≤ 8 minutes on one GPU): merge bandwidth at 7B layer shapes in bf16 against the device's copy
bandwidth, the quickstart on one Ray worker holding the GPU (per-candidate merge and evaluation times), and the
scale profile's per-candidate time. Runs on CPU with --cpu (what CI does, with --quick).

    python benchmarks/gpu_check.py                       # on a machine with a GPU
    python benchmarks/gpu_check.py --cpu --quick         # CI: small shapes, the tiny scale profile, no search

Prints one JSON line {"gpu_check": {...}} and writes it to --out.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch

from evomerge.merge import OPERATORS
from evomerge.merge.generalized import MergeParams, TensorInputs
from evomerge.merge.topk import MagnitudeIndex

# Mistral-7B's layer shapes (hidden 4096, MLP 14336, 8 KV heads of 128)
SHAPES_7B = {"q_proj": (4096, 4096), "k_proj": (1024, 4096), "gate_proj": (14336, 4096)}
SHAPES_QUICK = {"q_proj": (256, 256), "gate_proj": (896, 256)}
PARAMS = {"task_arithmetic": MergeParams(weights=(0.5, 0.3, 0.4)),
          "ties": MergeParams(weights=(0.5, 0.3, 0.4), densities=(0.5, 0.4, 0.6)),
          "dare_ties": MergeParams(weights=(0.5, 0.3, 0.4), densities=(0.5, 0.4, 0.6))}


def timed(fn, device: str, reps: int = 5) -> float:
    def sync():
        if device == "cuda":
            torch.cuda.synchronize()

    fn()
    sync()
    out = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        sync()
        out.append(time.perf_counter() - t0)
    return statistics.median(out)


def merge_bandwidth(device: str, shapes: dict) -> dict:
    """Per operator: bytes a merge must move ((K + 2) tensors) per second, over the device's copy bandwidth."""
    out = {}
    for name, shape in shapes.items():
        base = torch.randn(shape, device=device).to(torch.bfloat16)
        deltas = (0.01 * torch.randn((3, *shape), device=device)).to(torch.bfloat16)
        index = {kind: [MagnitudeIndex.build(d, kind == "desc") for d in deltas] for kind in ("desc", "asc")}
        x = TensorInputs(base=base, task_vectors=deltas, order=lambda kind, i=index: i[kind], seed=7)
        result = torch.empty_like(base)
        moved = 5 * base.numel() * 2
        src = torch.empty(moved // 4, dtype=torch.bfloat16, device=device)
        dst = torch.empty_like(src)
        copy_bw = 2 * src.numel() * 2 / timed(lambda a=src, b=dst: b.copy_(a), device)
        row = {"copy_gb_s": round(copy_bw / 1e9, 1)}
        for op, p in PARAMS.items():
            s = timed(lambda o=op, p=p, x=x, r=result: OPERATORS[o].merge(x, p, out=r), device)
            row[op] = {"seconds": float(f"{s:.4g}"), "of_copy_bandwidth": float(f"{moved / s / copy_bw:.3g}")}
        out[f"{name}{list(shape)}"] = row
        del base, deltas, src, dst, result
    return out


def quickstart_on_ray(device: str, generations: int) -> dict:
    """The quickstart's search (shortened) on one Ray worker holding the device: median merge and eval seconds."""
    import yaml

    from evomerge.runner import Runner
    from evomerge.store import RunDir

    repo = Path(__file__).resolve().parents[1]
    exp = yaml.safe_load((repo / "experiments" / "quickstart.yaml").read_text())
    exp["fitness"]["tasks"] = {k: str((repo / "experiments" / v).resolve()) for k, v in exp["fitness"]["tasks"].items()}
    exp["optimizer"]["generations"] = generations
    exp["device"] = device
    exp["baselines"] = {"enabled": False}
    exp["executor"] = {"type": "ray", "workers": 1, "gpus_per_worker": 1 if device == "cuda" else 0}
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "quickstart.yaml"
        path.write_text(yaml.safe_dump(exp))
        t0 = time.perf_counter()
        Runner(path, Path(d) / "run").run()
        wall = time.perf_counter() - t0
        store = RunDir.open(Path(d) / "run").store()
        try:
            evs = [e for e in store.evaluations("search") if e.status == "ok"]
        finally:
            store.close()
    return {"device": device, "evaluations": len(evs), "wall_seconds": round(wall, 1),
            "merge_seconds_median": round(statistics.median(e.merge_seconds for e in evs), 4),
            "eval_seconds_median": round(statistics.median(e.eval_seconds for e in evs), 4)}


def scale_candidate(device: str, profile: str) -> dict:
    """Per-candidate materialization of the scale profile on the device (task arithmetic and TIES)."""
    from transformers import AutoModelForCausalLM

    from evomerge.merge.materialize import Merger
    from evomerge.recipe import Recipe
    from evomerge.sources import SourcePool
    from evomerge.zoo.scale import MODELS, SCALE_PROFILES, build_scale

    root = build_scale(SCALE_PROFILES[profile], log=lambda *_: None)
    pool = SourcePool(root / "base", [root / m for m in MODELS[1:]], device=device)
    live = AutoModelForCausalLM.from_pretrained(root / "base", dtype=pool.dtype).to(device)
    merger = Merger(pool)
    w, dens = (0.5, 0.3, 0.4), (0.5, 0.4, 0.6)
    out = {}
    for op, groups in (("task_arithmetic", {"all": {"weights": w}}),
                       ("ties", {"all": {"weights": w, "densities": dens}})):
        r = Recipe(operator=op, groups=groups)
        out[op] = round(timed(lambda r=r: merger.materialize(r, live, check_finite=False), device, reps=3), 4)
    return {"profile": profile, "seconds": out}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--cpu", action="store_true", help="run on the CPU (CI)")
    ap.add_argument("--quick", action="store_true", help="small shapes, the tiny scale profile, no search")
    ap.add_argument("--generations", type=int, default=5)
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "gpu_check.json")
    args = ap.parse_args()
    device = "cpu" if args.cpu else "cuda"
    if device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("gpu_check: torch sees no GPU; run with --cpu to check the script on the CPU")
    t0 = time.perf_counter()
    report = {"device": torch.cuda.get_device_name() if device == "cuda" else "cpu",
              "torch": torch.__version__,
              "merge_bandwidth": merge_bandwidth(device, SHAPES_QUICK if args.quick else SHAPES_7B)}
    if not args.quick:
        report["quickstart_one_ray_worker"] = quickstart_on_ray(device, args.generations)
    report["scale_candidate"] = scale_candidate(device, "scale-tiny" if args.quick else "scale")
    report["seconds"] = round(time.perf_counter() - t0, 1)
    report["date"] = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps({"gpu_check": report}))


if __name__ == "__main__":
    main()
