"""Which lifecycle runs an experiment: `KINDS` maps an experiment file's `kind:` (absent: a search) to its class."""

from __future__ import annotations

from pathlib import Path

from evomerge.blackbox.runner import BlackboxRunner
from evomerge.config import experiment_kind
from evomerge.errors import ConfigError
from evomerge.m2n2.digits import DigitsRunner
from evomerge.run.lifecycle import RunLifecycle, stored_kind
from evomerge.runner import Runner
from evomerge.store import RunDir

KINDS: dict[str, type[RunLifecycle]] = {cls.kind: cls for cls in (Runner, BlackboxRunner, DigitsRunner)}
FILE_KINDS = {None: "search", "blackbox": "blackbox", "m2n2_digits": "m2n2_digits"}  # `kind:` -> KINDS key


def lifecycle_class(experiment: Path) -> type[RunLifecycle]:
    kind = experiment_kind(Path(experiment))
    if kind not in FILE_KINDS:
        raise ConfigError(f"{experiment}: kind: unknown experiment kind {kind!r}; expected none (a merge search), "
                          "blackbox or m2n2_digits")
    return KINDS[FILE_KINDS[kind]]


def open_run(experiment: Path, run_dir: Path | None = None, **kwargs) -> RunLifecycle:
    """The lifecycle for `evomerge run EXPERIMENT` (a new run, or the existing one in run_dir continued)."""
    return lifecycle_class(experiment)(experiment, run_dir, **kwargs)


def resume_run(run_dir: Path, **kwargs) -> RunLifecycle:
    """The lifecycle for `evomerge resume RUN_DIR`, of the kind the run was started as."""
    store = RunDir.open(run_dir).store()
    try:
        kind = stored_kind(store)
    finally:
        store.close()
    if kind not in KINDS:
        raise ConfigError(f"{run_dir}: a run of unknown kind {kind!r} (expected one of {sorted(KINDS)})")
    return KINDS[kind].resume(run_dir, **kwargs)
