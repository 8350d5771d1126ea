"""What a run is doing: progress, best so far, failures, throughput and ETA — read without touching the run."""

from __future__ import annotations

import json
import time
from collections import Counter
from pathlib import Path

from rich.table import Table

from evomerge.config import ExperimentConfig
from evomerge.store import RunDir, read_events
from evomerge.store.rundir import EVENTS_FILE


def _throughput(events: list[dict]) -> tuple[float | None, float]:
    """(evaluations per hour over the time the run was live, seconds live). Each `run_started` opens a session
    that lasts until its last evaluation; time between sessions (the run was stopped) does not count."""
    live, count, start, last = 0.0, 0, None, None
    for e in events:
        if e["event"] == "run_started":
            if start is not None and last is not None:
                live += last - start
            start, last = e["t"], None
        elif e["event"] == "evaluation" and e.get("worker") != "cache" and start is not None:
            count, last = count + 1, e["t"]
    if start is not None and last is not None:
        live += last - start
    return (count / live * 3600 if live > 0 else None), live


def _name_and_generations(store) -> tuple[str, int]:
    text = store.get_meta("config") or "{}"
    if store.get_meta("kind") == "blackbox":  # CMA-ES stages over a merge service (evomerge.blackbox)
        raw = json.loads(text)
        st = raw["stages"]
        budgets = [st["denoise_budget"], st["scale_budget"]] + [st["scale_budget"]] * len(raw["ablations"])
        return raw["name"], sum(b // st["popsize"] for b in budgets)
    cfg = ExperimentConfig.model_validate_json(text)
    return cfg.name, cfg.optimizer.generations


def run_status(path: Path) -> dict:
    rundir = RunDir.open(path)
    store = rundir.store()
    try:
        name, generations = _name_and_generations(store)
        blackbox = store.get_meta("kind") == "blackbox"
        search = store.evaluations("search")
        best = store.best("search")
        snap = store.last_snapshot()
        finished = store.get_meta("finished")
        heldout = len(store.evaluations("heldout"))
        total = store.get_meta("search_total")
        workers = json.loads(store.get_meta("workers") or "[]")
    finally:
        store.close()
    pid = rundir.running_pid()
    told = (snap.generation + (snap.phase == "told")) if snap else 0
    if blackbox:  # a black-box run keeps no snapshot: its events count the generations
        told = len({(e.get("phase"), e.get("generation")) for e in read_events(rundir.path / EVENTS_FILE)
                    if e["event"] == "generation"})  # distinct: a resumed run replays its generations
    failed = [e for e in search if e.status != "ok"]
    rate, live = _throughput(read_events(rundir.path / EVENTS_FILE))
    total = None if total is None else int(total)
    remaining = None if total is None else max(total - len(search), 0)
    return {
        "run_dir": str(rundir.path), "name": name, "run_id": rundir.run_id, "store": rundir.url,
        "state": "running" if pid else ("finished" if finished else "stopped"), "pid": pid,
        "generations": {"done": told, "total": generations},
        "evaluations": {"done": len(search), "total": total, "failed": len(failed), "heldout": heldout},
        "failure_reasons": Counter(e.error.splitlines()[0] for e in failed).most_common(3),
        "best": None if best is None else {"label": best.label, "objective": best.objective,
                                            "per_task": best.per_task},
        "evaluations_per_hour": rate, "live_seconds": live,
        "eta_seconds": None if not rate or remaining is None or finished else remaining / rate * 3600,
        "workers": workers,
    }


def _hms(seconds: float | None) -> str:
    if seconds is None:
        return "–"
    seconds = int(seconds)
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m{seconds % 60:02d}s" if seconds >= 3600 else \
        f"{seconds // 60}m{seconds % 60:02d}s"


def render_status(s: dict) -> Table:
    ev, gen, best = s["evaluations"], s["generations"], s["best"]
    table = Table(title=f"{s['name']} ({s['run_dir']})", show_header=False)
    table.add_column(style="bold")
    table.add_column()
    state = s["state"] + (f" (pid {s['pid']})" if s["pid"] else "")
    table.add_row("state", state)
    table.add_row("generation", f"{gen['done']}/{gen['total']}")
    table.add_row("evaluations", f"{ev['done']}/{ev['total'] or '?'} search, {ev['failed']} failed, "
                                 f"{ev['heldout']} held-out")
    for reason, n in s["failure_reasons"]:
        table.add_row("  failure", f"{n}× {reason}")
    table.add_row("best so far", "–" if best is None else
                  f"{best['objective']:.4f} ({best['label']}) " +
                  " ".join(f"{t}={v:.3f}" for t, v in best["per_task"].items()))
    rate = s["evaluations_per_hour"]
    table.add_row("throughput", "–" if rate is None else f"{rate:.0f} evaluations/hour over {_hms(s['live_seconds'])} "
                                                         "live")
    table.add_row("search ETA", _hms(s["eta_seconds"]) if s["state"] != "finished" else "done")
    table.add_row("store", s["store"])
    for w in s["workers"]:
        util = "–" if w["utilization"] is None else f"{100 * w['utilization']:.0f}% busy"
        rate = "" if not w["evaluations_per_hour"] else f", {w['evaluations_per_hour']:.0f}/hour"
        table.add_row(f"  {w['name']}", f"{w['jobs']} jobs ({w['failed']} failed), merge {w['merge_s']:.1f} s, "
                                        f"evaluation {w['eval_s']:.1f} s, idle {w['idle_s']:.1f} s, {util}{rate}; "
                                        f"{w['device']} on {w['host']} pid {w['pid']}"
                                        + ("" if w["alive"] else " (stopped)"))
    return table


def list_runs(folder: Path) -> list[dict]:
    """Every run directory directly under `folder`; one that cannot be read is listed with its error."""
    out = []
    for d in sorted(p for p in Path(folder).iterdir() if RunDir.exists(p)):
        try:
            out.append(run_status(d))
        except Exception as e:  # noqa: BLE001 — one broken run must not hide the others
            out.append({"run_dir": str(d), "error": str(e).splitlines()[0]})
    return out


def render_runs(runs: list[dict], folder: Path) -> Table:
    table = Table(title=f"runs in {folder}")
    for col in ("run", "state", "generation", "evaluations", "failed", "best", "updated"):
        table.add_column(col, justify="right" if col in ("evaluations", "failed", "best") else "left")
    for r in runs:
        if "error" in r:
            table.add_row(Path(r["run_dir"]).name, f"[red]unreadable: {r['error']}[/]", "", "", "", "", "")
            continue
        events = Path(r["run_dir"]) / EVENTS_FILE
        updated = time.strftime("%Y-%m-%d %H:%M", time.localtime(events.stat().st_mtime)) if events.exists() else ""
        ev, best = r["evaluations"], r["best"]
        table.add_row(Path(r["run_dir"]).name, r["state"], f"{r['generations']['done']}/{r['generations']['total']}",
                      str(ev["done"]), str(ev["failed"]), "–" if best is None else f"{best['objective']:.4f}", updated)
    return table



def watch_status(path: Path, console, every: float = 2.0) -> dict:
    """The status table kept on screen and refreshed every `every` seconds until the run is finished."""
    from rich.live import Live

    s = run_status(path)
    with Live(render_status(s), console=console, refresh_per_second=4, transient=False) as live:
        while s["state"] != "finished":
            time.sleep(every)
            s = run_status(path)
            live.update(render_status(s))
    return s
