"""Black-box merging: the LoRA merge, the merge service over real HTTP on loopback, the client, and a whole run
whose process cannot see the adapter directory."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch
import yaml

from evomerge.blackbox.client import BudgetExhausted, MergeClient, ServiceError
from evomerge.blackbox.lora_merge import LoraRepository, ModelPool, blackbox_deltas, encode
from tests.conftest import REPO, serving

TOKEN, SMALL_TOKEN, SMALL_BUDGET = "tok-main-0123456789", "tok-small-9876543210", 3


@pytest.fixture(scope="module")
def service(tiny_zoo, tiny_lora, tiny_task_dir, tmp_path_factory):
    """`evomerge serve` in a child process on 127.0.0.1 with two tokens (one with a tiny budget)."""
    from evomerge.blackbox.launch import free_port, serve_command

    d = tmp_path_factory.mktemp("service")
    tokens = d / "tokens"
    tokens.write_text(f"# token budget\n{TOKEN} 100000\n{SMALL_TOKEN} {SMALL_BUDGET}\n")
    cmd = serve_command(tiny_zoo / "base", tiny_lora, free_port(), replicas=2, data={"add": tiny_task_dir / "add"})
    with serving([*cmd, "--tokens-file", str(tokens)], d / "service.log", wait_s=120, stop_s=15) as url:
        yield url


def _examples(task_dir: Path, task: str, split: str = "search", n: int = 8) -> list[dict]:
    from evomerge.fitness.tasks import load_split

    return load_split(task_dir / task, split, task)[:n]


def _body(n: int, examples: list[dict], **kw) -> dict:
    return {"alpha": [1.0] * n, "beta": [1.0 / n] * n, "examples": examples, **kw}


# -- the merge itself -----------------------------------------------------------------------------------------------
def test_single_adapter_merge_matches_peft(tiny_zoo, tiny_lora, tiny_task_dir):
    """α = 1, β = one-hot gives exactly the adapter that peft loads (its own merge), logits to float tolerance."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    repo = LoraRepository(tiny_lora)
    pool = ModelPool(tiny_zoo / "base", list(repo.modules))
    enc = encode(pool.tokenizer, _examples(tiny_task_dir, "add"))
    n = len(repo)
    beta = np.zeros(n)
    beta[1] = 1.0
    with pool.merged(blackbox_deltas(repo, np.ones(n), beta)) as model:
        ours = model(input_ids=enc.input_ids, attention_mask=enc.attention_mask).logits
    peft_model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_zoo / "base"),
                                           tiny_lora / repo.ids[1]).eval()
    with torch.no_grad():
        theirs = peft_model(input_ids=enc.input_ids, attention_mask=enc.attention_mask).logits
    torch.testing.assert_close(ours, theirs, atol=1e-4, rtol=1e-4)
    with pool.merged(blackbox_deltas(repo, np.ones(n), np.zeros(n))) as model:  # β = 0: back to the base exactly
        base = model(input_ids=enc.input_ids, attention_mask=enc.attention_mask).logits
    assert not torch.allclose(base, ours)


def test_sparsity_keeps_top_alpha_of_A_only(tiny_lora):
    repo = LoraRepository(tiny_lora)
    n = len(repo)
    name, m = next(iter(repo.modules.items()))
    from evomerge.blackbox.lora_merge import sparsify_mask

    mask = sparsify_mask(m, torch.tensor([0.0, 0.25, 1.0] + [0.5] * (n - 3)))
    frac = mask.flatten(1).float().mean(1)
    assert frac[0] == 0 and frac[2] == 1 and abs(float(frac[1]) - 0.25) < 0.01
    kept = m.A[1].abs()[mask[1]]
    assert float(kept.min()) >= float(m.A[1].abs()[~mask[1]].max())  # the largest magnitudes are the ones kept
    # β scales B unsparsified: with α = 0 for all adapters the update vanishes although B is not zero
    zero = blackbox_deltas(repo, np.zeros(n), np.ones(n))
    assert all(float(d.abs().max()) == 0 for d in zero.values())


