"""The schema of a black-box merging experiment (`kind: blackbox` in the experiment file).

Nothing in it is a secret: the API token is named by an environment variable or a file path, and read when the run
starts, so neither the run directory nor the store ever holds it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, PositiveInt, ValidationError, model_validator

from evomerge.config import SEED_MAX, RunName, format_validation_error, read_mapping
from evomerge.config import StrictModel as _Strict
from evomerge.errors import ConfigError, EvomergeError
from evomerge.store import RunDir


class ServiceConfig(_Strict):
    # local: start `evomerge serve` as a subprocess for the run and stop it after; none: use a running service at url
    launch: Literal["local", "none"] = "local"
    url: str | None = None
    token_env: str = "EVOMERGE_SERVICE_TOKEN"
    token_file: str | None = None
    # launch local only: what the provider hosts
    base: str = "zoo:base"
    repository: str = "zoo:lora"
    replicas: PositiveInt = 1
    # the client
    retries: int = Field(4, ge=0, le=1000)
    timeout_s: float = Field(120.0, gt=0)
    # transport failures (connection, time-out, 5xx) are retried for at least this long: a restart is waited out
    retry_window_s: float = Field(60.0, ge=0, le=86400)

    @model_validator(mode="after")
    def _url_or_launch(self) -> ServiceConfig:
        if self.launch == "none" and not self.url:
            raise ValueError("service.url: launch none needs the URL of a running service (e.g. http://127.0.0.1:8000)")
        if self.launch == "local" and self.url:
            raise ValueError("service.url: launch local starts its own service; set launch: none to use a URL")
        return self


class DataConfig(_Strict):
    tasks: dict[str, str] = Field(min_length=1, description="task name -> directory of <split>.jsonl (the user's data)")
    search_split: str = "search"
    heldout_split: str = "heldout"
    max_examples: PositiveInt = 32  # validation examples per task sent with every query


class StagesConfig(_Strict):
    """The two CMA-ES stages with the defaults of Chen et al. (black-box model merging)."""

    popsize: PositiveInt = 20
    sigma0: float = Field(0.05, gt=0)
    denoise_budget: PositiveInt = 400  # evaluations of stage 1 (α, β fixed at 1/N)
    scale_budget: PositiveInt = 800  # evaluations of stage 2 (β, α fixed)
    lam_denoise: float = Field(0.05, ge=0)
    lam_scale: float = Field(0.05, ge=0)
    beta_bound: float = Field(1.5, gt=0)
    # where β starts (and what stage 1 holds it at): 1/N per adapter, LoRAHub's and the paper's start, or the best
    # single adapter on the validation examples (one query per adapter first), so that the search starts from the
    # best of what it is given, as a parameter-space search starts from its known candidates
    start: Literal["uniform", "best_single"] = "uniform"


class WhiteboxConfig(_Strict):
    """Task arithmetic and TIES over the same adapters, computed locally (needs the weights: a comparison only)."""

    enabled: bool = True
    lams: list[float] = [0.02, 0.05, 0.1, 0.2, 0.3, 0.5, 1.0]
    ties_density: float = Field(0.5, gt=0, le=1)


class BlackboxExperiment(_Strict):
    kind: Literal["blackbox"]
    name: RunName
    seed: int = Field(42, ge=0, le=SEED_MAX)
    zoo: Literal["default", "tiny", "zoo2"] = "default"
    threads: PositiveInt = 1
    service: ServiceConfig = ServiceConfig()
    data: DataConfig
    stages: StagesConfig = StagesConfig()
    ablations: list[Literal["no_denoise", "no_flip"]] = ["no_denoise", "no_flip"]
    whitebox: WhiteboxConfig = WhiteboxConfig()


def is_blackbox(path: Path) -> bool:
    """Whether an experiment file declares `kind: blackbox` (read without validating the rest)."""
    from evomerge.config import experiment_kind

    return experiment_kind(Path(path)) == "blackbox"


def load_blackbox(path: str | Path) -> tuple[BlackboxExperiment, Path]:
    path = Path(path)
    raw = read_mapping(path, "experiment file")
    try:
        cfg = BlackboxExperiment.model_validate(raw)
    except ValidationError as e:
        raise ConfigError(format_validation_error(e, str(path))) from None
    return cfg, path.parent.resolve()


def is_blackbox_run(run_dir: Path) -> bool:
    """Whether a run directory holds a black-box run (its store says kind: blackbox). A directory that cannot be
    read is not one: the regular resume path reports what is wrong with it."""
    try:
        store = RunDir.open(run_dir).store()
    except EvomergeError:
        return False
    try:
        return store.get_meta("kind") == "blackbox"
    finally:
        store.close()
