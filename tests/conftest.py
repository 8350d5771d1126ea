import contextlib
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session", autouse=True)
def _one_thread():
    torch.set_num_threads(1)


@pytest.fixture(scope="session")
def evomerge_home(tmp_path_factory):
    home = tmp_path_factory.mktemp("evomerge_home")
    old = os.environ.get("EVOMERGE_HOME")
    os.environ["EVOMERGE_HOME"] = str(home)
    yield home
    if old is None:
        os.environ.pop("EVOMERGE_HOME")
    else:
        os.environ["EVOMERGE_HOME"] = old


@pytest.fixture(scope="session")
def tiny_zoo(evomerge_home):
    """A real (small) zoo built by the test session itself: base + one expert per task, HF directories."""
    from evomerge.zoo.build import PROFILES, build_zoo

    return build_zoo(PROFILES["tiny"], log=lambda *_: None)


@pytest.fixture(scope="session")
def tiny_task_dir(tmp_path_factory):
    from evomerge.zoo.build import PROFILES, write_task_data

    out = tmp_path_factory.mktemp("tasks")
    write_task_data(PROFILES["tiny"], out)
    return out


def write_experiment(path: Path, task_dir: Path, **overrides) -> Path:
    """A small experiment on the tiny zoo; `overrides` replace top-level sections."""
    import yaml

    cfg = {
        "name": "t",
        "seed": 0,
        "zoo": "tiny",
        "sources": {"base": "zoo:base", "models": ["zoo:add", "zoo:cipher", "zoo:reverse"]},
        "space": {"type": "layer_weights", "operator": "task_arithmetic", "granularity": "model"},
        "optimizer": {"type": "cma", "generations": 2, "popsize": 4},
        "fitness": {"type": "native", "tasks": {t: str(task_dir / t) for t in ("add", "cipher", "reverse")},
                    "max_examples": 30},
        "baselines": {"tuned_weights": [0.3, 0.6]},
    }
    cfg.update(overrides)
    path.write_text(yaml.safe_dump(cfg))
    return path


def poison_search(mp, nth: set[int]) -> None:
    """Make the merges of the nth search candidates (counted from 1; the known candidates scored before the search
    do not count) leave a NaN in the merged model: those candidates are recorded failed (the scorer's logit check
    catches them), and the run goes on. `mp`: a pytest MonkeyPatch."""
    import torch

    from evomerge.executors.worker import Worker
    from evomerge.merge.materialize import Merger

    real_evaluate, real_materialize, state = Worker.evaluate, Merger.materialize, {"n": 0, "now": False}

    def evaluate(self, job):
        if job.kind == "search":
            state["n"] += 1
        state["now"] = job.kind == "search" and state["n"] in nth
        return real_evaluate(self, job)

    def materialize(self, recipe, model, **kw):
        real_materialize(self, recipe, model, **kw)
        if state["now"]:
            with torch.no_grad():
                next(p for n, p in model.named_parameters() if n.endswith("norm.weight"))[0] = float("nan")

    mp.setattr(Worker, "evaluate", evaluate)
    mp.setattr(Merger, "materialize", materialize)


@pytest.fixture(scope="session")
def tiny_runs(tmp_path_factory, tiny_zoo, tiny_task_dir):
    """Two real runs: a multi-objective TIES search per layer with one failed candidate, and a short
    single-objective CMA-ES search of one weight per source."""
    from rich.console import Console

    from evomerge.runner import Runner

    tmp = tmp_path_factory.mktemp("boards")
    multi = write_experiment(tmp / "multi.yaml", tiny_task_dir, name="multi",
                             space={"type": "layer_weights", "operator": "ties", "granularity": "layer"},
                             optimizer={"type": "random", "generations": 2, "popsize": 4},
                             fitness={"type": "native", "objective": "per_task", "max_examples": 20,
                                      "tasks": {t: str(tiny_task_dir / t) for t in ("add", "cipher", "reverse")}},
                             baselines={"tuned_weights": [0.5]})
    single = write_experiment(tmp / "single.yaml", tiny_task_dir, name="single",
                              space={"type": "layer_weights", "operator": "task_arithmetic", "granularity": "model"},
                              optimizer={"type": "cma", "generations": 2, "popsize": 4},
                              baselines={"tuned_weights": [0.5]})
    with pytest.MonkeyPatch.context() as mp:
        poison_search(mp, {3})
        Runner(multi, tmp / "multi", console=Console(quiet=True)).run()
    Runner(single, tmp / "single", console=Console(quiet=True)).run()
    return tmp / "multi", tmp / "single"


@pytest.fixture
def mergekit_sorts_stably(monkeypatch):
    """mergekit's magnitude trims sort with torch's unstable sort, which keeps an arbitrary subset of the entries
    tied in magnitude at the threshold (common in bf16); evomerge breaks such ties by index, as a stable sort does
    (evomerge.merge.topk): golden tests against mergekit hand it that."""
    sort, argsort = torch.sort, torch.argsort
    monkeypatch.setattr(torch, "sort", lambda *a, **k: sort(*a, **{**k, "stable": True}))
    monkeypatch.setattr(torch, "argsort", lambda *a, **k: argsort(*a, **{**k, "stable": True}))


@pytest.fixture(scope="session")
def tiny_lora(tiny_zoo):
    """The tiny zoo's LoRA repository, for black-box merging."""
    from evomerge.zoo.lora import LORA_PROFILES, build_lora_repo

    return build_lora_repo(LORA_PROFILES["tiny"], log=lambda *_: None)


@contextlib.contextmanager
def serving(cmd: list[str], log: Path, wait_s: float = 180, stop_s: float = 30):
    """`evomerge serve` (`cmd`, from `serve_command`) in a child process, its output appended to `log`: yields its
    URL once it answers /health, stops it afterwards."""
    import subprocess

    from evomerge.blackbox.launch import wait_healthy

    port = cmd[cmd.index("--port") + 1]
    with open(log, "ab") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONPATH": str(REPO)})
    url = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(url, proc, wait_s, log)
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=stop_s)
