"""Hostile and careless input (issue 16): no code runs from stored data, the merge service serves only what it
declares, and every bad input gets one line and exit status 2 with nothing written. One test (or more) per finding;
each failed on 9c92cb0."""

from __future__ import annotations

import concurrent.futures
import hashlib
import json
import os
import pickle
import resource
import shutil
import signal
import sqlite3
import subprocess
import sys
import threading
import time
import zlib
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest
import yaml
from rich.console import Console
from typer.testing import CliRunner

from evomerge.cli import app
from evomerge.config import OptimizerConfig
from evomerge.optim import OPTIMIZERS
from evomerge.optim.state import StateError, decode
from evomerge.runner import Runner
from tests.conftest import REPO, serving, write_experiment

pytestmark = pytest.mark.slow
TOKEN = "tok-security-0123456789"


def _cli(*args, cwd: Path | None = None):
    old = os.getcwd()
    if cwd is not None:
        os.chdir(cwd)
    try:
        r = CliRunner().invoke(app, [str(a) for a in args])
    finally:
        os.chdir(old)
    return r.exit_code, r.stdout, r.stderr.strip()


def _one_line_error(code: int, err: str, *words: str) -> None:
    assert code == 2, err
    assert len(err.splitlines()) == 1 and len(err) < 500 and "Traceback" not in err, err
    for w in words:
        assert w in err, (w, err)


def _digest(run_dir: Path) -> dict:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(run_dir.iterdir()) if p.is_file()}


@pytest.fixture(scope="module")
def finished(tmp_path_factory, tiny_zoo, tiny_task_dir):
    d = tmp_path_factory.mktemp("finished")
    exp = write_experiment(
        d / "exp.yaml",
        tiny_task_dir,
        optimizer={"type": "cma", "generations": 2, "popsize": 2},
        baselines={"enabled": False},
    )
    Runner(exp, d / "run", console=Console(quiet=True)).run()
    return exp, d / "run"


def _copy(finished, tmp_path) -> tuple[Path, Path]:
    exp, run = finished
    shutil.copytree(run, tmp_path / "run")
    return exp, tmp_path / "run"


# -- 1. stored data runs no code ------------------------------------------------------------------------------------
class _Payload:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.mkdir, (str(self.marker),)  # what a crafted pickle would do, harmlessly


def test_crafted_pickle_in_the_snapshot_row_is_refused_not_run(finished, tmp_path):
    _, run = _copy(finished, tmp_path)
    marker = tmp_path / "pwned"
    con = sqlite3.connect(run / "run.db")
    with con:
        con.execute("UPDATE evomerge_snapshots SET state = ?", (pickle.dumps(_Payload(marker)),))
    con.close()
    (run / ".lock").write_text("1")
    before = _digest(run)
    code, _, err = _cli("resume", run)
    _one_line_error(code, err, "cannot be loaded: it is a pickle", "new --run-dir")
    assert not marker.exists()  # the payload never ran
    assert _digest(run) == before


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_every_optimizer_state_is_json_data(name):
    cfg = OptimizerConfig(type=name, popsize=4)
    if name == "m2n2":
        pytest.skip("m2n2 needs a mosaic space; its state is checked in tests/test_m2n2.py")
    opt = OPTIMIZERS[name](cfg, 3, 0)
    opt.tell(xs := opt.ask(), [float(x.sum()) for x in xs])
    doc = json.loads(zlib.decompress(opt.state()))
    assert doc["format"] == "evomerge.optimizer-state" and doc["version"] == 1 and doc["optimizer"] == name
    with pytest.raises(StateError, match="pickle"):
        decode(pickle.dumps({"a": 1}))
    with pytest.raises(StateError, match="not 'cma'" if name != "cma" else "not 'random'"):
        decode(opt.state(), "cma" if name != "cma" else "random")


def test_a_state_cannot_add_or_retype_attributes():
    from evomerge.optim.state import encode

    opt = OPTIMIZERS["cma"](OptimizerConfig(type="cma", popsize=4), 3, 0)
    st = decode(opt.state(), "cma")
    with pytest.raises(StateError, match="attributes"):
        opt.load_state(encode("cma", {**st, "evil": 1}))
    with pytest.raises(StateError, match="_C: expected ndarray"):
        opt.load_state(encode("cma", {**st, "_C": "rm -rf"}))


