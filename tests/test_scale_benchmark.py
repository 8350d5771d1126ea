"""benchmarks/scale.py and benchmarks/gpu_check.py run end to end at test size (the tiny scale profile, CPU)."""

import json
import os
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


def _run(script: str, *args: str, home: Path) -> str:
    env = {**os.environ, "EVOMERGE_HOME": str(home), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, script, *args], cwd=BENCH, env=env, capture_output=True, text=True,
                          timeout=900, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout.strip().splitlines()[-1]


def test_scale_benchmark_summary(evomerge_home, tmp_path):
    out = tmp_path / "scale.json"
    line = json.loads(_run("scale.py", "--profile", "scale-tiny", "--reps", "1", "--out", str(out),
                           home=evomerge_home))
    s = line["summary"]
    assert set(s) >= {"params", "ta_over_floor", "ties_over_floor", "peak_rss_over_plan", "stream_over_memory",
                      "export_reload_ok"}
    assert s["export_reload_ok"] is True and s["params"] > 100_000
    saved = json.loads(out.read_text())
    assert saved["summary"] == s
    assert saved["details"]["mergekit_max_abs_diff"]["task_arithmetic"] < 1e-2  # bf16 rounding at most


def test_gpu_check_runs_on_cpu(evomerge_home, tmp_path):
    out = tmp_path / "gpu.json"
    report = json.loads(_run("gpu_check.py", "--cpu", "--quick", "--out", str(out), home=evomerge_home))["gpu_check"]
    assert report["device"] == "cpu"
    for row in report["merge_bandwidth"].values():
        assert row["ties"]["of_copy_bandwidth"] > 0
    assert set(report["scale_candidate"]["seconds"]) == {"task_arithmetic", "ties"}


def test_scaling_real_mode_experiment_is_valid(tmp_path, monkeypatch):
    """benchmarks/scaling.py's real mode rewrites the quickstart (composed from files named relative to it) into an
    experiment elsewhere: it must still load, with the executor, threads and budget it was given."""
    import yaml

    from evomerge.config import load_experiment

    monkeypatch.syspath_prepend(str(BENCH))
    import scaling

    exp = scaling.quickstart({"type": "ray", "workers": 2}, threads=2, generations=3, zoo="tiny")
    path = tmp_path / "elsewhere" / "q.yaml"
    path.parent.mkdir()
    path.write_text(yaml.safe_dump({**exp, "name": "q"}))
    cfg, _ = load_experiment(path)
    assert cfg.executor.type == "ray" and cfg.executor.workers == 2 and cfg.optimizer.generations == 3
    assert cfg.threads == 2 and cfg.zoo == "tiny" and set(cfg.fitness.tasks) == {"add", "cipher", "reverse"}
