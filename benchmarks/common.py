"""Shared by the benchmarks: the median wall time of a call after a warm-up, a Markdown table for README, and the
results file of the per-(method, seed) benchmarks."""

from __future__ import annotations

import fcntl
import json
import os
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path


def median_seconds(fn, reps: int) -> float:
    fn()  # warm-up: first-call costs (allocation, compilation, caches) are not per-call costs
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def print_markdown_table(header: list[str], rows: list[list[str]]) -> None:
    """A Markdown table as benchmarks/README.md records them, after a blank line."""
    print("\n| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for row in rows:
        print("| " + " | ".join(row) + " |")


def spelled_out(experiment: Path) -> dict:
    """An experiment file as a dict with its presets (space, fitness) named by path read in and every task path made
    absolute (a black-box experiment's data.tasks too), so that it can be changed and written anywhere."""
    import yaml

    cfg = yaml.safe_load(experiment.read_text())
    if cfg.get("kind") == "blackbox":  # no presets; its data's task directories
        cfg["data"]["tasks"] = {t: str((experiment.parent / p).resolve()) for t, p in cfg["data"]["tasks"].items()}
        return cfg
    for key in ("space", "fitness"):
        if isinstance(cfg[key], str):
            preset = (experiment.parent / cfg[key]).resolve()
            cfg[key] = yaml.safe_load(preset.read_text())
            if key == "fitness":
                cfg[key]["tasks"] = {t: str((preset.parent / p).resolve()) for t, p in cfg[key]["tasks"].items()}
    return cfg


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def store_record(results: Path, rec: dict, methods: list[str], summarize: Callable[[list[dict]], dict],
                 command: str) -> dict:
    """Add a (method, seed) record to `results` (replacing the same method and seed; runs may write at once, hence
    the lock), recompute the summary over all records; returns it."""
    results.parent.mkdir(exist_ok=True)
    with open(results.with_suffix(".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        old = json.loads(results.read_text()) if results.is_file() else {}
        records = [r for r in old.get("records", []) if (r["method"], r["seed"]) != (rec["method"], rec["seed"])]
        records = sorted([*records, rec], key=lambda r: (r["seed"], methods.index(r["method"])))
        summary = summarize(records)
        out = {"machine": f"{cpu_name()}, {os.cpu_count()} cores", "date": time.strftime("%Y-%m-%d"),
               "command": command, "records": records, "summary": summary}
        results.write_text(json.dumps(out, indent=2) + "\n")
    return summary
