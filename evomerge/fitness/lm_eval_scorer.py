"""lm-evaluation-harness as a fitness: the worker's live model wrapped as lm-eval's HF model (no checkpoint is
written), tasks built once per worker and reused for every candidate, per-example scores from the logged samples.

Tasks come from local task YAML files (`fitness/lm_eval/` holds the zoo's). The same file serves the search and the
held-out split: `test_split` is set to the split asked for, and relative `data_files` are made absolute against the
file's directory (lm-eval would resolve them against the process's working directory).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from evomerge.errors import ConfigError, read_mapping
from evomerge.fitness.base import Examples, Score, Scorer, score_from_examples
from evomerge.fitness.checks import make_check

REGISTRY_KEY = "_evomerge_registry"  # in a task config: resolve this registered task in the process that builds it


class TaskSource:
    """Where an lm-eval task comes from: a task YAML file, or the name of a task lm-eval knows (its registry, plus
    `fitness.lm_eval.include_path`). Gives the task's config for any split, as a picklable dict."""

    def __init__(self, source: str, base_dir: Path, include: Path | None, field: str):
        self.field, self.include = field, include
        self.path: Path | None
        self.name: str | None
        self.raw: dict
        path = base_dir / source
        if source.endswith((".yaml", ".yml")) or path.is_file():
            self.path, self.name = path.resolve(), None
            self.raw = read_mapping(self.path, f"{field} (lm-eval task file)")
            if "task" not in self.raw:
                raise ConfigError(f"{field}: {self.path} is not an lm-eval task config (expected a mapping with "
                                  "'task:')")
        else:
            self.path, self.name = None, source
            self.raw = registered_config(source, include, field, resolve_functions=False)

    def __str__(self) -> str:
        return str(self.path) if self.path else f"lm-eval task {self.name!r}"

    def test_split(self) -> str | None:
        """The split the task calls its test split (where a benchmark keeps the numbers it reports)."""
        return self.raw.get("test_split")

    def config(self, split: str, lm_cfg=None) -> dict:
        """The task evaluated on dataset split `split`, with the experiment's generation settings (an
        `LmEvalConfig`; None: the task's own)."""
        cfg: dict[str, Any]
        if self.name is not None or self.path is None:
            cfg = {"task": self.name, REGISTRY_KEY: {"name": self.name, "include": self.include and str(self.include)}}
        else:
            cfg = dict(self.raw)
            files = (cfg.get("dataset_kwargs") or {}).get("data_files")
            if isinstance(files, dict):  # relative paths: against the file, not the process's working directory
                if split not in files:
                    raise ConfigError(f"{self.field}: {self.path} has no data file for split {split!r} (it has "
                                      f"{sorted(files)})")
                absolute = {k: str((self.path.parent / v).resolve()) for k, v in files.items()}
                cfg["dataset_kwargs"] = {**cfg["dataset_kwargs"], "data_files": absolute}
        cfg["test_split"] = split
        cfg["validation_split"] = None  # lm-eval would evaluate the validation split in place of the test split
        if lm_cfg is None:
            return cfg
        if lm_cfg.num_fewshot is not None:
            cfg["num_fewshot"] = lm_cfg.num_fewshot
        gen = {k: v for k, v in (("max_gen_toks", lm_cfg.max_gen_toks), ("until", lm_cfg.until)) if v is not None}
        if gen and self.raw.get("output_type") == "generate_until":
            cfg["generation_kwargs"] = {**(self.raw.get("generation_kwargs") or {}), **gen}
        return cfg


_MANAGERS: dict = {}


def _manager(include: str | None):
    """lm-eval's task index with its built-in tasks (building it reads ~12 s of YAML: once per process)."""
    from lm_eval.tasks import TaskManager

    if include not in _MANAGERS:
        _MANAGERS[include] = TaskManager(include_path=include)
    return _MANAGERS[include]


def registered_config(name: str, include: Path | str | None, field: str, resolve_functions: bool = True) -> dict:
    """The full config of a registered task (includes resolved); ConfigError with near names when unknown."""
    import difflib

    from lm_eval.tasks._index import Kind
    from lm_eval.tasks._yaml_loader import load_yaml

    tm = _manager(str(include) if include else None)
    entry = tm.task_index.get(name)
    if entry is None:
        near = difflib.get_close_matches(name, tm.all_tasks, n=3)
        raise ConfigError(f"{field}: {name!r} is neither a task YAML file nor a task lm-eval knows"
                          + (f" (did you mean {', '.join(map(repr, near))}?)" if near else ""))
    if entry.kind not in (Kind.TASK,) or entry.yaml_path is None:
        raise ConfigError(f"{field}: {name!r} is a group or tag of lm-eval tasks, not one task; name its tasks one "
                          "by one (each is scored and weighted on its own)")
    return load_yaml(entry.yaml_path, resolve_func=resolve_functions)


