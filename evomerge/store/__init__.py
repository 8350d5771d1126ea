"""The run store: every evaluation, durable as it completes, and optimizer snapshots."""

from evomerge.store.sqlite import Evaluation, RunStore

__all__ = ["Evaluation", "RunStore"]