# -- 2-4, 10. the merge service ------------------------------------------------------------------------------------
@contextmanager
def _serve(tiny_zoo, tiny_lora, data: dict, tokens: Path, budget_db: Path, *extra: str):
    from evomerge.blackbox.launch import free_port, serve_command

    cmd = serve_command(tiny_zoo / "base", tiny_lora, free_port(), data=data, budget_db=budget_db)
    with serving([*cmd, "--tokens-file", str(tokens), *extra], budget_db.with_suffix(".log")) as url:
        yield url


@pytest.fixture(scope="module")
def served(tmp_path_factory, tiny_zoo, tiny_lora, tiny_task_dir):
    """A service declaring one dataset (a copy of the add task); beside it, a 'secret' split it must never serve."""
    d = tmp_path_factory.mktemp("served")
    shutil.copytree(tiny_task_dir / "add", d / "data" / "add")
    shutil.copytree(tiny_task_dir / "cipher", d / "data" / "cipher")  # on disk, not declared
    tokens = d / "tokens"
    tokens.write_text(f"{TOKEN} 100000\ntok-ten-0123456789 10\n")
    with _serve(tiny_zoo, tiny_lora, {"add": d / "data" / "add"}, tokens, d / "budgets.db") as url:
        yield url, d


def _auth(token=TOKEN):
    return {"Authorization": f"Bearer {token}"}


def _body(**kw) -> dict:
    return {"alpha": [1.0] * 4, "beta": [0.25] * 4, **kw}


def test_service_serves_declared_splits_only(served):
    url, d = served
    ok = httpx.post(
        f"{url}/v1/merges/evaluate", json=_body(dataset={"name": "add", "split": "search"}), headers=_auth()
    )
    rows = (d / "data" / "add" / "search.jsonl").read_text().splitlines()
    assert ok.status_code == 200 and ok.json()["n"] == len(rows)
    (d / "data" / "add" / "late.jsonl").write_text((d / "data" / "add" / "search.jsonl").read_text())
    answers = set()
    for ref in [
        {"name": "add", "split": str(d / "data" / "cipher" / "heldout")},
        {"name": "add", "split": "/etc/passwd"},
        {"name": "add", "split": "../cipher/heldout"},
        {"name": "add", "split": "../../../../etc/hostname"},
        {"name": "add", "split": "nope"},
        {"name": "add", "split": "late"},
        {"name": "cipher"},
        {"name": "../data/cipher", "split": "search"},
    ]:
        r = httpx.post(f"{url}/v1/merges/evaluate", json=_body(dataset=ref), headers=_auth())
        assert r.status_code == 422, (ref, r.text)
        answers.add(r.text)
    assert len(answers) == 1  # the same answer whether a file exists or not
    listed = httpx.get(f"{url}/v1/datasets", headers=_auth()).json()
    assert listed["data"] == ["add"] and listed["splits"] == {"add": ["heldout", "search", "train"]}


@pytest.mark.parametrize(
    "change",
    [
        {"alpha": ["0.5", 1.0, 1.0, 1.0]},
        {"alpha": [True, 1.0, 1.0, 1.0]},
        {"beta": [0.25, 0.25, "0.25", 0.25]},
        {"per_example": 1},
        {"dataset": {"name": "add", "split": "search", "limit": "3"}},
        {"dataset": {"name": "add", "split": "search", "limit": True}},
    ],
)
def test_service_types_are_strict_and_refusals_are_not_charged(served, change):
    url, _ = served
    before = httpx.get(f"{url}/v1/budget", headers=_auth()).json()["spent"]
    body = _body(dataset={"name": "add", "split": "search"}) | change
    r = httpx.post(f"{url}/v1/merges/evaluate", json=body, headers=_auth())
    assert r.status_code == 422, r.text
    assert httpx.get(f"{url}/v1/budget", headers=_auth()).json()["spent"] == before


def test_budgets_are_charged_exactly_under_concurrency(served):
    url, _ = served
    tok = "tok-ten-0123456789"
    body = _body(dataset={"name": "add", "split": "search", "limit": 2})

    def one(_):
        return httpx.post(f"{url}/v1/merges/evaluate", json=body, headers=_auth(tok), timeout=120)

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        codes = sorted(r.status_code for r in pool.map(one, range(24)))
    assert codes.count(200) == 10 and codes.count(429) == 14, codes
    assert httpx.get(f"{url}/v1/budget", headers=_auth(tok)).json() == {"budget_left": 0, "spent": 10}


