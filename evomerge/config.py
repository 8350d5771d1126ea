"""The experiment schema. Errors name the field path and what was expected."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, PositiveInt, ValidationError, field_validator, model_validator

from evomerge.errors import ConfigError


def _registered(name: str, registry: dict, what: str) -> str:
    """Check `name` against a registry. The validators import their registry when a file is validated, not when
    this module is imported, because the registries pull in torch."""
    if name not in registry:
        raise ValueError(f"unknown {what} {name!r}; expected one of {sorted(registry)}")
    return name


class _Strict(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class SourcesConfig(_Strict):
    # a model reference: a Hugging Face model directory (relative to the experiment file), zoo:NAME, or run:RUN_DIR
    # (that finished run's best model, exported once into RUN_DIR/exported/)
    base: str | None = Field(None, description="base model (layer_weights); a data flow has none")
    models: list[str] = Field(min_length=1, description="source models merged onto base; for data_flow, the "
                                                        "flow's models, the first (A) giving embeddings and head")
    # auto: keep task vectors in memory when they fit, else read them from memory-mapped files for every merge
    stream: Literal["auto"] | bool = "auto"


class FlowSpaceConfig(_Strict):
    """data_flow only (see evomerge.spaces.data_flow)."""

    repeats: PositiveInt = 3  # r: the models' layers laid out r times, T = M·r slots (the paper's r = 3)
    # matrix: the paper's M×M transition scales; step: one scale per slot; none: no scaling
    scaling: Literal["matrix", "step", "none"] = "matrix"
    scale_range: tuple[float, float] = (0.5, 2.0)
    # binary: indicator genes are discrete (cma_wm keeps them on {0, 1}); threshold: continuous, on when > 0.5
    indicator: Literal["binary", "threshold"] = "binary"
    init_margin: float = Field(0.25, gt=0, le=0.5)  # threshold: how far from 0.5 the start point puts each slot

    @field_validator("scale_range")
    @classmethod
    def _positive(cls, v: tuple[float, float]) -> tuple[float, float]:
        if not 0 < v[0] < v[1]:
            raise ValueError(f"expected [low, high] with 0 < low < high (scales must stay positive to fold into an "
                             f"exported checkpoint), got {list(v)}")
        return v


class SpaceConfig(_Strict):
    type: str = "layer_weights"
    operator: str = "task_arithmetic"
    granularity: Literal["model", "layer"] | PositiveInt = "layer"
    weight_range: tuple[float, float] = (0.0, 1.0)
    density_range: tuple[float, float] = (0.1, 1.0)
    normalize: bool | None = None
    lam: float = 1.0
    gamma: float = Field(0.01, ge=0, lt=1)
    epsilon: float = Field(0.15, gt=0, lt=0.5)
    rescale: Literal["inverse", "l1", "none"] | None = None  # None: the operator's default
    flow: FlowSpaceConfig | None = None  # data_flow: its settings (defaults when left out)
    # mosaic only: split points may fall every this many rows inside a tensor (None: between whole tensors)
    rows: PositiveInt | None = None

    @model_validator(mode="before")
    @classmethod
    def _flow_defaults(cls, data):
        if isinstance(data, dict) and data.get("type") == "data_flow" and data.get("flow") is None:
            data = {**data, "flow": {}}
        return data

    @model_validator(mode="after")
    def _flow_only_for_data_flow(self) -> SpaceConfig:
        if self.flow is not None and self.type != "data_flow":
            raise ValueError("space.flow: only used with space.type: data_flow")
        return self

    @field_validator("type")
    @classmethod
    def _known_space(cls, v: str) -> str:
        from evomerge.spaces import SPACES

        return _registered(v, SPACES, "search space")

    @field_validator("operator")
    @classmethod
    def _known_operator(cls, v: str) -> str:
        from evomerge.merge import OPERATORS

        return _registered(v, OPERATORS, "operator")

    @field_validator("weight_range", "density_range")
    @classmethod
    def _ordered(cls, v: tuple[float, float]) -> tuple[float, float]:
        if v[0] >= v[1]:
            raise ValueError(f"expected [low, high] with low < high, got {list(v)}")
        return v


class M2N2Config(_Strict):
    """M2N2's switches (optimizer.type m2n2); the archive size is optimizer.popsize (default 20)."""

    alpha: float = Field(1.0, ge=0)  # resource-competition exponent; 0: a plain GA
    attraction: bool = True  # second parent by attraction to the first (else by shared fitness)
    split_point: bool = True  # crossover with a split point (else one SLERP of the whole models)
    crossover: bool = True  # else a child is a copy of its first parent


