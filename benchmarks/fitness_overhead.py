"""Where a candidate's scoring time goes: the share spent outside the model's forward passes (task setup, request
building, tokenization, bookkeeping) for the native scorer and for the lm-eval path, on the zoo's search split.

    python benchmarks/fitness_overhead.py --repeats 5

Forward time is measured by wrapping the model's `forward`; everything else in `score()` is overhead. Prints a
JSON line per path and a Markdown table. Target: overhead < 10% of a candidate's scoring time.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

os.environ.setdefault("TQDM_DISABLE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import torch  # noqa: E402
from common import print_markdown_table  # noqa: E402 — benchmarks/common.py (scripts run from benchmarks/)
from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: E402

from evomerge.config import FitnessConfig  # noqa: E402
from evomerge.fitness.lm_eval_scorer import load_task_config  # noqa: E402
from evomerge.fitness import make_scorer  # noqa: E402
from evomerge.fitness.tasks import load_split  # noqa: E402
from evomerge.zoo.build import PROFILES, build_zoo  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
TASKS = ("add", "cipher", "reverse")


def timed_forward(model) -> dict:
    """Replace model.forward by a timing wrapper; returns the accumulator."""
    acc = {"seconds": 0.0, "calls": 0}
    inner = model.forward

    def forward(*args, **kwargs):
        t0 = time.perf_counter()
        out = inner(*args, **kwargs)
        acc["seconds"] += time.perf_counter() - t0
        acc["calls"] += 1
        return out

    model.forward = forward
    return acc


def measure(name: str, scorer, model, acc: dict, repeats: int) -> dict:
    scorer.score(model)  # warm-up: first-call costs (lazy wrappers, allocator) are not per-candidate costs
    shares, totals = [], []
    for _ in range(repeats):
        acc["seconds"], acc["calls"] = 0.0, 0
        t0 = time.perf_counter()
        scorer.score(model)
        total = time.perf_counter() - t0
        shares.append(1 - acc["seconds"] / total)
        totals.append(total)
    return {"path": name, "seconds_per_candidate": statistics.median(totals), "forward_calls": acc["calls"],
            "overhead_share": statistics.median(shares)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    zoo = build_zoo(PROFILES["default"], log=lambda *_: None)
    tok = AutoTokenizer.from_pretrained(zoo / "add")
    model = AutoModelForCausalLM.from_pretrained(zoo / "add").eval()
    acc = timed_forward(model)
    examples = {t: load_split(REPO / "fitness" / "data" / "zoo" / t, "search", t) for t in TASKS}
    files = {t: str(REPO / "fitness" / "lm_eval" / f"zoo_{t}.yaml") for t in TASKS}
    configs = {t: load_task_config(Path(files[t]), "search", t) for t in TASKS}
    paths = [
        ("native teacher-forced", make_scorer(tok, examples, FitnessConfig(tasks=files), REPO)),
        ("native generate", make_scorer(tok, examples, FitnessConfig(tasks=files, mode="generate"), REPO)),
        ("lm-eval generate_until", make_scorer(tok, configs, FitnessConfig(type="lm_eval", tasks=files), REPO)),
    ]
    rows = [measure(name, scorer, model, acc, args.repeats) for name, scorer in paths]
    for r in rows:
        print(json.dumps(r))
    print_markdown_table(["path", "seconds per candidate (900 examples)", "forward calls", "overhead share"],
                         [[r["path"], f"{r['seconds_per_candidate']:.3f}", str(r["forward_calls"]),
                           f"{100 * r['overhead_share']:.1f}%"] for r in rows])


if __name__ == "__main__":
    main()
