"""The experiment schema. Errors name the field path and what was expected."""

from __future__ import annotations

import os
import types
import typing
from pathlib import Path
from typing import Annotated, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PositiveInt,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from evomerge.errors import (  # noqa: F401
    ConfigError,
    RunName,
    format_validation_error,
    load_yaml,
    one_line,
    read_mapping,
    read_text,
    shown,
)

# Bounds on what an experiment file may ask for: far above any real run, far below what exhausts a machine.
SEED_MAX = 2**32 - 1  # numpy's and cmaes' seeds
MAX_POPSIZE, MAX_GENERATIONS = 100_000, 1_000_000




def _admits(ann, kind: type) -> bool:
    """Whether a field's annotation accepts a value of `kind` (bool or str) as it is, not by coercion. Anything
    beyond plain numbers, strings, literals, lists and unions (paths, sections) is left to pydantic (True)."""
    if ann is kind or ann is typing.Any:
        return True
    origin, args = typing.get_origin(ann), typing.get_args(ann)
    if origin is Annotated:
        return _admits(args[0], kind)
    if origin in (typing.Union, types.UnionType):
        return any(_admits(a, kind) for a in args)
    if origin is Literal:
        return any(type(a) is kind for a in args)
    return not (ann in (int, float, bool, str, type(None)) or origin in (list, tuple, dict))


def _no_coercion(value, ann, where: str):
    """Refuse what pydantic's lax mode would convert silently: true/false for a number, "0.5" for a float."""
    if isinstance(value, bool) and not _admits(ann, bool):
        raise ValueError(f"expected a number, got the boolean {str(value).lower()}")
    if isinstance(value, str) and not _admits(ann, str):
        raise ValueError(f"expected a number, got the string {shown(value)}")
    origin, args = typing.get_origin(ann), typing.get_args(ann)
    if origin is Annotated:
        return _no_coercion(value, args[0], where)
    if origin in (typing.Union, types.UnionType):
        if not any(typing.get_origin(a) in (list, tuple) for a in args):
            return value
        args = next(typing.get_args(a) for a in args if typing.get_origin(a) in (list, tuple))
        origin = list
    if origin in (list, tuple) and isinstance(value, (list, tuple)) and args:
        for i, v in enumerate(value):
            same = origin is list or (len(args) == 2 and args[1] is Ellipsis)  # list[X], tuple[X, ...]
            item = args[0] if same else args[min(i, len(args) - 1)]
            _no_coercion(v, item, where)
    return value