def test_budgets_survive_a_restart_and_tokens_are_stored_hashed(tmp_path, tiny_zoo, tiny_lora, tiny_task_dir):
    tokens, db = tmp_path / "tokens", tmp_path / "budgets.db"
    tokens.write_text(f"{TOKEN} 3\n")
    body = _body(dataset={"name": "add", "split": "search", "limit": 2})
    data = {"add": tiny_task_dir / "add"}
    with _serve(tiny_zoo, tiny_lora, data, tokens, db) as url:
        for _ in range(2):
            assert httpx.post(f"{url}/v1/merges/evaluate", json=body, headers=_auth()).status_code == 200
    with _serve(tiny_zoo, tiny_lora, data, tokens, db, "--rate", "0.5") as url:  # 1 query at once, then 1 per 2 s
        assert httpx.get(f"{url}/v1/budget", headers=_auth()).json() == {"budget_left": 1, "spent": 2}
        assert httpx.post(f"{url}/v1/merges/evaluate", json=body, headers=_auth()).status_code == 200
        r = httpx.post(f"{url}/v1/merges/evaluate", json=body, headers=_auth())
        assert r.status_code == 429 and r.json()["detail"]["code"] == "rate_limited" and "retry-after" in r.headers
        time.sleep(2.5)
        r = httpx.post(f"{url}/v1/merges/evaluate", json=body, headers=_auth())
        assert r.status_code == 429 and r.json()["detail"]["code"] == "budget_exhausted"
    assert TOKEN.encode() not in db.read_bytes()


class _Answer(BaseHTTPRequestHandler):
    def do_POST(self):
        self.rfile.read(int(self.headers["Content-Length"]))
        body = json.dumps({"loss": 0.5, "n": 1, "budget_left": 9}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *_):
        pass


@contextmanager
def _late_server(port: int, after_s: float):
    """An HTTP peer that starts listening `after_s` seconds from now (a service restarting)."""
    holder = {}

    def start():
        time.sleep(after_s)
        holder["srv"] = ThreadingHTTPServer(("127.0.0.1", port), _Answer)
        holder["srv"].serve_forever()

    t = threading.Thread(target=start, daemon=True)
    t.start()
    try:
        yield
    finally:
        while "srv" not in holder and t.is_alive():
            time.sleep(0.05)
        if "srv" in holder:
            holder["srv"].shutdown()
            holder["srv"].server_close()


def test_client_waits_out_a_service_restart_then_gives_a_transport_failure():
    from evomerge.blackbox.client import MergeClient, TransportFailure
    from evomerge.blackbox.launch import free_port

    port = free_port()
    ex = [{"prompt": "1+2=", "answer": "3"}]
    with (
        _late_server(port, 4.0),
        MergeClient(f"http://127.0.0.1:{port}", TOKEN, retry_window_s=30, max_backoff_s=1.0) as client,
    ):
        t0 = time.time()
        assert client.evaluate([1.0], [1.0], ex)["loss"] == 0.5  # connection refused for 4 s, then answered
        assert time.time() - t0 >= 4 and client.retried >= 3
    port = free_port()
    with MergeClient(f"http://127.0.0.1:{port}", TOKEN, retry_window_s=2, max_backoff_s=0.5) as client:
        t0 = time.time()
        with pytest.raises(TransportFailure, match="ConnectError"):
            client.evaluate([1.0], [1.0], ex)
        assert time.time() - t0 >= 1.5


def test_queries_lost_to_transport_are_asked_again_on_resume(tmp_path):
    from evomerge.blackbox.client import MergeClient
    from evomerge.blackbox.executor import TRANSPORT_PREFIX, ServiceExecutor
    from evomerge.blackbox.launch import free_port
    from evomerge.blackbox.runner import BlackboxRunner
    from evomerge.blackbox.space import ServiceMerge
    from evomerge.executors import Job
    from evomerge.store import Evaluation, EventLog, RunStore

    store = RunStore(f"sqlite:///{tmp_path / 'run.db'}", "r1", "t", create=True)
    runner = object.__new__(BlackboxRunner)  # only its query step: the rest of a run needs the zoo's service
    runner.events = EventLog(tmp_path / "events.jsonl")
    genome = [1.0, 0.5]
    lost = Evaluation("search", 0, 0, "g0-0", "query", "failed", genome=genome, error=f"{TRANSPORT_PREFIX}refused")
    bad = Evaluation("search", 0, 1, "g0-1", "query", "failed", genome=genome, error="HTTP 422: diverged")
    store.add(lost)
    store.add(bad)
    port = free_port()
    with _late_server(port, 0.0), MergeClient(f"http://127.0.0.1:{port}", TOKEN) as client:
        time.sleep(0.3)
        executor = ServiceExecutor(client, {"query": [{"prompt": "1", "answer": "2"}]}, ())
        merge = ServiceMerge((1.0,), (0.5,))
        again = runner._query(store, executor, Job("search", 0, 0, "g0-0", "query", merge, genome))
        kept = runner._query(store, executor, Job("search", 0, 1, "g0-1", "query", merge, genome))
    runner.events.close()
    store.close()
    assert again.status == "ok" and again.objective == -0.5 and client.queries == 1
    assert kept.status == "failed" and kept.error == bad.error  # the candidate's own failure is not asked again


