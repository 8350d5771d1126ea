"""Is the quickstart's win robust to the zoo's seed? Builds the zoo and runs the quickstart search for several
seeds, and prints the held-out margin of the evolved merge over the best source and the best baseline.

    python benchmarks/zoo_seeds.py            # seeds 0 1 2 (≈4 min per seed on 2 cores)
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

import yaml
from rich.console import Console

from evomerge.config import load_experiment
from evomerge.runner import Runner
from evomerge.zoo.build import ZooSpec, build_zoo, write_task_data

REPO = Path(__file__).resolve().parents[1]


def run_seed(seed: int, tmp: Path) -> dict:
    spec = ZooSpec(seed=seed)
    zoo = build_zoo(spec, log=lambda *_: None)
    write_task_data(spec, tmp / f"tasks{seed}")
    # the quickstart's config with its presets spelled out, so that its sections can be edited here
    cfg = json.loads(load_experiment(REPO / "experiments" / "quickstart.yaml")[0].model_dump_json())
    cfg["name"], cfg["seed"] = f"quickstart-zoo-seed-{seed}", seed
    cfg["sources"] = {"base": str(zoo / "base"), "models": [str(zoo / t) for t in spec.tasks]}
    cfg["fitness"]["tasks"] = {t: str(tmp / f"tasks{seed}" / t) for t in spec.tasks}
    exp = tmp / f"exp{seed}.yaml"
    exp.write_text(yaml.safe_dump(cfg))
    return Runner(exp, tmp / f"run{seed}", console=Console(quiet=True)).run()


def main(seeds: list[int]) -> None:
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    print("seed | evolved | best source | best untuned merge | TA tuned | evolved − best source | "
          "evolved − best other")
    with tempfile.TemporaryDirectory() as d:
        for seed in seeds:
            res = run_seed(seed, Path(d))
            rows = res["rows"]
            evolved = rows[0]
            src = max((r for r in rows if r["kind"] == "source"), key=lambda r: r["average"])
            untuned = max((r for r in rows if r["kind"] == "baseline"), key=lambda r: r["average"])
            tuned = next(r for r in rows if r["kind"] == "tuned")
            other = max(rows[1:], key=lambda r: r["average"])
            print(f"{seed} | {evolved['average']:.3f} | {src['average']:.3f} ({src['label']}) | "
                  f"{untuned['average']:.3f} ({untuned['label']}) | {tuned['average']:.3f} | "
                  f"{src['evolved_minus_this']:+.3f} ± {src['evolved_minus_this_stderr']:.3f} | "
                  f"{other['evolved_minus_this']:+.3f} ± {other['evolved_minus_this_stderr']:.3f} ({other['label']})",
                  flush=True)


if __name__ == "__main__":
    main([int(s) for s in sys.argv[1:]] or [0, 1, 2])
