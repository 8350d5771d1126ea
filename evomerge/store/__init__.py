"""The run store: every evaluation, durable as it completes, and optimizer snapshots; the run directory around it."""

from evomerge.store.database import EvalKind, Evaluation, RunStore, Snapshot
from evomerge.store.rundir import EventLog, RunDir, read_events

__all__ = ["EvalKind", "EventLog", "Evaluation", "RunDir", "RunStore", "Snapshot", "read_events"]
