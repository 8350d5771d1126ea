"""lm-evaluation-harness as a fitness: the worker's live model wrapped as lm-eval's HF model (no checkpoint is
written), tasks built once per worker and reused for every candidate, per-example scores from the logged samples.

Tasks come from local task YAML files (`fitness/lm_eval/` holds the zoo's). The same file serves the search and the
held-out split: `test_split` is set to the split asked for, and relative `data_files` are made absolute against the
file's directory (lm-eval would resolve them against the process's working directory).
"""

from __future__ import annotations

import logging
from pathlib import Path

from evomerge.config import read_mapping
from evomerge.errors import ConfigError


def load_task_config(path: Path, split: str, field: str) -> dict:
    """The task YAML at `path` as a config dict for `split`, paths made absolute; errors name `field`."""
    cfg = read_mapping(path, f"{field} (lm-eval task file)")
    if "task" not in cfg:
        raise ConfigError(f"{field}: {path} is not an lm-eval task config (expected a mapping with 'task:')")
    files = (cfg.get("dataset_kwargs") or {}).get("data_files")
    if isinstance(files, dict):
        if split not in files:
            raise ConfigError(f"{field}: {path} has no data file for split {split!r} (it has {sorted(files)})")
        cfg["dataset_kwargs"]["data_files"] = {k: str((path.parent / v).resolve()) for k, v in files.items()}
    cfg["test_split"] = split
    cfg.pop("validation_split", None)
    return cfg


def declared_test_split(path: Path) -> str | None:
    """The split a task file calls its test split (where a benchmark keeps the numbers it reports)."""
    return read_mapping(path, "lm-eval task file").get("test_split")


SAMPLES_KEY = "_evomerge_samples"  # in a task config: the document indices a search subset scores


def overlap(search: dict, heldout: dict) -> tuple[int, int]:
    """(how many held-out documents also appear in the search split, by a hash of their text and target; how many
    documents the search split has)."""
    import hashlib

    from lm_eval.tasks import TaskManager

    other = {**heldout, "task": f"{heldout['task']}__heldout"}  # two configs of one task need two names
    tasks = TaskManager(include_defaults=False).load([search, other])["tasks"]

    def hashes(task) -> set[str]:
        return {hashlib.sha256(f"{task.doc_to_text(d)}\x00{task.doc_to_target(d)}".encode()).hexdigest()
                for d in task.eval_docs}

    ours = hashes(tasks[search["task"]])
    return len(ours & hashes(tasks[other["task"]])), len(tasks[search["task"]].eval_docs)


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


def _metric(cfg: dict) -> str:
    return cfg["metric_list"][0]["metric"] if cfg.get("metric_list") else "acc"


class LmEvalScorer:
    """`score(model)` runs every task on the live model; per-example scores are the task's first metric."""

    mode = "lm_eval"  # lm-eval does not look for NaN logits: weights are checked after the merge

    def __init__(self, tokenizer, task_configs: dict[str, dict], cfg, weights: dict[str, float],
                 limit: int | None = None):
        from lm_eval.tasks import TaskManager

        _cache_templates()
        _quiet_bars()
        for name in ("lm_eval", "lm-eval"):  # its per-task INFO lines would drown the progress bar
            logging.getLogger(name).setLevel(logging.ERROR)
        self.tokenizer, self.cfg, self.weights, self.limit = tokenizer, cfg, weights, limit
        self.names = {c["task"]: ours for ours, c in task_configs.items()}  # lm-eval task name -> ours
        self.metrics = {ours: _metric(c) for ours, c in task_configs.items()}
        samples = {c["task"]: c[SAMPLES_KEY] for c in task_configs.values() if SAMPLES_KEY in c}
        self.samples = samples or None
        task_configs = {t: {k: v for k, v in c.items() if k != SAMPLES_KEY} for t, c in task_configs.items()}
        # built once: building reads and preprocesses the datasets (seconds for real benchmarks)
        self.task_dict = TaskManager(include_defaults=False).load(list(task_configs.values()))
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

    def score(self, model):
        from lm_eval import evaluator

        from evomerge.fitness.scorer import _score

        lm_cfg = self.cfg.lm_eval
        out = evaluator.evaluate(lm=self._wrap(model), task_dict=self.task_dict, log_samples=True,
                                 **({"samples": self.samples} if self.samples else {"limit": self.limit}),
                                 bootstrap_iters=0, verbosity="ERROR",
                                 apply_chat_template=lm_cfg.apply_chat_template)
        per_example = {}
        for lm_name, samples in out["samples"].items():
            ours = self.names[lm_name]
            metric = self.metrics[ours]
            per_example[ours] = [float(s[metric]) for s in sorted(samples, key=lambda s: s["doc_id"])]
        return _score({t: per_example[t] for t in self.weights}, self.weights)
