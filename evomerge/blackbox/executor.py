"""The executor of black-box merging: each job is one query to the merge service, through the client. This process
sends vectors and examples and reads scalars back; it never holds a weight."""

from __future__ import annotations

import time

from evomerge.blackbox.client import BudgetExhausted, MergeClient, ServiceError, TransportFailure
from evomerge.executors import Executor, Job, WorkerStats
from evomerge.executors.base import failed_evaluation
from evomerge.store import Evaluation

BUDGET_PREFIX = "budget exhausted: "  # the error of a query refused for want of budget (asked again on resume)
TRANSPORT_PREFIX = "transport: "  # the service was unreachable: not the candidate's fault, asked again on resume


class ServiceExecutor(Executor):
    """Jobs whose recipe is a `ServiceMerge`; `examples` maps a job's split to the examples sent with it (the
    held-out split is scored for accuracy, per example). A query that fails after the client's retries, or is
    refused for want of budget, is a failed evaluation."""

    def __init__(self, client: MergeClient, examples: dict[str, list[dict]], accuracy_splits: tuple[str, ...]):
        super().__init__()
        self.client, self.examples, self.accuracy_splits = client, examples, accuracy_splits
        self.stats = {"service": WorkerStats("service")}
        self.stats["service"].ready()

    def next(self) -> Evaluation:
        job, _ = self.queue.popleft()
        ev = self._query(job)
        self.stats["service"].returned(ev)
        return ev

    def _query(self, job: Job) -> Evaluation:
        m, accuracy = job.recipe, job.split in self.accuracy_splits
        self.stats["service"].handed()
        t0 = time.time()
        try:
            r = self.client.evaluate(m.alpha, m.beta, self.examples[job.split], accuracy=accuracy,
                                     per_example=accuracy)
        except ServiceError as e:
            prefix = BUDGET_PREFIX if isinstance(e, BudgetExhausted) else \
                TRANSPORT_PREFIX if isinstance(e, TransportFailure) else ""
            error = f"{prefix}{e}"
            ev = failed_evaluation(job, error, 1, "service")
            ev.eval_seconds = time.time() - t0
            return ev
        return Evaluation(job.kind, job.generation, job.idx, job.label, job.split, "ok",
                          objective=-(r["loss"] + m.penalty), per_task={"loss": r["loss"]},
                          per_example={"correct": [float(c) for c in r.get("per_example_correct", [])]},
                          genome=job.genome, recipe=m.to_json(), eval_seconds=time.time() - t0, worker="service")
