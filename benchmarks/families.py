"""Per-family held-out tables: for each architecture of evomerge.zoo.families, a base and two experts (add,
reverse) built locally in that family's tokenizer convention, then a real CLI search (per-layer task arithmetic,
CMA-ES) on both tasks; the held-out split's evolved row against the best source and the best baseline.

    EVOMERGE_HOME=/tmp/families-home python benchmarks/families.py [--families llama gpt2 ...] [--generations 8]

Writes benchmarks/results/families.json and prints the Markdown table recorded in benchmarks/README.md. Models and
numbers are deterministic in the seed (CPU); the wall times depend on the machine and its load.
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

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import print_markdown_table
from evomerge.zoo.build import build_zoo, evomerge_home, write_task_data
from evomerge.zoo.families import FAMILIES, family_spec

OUT = Path(__file__).resolve().parent / "results" / "families.json"


def run_family(family: str, profile: str, generations: int, work: Path) -> dict:
    spec = family_spec(family, profile)
    t0 = time.perf_counter()
    zoo = build_zoo(spec, evomerge_home() / "families" / spec.fingerprint(), log=lambda *_: None)
    built = time.perf_counter() - t0
    tasks = work / family / "tasks"
    write_task_data(spec, tasks)
    exp = work / family / "exp.yaml"
    exp.write_text(yaml.safe_dump({
        "name": f"family-{family}", "seed": 0, "threads": 2,
        "sources": {"base": str(zoo / "base"), "models": [str(zoo / "add"), str(zoo / "reverse")]},
        "space": {"type": "layer_weights", "operator": "task_arithmetic", "granularity": "layer"},
        "optimizer": {"type": "cma", "generations": generations},
        "fitness": {"type": "native", "tasks": {t: str(tasks / t) for t in ("add", "reverse")}},
    }))
    run_dir = work / family / "run"
    t1 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "evomerge.cli", "run", str(exp), "--run-dir", str(run_dir)], check=True,
                   stdout=subprocess.DEVNULL, env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])})
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
            "warnings": res.get("warnings", []), "search_evaluations": res["search"]["evaluations"],
            "build_s": round(built, 1), "search_s": round(searched, 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--families", nargs="*", default=sorted(FAMILIES))
    ap.add_argument("--profile", default="bench")
    ap.add_argument("--generations", type=int, default=8)
    ap.add_argument("--work", type=Path, default=Path("/tmp/evomerge-families"))
    args = ap.parse_args()
    results = []
    for fam in args.families:
        r = run_family(fam, args.profile, args.generations, args.work)
        results.append(r)
        print(f"{fam}: evolved {r['evolved']['average']:.3f}, best source {r['best_source']['average']:.3f}, "
              f"best baseline {r['best_baseline']['average']:.3f}", flush=True)
    OUT.parent.mkdir(exist_ok=True)
    info = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").is_file() else ""
    cpu = next((line.split(":", 1)[1].strip() for line in info.splitlines() if line.startswith("model name")),
               platform.processor())
    OUT.write_text(json.dumps({"command": "python " + " ".join(sys.argv), "machine": cpu,
                               "date": time.strftime("%Y-%m-%d"), "profile": args.profile,
                               "generations": args.generations, "families": results}, indent=2))
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