# -- the service over HTTP ------------------------------------------------------------------------------------------
def test_auth_and_openapi(service, tiny_task_dir):
    ex = _examples(tiny_task_dir, "add", n=2)
    assert httpx.get(f"{service}/healthz").status_code == 200
    assert httpx.get(f"{service}/v1/adapters").status_code == 401
    r = httpx.post(f"{service}/v1/merges/evaluate", json=_body(4, ex))
    assert r.status_code == 401 and "bearer token" in r.json()["detail"]["message"]
    r = httpx.get(f"{service}/v1/adapters", headers={"Authorization": "Bearer wrong-token"})
    assert r.status_code == 401
    ids = httpx.get(f"{service}/v1/adapters", headers={"Authorization": f"Bearer {TOKEN}"}).json()["data"]
    assert ids == ["lora-00", "lora-01", "lora-02", "lora-03"]
    paths = httpx.get(f"{service}/openapi.json").json()["paths"]
    assert {"/v1/adapters", "/v1/merges/evaluate", "/v1/completions"} <= set(paths)


@pytest.mark.parametrize("change, status, words", [
    (lambda b: b.update(alpha=[1.0] * 3), 422, ["alpha", "expected 4 values", "got 3"]),
    (lambda b: b.update(beta=[0.1, 0.1, 9.0, 0.1]), 422, ["beta[2]", "out of bounds"]),
    (lambda b: b.update(alpha=[1.0, -0.5, 1.0, 1.0]), 422, ["alpha[1]", "0 ≤ α ≤ 1"]),
    (lambda b: b.update(alpha=[1.0, "x", 1.0, 1.0]), 422, ["alpha.1", "number"]),
    (lambda b: b.update(examples=[{"prompt": "1+2=", "answer": "3!"}]), 422, ["examples[0].answer", "'!'"]),
    # the EOS token's text is readable (an answer worked in turns), its characters alone are not
    (lambda b: b.update(examples=[{"prompt": "1+2=", "answer": "3</s>3<"}]), 422, ["examples[0].answer", "['<']"]),
    (lambda b: b.update(examples=[{"prompt": "1+2=", "answer": "3"}] * 2000), 413, ["at most 1024"]),
    (lambda b: b.update(dataset={"name": "add"}), 422, ["either examples or dataset"]),
    (lambda b: b.update(surprise=1), 422, ["surprise", "Extra inputs"]),
])
def test_malformed_requests_get_4xx_with_a_clear_message(service, tiny_task_dir, change, status, words):
    body = _body(4, _examples(tiny_task_dir, "add", n=2))
    change(body)
    r = httpx.post(f"{service}/v1/merges/evaluate", json=body, headers={"Authorization": f"Bearer {TOKEN}"})
    assert r.status_code == status, r.text
    msg = r.json()["detail"]["message"]
    assert all(w in msg for w in words), msg


def test_an_answer_worked_in_turns_is_scored(service):
    """EOS inside an answer (zoo v2's word_add: each turn ends as an answer does) is one token of the vocabulary."""
    body = _body(4, [{"prompt": "w:k:ab+cd=", "answer": "1+2</s>1+2=3</s>e:3=ef"}])
    r = httpx.post(f"{service}/v1/merges/evaluate", json=body, headers={"Authorization": f"Bearer {TOKEN}"})
    assert r.status_code == 200 and r.json()["n"] == 1, r.text


def test_non_finite_and_oversized_payloads(service):
    auth = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"}
    raw = '{"alpha": [NaN, 1, 1, 1], "beta": [0.25, 0.25, 0.25, 0.25], "examples": [{"prompt": "1+2=", "answer": "3"}]}'
    r = httpx.post(f"{service}/v1/merges/evaluate", content=raw, headers=auth)
    assert r.status_code == 422 and "alpha.0" in r.json()["detail"]["message"]
    big = json.dumps(_body(4, [{"prompt": "1+2=", "answer": "3"}]) | {"pad": "x" * (2 << 20)})
    r = httpx.post(f"{service}/v1/merges/evaluate", content=big, headers=auth)
    assert r.status_code == 413


def test_budget_is_enforced_and_bad_requests_are_free(service, tiny_task_dir):
    ex = _examples(tiny_task_dir, "add", n=2)
    with MergeClient(service, SMALL_TOKEN, retries=0) as c:
        with pytest.raises(ServiceError, match="expected 4 values"):
            c.evaluate([1.0] * 3, [0.25] * 4, ex)
        for _ in range(SMALL_BUDGET):
            c.evaluate([1.0] * 4, [0.25] * 4, ex)
        with pytest.raises(BudgetExhausted, match="budget"):
            c.evaluate([1.0] * 4, [0.25] * 4, ex)
        assert c.queries == SMALL_BUDGET
    # the client's own budget stops it before the server is asked
    with MergeClient(service, TOKEN, max_queries=1) as c:
        c.evaluate([1.0] * 4, [0.25] * 4, ex)
        with pytest.raises(BudgetExhausted, match="query budget of 1"):
            c.evaluate([1.0] * 4, [0.25] * 4, ex)


