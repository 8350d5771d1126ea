"""Per-family held-out tables: for each architecture of evomerge.zoo.families, a base and one expert per skill (the
'bench' profile: add, cipher, reverse) built locally in that family's tokenizer convention, then a real CLI search
(per-layer task arithmetic, CMA-ES) on every task; the held-out split's evolved row against the best source and the
best baseline.

    EVOMERGE_HOME=/tmp/families-home python benchmarks/families.py [--families llama gpt2 ...] [--generations 15]

Writes benchmarks/results/families.json and prints the Markdown table recorded in benchmarks/README.md. Models and
numbers are deterministic in the seed (CPU); the wall times depend on the machine and its load.

`--operator dare_ties --scale auto|false --out FILE` runs the same families through per-layer DARE-TIES instead
(normalized, as benchmarks/dare_ties_scale.yaml), for the scale gene's check against task arithmetic with a tuned
weight ("TA tuned" is among every run's baselines).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import torch
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import print_markdown_table
from evomerge.zoo.build import build_zoo, evomerge_home, family_spec, write_task_data
from evomerge.zoo.families import FAMILIES

OUT = Path(__file__).resolve().parent / "results" / "families.json"


def space(operator: str, scale: str) -> dict:
    if operator == "task_arithmetic":
        return {"type": "layer_weights", "operator": operator, "granularity": "layer"}
    # the settings of benchmarks/dare_ties_scale.yaml
    return {"type": "layer_weights", "operator": operator, "granularity": "layer", "weight_range": [0.0, 1.0],
            "density_range": [0.1, 1.0], "normalize": True, "scale": scale if scale == "auto" else scale == "true"}


def run_family(family: str, profile: str, generations: int, work: Path, operator: str = "task_arithmetic",
               scale: str = "auto", threads: int = 2) -> dict:
    spec = family_spec(family, profile)
    t0 = time.perf_counter()
    zoo = build_zoo(spec, evomerge_home() / "families" / spec.fingerprint(), log=lambda *_: None)
    built = time.perf_counter() - t0
    tasks = work / family / "tasks"
    write_task_data(spec, tasks)
    exp = work / family / "exp.yaml"
    exp.write_text(yaml.safe_dump({
        "name": f"family-{family}", "seed": 0, "threads": threads,
        "sources": {"base": str(zoo / "base"), "models": [str(zoo / t) for t in spec.tasks]},
        "space": space(operator, scale),
        "optimizer": {"type": "cma", "generations": generations},
        "fitness": {"type": "native", "tasks": {t: str(tasks / t) for t in spec.tasks}},
    }))
    run_dir = work / family / f"run-{operator}-{scale}"
    t1 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "evomerge.cli", "run", str(exp), "--run-dir", str(run_dir)], check=True,
                   stdout=subprocess.DEVNULL,
                   env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])})
    searched = time.perf_counter() - t1
    res = json.loads((run_dir / "results.json").read_text())
    rows = res["rows"]
    evolved = rows[0]
    best_source = max((r for r in rows if r["kind"] == "source"), key=lambda r: r["average"])
    best_baseline = max((r for r in rows if r["kind"] in ("base", "baseline", "tuned")), key=lambda r: r["average"])
    return {"family": family, "convention": spec.convention or FAMILIES[family].convention,
            "architecture": FAMILIES[family].model, "heldout_examples": res["examples"],
            "evolved": {"label": evolved["label"], "average": evolved["average"], "per_task": evolved["per_task"]},
            "best_source": {"label": best_source["label"], "average": best_source["average"],
                            "evolved_minus_this": best_source["evolved_minus_this"],
                            "stderr": best_source["evolved_minus_this_stderr"]},
            "best_baseline": {"label": best_baseline["label"], "average": best_baseline["average"],
                              "evolved_minus_this": best_baseline["evolved_minus_this"],
                              "stderr": best_baseline["evolved_minus_this_stderr"]},
            "rows": [{"label": r["label"], "kind": r["kind"], "average": r["average"],
                      "evolved_minus_this": r["evolved_minus_this"], "stderr": r["evolved_minus_this_stderr"]}
                     for r in rows],
            "warnings": res.get("warnings", []), "search_evaluations": res["search"]["evaluations"],
            "build_s": round(built, 1), "search_s": round(searched, 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--families", nargs="*", default=sorted(FAMILIES))
    ap.add_argument("--profile", default="bench")
    ap.add_argument("--generations", type=int, default=15)
    ap.add_argument("--work", type=Path, default=Path("/tmp/evomerge-families"))
    ap.add_argument("--operator", choices=["task_arithmetic", "dare_ties"], default="task_arithmetic")
    ap.add_argument("--scale", choices=["auto", "true", "false"], default="auto", help="dare_ties: space.scale")
    ap.add_argument("--threads", type=int, default=2, help="torch threads of the build and of each run")
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    load_start = os.getloadavg()  # the machine's load (1, 5, 15 min) around the run: the wall times depend on it
    results = []
    for fam in args.families:
        r = run_family(fam, args.profile, args.generations, args.work, args.operator, args.scale, args.threads)
        results.append(r)
        print(f"{fam}: evolved {r['evolved']['average']:.3f}, best source {r['best_source']['average']:.3f}, "
              f"best baseline {r['best_baseline']['average']:.3f}", flush=True)
    args.out.parent.mkdir(exist_ok=True)
    info = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").is_file() else ""
    cpu = next((line.split(":", 1)[1].strip() for line in info.splitlines() if line.startswith("model name")),
               platform.processor())
    args.out.write_text(json.dumps({"command": "python " + " ".join(sys.argv), "machine": cpu,
                                    "date": time.strftime("%Y-%m-%d"), "profile": args.profile,
                                    "generations": args.generations, "operator": args.operator,
                                    "scale": args.scale, "threads": args.threads,
                                    "loadavg_start": load_start, "loadavg_end": os.getloadavg(),
                                    "families": results}, indent=2))
    print_markdown_table(
        ["family", "tokenizer", "evolved (held-out)", "best source", "evolved − source", "best baseline",
         "evolved − baseline"],
        [[r["family"], r["convention"], f"{r['evolved']['average']:.3f}",
          f"{r['best_source']['label']} {r['best_source']['average']:.3f}",
          f"{r['best_source']['evolved_minus_this']:+.3f} ± {r['best_source']['stderr']:.3f}",
          f"{r['best_baseline']['label']} {r['best_baseline']['average']:.3f}",
          f"{r['best_baseline']['evolved_minus_this']:+.3f} ± {r['best_baseline']['stderr']:.3f}"] for r in results])


if __name__ == "__main__":
    main()
