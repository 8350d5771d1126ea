"""Kill a run with SIGKILL at random moments, resume it each time, and check it ends exactly where an uninterrupted
run ends: the same evaluation sequence, the same best recipe, the same results, no evaluation lost or computed twice.

    python scripts/kill_resume.py experiments/quickstart.yaml --kills 5 --workdir /tmp/kill-resume

`--signal TERM --signal HUP` stops it with those signals instead, in turn (what a cluster scheduler or a closed
terminal sends): then each stop must also be clean — exit status 128 + the signal, a message, a `run_stopped`
event naming the signal.

Exit status 0 when the killed run matches the reference, 1 with the differences otherwise.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

from evomerge.store import RunDir, read_events


def _evomerge(*args: str) -> list[str]:
    return [sys.executable, "-m", "evomerge.cli", *args]


def stored_count(db: Path) -> int:
    """Evaluations committed so far (read-only; the WAL lets us read while the run writes)."""
    if not db.exists():
        return 0
    try:
        con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=1)
        try:
            return con.execute("SELECT count(*) FROM evomerge_evaluations").fetchone()[0]
        finally:
            con.close()
    except sqlite3.Error:  # not created yet
        return 0


def snapshot(run_dir: Path) -> dict:
    """Everything that must match between the two runs."""
    store = RunDir.open(run_dir).store()
    try:
        evals = store.evaluations()
        best = store.best("search")
    finally:
        store.close()
    return {
        "sequence": [(e.kind, e.generation, e.idx, e.label, e.genome, e.recipe, e.status, e.objective,
                      e.per_example) for e in evals],
        "best": None if best is None else (best.label, best.recipe),
        "results": json.loads((run_dir / "results.json").read_text())["rows"],
    }


def recomputed(run_dir: Path) -> list[tuple]:
    """Evaluations finished more than once (the event log is written after the store, so a candidate killed in
    flight appears once, when it is issued again; a stored one that was computed again would appear twice)."""
    seen = Counter((e["kind"], e["generation"], e["idx"], e["label"]) for e in read_events(run_dir / "events.jsonl")
                   if e["event"] == "evaluation" and e.get("worker") != "cache")
    return [k for k, n in seen.items() if n > 1]


def kill_and_resume(experiment: Path, workdir: Path, kills: int, seed: int, env: dict, log=print,
                    signals: tuple[int, ...] = (signal.SIGKILL,)) -> dict:
    rng = random.Random(seed)
    ref_dir, run_dir = workdir / "reference", workdir / "killed"
    t0 = time.time()
    subprocess.run(_evomerge("run", str(experiment), "--run-dir", str(ref_dir)), env=env, check=True,
                   stdout=subprocess.DEVNULL)
    ref_seconds = time.time() - t0
    ref = snapshot(ref_dir)
    total = len(ref["sequence"])
    log(f"reference: {total} evaluations in {ref_seconds:.0f} s")
    # random kill points: after a random number of stored evaluations, then a random fraction of one more
    targets = sorted(rng.sample(range(total), kills))
    per_eval = ref_seconds / total
    db = run_dir / "run.db"
    killed_at, stops = [], []
    for k, target in enumerate(targets):
        cmd = _evomerge("run", str(experiment), "--run-dir", str(run_dir)) if k == 0 else \
            _evomerge("resume", str(run_dir))
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        while proc.poll() is None and stored_count(db) < target:
            time.sleep(0.01)
        time.sleep(rng.uniform(0, per_eval))
        if proc.poll() is not None:
            raise RuntimeError(f"the run ended before kill {k + 1} (exit {proc.returncode}): "
                               f"{proc.stderr.read().decode()[-2000:]}")
        sig = signal.Signals(signals[k % len(signals)])
        proc.send_signal(sig)
        proc.wait()
        killed_at.append(stored_count(db))
        if sig != signal.SIGKILL:
            stops.append(_clean_stop(proc, sig, run_dir))
        log(f"kill {k + 1}/{kills}: {sig.name} with {killed_at[-1]}/{total} evaluations stored")
    done = subprocess.run(_evomerge("resume", str(run_dir)), env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"the final resume failed: {done.stderr[-2000:]}")
    got = snapshot(run_dir)
    report = {
        "kills": kills, "killed_at": killed_at, "evaluations": total,
        "same_sequence": got["sequence"] == ref["sequence"], "same_best": got["best"] == ref["best"],
        "same_results": got["results"] == ref["results"],
        "lost": total - len(got["sequence"]), "recomputed": recomputed(run_dir), "clean_stops": stops,
    }
    report["ok"] = (report["same_sequence"] and report["same_best"] and report["same_results"]
                    and report["lost"] == 0 and not report["recomputed"] and all(s["clean"] for s in stops))
    return report


def _clean_stop(proc: subprocess.Popen, sig: signal.Signals, run_dir: Path) -> dict:
    """How a run stopped by a catchable signal ended: exit status, its message, its last event."""
    err = proc.stderr.read().decode()
    last = [e for e in read_events(run_dir / "events.jsonl") if e["event"] in ("run_started", "run_stopped")][-1]
    out = {"signal": sig.name, "status": proc.returncode, "message": err.strip().splitlines()[-1:],
           "event": last["event"], "reason": last.get("reason")}
    said, named = (("interrupted", "KeyboardInterrupt") if sig == signal.SIGINT  # Ctrl-C's own words
                   else (f"stopped by {sig.name}", sig.name))
    out["clean"] = (proc.returncode == 128 + sig and said in err and "Traceback" not in err
                    and last["event"] == "run_stopped" and named in (last.get("reason") or ""))
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("experiment", type=Path)
    ap.add_argument("--kills", type=int, default=5)
    ap.add_argument("--seed", type=int, default=0, help="seed of the kill moments")
    ap.add_argument("--workdir", type=Path, default=Path("runs/kill-resume"))
    ap.add_argument("--signal", action="append", choices=["KILL", "TERM", "HUP", "INT"],
                    help="stop with these signals, in turn (default KILL)")
    args = ap.parse_args()
    if args.workdir.exists() and any(args.workdir.iterdir()):
        ap.error(f"--workdir {args.workdir} is not empty")
    sigs = tuple(signal.Signals[f"SIG{n}"] for n in (args.signal or ["KILL"]))
    report = kill_and_resume(args.experiment, args.workdir, args.kills, args.seed, dict(os.environ), signals=sigs)
    print(json.dumps(report, indent=2))
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