class StrictModel(BaseModel):
    """Every section of an experiment: unknown fields are errors, and nothing is coerced (no "0.5" for 0.5, no
    true for 1)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    @field_validator("*", mode="before")
    @classmethod
    def _strict_types(cls, value, info: ValidationInfo):
        name = info.field_name or ""
        return _no_coercion(value, cls.model_fields[name].annotation, name)


def _registered(name: str, registry: dict, what: str) -> str:
    """Check `name` against a registry. The validators import their registry when a file is validated, not when
    this module is imported, because the registries pull in torch."""
    if name not in registry:
        raise ValueError(f"unknown {what} {name!r}; expected one of {sorted(registry)}")
    return name


_Strict = StrictModel


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
    # one more gene per group, mapped onto scale_range, multiplying the group's merged task vector; auto: when the
    # operator normalizes (TIES's weighted mean and normalized sums cannot shrink the merge through the weights)
    scale: Literal["auto"] | bool = "auto"
    scale_range: tuple[float, float] = (0.0, 2.0)
    gamma: float = Field(0.01, ge=0, lt=1)
    epsilon: float = Field(0.15, gt=0, lt=0.5)
    rescale: Literal["inverse", "l1", "none"] | None = None  # None: the operator's default
    flow: FlowSpaceConfig | None = None  # data_flow: its settings (defaults when left out)
    # mosaic only: split points may fall every this many rows inside a tensor (None: between whole tensors)
    rows: PositiveInt | None = None
    # mosaic only: members combine the sources' task vectors over sources.base (θ_base + Σₖ Cₖ·τₖ, SLERP's angle
    # taken between task vectors), not their weights (Σₖ Cₖ·θₖ)
    task_vectors: bool = False

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

    @field_validator("weight_range", "density_range", "scale_range")
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
    generations: int = Field(10, ge=1, le=MAX_GENERATIONS)
    popsize: int | None = Field(None, ge=1, le=MAX_POPSIZE)  # None: CMA-ES default 4 + ⌊3 ln n⌋
    sigma0: float = Field(1 / 6, gt=0, le=10)  # genomes live in [0, 1]: a larger step is no search
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
    # generation tasks: max new tokens (too few silently turns wins into losses)
    max_gen_toks: PositiveInt | None = None
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


class RaceConfig(_Strict):
    """Racing: each search candidate is scored in batches, in one fixed stratified order, and stopped as soon as
    it is shown (with probability 1 − delta) not to beat the incumbent."""

    delta: float = Field(0.05, gt=0, lt=1)
    batch: PositiveInt = 64  # examples per look, all tasks together
    bound: Literal["bayes", "bernstein"] = "bayes"


class IrtConfig(_Strict):
    """IRT-estimated fitness: each candidate is scored on `anchors` examples per task and its accuracy on the rest
    is predicted by an IRT model refitted every generation on everything scored so far (the known candidates of the
    warm start included)."""

    anchors: PositiveInt = 30  # per task
    # generations scored on every example before the anchors are chosen (0: the known candidates scored before the
    # search — sources, baselines — are enough; without them the first generation is scored in full)
    warmup: int = Field(0, ge=0)
    dim: PositiveInt = Field(2, le=8)  # abilities per model


class SampleConfig(_Strict):
    """A random sample of the search split per generation: every candidate of a generation is scored on the same
    `size` examples per task (its ranking compares like with like), drawn anew each generation (so that, over the
    run, the search does not fit a few examples), and the known candidates of the warm start on a draw of their own.
    The draw favours the examples still in contention (see `settled_share`)."""

    size: PositiveInt = 20  # per task
    # Examples that every candidate of the last `window` generations scored alike (at least two did) are settled:
    # they add nothing to the differences a ranking rests on. A generation's sample is drawn in two strata, this
    # share of it from the settled examples and the rest from the open ones (unseen or disagreed on), and a
    # candidate's score is the stratified estimate of its whole-split accuracy (each stratum's mean weighted by its
    # size), unbiased, with far less noise in the differences than a plain random sample of the same size
    settled_share: float = Field(0.1, gt=0, lt=1)
    window: int = Field(3, ge=0)  # generations (0: nothing is ever settled; plain random draws)
    # which candidates the end re-scores on the whole search split (fitness.rescore_top of them, after the
    # optimizer's recommendation): surrogate — the best by their scores smoothed over neighbouring genomes (a
    # Gaussian process fitted to every candidate's score, its settings by maximum likelihood: a candidate borrows
    # the examples and draws its neighbours were scored on); generation — each generation's best by its own score,
    # the latest first
    rescore: Literal["surrogate", "generation"] = "surrogate"


class FitnessConfig(_Strict):
    # a scorer of evomerge.fitness.SCORERS — native: exact match of the answer; python: a per-example scorer of
    # yours, `scorer: module:function`; lm_eval: lm-evaluation-harness tasks from task YAML files, run on the
    # in-memory model
    type: str = "native"
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
    # the end's re-scoring raced: candidates are re-scored best first, each in the race order against the best
    # re-scored in full so far, and stopped once it cannot beat it (fitness.race's delta, batch, bound)
    rescore_race: bool = True
    # also re-score the optimizer's own recommendation (CMA-ES: its final mean, which averages every generation's
    # ranking and so is less fooled by noisy scores than the best-scored candidate), first, as the race's incumbent
    rescore_mean: bool = True
    # also every N search evaluations (whole generations): the `rescore_top` best so far on the whole search split
    # (with search_subset) and on the held-out split, kept in results.json as `checkpoints`
    rescore_every: PositiveInt | None = None
    # how a search candidate's score is obtained: full (every example of the search split), race (stopped early
    # once it cannot beat the incumbent), irt (a few anchor examples per task, the rest predicted), sample (a few
    # random examples per task, redrawn each generation); with race, irt and sample the `rescore_top` best are
    # scored on every example at the end, and the winner is chosen on those scores
    estimator: Literal["full", "race", "irt", "sample"] = "full"
    race: RaceConfig = RaceConfig()
    irt: IrtConfig = IrtConfig()
    sample: SampleConfig = SampleConfig()
    mode: Literal["teacher_forced", "generate"] = "teacher_forced"
    # native: a prompt is the user turn of the tokenizer's chat template, with the generation prompt (lm_eval has
    # its own switch, lm_eval.apply_chat_template)
    apply_chat_template: bool = False
    batch_size: PositiveInt = 128
    max_new_tokens: PositiveInt = 16

    @field_validator("type")
    @classmethod
    def _known_scorer(cls, v: str) -> str:
        from evomerge.fitness import SCORERS

        return _registered(v, SCORERS, "scorer")

    @model_validator(mode="after")
    def _consistent(self) -> FitnessConfig:
        if self.search_split == self.heldout_split:
            raise ValueError("search_split and heldout_split must differ: held-out numbers must not be searched on")
        from evomerge.fitness import SCORERS

        SCORERS[self.type].check_config(self)  # what this scorer does not do, named by field
        if self.search_subset and self.estimator != "full":
            raise ValueError(f"fitness.estimator: {self.estimator} scores fewer examples by itself; use it without "
                             "search_subset")
        if self.search_subset and self.max_examples:
            raise ValueError("fitness.search_subset: use either search_subset (a random subset, re-checked at the "
                             "end) or max_examples (the first N), not both")
        seen: dict[str, str] = {}
        for name in self.tasks:
            spec = self.task_spec(name)
            unknown = sorted(set(spec.splits) - {self.search_split, self.heldout_split})
            if unknown:
                raise ValueError(f"fitness.tasks.{name}.splits: {unknown} are not this experiment's splits (expected "
                                 f"keys among {[self.search_split, self.heldout_split]})")
            # the same data scored the same way under two names counts twice in the objective, silently
            same = seen.setdefault(spec.model_dump_json(), name)
            if same != name:
                raise ValueError(f"fitness.tasks.{name}: the same task as fitness.tasks.{same}; expected each task "
                                 "once (fitness.weights weighs tasks)")
        if self.weights is not None:
            unknown = sorted(set(self.weights) - set(self.tasks))
            if unknown or any(w < 0 for w in self.weights.values()) or not any(self.weights.values()):
                raise ValueError(f"fitness.weights: expected non-negative weights for tasks among "
                                 f"{sorted(self.tasks)}, not all zero (unknown: {unknown})")
        return self

    def task_spec(self, name: str) -> TaskSpec:
        spec = self.tasks[name]
        return TaskSpec.model_validate({"source": spec}) if isinstance(spec, str) else spec

    @property
    def full_search_split(self) -> str:
        """The name under which the whole search split is scored when the search runs on a subset."""
        return f"{self.search_split}:full"

    @property
    def rescore_split(self) -> str:
        """Where the best candidates of a search on fewer examples (a subset, racing, IRT) are scored in full."""
        return self.full_search_split if self.search_subset else self.search_split

    @property
    def cheap(self) -> bool:
        """Whether search scores may come from fewer than every example of the search split."""
        return bool(self.search_subset) or self.estimator != "full"

    def task_weights(self) -> dict[str, float]:
        w = self.weights or {}
        return {t: float(w.get(t, 0.0 if self.weights else 1.0)) for t in self.tasks}


class ExecutorConfig(_Strict):
    # an executor of evomerge.executors.EXECUTORS — local: in this process; process: a child process, replaced
    # when it dies or hangs; ray: a pool of Ray actors
    type: str = "local"
    timeout_s: float | None = Field(None, gt=0)  # per evaluation; needs an executor that can stop a worker
    max_retries: int = Field(1, ge=0)  # re-issues of a candidate whose worker died, before it is recorded FAILED
    # ray only. None: one worker per GPU of the cluster (GPUs visible and device not cpu), else one per CPU
    workers: PositiveInt | None = None
    gpus_per_worker: float | None = Field(None, ge=0)  # None: 1 when the cluster has GPUs, else 0
    # None: 1 with GPUs, else the CPUs shared among workers (whole CPUs when there are enough). A Ray worker runs
    # one CPU thread per whole CPU it was given (at least 1; at most 2 on a GPU worker), whatever `threads` says
    cpus_per_worker: float | None = Field(None, gt=0)
    address: str | None = None  # None: start a local Ray instance; 'auto' or 'ray://head:10001': join a cluster

    @field_validator("type")
    @classmethod
    def _known_executor(cls, v: str) -> str:
        from evomerge.executors import EXECUTORS

        return _registered(v, EXECUTORS, "executor")

    @model_validator(mode="after")
    def _timeout_needs_a_process(self) -> ExecutorConfig:
        from evomerge.executors import EXECUTORS

        if self.timeout_s is not None and not EXECUTORS[self.type].can_stop:
            able = " or ".join(sorted(n for n, c in EXECUTORS.items() if c.can_stop))
            raise ValueError(f"executor.timeout_s: needs type: {able} (an evaluation running in this process "
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
    name: RunName
    seed: int = Field(0, ge=0, le=SEED_MAX)
    # which zoo `zoo:NAME` references resolve to (evomerge.zoo.build.PROFILES)
    zoo: Literal["default", "portable", "tiny", "zoo2", "zoo2-tiny"] = "default"
    device: Literal["auto", "cpu", "cuda"] = "auto"  # auto: the GPU when there is one
    # the dtype the sources are merged and scored in (they are cast to it when loaded); auto: their own
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    # CPU threads (torch, OpenMP, BLAS) of the local and process executors' worker; Ray workers follow their CPUs
    threads: int = Field(1, ge=1, le=1024)
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
        flow = self.space.flow
        return self.space.type == "data_flow" and flow is not None and flow.indicator == "binary"

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
        unused = sorted(f for f in self.space.model_fields_set - {"type", "rows", "task_vectors"}
                        if getattr(self.space, f) != defaults[f].get_default(call_default_factory=True))
        if self.space.type == "mosaic" and unused:
            raise ValueError(f"space.{unused[0]}: not used by the mosaic space (a mosaic is a linear per-tensor "
                             f"combination of the sources); remove {unused}")
        if self.space.type != "mosaic" and self.space.rows is not None:
            raise ValueError("space.rows: only used by the mosaic space (row-level split points)")
        if self.space.task_vectors and self.space.type != "mosaic":
            raise ValueError("space.task_vectors: only used by the mosaic space")
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
        if cls.wants_examples and self.fitness.estimator != "full":
            raise ValueError(f"fitness.estimator: {self.optimizer.type} learns from every example's score; use "
                             "estimator: full")
        if not fits(cls, self.n_objectives, discrete=False):
            multi = optimizer_names(lambda c: fits(c, self.n_objectives, discrete=False))
            raise ValueError(f"optimizer.type: {self.optimizer.type} is single-objective but fitness.objective is "
                             f"per_task ({self.n_objectives} objectives); use one of {multi}")
        return self


def experiment_kind(path: Path) -> str | None:
    """The top-level `kind:` of an experiment file: absent for merge searches; `m2n2_digits` for the M2N2 paper's
    digits reproduction (`evomerge.m2n2.digits`), which merges no Hugging Face models and has its own runner;
    `blackbox` for black-box merging through a merge service (`evomerge.blackbox`)."""
    try:
        raw = load_yaml(read_text(path, "experiment file"))
    except (yaml.YAMLError, RecursionError, ConfigError):
        return None  # load_experiment reports it
    return raw.get("kind") if isinstance(raw, dict) else None


def _rebase_fitness(data: dict, preset_dir: Path, base_dir: Path) -> dict:
    """A fitness preset's relative paths (task sources, lm_eval.include_path) are relative to the preset file, the
    experiment's own to the experiment file: rewritten here, relative to the experiment, so that one rule holds once
    the file is loaded. A task lm-eval knows by name (not a YAML file, nothing of that name beside the preset) is
    left as it is."""

    def rebase(src: str) -> str:
        if Path(src).is_absolute():
            return src
        if data.get("type") == "lm_eval" and not src.endswith((".yaml", ".yml")) and not (preset_dir / src).exists():
            return src
        return os.path.relpath(preset_dir / src, base_dir)

    out = dict(data)
    tasks = out.get("tasks")
    if isinstance(tasks, dict):
        out["tasks"] = {name: rebase(spec) if isinstance(spec, str) else
                        ({**spec, "source": rebase(spec["source"])} if isinstance(spec, dict)
                         and isinstance(spec.get("source"), str) else spec)
                        for name, spec in tasks.items()}
    lm = out.get("lm_eval")
    if isinstance(lm, dict) and isinstance(lm.get("include_path"), str):
        out["lm_eval"] = {**lm, "include_path": rebase(lm["include_path"])}
    return out


def load_experiment(path: str | Path) -> tuple[ExperimentConfig, Path]:
    """Parse and validate an experiment file; returns the config and the directory paths are relative to."""
    path = Path(path)
    raw = read_mapping(path, "experiment file")
    for section in ("space", "fitness"):  # a section may name a preset file instead of spelling it out
        if isinstance(raw.get(section), str):
            preset = path.parent / raw[section]
            raw[section] = read_mapping(preset, f"{section} (preset file)")
            if section == "fitness":
                raw[section] = _rebase_fitness(raw[section], preset.parent, path.parent)
    try:
        cfg = ExperimentConfig.model_validate(raw)
    except ValidationError as e:
        raise ConfigError(format_validation_error(e, str(path))) from None
    return cfg, path.parent.resolve()