def test_concurrent_merges_are_isolated(service, tiny_task_dir):
    """Different merges sent at once get exactly the answers they get one at a time."""
    ex = _examples(tiny_task_dir, "add", n=16) + _examples(tiny_task_dir, "reverse", n=16)
    rng = np.random.default_rng(0)
    merges = [(rng.uniform(0.2, 1, 4), rng.uniform(-1.5, 1.5, 4)) for _ in range(4)]
    with MergeClient(service, TOKEN) as c:
        alone = [c.evaluate(a, b, ex, per_example=True)["per_example_loss"] for a, b in merges]
    assert len({tuple(x) for x in alone}) == len(merges)  # the merges really differ
    got: dict[int, list] = {}

    def ask(k: int) -> None:
        with MergeClient(service, TOKEN) as c:
            got[k] = c.evaluate(*merges[k % len(merges)], ex, per_example=True)["per_example_loss"]

    threads = [threading.Thread(target=ask, args=(k,)) for k in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for k, losses in got.items():
        assert losses == alone[k % len(merges)], f"request {k} got another merge's answer"


def test_completions_follow_the_openai_shape_and_match_accuracy(service, tiny_task_dir):
    ex = _examples(tiny_task_dir, "add", n=6)
    n = 4
    beta = [1.0, 0.0, 0.0, 0.0]
    body = {"model": "merge", "prompt": [e["prompt"] for e in ex], "max_tokens": 8,
            "merge": {"alpha": [1.0] * n, "beta": beta}}
    r = httpx.post(f"{service}/v1/completions", json=body, headers={"Authorization": f"Bearer {TOKEN}"})
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["object"] == "text_completion" and len(out["choices"]) == len(ex) and out["usage"]["total_tokens"] > 0
    with MergeClient(service, TOKEN) as c:
        correct = c.evaluate([1.0] * n, beta, ex, accuracy=True, per_example=True)["per_example_correct"]
    # greedy text equals the answer exactly where teacher-forced exact match says the merge is right
    assert [ch["text"] == e["answer"] for ch, e in zip(out["choices"], ex, strict=True)] == correct


@pytest.fixture
def flaky_server():
    """A real HTTP server on loopback that answers from a script: [(delay_s, status, body), ...], then 200."""
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    script, seen = [], []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802 — the stdlib's name
            self.rfile.read(int(self.headers["Content-Length"]))
            seen.append(self.path)
            delay, status, body = script.pop(0) if script else (0, 200, {"loss": 1.5, "n": 1, "budget_left": 9})
            time.sleep(delay)
            data = json.dumps(body).encode()
            try:
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)
            except OSError:  # the client gave up (time-out) before the answer
                pass

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}", script, seen
    server.shutdown()
    server.server_close()


def test_client_retries_transient_errors_but_not_bad_requests(flaky_server):
    url, script, seen = flaky_server
    ex = [{"prompt": "1+1=", "answer": "2"}]
    busy = {"detail": {"code": "busy", "message": "try later"}}
    script += [(0, 503, busy), (0.6, 200, {}), (0, 429, busy)]  # a 5xx, a time-out, a rate limit, then the answer
    with MergeClient(url, "t", backoff_s=0.001, timeout_s=0.3) as c:
        assert c.evaluate([1.0], [1.0], ex)["loss"] == 1.5
        assert len(seen) == 4 and c.retried == 3 and c.queries == 1
        script.append((0, 422, {"detail": {"code": "invalid_request", "message": "alpha: bad"}}))
        with pytest.raises(ServiceError, match="HTTP 422: alpha: bad"):
            c.evaluate([1.0], [1.0], ex)
        assert len(seen) == 5  # a 4xx other than 429 is not retried
        script += [(0, 503, busy)] * 3
        with pytest.raises(ServiceError, match="failed after 3 attempts .*HTTP 503: try later"):
            MergeClient(url, "t", retries=2, backoff_s=0.001, retry_window_s=0).evaluate([1.0], [1.0], ex)


# -- a whole run that cannot read the adapters ---------------------------------------------------------------------
def _can_unshare() -> bool:
    return shutil.which("unshare") is not None and subprocess.run(
        ["unshare", "-m", "--propagation", "private", "true"], capture_output=True).returncode == 0


