"""How much of the search split a search candidate is scored on, and what its score is then taken to be.

- full: every example.
- race: every example in one fixed stratified order, stopped once the candidate is shown not to beat the reference —
  the best candidate of earlier generations that was scored on every example. A stopped candidate is ranked by its
  paired estimate (the reference's score plus the mean difference over the examples both have seen): CMA-ES needs
  a full ranking, and the paired estimate is unbiased with far less variance than the candidate's own partial mean.
- irt: `anchors` random examples per task, drawn anew each generation (the same for all of a generation's
  candidates), and the rest predicted by an IRT model refitted at every generation on every stored score of the
  earlier generations (full and anchor rows alike) and of the known candidates scored before the search (sources,
  baselines: the warm start). The first `warmup` generations (default 0) are scored on every example, and so is the
  first generation when nothing has been scored in full yet.
- sample: `sample.size` random examples per task, drawn anew each generation and the same for all of a generation's
  candidates (the known candidates of the warm start get a draw of their own). A generation's ranking compares like
  with like, and over the run no few examples are fitted. The draw is stratified: examples that every candidate of
  the last `sample.window` generations answered alike are settled (they add nothing to a difference between
  candidates) and get only `sample.settled_share` of the sample; the score is the stratified estimate of the
  whole-split accuracy (each stratum's mean weighted by its size).

Everything depends only on the evaluations of earlier generations, so a resumed run makes the same choices.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from evomerge.fitness.estimators import (
    IrtModel,
    RaceSpec,
    fit_irt,
    race_order,
    settled_examples,
    stratified_draw,
    stratified_mean,
)
from evomerge.store import EvalKind


class Fidelity:
    def __init__(self, cfg, store, sizes: dict[str, int] | None = None) -> None:
        """`sizes`: each task's number of search examples (None: read from the first evaluation scored in full)."""
        self.cfg, self.f, self.store, self.sizes = cfg, cfg.fitness, store, sizes
        self.kind = self.f.estimator
        self.weights = self.f.task_weights()
        # per generation, read or computed once (everything rests on the generations before it, complete by then)
        self._rows_before: dict[int, list] = {}  # the scores a generation's choices rest on
        self._reference: dict[int, object] = {}  # the race reference (an Evaluation) or None
        self._irt: dict[int, tuple[IrtModel, dict[str, tuple[int, int]]]] = {}  # the fitted model, item ranges
        self._samples: dict[int, tuple[dict, dict]] = {}  # sample: the examples, the strata

    # -- which examples --------------------------------------------------------------------------------------------
    def job(self, job):
        """A search job (or a known candidate's, kind seed) as this estimator issues it: unchanged (full), with a
        race, with the anchors, or with the generation's sample."""
        if self.kind == "sample":
            return dataclasses.replace(job, examples=self._sample(job.generation)[0])
        if job.kind != EvalKind.SEARCH:  # the known candidates: in full, the first references of race and IRT
            return job
        if self.kind == "race":
            ref = self._race_reference(job.generation)
            return job if ref is None else dataclasses.replace(job, race=self.race_spec(ref))
        if self.kind == "irt" and job.generation >= self.f.irt.warmup and self._full(job.generation):
            return dataclasses.replace(job, examples=self.draw(job.generation, self.f.irt.anchors))
        return job

    def _rows(self, before: int) -> list:
        """Every successful score on the search split that a choice for generation `before` may rest on: the known
        candidates scored before the search, and the search's earlier generations."""
        if before not in self._rows_before:
            known = [e for e in self.store.evaluations(EvalKind.SEED) if e.status == "ok"]
            self._rows_before[before] = known + [e for e in self.store.evaluations(EvalKind.SEARCH)
                                                 if e.status == "ok" and e.generation < before]
        return self._rows_before[before]

    def _full(self, before: int) -> list:
        return [e for e in self._rows(before) if e.examples is None]

    def _race_reference(self, generation: int):
        if generation not in self._reference:
            full = self._full(generation)
            self._reference[generation] = max(full, key=lambda e: e.objective, default=None)
        return self._reference[generation]

    def race_spec(self, ref) -> RaceSpec:
        """The race against `ref`, an evaluation scored on every example (fitness.race's delta, batch, bound)."""
        sizes = {t: len(v) for t, v in ref.per_example.items()}
        r = self.f.race
        return RaceSpec(order=tuple(race_order(sizes, self.cfg.seed)), reference=ref.per_example,
                        reference_per_task=ref.per_task, reference_objective=ref.objective, weights=self.weights,
                        delta=r.delta, batch=r.batch, bound=r.bound, per_task=self.cfg.n_objectives > 1)

    def draw(self, generation: int, size: int) -> dict[str, list[int]]:
        """A generation's examples (IRT's anchors, sample's sample): `size` random examples per task, the same for
        every candidate of the generation (so that its ranking compares like with like), a new draw each generation
        (so that, over the run, every example is seen by some candidates: the search fits no fixed few, and the IRT
        model learns every item). Deterministic in the run's seed and the generation (-1: the known candidates)."""
        sizes = self._sizes(generation)
        rng = np.random.default_rng([self.cfg.seed, generation + 1])
        return {t: sorted(int(i) for i in rng.choice(n, min(size, n), replace=False)) for t, n in sizes.items()}

    def _sample(self, generation: int) -> tuple[dict[str, list[int]], dict[str, list[tuple[list[int], int]]]]:
        """sample: a generation's examples per task, and its strata per task as (drawn indices, stratum size)."""
        if generation not in self._samples:
            cfg = self.f.sample
            rows = [e for e in self._rows(generation)
                    if cfg.window and e.kind == EvalKind.SEARCH and e.generation >= generation - cfg.window]
            rng = np.random.default_rng([self.cfg.seed, generation + 1])
            strata = {}
            for t, n in self._sizes(generation).items():
                settled = settled_examples([(range(n) if e.examples is None else e.examples[t], e.per_example[t])
                                            for e in rows])
                strata[t] = stratified_draw(n, settled, cfg.size, cfg.settled_share, rng)
            examples = {t: sorted(i for drawn, _ in groups for i in drawn) for t, groups in strata.items()}
            self._samples[generation] = (examples, strata)
        return self._samples[generation]

    def _sizes(self, generation: int) -> dict[str, int]:
        return self.sizes or {t: len(v) for t, v in self._full(generation)[0].per_example.items()}

    # -- what a result is worth ------------------------------------------------------------------------------------
    def finish(self, ev):
        """An anchor-only result gets its IRT estimate of the whole split (objective and per task), a sample's its
        stratified estimate."""
        if ev.status != "ok" or ev.examples is None:
            return ev
        if self.kind == "sample" and ev.kind in (EvalKind.SEARCH, EvalKind.SEED):
            return self._stratified(ev)
        if self.kind != "irt" or ev.kind != EvalKind.SEARCH:
            return ev
        model, items = self._fit(ev.generation)
        per_task, seen, correct = {}, [], []
        for t, (lo, _) in items.items():
            seen += [lo + i for i in ev.examples[t]]
            correct += ev.per_example[t]
        theta = model.ability(np.asarray(seen), np.asarray(correct, dtype=float))
        p = model.probabilities(theta[None])[0].numpy()
        for t, (lo, hi) in items.items():
            observed = dict(zip(ev.examples[t], ev.per_example[t], strict=True))
            per_task[t] = float(sum(observed.get(i, p[lo + i]) for i in range(hi - lo)) / (hi - lo))
        wsum = sum(self.weights[t] for t in per_task)
        objective = sum(self.weights[t] * v for t, v in per_task.items()) / wsum
        return dataclasses.replace(ev, objective=objective, per_task=per_task)

    def _stratified(self, ev):
        """Each task's accuracy as the strata's means weighted by the strata's sizes."""
        _, strata = self._sample(ev.generation)
        per_task = {t: stratified_mean(dict(zip(ev.examples[t], ev.per_example[t], strict=True)), groups)
                    for t, groups in strata.items()}
        wsum = sum(self.weights[t] for t in per_task)
        objective = sum(self.weights[t] * v for t, v in per_task.items()) / wsum
        return dataclasses.replace(ev, objective=objective, per_task=per_task)

    def _fit(self, generation: int) -> tuple[IrtModel, dict[str, tuple[int, int]]]:
        """The IRT model fitted on every score the generation rests on, and each task's item range (cached)."""
        if generation in self._irt:
            return self._irt[generation]
        rows = self._rows(generation)
        full = [e for e in rows if e.examples is None]
        if not full:
            raise RuntimeError("IRT needs at least one candidate scored on every example first")
        items: dict[str, tuple[int, int]] = {}
        at = 0
        for t in self.f.tasks:
            n = len(full[0].per_example[t])
            items[t] = (at, at + n)
            at += n
        y = np.zeros((len(rows), at))
        mask = np.zeros((len(rows), at))
        for r, e in enumerate(rows):
            for t, (lo, hi) in items.items():
                idx = range(hi - lo) if e.examples is None else e.examples[t]
                cols = [lo + i for i in idx]
                y[r, cols] = e.per_example[t]
                mask[r, cols] = 1
        model, _ = fit_irt(y, mask, dim=self.f.irt.dim, seed=self.cfg.seed)
        self._irt[generation] = (model, items)
        return self._irt[generation]
