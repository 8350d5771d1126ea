"""The M2N2 digits reproduction (`evomerge.m2n2.digits`) as a run of the lifecycle: each (variant, seed) is one
stored evaluation, so a stopped run continues with the first one not finished."""

from __future__ import annotations

import json
import platform
import time
from pathlib import Path

import torch

from evomerge.errors import read_mapping
from evomerge.m2n2.digits import (
    KIND,
    DigitsConfig,
    correct,
    load_config,
    load_digits_split,
    plot,
    pretrained_pair,
    run_variant,
    summarize,
)
from evomerge.run.lifecycle import RunLifecycle, RunSettings
from evomerge.store import Evaluation, RunStore

RECORDS_KEY = "digits_runs"  # store meta: {label: one (variant, seed)'s record}


class DigitsRunner(RunLifecycle):
    """The reproduction as a run: each (variant, seed) is one stored evaluation (objective: its final test accuracy)
    and its record (curve, timing) is kept in the store's meta, so a stopped run continues with the first (variant,
    seed) not finished; one cut short is run again from its start (it is deterministic in its seed)."""

    kind = KIND
    config_model = DigitsConfig
    defining = ("kind", "runs", "base_seed", "popsize", "log_every", "random", "variants")

    @classmethod
    def load(cls, path: Path) -> tuple[DigitsConfig, Path]:
        return load_config(read_mapping(path, "experiment file"), str(path)), path.parent.resolve()

    def settings(self) -> RunSettings:
        units = len(self.cfg.variants) * self.cfg.runs
        return RunSettings(self.cfg.name, "m2n2", units, "flat",
                           f"MLP 64-256-10 on scikit-learn digits, {len(self.cfg.variants)} variants × "
                           f"{self.cfg.runs} seeds (one evaluation each)",
                           "final test accuracy of the best-train member", ("test", "train"), "train", "test")

    def record(self, store: RunStore) -> None:
        units = len(self.cfg.variants) * self.cfg.runs
        store.set_meta("search_total", str(units))

    def execute(self, store: RunStore, snapshot) -> dict:
        t0 = time.perf_counter()
        results = run_digits(self.cfg, self.run_dir, store, self.events, log=self.console.print)
        for key, s in results["summary"].items():
            self.console.print(f"{key:28s} test {s['test_mean']:.4f} ± {s['test_std']:.4f} over {s['seeds']} seeds "
                               f"at {s['forward_passes']} passes ({s['passes_per_s_mean']} passes/s)")
        self.console.print(f"{time.perf_counter() - t0:.0f} s; curves in {self.run_dir / 'curves.png'}")
        return results


def _unit(store: RunStore, vi: int, r: int, label: str) -> dict | None:
    """The stored record of one (variant, seed), if it finished."""
    ev = store.get("search", vi, r, label)
    records = json.loads(store.get_meta(RECORDS_KEY) or "{}")
    return records.get(label) if ev is not None and ev.status == "ok" else None


def run_digits(cfg: DigitsConfig, out: Path, store: RunStore, events, log=print) -> dict:
    """Every variant × every seed (those the store holds are reused, not run again); returns the body of
    results.json (curves, summary, one row per variant) and writes curves.png under `out`."""
    torch.set_num_threads(cfg.threads)
    data = load_digits_split()
    pretrained = None
    if any(v.init == "pretrained" for v in cfg.variants):
        pretrained = pretrained_pair(data[0])
        accs = [float(correct(p, *data[1]).mean()) for p in pretrained]
        log(f"pre-trained half-digit models: test accuracy {accs[0]:.3f} (0-4), {accs[1]:.3f} (5-9)")
    runs = []
    for vi, v in enumerate(cfg.variants):
        for r in range(cfg.runs):
            seed = cfg.base_seed + r
            label = f"{v.key}/seed{seed}"
            res = _unit(store, vi, r, label)
            if res is None:
                res = run_variant(v, seed, cfg.popsize, cfg.log_every, data, pretrained, cfg.random)
                # the record first, the evaluation (the mark of a finished unit) last: a kill in between re-runs it
                records = json.loads(store.get_meta(RECORDS_KEY) or "{}")
                store.set_meta(RECORDS_KEY, json.dumps({**records, label: res}))
                store.add(Evaluation("search", vi, r, label, "train", "ok", objective=res["test_acc"],
                                     per_task={"test": res["test_acc"], "train": res["train_acc"]},
                                     eval_seconds=res["wall_s"], worker="local"))
                events.emit("evaluation", kind="search", generation=vi, idx=r, label=label, status="ok",
                            objective=res["test_acc"], eval_s=res["wall_s"], worker="local")
                log(f"{v.key} seed {seed}: test {res['test_acc']:.4f} train {res['train_acc']:.4f} "
                    f"({res['wall_s']} s, {res['passes_per_s']} passes/s)")
            runs.append(res)
    summary = summarize(runs)
    # the comparison: accuracies only (the timings, which differ from run to run, stay in `summary`)
    rows = sorted(({"label": key, **{k: v for k, v in s.items() if not k.endswith("_mean") or k == "test_mean"}}
                   for key, s in summary.items()), key=lambda row: -row["test_mean"])
    results = {"best_candidate": rows[0]["label"], "rows": rows, "config": cfg.model_dump(),
               "machine": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} torch thread(s)",
               "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "runs": runs, "summary": summary}
    plot(results, out / "curves.png")
    return results
