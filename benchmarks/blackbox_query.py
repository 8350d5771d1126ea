"""What one black-box query costs, and how much of it is the service boundary (HTTP, JSON, validation, auth).

    python benchmarks/blackbox_query.py --repeats 30

Starts `evomerge serve` on loopback over the zoo's base and LoRA repository (built on first use) and times, for the
same random (α, β) merges and the same 48 validation examples (16 per zoo task): the in-process merge (ΔW of all
adapters), the in-process scoring (one teacher-forced pass), and the whole query through the client over HTTP.
Prints a JSON line and a Markdown table; the overhead ratio compares figures taken in the same run.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402

from evomerge.blackbox.client import MergeClient  # noqa: E402
from evomerge.blackbox.launch import local_service  # noqa: E402
from evomerge.blackbox.lora_merge import (LoraRepository, ModelPool, blackbox_deltas, encode,  # noqa: E402
                                          score_examples)
from evomerge.fitness.tasks import load_split  # noqa: E402
from evomerge.zoo.build import PROFILES, build_zoo  # noqa: E402
from evomerge.zoo.lora import LORA_PROFILES, build_lora_repo  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=30)
    ap.add_argument("--examples", type=int, default=16, help="validation examples per task")
    args = ap.parse_args()
    torch.set_num_threads(1)
    base = build_zoo(PROFILES["default"]) / "base"
    repo_dir = build_lora_repo(LORA_PROFILES["default"])
    examples = [e for t in ("add", "cipher", "reverse")
                for e in load_split(REPO / "fitness" / "data" / "zoo" / t, "search", t)[: args.examples]]
    repo = LoraRepository(repo_dir)
    n = len(repo)
    pool = ModelPool(base, list(repo.modules))
    enc = encode(pool.tokenizer, examples)
    rng = np.random.default_rng(0)
    merges = [(rng.uniform(0, 1, n), rng.uniform(-1.5, 1.5, n)) for _ in range(args.repeats)]
    merge_s, score_s, http_s = [], [], []
    log = Path("/tmp") / f"blackbox_query_service_{os.getpid()}.log"
    with local_service(base, repo_dir, log) as (url, token), MergeClient(url, token) as client:
        client.evaluate(*merges[0], examples)  # warm-up
        for a, b in merges:  # interleaved, so that both sides see the same machine load
            t0 = time.perf_counter()
            d = blackbox_deltas(repo, a, b)
            t1 = time.perf_counter()
            with pool.merged(d) as model:
                score_examples(model, enc)
            t2 = time.perf_counter()
            client.evaluate(a, b, examples)
            merge_s.append(t1 - t0)
            score_s.append(t2 - t1)
            http_s.append(time.perf_counter() - t2)
    med = {k: statistics.median(v) for k, v in (("merge", merge_s), ("score", score_s), ("query", http_s))}
    overhead = 1 - (med["merge"] + med["score"]) / med["query"]
    print(json.dumps({"adapters": n, "examples": len(examples), "repeats": args.repeats,
                      **{f"{k}_ms": round(v * 1000, 1) for k, v in med.items()}, "boundary_share": round(overhead, 3)}))
    print("| figure | median |\n|---|---|")
    print(f"| merge ΔW of {n} adapters (in process) | {med['merge'] * 1000:.1f} ms |")
    print(f"| score {len(examples)} examples (in process) | {med['score'] * 1000:.1f} ms |")
    print(f"| whole query over HTTP (client → service → client) | {med['query'] * 1000:.1f} ms |")
    print(f"| share of a query spent outside merge + score | {overhead:.1%} |")


if __name__ == "__main__":
    main()