def buildable(cfg: dict) -> dict:
    """A task config lm-eval can build in this process: a registered task's own config (its functions loaded
    here) under the experiment's overrides."""
    reg = cfg.get(REGISTRY_KEY)
    if reg is None:
        return cfg
    full = registered_config(reg["name"], reg["include"], f"task {reg['name']}")
    return {**full, **{k: v for k, v in cfg.items() if k != REGISTRY_KEY}}


def load_task_config(path: Path, split: str, field: str, lm_cfg=None) -> dict:
    """The task YAML at `path` as a config dict for `split` (for tests and tools); `lm_cfg` None: the task's own
    settings."""
    return TaskSource(str(path), Path("/"), None, field).config(split, lm_cfg)


SAMPLES_KEY = "_evomerge_samples"  # in a task config: the document indices a search subset scores


def overlap(search: dict, heldout: dict) -> tuple[int, int]:
    """(how many held-out documents also appear in the search split, by a hash of their text and target; how many
    documents the search split has)."""
    import hashlib

    from lm_eval.tasks import TaskManager

    other = {**heldout, "task": f"{heldout['task']}__heldout"}  # two configs of one task need two names
    tasks = TaskManager(include_defaults=False).load([buildable(search), buildable(other)])["tasks"]

    def hashes(task) -> set[str]:
        return {hashlib.sha256(f"{task.doc_to_text(d)}\x00{task.doc_to_target(d)}".encode()).hexdigest()
                for d in task.eval_docs}

    ours = hashes(tasks[search["task"]])
    return len(ours & hashes(tasks[other["task"]])), len(tasks[search["task"]].eval_docs)


def doc_count(config: dict) -> int:
    """How many documents a task config's split has (builds the task: seconds for a real benchmark)."""
    from lm_eval.tasks import TaskManager

    task = buildable({k: v for k, v in config.items() if k != SAMPLES_KEY})
    return len(TaskManager(include_defaults=False).load([task])["tasks"][task["task"]].eval_docs)


def _cache_templates() -> None:
    """lm-eval compiles a task's Jinja templates anew for every document on every call (`apply_template` calls
    `env.from_string`): two thirds of a zoo candidate's scoring time. Templates are immutable strings, so the
    compiled ones are cached; rendering is unchanged."""
    import functools

    from lm_eval import utils

    if not hasattr(utils.env.from_string, "cache_info"):
        utils.env.from_string = functools.lru_cache(maxsize=4096)(utils.env.from_string)


def _quiet_bars() -> None:
    """lm-eval draws tqdm bars per candidate and task, with `disable=` passed explicitly (so TQDM_DISABLE cannot
    reach them); evomerge shows its own progress. Its modules' `tqdm` is swapped for one that is always off."""
    from lm_eval.api import model, task
    from lm_eval.models import huggingface
    from tqdm import tqdm

    def off(*args, **kwargs):
        return tqdm(*args, **{**kwargs, "disable": True})

    for module in (model, task, huggingface):
        module.tqdm = off


def _keep_requests(task) -> None:
    """lm-eval rebuilds a task's requests (templates rendered, few-shot contexts, one Instance per request) on
    every evaluate() call; they depend on the task and the settings, never on the model. The built instances are
    kept per settings and reused for every candidate, their responses cleared first."""
    build, kept = task.build_all_requests, {}

    def build_once(**kw):
        key = tuple(sorted((k, tuple(v) if isinstance(v, list) else v) for k, v in kw.items()
                           if isinstance(v, str | int | float | bool | list | type(None))))
        if key not in kept:
            build(**kw)
            kept[key] = task._instances
        task._instances = kept[key]
        for inst in task._instances:
            inst.resps.clear()
            inst.filtered_resps.clear()

    task.build_all_requests = build_once


def _metric(cfg: dict) -> str:
    return cfg["metric_list"][0]["metric"] if cfg.get("metric_list") else "acc"