class OptimizerConfig(_Strict):
    type: str = "cma"
    generations: PositiveInt = 10
    popsize: PositiveInt | None = None  # None: CMA-ES default 4 + ⌊3 ln n⌋
    sigma0: float = Field(1 / 6, gt=0)
    x0: float = Field(0.5, ge=0, le=1)
    # None: steady-state (a new candidate the moment any result lands) when the optimizer can and there is more
    # than one worker; false: whole generations (exactly reproducible); true: always steady-state
    steady_state: bool | None = None
    # score the start point, the sources and the baselines the space can express on the search split first, and
    # give them to the optimizer (a search then never ends below what it was given); false: the optimizer alone
    warm_start: bool = True
    m2n2: M2N2Config = M2N2Config()

    @field_validator("type")
    @classmethod
    def _known_optimizer(cls, v: str) -> str:
        from evomerge.optim import OPTIMIZERS

        return _registered(v, OPTIMIZERS, "optimizer")


class LmEvalConfig(_Strict):
    """How the live model is wrapped for lm-evaluation-harness (fitness.type: lm_eval), and generation settings
    that override every task's own (None: the task's)."""

    batch_size: PositiveInt = 64
    add_bos_token: bool | None = None  # None: lm-eval's default for the model
    max_length: PositiveInt | None = None
    apply_chat_template: bool = False
    system_instruction: str | None = None  # with a chat template: the system message
    num_fewshot: int | None = Field(None, ge=0)
    max_gen_toks: PositiveInt | None = None  # generation tasks: max new tokens (too few silently turns wins into losses)
    until: list[str] | None = None  # generation tasks: stop sequences
    include_path: str | None = None  # a directory of task YAMLs whose task names `tasks` may use (relative to the file)


class TaskSpec(_Strict):
    """A task spelled out: where it comes from, how its dataset calls the experiment's splits, which metric."""

    # native/python: a directory holding <split>.jsonl; lm_eval: a task YAML file, or the name of a task lm-eval
    # knows (its registry, or fitness.lm_eval.include_path)
    source: str
    # the experiment's split name (search_split, heldout_split) -> the dataset's (e.g. {search: validation})
    splits: dict[str, str] = {}
    metric: str | None = None  # lm_eval: the per-example metric (default: the task's first)
    # a per-example check: an example counts only when its answer also passes it (see evomerge.fitness.checks:
    # script:japanese, regex:...)
    check: str | None = None

    @field_validator("check")
    @classmethod
    def _known_check(cls, v: str | None) -> str | None:
        if v is not None:
            from evomerge.fitness.checks import make_check

            make_check(v)
        return v