def _experiment(path: Path, task_dir: Path, url: str, token_file: Path) -> Path:
    cfg = {"kind": "blackbox", "name": "bb", "seed": 42, "zoo": "tiny",
           "service": {"launch": "none", "url": url, "token_env": "NO_SUCH_VARIABLE_SET",
                       "token_file": str(token_file)},
           "data": {"tasks": {t: str(task_dir / t) for t in ("add", "reverse")}, "max_examples": 8},
           "stages": {"popsize": 4, "denoise_budget": 8, "scale_budget": 8},
           "ablations": ["no_flip"], "whitebox": {"enabled": False}}
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.mark.slow
@pytest.mark.skipif(not _can_unshare(), reason="needs a mount namespace (root, unshare) to hide the adapters")
def test_run_as_a_process_that_cannot_read_the_adapters(service, tiny_lora, evomerge_home, tiny_task_dir, tmp_path):
    """`evomerge run` in a mount namespace where the whole model store (zoo + LoRA repository) is an empty tmpfs:
    the search still runs — it only ever talks HTTP — and the token appears nowhere in the run directory. `evomerge resume`
    then replays the run from its store and sends no query."""
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    exp = _experiment(tmp_path / "bb.yaml", tiny_task_dir, service, token_file)
    run_dir = tmp_path / "run"
    adapter = next(tiny_lora.glob("*/adapter_model.safetensors"))
    script = (f"mount -t tmpfs -o size=1m tmpfs {evomerge_home} && "
              f"if cat {adapter} > /dev/null 2>&1; then echo ADAPTERS-VISIBLE; exit 3; fi && "
              f"exec {sys.executable} -m evomerge.cli run {exp} --run-dir {run_dir}")
    env = {**os.environ, "PYTHONPATH": str(REPO), "COLUMNS": "200"}

    def budget() -> int:
        return httpx.get(f"{service}/v1/budget", headers={"Authorization": f"Bearer {TOKEN}"}).json()["budget_left"]

    before = budget()
    r = subprocess.run(["unshare", "-m", "--propagation", "private", "sh", "-c", script], env=env,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert adapter.is_file()  # hidden from the run only
    results = json.loads((run_dir / "results.json").read_text())
    labels = [row["label"] for row in results["rows"]]
    assert labels[0] == "Evo-Merging (denoise + scale)" and "ablation: without sign flips" in labels
    assert any(lbl.startswith("best single adapter") for lbl in labels)
    assert all(row["heldout"] for row in results["rows"])
    used = before - budget()
    assert used == results["queries"]["search"] + results["queries"]["baselines"] + results["queries"]["heldout"]
    assert results["queries"]["search"] == 8 + 8 + 8
    for f in run_dir.rglob("*"):
        if f.is_file():
            assert TOKEN.encode() not in f.read_bytes(), f"the token leaked into {f}"

    before = budget()
    r = subprocess.run([sys.executable, "-m", "evomerge.cli", "resume", str(run_dir)],
                       env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert budget() == before  # every answer came from the store
    assert json.loads((run_dir / "results.json").read_text())["rows"] == results["rows"]
    from evomerge.reporting.status import run_status

    s = run_status(run_dir)
    assert s["state"] == "finished" and s["generations"] == {"done": 6, "total": 6}
    assert s["evaluations"]["done"] == s["evaluations"]["total"] == 24


def test_failed_queries_are_recorded_and_the_run_reports(service, tiny_task_dir, tmp_path):
    """A token whose budget runs out mid-search: the refused query is a failed evaluation and the run still
    reports; given a token with budget, the run continues and asks the refused queries again."""
    from evomerge.blackbox.runner import BlackboxRunner
    from evomerge.store import RunDir

    tokens = tmp_path / "token"
    tokens.write_text(SMALL_TOKEN + "\n")  # its budget was used up by the budget test (or is at most 3)
    exp = _experiment(tmp_path / "bb.yaml", tiny_task_dir, service, tokens)
    results = BlackboxRunner(exp, tmp_path / "run").run()
    assert results["budget_stop"] and "budget" in results["budget_stop"]
    store = RunDir.open(tmp_path / "run").store()
    failed = [e for e in store.evaluations() if e.status == "failed"]
    store.close()
    assert failed and "budget" in failed[0].error
    tokens.write_text(TOKEN + "\n")  # a token with budget left: the same run goes on where it stopped
    results = BlackboxRunner(exp, tmp_path / "run").run()
    assert results["budget_stop"] is None and results["queries"]["search"] == 24
    store = RunDir.open(tmp_path / "run").store()
    assert all(e.status == "ok" for e in store.evaluations("search"))
    assert all(row["heldout"] and "error" not in row for row in results["rows"])
    store.close()


def test_stages_can_start_at_the_best_single_adapter(service, tiny_task_dir, tmp_path):
    """`stages.start: best_single`: one query per adapter first, then stage 1 holds β at the best of them and stage 2
    starts its search there (the paper's start, 1/N each, can lie far below a single adapter)."""
    from evomerge.blackbox.runner import BlackboxRunner
    from evomerge.store import RunDir

    tokens = tmp_path / "token"
    tokens.write_text(TOKEN + "\n")
    exp = _experiment(tmp_path / "bb.yaml", tiny_task_dir, service, tokens)
    cfg = yaml.safe_load(exp.read_text())
    cfg["stages"]["start"] = "best_single"
    exp.write_text(yaml.safe_dump(cfg))
    results = BlackboxRunner(exp, tmp_path / "run").run()
    store = RunDir.open(tmp_path / "run").store()
    try:
        singles = {e.label: e.per_task["loss"] for e in store.evaluations("tune") if e.label.startswith("single-")}
        search = [(e.label, json.loads(e.recipe)["beta"]) for e in store.evaluations("search")]
    finally:
        store.close()
    top = min(singles, key=singles.get).removeprefix("single-")
    one_hot = [1.0 if a == top else 0.0 for a in results["adapters"]]
    denoise = [beta for label, beta in search if label.startswith("denoise-")]
    assert denoise and all(beta == one_hot for beta in denoise)
    assert any(r["label"] == "stage 1 only (denoise, β = the start)" for r in results["rows"])
    scale = np.mean([beta for label, beta in search if label.startswith("scale-g0-")], axis=0)
    assert int(np.argmax(scale)) == results["adapters"].index(top)  # the search is around that adapter


@pytest.mark.parametrize("edit, expected", [
    (lambda c: c["service"].update(launch="none"), "service.url: launch none needs the URL"),
    (lambda c: c["stages"].update(popsize=0), "stages.popsize: Input should be greater than 0"),
    (lambda c: c.update(ablations=["no_scale"]), "ablations[0]"),
    (lambda c: c["data"].update(tasks={}), "data.tasks"),
])
def test_bad_blackbox_experiment_is_named(tmp_path, edit, expected):
    from typer.testing import CliRunner

    from evomerge.cli import app

    cfg = yaml.safe_load((REPO / "experiments" / "blackbox_lora.yaml").read_text())
    cfg["data"]["tasks"] = {t: str(REPO / "fitness" / "data" / "zoo" / t) for t in cfg["data"]["tasks"]}
    edit(cfg)
    path = tmp_path / "bb.yaml"
    path.write_text(yaml.safe_dump(cfg))
    result = CliRunner().invoke(app, ["validate", str(path)])
    assert result.exit_code == 2 and expected in result.stderr, result.stderr


@pytest.mark.slow
def test_kill_then_resume_equals_an_uninterrupted_run(service, tiny_task_dir, tmp_path):
    """SIGKILL at three random moments of a black-box run, `evomerge resume` each time: the optimizer continues from
    the store's snapshots, so the same queries in the same order, the same table, nothing lost or answered twice."""
    from scripts.kill_resume import kill_and_resume

    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    exp = _experiment(tmp_path / "bb.yaml", tiny_task_dir, service, token_file)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    report = kill_and_resume(exp, tmp_path / "work", kills=3, seed=2, env=env, log=lambda *_: None)
    assert report["same_sequence"] and report["same_best"] and report["same_results"], report
    assert report["lost"] == 0 and report["recomputed"] == [], report
    from evomerge.reporting.status import run_status

    s = run_status(tmp_path / "work" / "killed")
    assert s["state"] == "finished" and s["generations"] == {"done": 6, "total": 6}
    results = json.loads((tmp_path / "work" / "killed" / "results.json").read_text())
    assert results["schema_version"] == 2 and results["kind"] == "blackbox"
    assert results["best_candidate"] == results["rows"][0]["label"]
    _readers_work(tmp_path / "work" / "killed", "ᾱ=")


def _readers_work(run_dir: Path, recipe_text: str) -> None:
    """`evomerge leaderboard` and `evomerge report` read a run of this kind."""
    from typer.testing import CliRunner

    from evomerge.cli import app

    board = CliRunner().invoke(app, ["leaderboard", str(run_dir), "--format", "md"])
    assert board.exit_code == 0 and recipe_text in board.stdout, board.stdout + board.stderr
    report = CliRunner().invoke(app, ["report", str(run_dir)])
    assert report.exit_code == 0 and (run_dir / "report.html").is_file(), report.stderr
