"""Property-based fuzzing (hypothesis) of the two doors hostile input comes through.

1. Experiment files — valid configs with mutated fields, random YAML, random bytes — fed to `evomerge validate`
   and `evomerge run` (in-process through typer's CliRunner, plus a few real subprocesses for what stderr shows):
   exit 0, or exit 2 with one line under 500 characters, no traceback, and nothing written on exit 2.
2. Requests to a real `evomerge serve` on 127.0.0.1 — generated bodies, dataset references, headers: 2xx or 4xx
   only, the token's spent queries exactly the number of answered queries, and no split served but the
   declared ones (a canary split on disk beside them never is).

Derandomized (the same cases on every run, so CI is reproducible); each suite prints how many cases it generated.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from evomerge.cli import app
from tests.conftest import REPO, serving, write_experiment

pytestmark = pytest.mark.slow
TOKEN = "tok-fuzz-0123456789"
COUNTS: dict[str, int] = {}
SECONDS: dict[str, float] = {}
FUZZ = settings(
    max_examples=int(os.environ.get("EVOMERGE_FUZZ_EXAMPLES", "150")),
    deadline=None,
    derandomize=True,
    suppress_health_check=list(HealthCheck),
    database=None,
)


@pytest.fixture(scope="module", autouse=True)
def _report(request):
    yield
    suites = ", ".join(f"{k}: {n} in {SECONDS[k]:.1f} s" for k, n in sorted(COUNTS.items()) if k in SECONDS)
    suites += f" (service queries answered and charged: {COUNTS.get('answered', 0)})"
    total = sum(n for k, n in COUNTS.items() if k in SECONDS)
    line = f"fuzz cases generated: {suites}; total {total} in {sum(SECONDS.values()):.1f} s"
    capture = request.config.pluginmanager.get_plugin("capturemanager")
    if capture is None:
        print(line)
        return
    with capture.global_and_fixture_disabled():  # shown even when the run passes (pytest -q)
        print("\n" + line)


def _count(name: str, t0: float) -> None:
    """One case of suite `name` done, begun at `t0` (time.time())."""
    COUNTS[name] = COUNTS.get(name, 0) + 1
    SECONDS[name] = SECONDS.get(name, 0.0) + time.time() - t0


# -- experiment files ---------------------------------------------------------------------------------------------
FIELDS = [
    ("name",),
    ("seed",),
    ("zoo",),
    ("device",),
    ("threads",),
    ("sources",),
    ("sources", "base"),
    ("sources", "models"),
    ("space",),
    ("space", "type"),
    ("space", "operator"),
    ("space", "granularity"),
    ("space", "weight_range"),
    ("space", "lam"),
    ("optimizer",),
    ("optimizer", "type"),
    ("optimizer", "generations"),
    ("optimizer", "popsize"),
    ("optimizer", "sigma0"),
    ("optimizer", "x0"),
    ("fitness",),
    ("fitness", "type"),
    ("fitness", "tasks"),
    ("fitness", "max_examples"),
    ("fitness", "objective"),
    ("baselines", "tuned_weights"),
    ("executor", "type"),
    ("executor", "workers"),
    ("surprise",),
]
SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.floats(allow_nan=True),
    st.text(max_size=40),
    st.sampled_from(["../../x", "", "zoo:base", "1e9", "0.5", "true", "cma", "/etc/passwd", "a" * 300]),
)
VALUES = st.recursive(
    SCALARS,
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=4)),
    max_leaves=12,
)


def _set(cfg: dict, path: tuple, value) -> dict:
    d = cfg
    for k in path[:-1]:
        if not isinstance(d.get(k), dict):
            d[k] = {}
        d = d[k]
    d[path[-1]] = value
    return cfg


@pytest.fixture(scope="module")
def base_config(tmp_path_factory, tiny_task_dir) -> dict:
    d = tmp_path_factory.mktemp("fuzzbase")
    return yaml.safe_load(write_experiment(d / "exp.yaml", tiny_task_dir, baselines={"enabled": False}).read_text())


def _check(path: Path, work: Path, run_too: bool) -> int:
    """validate (and, when it refuses, run) the file: exit 0, or 2 with one short line and nothing written."""
    runner = CliRunner()
    old = os.getcwd()
    os.chdir(work)
    try:
        r = runner.invoke(app, ["validate", str(path)])
        assert r.exit_code in (0, 2), (r.exit_code, r.stderr, repr(r.exception))
        if r.exit_code == 2:
            err = r.stderr.strip()
            assert len(err.splitlines()) == 1 and len(err) < 500 and "Traceback" not in err, err
            if run_too:
                r2 = runner.invoke(app, ["run", str(path)])
                assert r2.exit_code == 2, (r2.exit_code, r2.stderr, repr(r2.exception))
                err2 = r2.stderr.strip()
                assert len(err2.splitlines()) == 1 and len(err2) < 500 and "Traceback" not in err2, err2
            assert list(work.iterdir()) == [], list(work.iterdir())  # no runs/ folder, no run directory
        return r.exit_code
    finally:
        os.chdir(old)


@FUZZ
@given(mutations=st.lists(st.tuples(st.sampled_from(FIELDS), VALUES), min_size=1, max_size=3))
def test_fuzz_mutated_configs(tmp_path_factory, base_config, mutations):
    t0 = time.time()
    import copy

    d = tmp_path_factory.mktemp("mut")
    work = d / "work"
    work.mkdir()
    cfg = copy.deepcopy(base_config)
    for path, value in mutations:
        _set(cfg, path, value)
    f = d / "exp.yaml"
    try:
        f.write_text(yaml.safe_dump(cfg, allow_unicode=True))
    except (yaml.YAMLError, UnicodeEncodeError):
        return
    _check(f, work, run_too=True)
    _count("mutated configs", t0)


YAML_ALPHABET = st.sampled_from(
    list("abn:-[]{}&*!|>'\",#? \n\t0123456789.e+%@`")
    + ["<<", "&a", "*a", "!!python/object", "!!python/object/apply:os.system"]
)


@FUZZ
@given(parts=st.lists(YAML_ALPHABET, max_size=80))
def test_fuzz_random_yaml(tmp_path_factory, parts):
    t0 = time.time()
    d = tmp_path_factory.mktemp("yaml")
    work = d / "work"
    work.mkdir()
    f = d / "exp.yaml"
    f.write_text("".join(parts))
    assert _check(f, work, run_too=True) == 2  # nothing random is a whole experiment
    _count("random YAML", t0)


@FUZZ
@given(data=st.binary(max_size=300))
def test_fuzz_random_bytes(tmp_path_factory, data):
    t0 = time.time()
    d = tmp_path_factory.mktemp("bytes")
    work = d / "work"
    work.mkdir()
    f = d / "exp.yaml"
    f.write_bytes(data)
    assert _check(f, work, run_too=False) == 2
    _count("random bytes", t0)


@pytest.mark.parametrize("content", [b"\xff\xfeb\x00a\x00d\x00", b"a: [" * 5000, b"seed: 1e26\nname: x\n"])
def test_real_subprocess_shows_one_line_and_no_traceback(tmp_path, content):
    """What a user sees on stderr, from a real process (CliRunner cannot show what Python prints on a crash)."""
    t0 = time.time()
    f = tmp_path / "exp.yaml"
    f.write_bytes(content)
    for command in ("validate", "run"):
        p = subprocess.run(
            [sys.executable, "-m", "evomerge.cli", command, str(f)],
            capture_output=True,
            text=True,
            cwd=tmp_path,
            env={**os.environ, "PYTHONPATH": str(REPO)},
            timeout=300,
        )
        err = p.stderr.strip()
        assert p.returncode == 2 and len(err.splitlines()) == 1 and len(err) < 500 and "Traceback" not in err, err
        assert not (tmp_path / "runs").exists()
    _count("real subprocesses", t0)


# -- the merge service ----------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def fuzz_service(tmp_path_factory, tiny_zoo, tiny_lora, tiny_task_dir):
    from evomerge.blackbox.launch import free_port, serve_command

    d = tmp_path_factory.mktemp("fuzzserve")
    data = d / "data" / "add"
    data.mkdir(parents=True)
    (data / "search.jsonl").write_text((tiny_task_dir / "add" / "search.jsonl").read_text())
    canary = d / "data" / "canary"  # on disk beside the declared dataset, never declared
    canary.mkdir()
    (canary / "secret.jsonl").write_text('{"prompt": "1+1=", "answer": "2"}\n' * 7)
    tokens = d / "tokens"
    tokens.write_text(f"{TOKEN} 1000000\n")
    cmd = serve_command(tiny_zoo / "base", tiny_lora, free_port(), data={"add": data}, budget_db=d / "budgets.db")
    log = d / "service.log"
    with serving([*cmd, "--tokens-file", str(tokens), "--rate", "10000"], log) as url, \
            httpx.Client(base_url=url, timeout=120) as client:
        yield client, {"answered": 0}
    assert "Traceback" not in log.read_text()


SPLITS = st.one_of(
    st.sampled_from(
        [
            "search",
            "secret",
            "../canary/secret",
            "/etc/passwd",
            "../../../../etc/hostname",
            "search/../search",
            "",
            ".",
            "..",
            "search.jsonl",
            "%2e%2e",
            "canary",
        ]
    ),
    st.text(max_size=20),
)
NAMES = st.one_of(st.sampled_from(["add", "canary", "../canary", "add/../canary", ""]), st.text(max_size=12))
NUM = st.one_of(st.floats(allow_nan=True), st.integers(-10, 10), st.booleans(), st.text(max_size=5), st.none())
VEC = st.one_of(st.lists(st.floats(0, 1), min_size=4, max_size=4), st.lists(NUM, max_size=6), NUM)
BODIES = st.fixed_dictionaries(
    {"alpha": VEC, "beta": VEC},
    optional={
        "dataset": st.one_of(st.fixed_dictionaries({"name": NAMES}, optional={"split": SPLITS, "limit": NUM}), NUM),
        "examples": st.one_of(
            st.lists(st.fixed_dictionaries({"prompt": st.text(max_size=6), "answer": st.text(max_size=3)}), max_size=3),
            NUM,
        ),
        "per_example": NUM,
        "accuracy": NUM,
        "extra": NUM,
    },
)
# near-valid bodies, so that many queries are answered (and charged): a valid one with at most one field replaced
NEAR_VALID = st.builds(
    lambda body, key, value: {**body, key: value} if key else body,
    st.fixed_dictionaries(
        {
            "alpha": st.lists(st.floats(0, 1), min_size=4, max_size=4),
            "beta": st.lists(st.floats(-5, 5), min_size=4, max_size=4),
            "dataset": st.fixed_dictionaries(
                {"name": st.just("add"), "split": st.one_of(st.just("search"), SPLITS), "limit": st.integers(1, 4)}
            ),
        }
    ),
    st.sampled_from([None, None, None, "alpha", "beta", "dataset", "per_example", "accuracy"]),
    NUM,
)


@FUZZ
@given(
    body=st.one_of(BODIES, NEAR_VALID),
    auth=st.sampled_from(["good", "good", "good", "none", "wrong"]),
    path=st.sampled_from(["/v1/merges/evaluate", "/v1/merges/evaluate", "/v1/completions"]),
)
def test_fuzz_service_requests(fuzz_service, body, auth, path):
    t0 = time.time()
    client, seen = fuzz_service
    headers = (
        {"Authorization": f"Bearer {TOKEN}"}
        if auth == "good"
        else {"Authorization": "Bearer x"}
        if auth == "wrong"
        else {}
    )
    if path == "/v1/completions":
        body = {
            "prompt": body.get("examples") if isinstance(body.get("examples"), str) else "1+2=",
            "merge": {"alpha": body["alpha"], "beta": body["beta"]},
        }
    # Python's JSON writes NaN/Infinity literals, as a careless client would; httpx's json= refuses them
    r = client.post(path, content=json.dumps(body), headers={**headers, "Content-Type": "application/json"})
    assert 200 <= r.status_code < 500, (r.status_code, r.text)
    if r.status_code == 422 and r.json()["detail"].get("code") == "diverged":
        seen["answered"] += 1  # computed, then found non-finite: charged like any query the service ran
    if r.status_code == 200:
        assert auth == "good"
        seen["answered"] += 1
        COUNTS["answered"] = seen["answered"]
        if path == "/v1/merges/evaluate" and isinstance(body.get("dataset"), dict):
            ref = body["dataset"]
            assert ref["name"] == "add" and ref.get("split", "search") == "search", ref  # declared ones only
            assert r.json()["n"] != 7  # never the canary's 7 rows
    spent = client.get("/v1/budget", headers={"Authorization": f"Bearer {TOKEN}"}).json()["spent"]
    assert spent == seen["answered"]  # every answered query charged once, nothing else
    _count("service requests", t0)