class FitnessConfig(_Strict):
    # native: exact match of the answer; python: a per-example scorer of yours, `scorer: module:function`;
    # lm_eval: lm-evaluation-harness tasks from task YAML files, run on the in-memory model
    type: Literal["native", "python", "lm_eval"] = "native"
    # name -> where the task comes from (see TaskSpec.source), or a TaskSpec
    tasks: dict[str, str | TaskSpec] = Field(min_length=1)
    lm_eval: LmEvalConfig = LmEvalConfig()
    scorer: str | None = None  # python: "module:function", module relative to the experiment file or importable
    # mean: one objective, the (weighted) mean over tasks; per_task: one objective per task (multi-objective search)
    objective: Literal["mean", "per_task"] = "mean"
    weights: dict[str, float] | None = None  # per-task weights of the mean (default: equal)
    allow_test_split: bool = False  # search on a split a task calls its test split (contamination: refused by default)
    search_split: str = "search"
    heldout_split: str = "heldout"
    max_examples: PositiveInt | None = None  # per task, on the search split: the first N
    # cheap fitness: score the search on this many examples per task, drawn once at random (the run's seed); at the
    # end the `rescore_top` best candidates are scored on the whole search split and on the held-out split
    search_subset: PositiveInt | None = None
    rescore_top: int = Field(5, ge=1)
    # also every N search evaluations (whole generations): the `rescore_top` best so far on the whole search split
    # (with search_subset) and on the held-out split, kept in results.json as `checkpoints`
    rescore_every: PositiveInt | None = None
    mode: Literal["teacher_forced", "generate"] = "teacher_forced"
    # native: a prompt is the user turn of the tokenizer's chat template, with the generation prompt (lm_eval has
    # its own switch, lm_eval.apply_chat_template)
    apply_chat_template: bool = False
    batch_size: PositiveInt = 128
    max_new_tokens: PositiveInt = 16

    @model_validator(mode="after")
    def _consistent(self) -> FitnessConfig:
        if self.search_split == self.heldout_split:
            raise ValueError("search_split and heldout_split must differ: held-out numbers must not be searched on")
        if self.type == "python" and (not self.scorer or ":" not in self.scorer):
            raise ValueError("fitness.scorer: type python needs scorer: 'module:function'")
        if self.type != "python" and self.scorer:
            raise ValueError("fitness.scorer: only used with type: python")
        if self.apply_chat_template and self.type != "native":
            raise ValueError("fitness.apply_chat_template: only used with type: native (lm_eval: "
                             "lm_eval.apply_chat_template; python: your scorer formats its prompts)")
        if self.search_subset and self.max_examples:
            raise ValueError("fitness.search_subset: use either search_subset (a random subset, re-checked at the "
                             "end) or max_examples (the first N), not both")
        for name in self.tasks:
            spec = self.task_spec(name)
            if spec.metric and self.type != "lm_eval":
                raise ValueError(f"fitness.tasks.{name}.metric: only used with type: lm_eval (native scores exact "
                                 "match)")
            if spec.check and self.type == "python":
                raise ValueError(f"fitness.tasks.{name}.check: a python scorer applies its own checks")
            unknown = sorted(set(spec.splits) - {self.search_split, self.heldout_split})
            if unknown:
                raise ValueError(f"fitness.tasks.{name}.splits: {unknown} are not this experiment's splits (expected "
                                 f"keys among {[self.search_split, self.heldout_split]})")
        if self.weights is not None:
            unknown = sorted(set(self.weights) - set(self.tasks))
            if unknown or any(w < 0 for w in self.weights.values()) or not any(self.weights.values()):
                raise ValueError(f"fitness.weights: expected non-negative weights for tasks among "
                                 f"{sorted(self.tasks)}, not all zero (unknown: {unknown})")
        return self

    def task_spec(self, name: str) -> TaskSpec:
        spec = self.tasks[name]
        return TaskSpec(source=spec) if isinstance(spec, str) else spec

    @property
    def full_search_split(self) -> str:
        """The name under which the whole search split is scored when the search runs on a subset."""
        return f"{self.search_split}:full"

    def task_weights(self) -> dict[str, float]:
        w = self.weights or {}
        return {t: float(w.get(t, 0.0 if self.weights else 1.0)) for t in self.tasks}