class LmEvalScorer(Scorer):
    """`score(model)` runs every task on the live model; per-example scores are the task's first metric (or the
    one `fitness.tasks.NAME.metric` names). lm-eval does not look for NaN logits: `checks_logits` is False, so the
    worker checks the merged weights first."""

    @classmethod
    def check_config(cls, cfg) -> None:
        if cfg.scorer:
            raise ValueError("fitness.scorer: only used with type: python")
        if cfg.apply_chat_template:
            raise ValueError("fitness.apply_chat_template: only used with type: native (lm_eval: "
                             "lm_eval.apply_chat_template; python: your scorer formats its prompts)")

    @classmethod
    def from_config(cls, tokenizer, tasks, cfg, base_dir, limit=None) -> LmEvalScorer:  # noqa: ARG003
        return cls(tokenizer, tasks, cfg, cfg.task_weights(), limit=limit)

    def __init__(self, tokenizer, task_configs: dict[str, dict], cfg, weights: dict[str, float],
                 limit: int | None = None):
        from lm_eval.tasks import TaskManager

        _cache_templates()
        _quiet_bars()
        for name in ("lm_eval", "lm-eval"):  # its per-task INFO lines would drown the progress bar
            logging.getLogger(name).setLevel(logging.ERROR)
        self.tokenizer, self.cfg, self.weights, self.limit = tokenizer, cfg, weights, limit
        self.names = {c["task"]: ours for ours, c in task_configs.items()}  # lm-eval task name -> ours
        samples = {c["task"]: c[SAMPLES_KEY] for c in task_configs.values() if SAMPLES_KEY in c}
        self.samples = samples or None
        task_configs = {t: buildable({k: v for k, v in c.items() if k != SAMPLES_KEY}) for t, c in task_configs.items()}
        specs = {ours: cfg.task_spec(ours) for ours in task_configs}
        self.metrics = {ours: specs[ours].metric or _metric(c) for ours, c in task_configs.items()}
        self.checks = {ours: make_check(spec.check) for ours, spec in specs.items() if spec.check}
        for ours in self.checks:
            if task_configs[ours].get("output_type") != "generate_until":
                raise ConfigError(f"fitness.tasks.{ours}.check: checks look at generated answers; this task's "
                                  f"output_type is {task_configs[ours].get('output_type')!r}")
        # built once: building reads and preprocesses the datasets (seconds for real benchmarks)
        self.task_dict = TaskManager(include_defaults=False).load(list(task_configs.values()))
        for task in self.task_dict["tasks"].values():
            _keep_requests(task)
        self._lm = None
        self._model = None

    def _wrap(self, model):
        from lm_eval.models.huggingface import HFLM

        if self._model is not model:  # the worker's live model: merges are written into it in place
            lm_cfg = self.cfg.lm_eval
            self._lm = HFLM(pretrained=model, tokenizer=self.tokenizer, batch_size=lm_cfg.batch_size,
                            device=str(next(model.parameters()).device), add_bos_token=lm_cfg.add_bos_token,
                            max_length=lm_cfg.max_length)
            self._model = model
        return self._lm

    def _docs(self, examples: Examples) -> dict[str, list[int]]:
        """lm-eval's `samples` (document ids per lm-eval task) for per-task example indices: an index counts in
        this scorer's own documents (a search subset's, or the first `limit`, or all)."""
        out = {}
        for lm_name, ours in self.names.items():
            idx = examples.get(ours, [])
            out[lm_name] = [self.samples[lm_name][i] for i in idx] if self.samples else list(idx)
        return out

    def score(self, model, examples: Examples | None = None) -> Score:
        from lm_eval import evaluator

        lm_cfg = self.cfg.lm_eval
        task_dict = self.task_dict
        run: dict = {"samples": self.samples} if self.samples else {"limit": self.limit}
        if examples is not None:  # lm-eval scores all of a task it gets no document ids for: leave such tasks out
            docs = self._docs(examples)
            run = {"samples": {k: v for k, v in docs.items() if v}}
            task_dict = {**task_dict, "tasks": {k: v for k, v in task_dict["tasks"].items() if docs.get(k)}}
        out = evaluator.evaluate(lm=self._wrap(model), task_dict=task_dict, log_samples=True, **run,
                                 bootstrap_iters=0, verbosity="ERROR",
                                 apply_chat_template=lm_cfg.apply_chat_template)
        per_example: dict[str, list[float]] = {t: [] for t in self.weights}
        for lm_name, samples in out["samples"].items():
            ours = self.names[lm_name]
            metric, check = self.metrics[ours], self.checks.get(ours)
            samples = sorted(samples, key=lambda s: s["doc_id"])
            if examples is not None:  # in the order asked for
                at = {s["doc_id"]: s for s in samples}
                samples = [at[d] for d in docs[lm_name]]
            if metric not in samples[0]:
                raise ConfigError(f"fitness.tasks.{ours}.metric: the task has no per-example metric {metric!r} "
                                  f"(it has {sorted(k for k in samples[0] if isinstance(samples[0][k], int | float))})")
            # a check reads the raw generation (filters may have cut it down to the final number)
            per_example[ours] = [float(s[metric]) * (check is None or check(s["resps"][0][0])) for s in samples]
        return score_from_examples({t: per_example[t] for t in self.weights}, self.weights)