# -- 5, 8, 11. bounded, checked experiment files -----------------------------------------------------------------
def _bomb(levels: int) -> str:
    lines = ['a0: &a0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]" for i in range(1, levels)]
    return "\n".join(lines) + f"\nname: *a{levels - 1}\n"


def test_yaml_alias_bombs_are_refused_quickly_in_one_line(tmp_path):
    (tmp_path / "b5.yaml").write_text(_bomb(5))
    code, _, err = _cli("validate", tmp_path / "b5.yaml")
    _one_line_error(code, err, "aliases are expanded")
    (tmp_path / "b9.yaml").write_text(_bomb(9))

    def limit():  # 3 GB of address space: the old loader went past 5.5 GB
        resource.setrlimit(resource.RLIMIT_AS, (3 << 30, 3 << 30))

    t0 = time.time()
    p = subprocess.run(
        [sys.executable, "-m", "evomerge.cli", "validate", str(tmp_path / "b9.yaml")],
        capture_output=True,
        text=True,
        timeout=120,
        preexec_fn=limit,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    _one_line_error(p.returncode, p.stderr.strip(), "aliases are expanded")
    assert time.time() - t0 < 60


def _valid(tiny_task_dir, tmp_path, **over) -> dict:
    return yaml.safe_load(write_experiment(tmp_path / "base.yaml", tiny_task_dir, **over).read_text())


@pytest.mark.parametrize(
    "case, words",
    [
        ("seed: 1e26", ["seed", "expected a number"]),
        ("seed: 1.0e+26", ["seed", "1e+26"]),
        ("seed: 5000000000", ["seed", "less than or equal to 4294967295"]),
        ("popsize: 1e9", ["popsize", "expected a number"]),
        ("popsize: 1000000000", ["popsize", "less than or equal to 100000"]),
        ("generations: true", ["generations", "boolean"]),
        ("sigma0: 1.0e+308", ["sigma0", "less than or equal to 10"]),
        ("name: ../../../../elsewhere", ["name", "run name"]),
        ("name: ''", ["name", "run name"]),
        ("duplicate key", ["duplicate key 'seed'"]),
        ("utf-16", ["UTF-16"]),
        ("deep", ["nested deeper than 64"]),
        ("directory", ["is a directory"]),
        ("huge", ["bytes; an experiment file is at most"]),
    ],
)
def test_bad_experiment_files_get_one_line_and_write_nothing(tmp_path, tiny_task_dir, case, words):
    cfg = _valid(tiny_task_dir, tmp_path)
    text = yaml.safe_dump(cfg)
    if ":" in case and case.split(":")[0] in ("seed", "popsize", "generations", "sigma0", "name"):
        key, value = case.split(": ", 1)
        section = "optimizer" if key in ("popsize", "generations", "sigma0") else None
        lines = text.splitlines()
        if section:
            i = lines.index("optimizer:")
            lines.insert(i + 1, f"  {key}: {value}")
            lines = [
                ln
                for j, ln in enumerate(lines)
                if not (j > i + 1 and ln.strip().startswith(f"{key}:") and ln.startswith("  "))
            ]
        else:
            lines = [f"{key}: {value}" if ln.startswith(f"{key}:") else ln for ln in lines]
        text = "\n".join(lines) + "\n"
    f = tmp_path / "exp.yaml"
    if case == "duplicate key":
        f.write_text(text + "seed: 5\n")
    elif case == "utf-16":
        f.write_bytes(text.encode("utf-16"))
    elif case == "deep":
        f.write_text("a: " + "[" * 100_000 + "]" * 100_000 + "\n")
    elif case == "directory":
        f.mkdir()
    elif case == "huge":
        f.write_text(text + "# " + "x" * (2 << 20) + "\n")
    else:
        f.write_text(text)
    work = tmp_path / "work"
    work.mkdir()
    for command in (("validate", f), ("run", f)):
        code, _, err = _cli(*command, cwd=work)
        _one_line_error(code, err, *words)
    assert list(work.iterdir()) == []  # no runs/ folder, no run directory, nowhere
    assert not (tmp_path.parent / "elsewhere").exists()


# -- 7, 8. sources are checked before anything is written ----------------------------------------------------------
def _bad_source(kind: str, tiny_zoo: Path, d: Path) -> Path:
    src = d / f"src_{kind.replace(' ', '_')}"
    shutil.copytree(tiny_zoo / "add", src)
    if kind == "pickle only":
        (src / "model.safetensors").rename(src / "pytorch_model.bin")
    elif kind == "garbage config.json":
        (src / "config.json").write_text("{garbage")
    elif kind == "shape mismatch":
        from safetensors.torch import load_file, save_file

        sd = load_file(src / "model.safetensors")
        name = next(k for k, v in sd.items() if v.dim() == 2)
        sd[name] = sd[name][:-1].contiguous()
        save_file(sd, src / "model.safetensors", metadata={"format": "pt"})
    elif kind == "garbage weights":
        (src / "model.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not a header}")
    return src


@pytest.mark.parametrize(
    "kind, words",
    [
        ("pickle only", ["only pickle weights"]),
        ("garbage config.json", ["config.json: not valid JSON"]),
        ("shape mismatch", ["shape", "!= base"]),
        ("garbage weights", ["cannot read the checkpoint"]),
    ],
)
def test_bad_sources_are_refused_before_the_run_directory_exists(tmp_path, tiny_zoo, tiny_task_dir, kind, words):
    src = _bad_source(kind, tiny_zoo, tmp_path)
    sources = {"base": "zoo:base", "models": [str(src), "zoo:cipher"]}
    exp = write_experiment(
        tmp_path / "exp.yaml",
        tiny_task_dir,
        sources=sources,
        optimizer={"type": "cma", "generations": 1, "popsize": 2},
        baselines={"enabled": False},
    )
    code, _, err = _cli("run", exp, "--run-dir", tmp_path / "run")
    _one_line_error(code, err, *words)
    assert not (tmp_path / "run").exists()
    if kind == "garbage config.json":  # the fixed source: the same run now starts (nothing was left to refuse it)
        shutil.copy(tiny_zoo / "add" / "config.json", src / "config.json")
        code, _, err = _cli("run", exp, "--run-dir", tmp_path / "run")
        assert code == 0, err


def test_events_log_that_is_a_directory_is_refused_before_writing(finished, tmp_path):
    exp, run = _copy(finished, tmp_path)
    (run / "events.jsonl").unlink()
    (run / "events.jsonl").mkdir()
    (run / ".lock").write_text("1")
    before = _digest(run)
    for command in (("resume", run), ("run", exp, "--run-dir", run)):
        code, _, err = _cli(*command)
        _one_line_error(code, err, "events.jsonl: not a regular file")
        assert _digest(run) == before


def test_a_refused_run_leaves_the_lock_file_alone(finished, tmp_path, tiny_task_dir):
    _, run = _copy(finished, tmp_path)
    (run / ".lock").write_text("1")
    changed = write_experiment(
        tmp_path / "changed.yaml",
        tiny_task_dir,
        optimizer={"type": "cma", "generations": 3, "popsize": 2},
        baselines={"enabled": False},
    )
    code, _, err = _cli("run", changed, "--run-dir", run)
    _one_line_error(code, err, "different experiment config")
    assert (run / ".lock").read_text() == "1"


# -- 9. SIGTERM and SIGHUP stop a run cleanly; resume continues it exactly ------------------------------------------
def test_sigterm_and_sighup_stop_cleanly_and_resume_exactly(tmp_path, tiny_task_dir, evomerge_home, tiny_zoo):
    from scripts.kill_resume import kill_and_resume

    exp = write_experiment(
        tmp_path / "exp.yaml",
        tiny_task_dir,
        optimizer={"type": "cma", "generations": 4, "popsize": 4},
        baselines={"enabled": False},
    )
    env = {**os.environ, "EVOMERGE_HOME": str(evomerge_home), "PYTHONPATH": str(REPO)}
    report = kill_and_resume(
        exp, tmp_path / "work", kills=2, seed=3, env=env, log=lambda *_: None, signals=(signal.SIGTERM, signal.SIGHUP)
    )
    stops = report["clean_stops"]
    assert [(s["signal"], s["status"]) for s in stops] == [("SIGTERM", 143), ("SIGHUP", 129)], stops
    assert all(s["clean"] and s["event"] == "run_stopped" for s in stops), stops
    assert report["lost"] == 0 and report["recomputed"] == [] and report["same_sequence"], report
    assert report["ok"], report