class ExecutorConfig(_Strict):
    # local: in this process; process: a child process, replaced when it dies or hangs; ray: a pool of Ray actors
    type: Literal["local", "process", "ray"] = "local"
    timeout_s: float | None = Field(None, gt=0)  # per evaluation; needs an executor that can stop a worker
    max_retries: int = Field(1, ge=0)  # re-issues of a candidate whose worker died, before it is recorded FAILED
    # ray only. None: one worker per GPU of the cluster (GPUs visible and device not cpu), else one per CPU
    workers: PositiveInt | None = None
    gpus_per_worker: float | None = Field(None, ge=0)  # None: 1 when the cluster has GPUs, else 0
    cpus_per_worker: float | None = Field(None, gt=0)  # None: 1 with GPUs, else the CPUs shared among workers
    address: str | None = None  # None: start a local Ray instance; 'auto' or 'ray://head:10001': join a cluster

    @model_validator(mode="after")
    def _timeout_needs_a_process(self) -> ExecutorConfig:
        if self.timeout_s is not None and self.type == "local":
            raise ValueError("executor.timeout_s: needs type: process or ray (an evaluation running in this process "
                             "cannot be stopped)")
        ray_only = [f for f in ("workers", "gpus_per_worker", "cpus_per_worker", "address")
                    if getattr(self, f) is not None]
        if ray_only and self.type != "ray":
            raise ValueError(f"executor.{ray_only[0]}: only used with type: ray")
        return self


class BaselinesConfig(_Strict):
    enabled: bool = True
    ties_density: float = Field(0.5, gt=0, le=1)
    dare_density: float = Field(0.5, gt=0, le=1)
    # A single task-arithmetic weight tuned on the search split: gives the search its own credit.
    tuned_weights: list[float] = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0]


class ExperimentConfig(_Strict):
    name: str
    seed: int = 0
    zoo: Literal["default", "tiny"] = "default"  # which zoo `zoo:NAME` references resolve to
    device: Literal["auto", "cpu", "cuda"] = "auto"  # auto: the GPU when there is one
    threads: PositiveInt = 1  # torch threads per worker: 1 when workers share cores (DESIGN §8); see quickstart
    sources: SourcesConfig
    space: SpaceConfig = SpaceConfig()
    optimizer: OptimizerConfig = OptimizerConfig()
    fitness: FitnessConfig
    baselines: BaselinesConfig = BaselinesConfig()
    executor: ExecutorConfig = ExecutorConfig()

    @model_validator(mode="after")
    def _space_fits_sources(self) -> ExperimentConfig:
        flow = self.space.type == "data_flow"
        if flow and self.sources.base is not None:
            raise ValueError("sources.base: a data flow runs over sources.models only (the first is A, which gives "
                             "the embeddings and head); leave base out")
        if flow and len(self.sources.models) < 2:
            raise ValueError(f"sources.models: a data flow needs at least two models, got {len(self.sources.models)}")
        if not flow and self.sources.base is None:
            raise ValueError(f"sources.base: required for space.type {self.space.type}")
        return self

    @property
    def discrete_genes(self) -> bool:
        return self.space.type == "data_flow" and self.space.flow.indicator == "binary"

    @model_validator(mode="after")
    def _operator_fits_sources(self) -> ExperimentConfig:
        if self.space.operator == "slerp" and len(self.sources.models) != 1:
            raise ValueError(f"space.operator: slerp interpolates between the base and exactly one source; "
                             f"sources.models lists {len(self.sources.models)}")
        return self

    @model_validator(mode="after")
    def _mosaic_is_m2n2(self) -> ExperimentConfig:
        if (self.space.type == "mosaic") != (self.optimizer.type == "m2n2"):
            raise ValueError(f"space.type {self.space.type!r} with optimizer.type {self.optimizer.type!r}: the "
                             f"m2n2 optimizer and the mosaic space only work together")
        # fields given a value other than their default (a stored config lists every field, defaults included)
        defaults = SpaceConfig.model_fields
        unused = sorted(f for f in self.space.model_fields_set - {"type", "rows"}
                        if getattr(self.space, f) != defaults[f].get_default(call_default_factory=True))
        if self.space.type == "mosaic" and unused:
            raise ValueError(f"space.{unused[0]}: not used by the mosaic space (a mosaic is a linear per-tensor "
                             f"combination of the sources); remove {unused}")
        if self.space.type != "mosaic" and self.space.rows is not None:
            raise ValueError("space.rows: only used by the mosaic space (row-level split points)")
        return self

    @property
    def n_objectives(self) -> int:
        return len(self.fitness.tasks) if self.fitness.objective == "per_task" else 1

    @model_validator(mode="after")
    def _optimizer_fits_objectives(self) -> ExperimentConfig:
        from evomerge.optim import OPTIMIZERS
        from evomerge.optim.base import fits, optimizer_names

        cls = OPTIMIZERS[self.optimizer.type]
        if self.optimizer.steady_state and not cls.steady_state:
            able = optimizer_names(lambda c: c.steady_state)
            raise ValueError(f"optimizer.steady_state: {self.optimizer.type} works in whole generations; "
                             f"use one of {able}")
        if self.discrete_genes and not fits(cls, self.n_objectives, discrete=True):
            able = optimizer_names(lambda c: fits(c, self.n_objectives, discrete=True))
            raise ValueError(f"optimizer.type: {self.optimizer.type} has continuous genes only, but "
                             f"space.flow.indicator: binary makes the slot indicators discrete; use one of {able}, "
                             "or indicator: threshold")
        if not fits(cls, self.n_objectives, discrete=False):
            multi = optimizer_names(lambda c: fits(c, self.n_objectives, discrete=False))
            raise ValueError(f"optimizer.type: {self.optimizer.type} is single-objective but fitness.objective is "
                             f"per_task ({self.n_objectives} objectives); use one of {multi}")
        return self


