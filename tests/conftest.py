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