def _loc(loc: tuple) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def format_validation_error(err: ValidationError, source: str) -> str:
    parts = []
    for e in err.errors():
        msg = e["msg"].removeprefix("Value error, ")
        where = _loc(e["loc"])
        if e["type"] == "missing":
            msg = "required field is missing"
        elif e["type"] == "extra_forbidden":
            msg = "unknown field"
        elif "input" in e and e["type"] not in ("value_error",):
            msg += f" (got {e['input']!r})"
        parts.append(f"{where}: {msg}" if e["loc"] else msg)  # model-level checks name their fields themselves
    return f"{source}: " + "; ".join(parts)


def read_mapping(path: Path, what: str) -> dict:
    """Read a YAML file that must hold a mapping; `what` prefixes every error (a field or the file itself)."""
    if not path.is_file():
        raise ConfigError(f"{what}: {str(path)!r} not found (expected a YAML file)")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise ConfigError(f"{what}: {path} is not valid YAML: {e}".replace("\n", " ")) from None
    if not isinstance(data, dict):
        raise ConfigError(f"{what}: {path} must hold a YAML mapping of fields")
    return data


def experiment_kind(path: Path) -> str | None:
    """The top-level `kind:` of an experiment file: absent for merge searches; `m2n2_digits` for the M2N2 paper's
    digits reproduction (`evomerge.m2n2.digits`), which merges no Hugging Face models and has its own runner;
    `blackbox` for black-box merging through a merge service (`evomerge.blackbox`)."""
    try:
        raw = yaml.safe_load(path.read_text()) if path.is_file() else None
    except yaml.YAMLError:
        return None  # load_experiment reports it
    return raw.get("kind") if isinstance(raw, dict) else None


def load_experiment(path: str | Path) -> tuple[ExperimentConfig, Path]:
    """Parse and validate an experiment file; returns the config and the directory paths are relative to."""
    path = Path(path)
    raw = read_mapping(path, "experiment file")
    for section in ("space", "fitness"):  # a section may name a preset file instead of spelling it out
        if isinstance(raw.get(section), str):
            raw[section] = read_mapping(path.parent / raw[section], f"{section} (preset file)")
    try:
        cfg = ExperimentConfig.model_validate(raw)
    except ValidationError as e:
        raise ConfigError(format_validation_error(e, str(path))) from None
    return cfg, path.parent.resolve()
