"""A black-box merging run: two stages of an optimizer from `OPTIMIZERS` (CMA-ES, the paper's choice) over the merge
service's API, baselines, held-out table.

Stage 1 (denoise) searches the per-adapter sparsity α ∈ [0,1]^N with β fixed at 1/N, minimizing
loss + λ₁·mean|α|; stage 2 (scale) fixes the best α and searches β ∈ [−b, b]^N (sign flips allowed), minimizing
loss + λ₂·mean|β| (the paper's defaults). Each stage is a search space (`space.StageSpace`: genome in [0,1]^N ->
α or β) and one optimizer phase; queries go out through `executor.ServiceExecutor`, each one a stored evaluation
of the run's store, and the optimizer's state is snapshotted in the store every generation, so a stopped run
continues exactly where it was (generations are numbered across the stages). A query that fails after the client's
retries is a recorded failed evaluation, told the worst value seen (`search.FailedValue`, the rule of every search);
a used-up budget is recorded too and ends the search — what was found so far is still reported, and a resumed run
asks the refused queries again.

This process holds no weight: it sends vectors and examples and reads scalars. Only the optional white-box
baselines (whitebox.py) read the adapters, and only when the run is given the repository.
"""

from __future__ import annotations

from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from rich.table import Table

from evomerge.blackbox.client import MergeClient, read_token
from evomerge.blackbox.config import BlackboxExperiment, load_blackbox
from evomerge.blackbox.executor import BUDGET_PREFIX, TRANSPORT_PREFIX, ServiceExecutor
from evomerge.blackbox.space import ServiceMerge, StageSpace
from evomerge.config import OptimizerConfig
from evomerge.errors import ConfigError, RunError
from evomerge.executors import Job
from evomerge.fitness.tasks import load_split
from evomerge.optim import OPTIMIZERS
from evomerge.optim.state import StateError
from evomerge.run.lifecycle import RunLifecycle, RunSettings
from evomerge.search import FailedValue
from evomerge.store import RunStore, Snapshot
from evomerge.store.database import Evaluation

OPTIMIZER = "cma"
SEARCH, HELDOUT = "search", "heldout"  # the splits a job names: validation examples, held-out examples


class BudgetSpent(Exception):
    """The service refused a query for want of budget: the search stops, what was found is reported."""


@dataclass(frozen=True)
class Stage:
    """One optimizer phase: its name (the prefix of its candidates' labels), space and evaluations."""

    name: str
    space: StageSpace
    budget: int


class BlackboxRunner(RunLifecycle):
    kind = "blackbox"
    config_model = BlackboxExperiment
    # the service's address, token and retries, the white-box comparison and threads do not change the search
    defining = ("kind", "seed", "zoo", "data", "stages", "ablations")

    @classmethod
    def load(cls, path: Path) -> tuple[BlackboxExperiment, Path]:
        return load_blackbox(path)

    def check(self) -> None:
        import torch

        super().check()
        torch.set_num_threads(self.cfg.threads)
        self.val, self.held = self._data()

    def _budgets(self) -> list[int]:
        st = self.cfg.stages
        return [st.denoise_budget, st.scale_budget] + [st.scale_budget] * len(self.cfg.ablations)

    def settings(self) -> RunSettings:
        st = self.cfg.stages
        stages = ["denoise α", "scale β", *self.cfg.ablations]
        return RunSettings(self.cfg.name, OPTIMIZER, sum(b // st.popsize for b in self._budgets()), "blackbox",
                           f"black-box stages ({', '.join(stages)}) over the adapters of a merge service",
                           "−(loss + λ·mean|x|): the service's loss on the validation examples (maximized)",
                           ("loss",), SEARCH, HELDOUT)

    def record(self, store: RunStore) -> None:
        gens = [b // self.cfg.stages.popsize for b in self._budgets()]
        store.set_meta("search_total", str(sum(gens) * self.cfg.stages.popsize))

    def execute(self, store: RunStore, snapshot: Snapshot | None) -> dict:
        with ExitStack() as stack:
            client = self._service(stack)
            executor = ServiceExecutor(client, {SEARCH: self.val, HELDOUT: [e for rows in self.held.values()
                                                                           for e in rows]}, (HELDOUT,))
            stack.callback(executor.close)
            return self._run(store, client, executor, snapshot)

    # -- data and service ---------------------------------------------------------------------------------------
    def _data(self) -> tuple[list[dict], dict[str, list[dict]]]:
        """(validation examples sent with every query, held-out examples per task)."""
        d = self.cfg.data
        val, held = [], {}
        for task, rel in d.tasks.items():
            path, field = (self.base_dir / rel).resolve(), f"data.tasks.{task}"
            if not path.is_dir():
                raise ConfigError(f"{field}: task directory {str(path)!r} does not exist")
            search = load_split(path, d.search_split, field)[: d.max_examples]
            held[task] = load_split(path, d.heldout_split, field)
            if {r["prompt"] for r in search} & {r["prompt"] for r in held[task]}:
                raise ConfigError(f"{field}: the {d.search_split!r} and {d.heldout_split!r} splits share prompts")
            val += search
        return val, held

    def _provider_paths(self) -> tuple[Path, Path]:
        """The base and repository a locally launched service hosts (`zoo:` references build on first use)."""
        s = self.cfg.service
        out = []
        for field, ref in (("service.base", s.base), ("service.repository", s.repository)):
            if ref == "zoo:base":
                from evomerge.zoo.build import PROFILES, build_zoo

                out.append(build_zoo(PROFILES[self.cfg.zoo], log=lambda m: self.console.print(f"[dim]zoo: {m}[/]"))
                           / "base")
            elif ref == "zoo:lora":
                from evomerge.zoo.lora import LORA_PROFILES, build_lora_repo

                out.append(build_lora_repo(LORA_PROFILES[self.cfg.zoo],
                                           log=lambda m: self.console.print(f"[dim]lora: {m}[/]")))
            elif ref.startswith("zoo:"):
                raise ConfigError(f"{field}: unknown zoo reference {ref!r}; expected zoo:base or zoo:lora")
            else:
                p = (self.base_dir / ref).resolve()
                if not p.is_dir():
                    raise ConfigError(f"{field}: {str(p)!r} is not a directory")
                out.append(p)
        return out[0], out[1]

    def _service(self, stack: ExitStack) -> MergeClient:
        s = self.cfg.service
        if s.launch == "local":
            from evomerge.blackbox.launch import local_service

            base, repo = self._provider_paths()
            with self.console.status("starting the merge service"):
                url, token = stack.enter_context(local_service(base, repo, self.run_dir / "service.log",
                                                               replicas=s.replicas, threads=self.cfg.threads))
        else:
            url = s.url
            token_file = (self.base_dir / s.token_file).resolve() if s.token_file else None
            token = read_token(s.token_env, token_file)
        client = MergeClient(url, token, retries=s.retries, timeout_s=s.timeout_s, retry_window_s=s.retry_window_s)
        stack.callback(client.close)
        return client

    # -- the run ------------------------------------------------------------------------------------------------
    def _query(self, store: RunStore, executor: ServiceExecutor, job: Job) -> Evaluation:
        """One query, or its stored answer when this run already asked it; a query refused for want of budget (the
        budget may be new) or lost to an unreachable service is asked again."""
        old = store.get(job.kind, job.generation, job.idx, job.label)
        if old is not None and old.genome == job.genome and \
                not (old.error or "").startswith((BUDGET_PREFIX, TRANSPORT_PREFIX)):
            return old
        executor.submit(job)
        ev = executor.next()
        store.add(ev)  # durable before anyone hears of it
        self.events.emit("evaluation", kind=ev.kind, generation=ev.generation, idx=ev.idx, label=ev.label,
                         status=ev.status, objective=ev.objective, eval_s=round(ev.eval_seconds, 4),
                         worker="service", **({"error": ev.error.splitlines()[0]} if ev.error else {}))
        if (ev.error or "").startswith(BUDGET_PREFIX):
            raise BudgetSpent(ev.error.removeprefix(BUDGET_PREFIX))
        return ev

    def _fixed(self, store, executor, kind: str, gen: int, idx: int, label: str, alpha, beta, split: str):
        """A query of a fixed merge (baselines, held-out scores): its genome is α and β, so that a stored answer
        is reused only for the same merge."""
        alpha, beta = [float(v) for v in alpha], [float(v) for v in beta]
        job = Job(kind, gen, idx, label, split, ServiceMerge(tuple(alpha), tuple(beta)), alpha + beta)
        return self._query(store, executor, job)

    def _stage(self, store: RunStore, executor: ServiceExecutor, stage: Stage, offset: int,
               snap: Snapshot | None) -> dict:
        """One optimizer phase over `stage.space`, its generations numbered from `offset` in the store; resumed from
        the snapshot when it falls in this phase. Returns the phase's best point and its numbers."""
        st, space = self.cfg.stages, stage.space
        gens = stage.budget // st.popsize
        told = snap.generation + (snap.phase == "told") if snap is not None else 0  # generations of the whole run
        if told < offset + gens:
            ocfg = OptimizerConfig(type=OPTIMIZER, generations=gens, popsize=st.popsize,
                                   sigma0=space.genome_sigma(st.sigma0))
            opt = OPTIMIZERS[OPTIMIZER](ocfg, space.dim, seed=self.cfg.seed, x0=space.genome_x0)
            start, pending = 0, None
            if snap is not None and snap.generation >= offset:  # stopped inside this phase
                try:
                    opt.load_state(snap.state)
                except StateError as e:  # readable data, but not this optimizer's: refused before anything is asked
                    raise ConfigError(f"the optimizer snapshot of generation {snap.generation + 1} does not fit this "
                                      f"run ({e}); start the search again in a new --run-dir") from None
                start = told - offset
                if snap.phase == "asked":  # asked but not told: the same genomes go out again
                    pending = [np.asarray(g, dtype=float) for g in snap.genomes]
            for g in range(start, gens):
                self._generation(store, executor, stage, opt, offset + g, g, pending)
                pending = None
        return self._phase_result(store, stage, offset, gens)

    def _generation(self, store, executor, stage: Stage, opt, gen: int, g: int, pending) -> None:
        if pending is not None:
            genomes = pending
        else:
            genomes = opt.ask()
            store.save_snapshot(gen, "asked", opt.state(), genomes)
        evals = []
        for i, y in enumerate(genomes):
            job = Job("search", gen, i, f"{stage.name}-g{g}-{i}", SEARCH, stage.space.decode(y), [float(v) for v in y])
            evals.append(self._query(store, executor, job))
        if all(e.status != "ok" for e in evals):
            raise RunError(f"every candidate of {stage.name} generation {g + 1} failed; first error: "
                           f"{evals[0].error.splitlines()[0]}")
        failed = FailedValue()
        for e in self._phase_evals(store, stage):  # the worst seen in this phase so far, this generation included
            if e.status == "ok":
                failed.see([e.objective])
        opt.tell(genomes, [failed.told([e.objective] if e.status == "ok" else None)[0] for e in evals])
        store.save_snapshot(gen, "told", opt.state())
        best = self._phase_best(store, stage)
        self.events.emit("generation_told", phase=stage.name, generation=gen, best=best and -best.objective)
        self.console.print(f"{stage.name} generation {g + 1}/{stage.budget // self.cfg.stages.popsize}: best "
                           f"{'–' if best is None else f'{-best.objective:.4f}'} (loss "
                           f"{'–' if best is None else round(best.per_task['loss'], 4)})")

    @staticmethod
    def _phase_evals(store: RunStore, stage: Stage) -> list[Evaluation]:
        return [e for e in store.evaluations("search") if e.label.startswith(f"{stage.name}-g")
                and not (e.error or "").startswith(BUDGET_PREFIX)]

    def _phase_best(self, store: RunStore, stage: Stage) -> Evaluation | None:
        ok = [e for e in self._phase_evals(store, stage) if e.status == "ok"]
        return max(ok, key=lambda e: e.objective) if ok else None  # the first of equals: the first found

    def _phase_result(self, store: RunStore, stage: Stage, offset: int, gens: int) -> dict:
        evals = self._phase_evals(store, stage)
        best = self._phase_best(store, stage)
        x = stage.space.x0 if best is None else stage.space.vector(best.genome)
        return {"value": float("inf") if best is None else -best.objective, "x": [float(v) for v in x],
                "loss": None if best is None else best.per_task["loss"], "queries": len(evals),
                "failed": sum(e.status != "ok" for e in evals), "best_candidate": best and best.label}

    def _run(self, store: RunStore, client: MergeClient, executor: ServiceExecutor, snap: Snapshot | None) -> dict:
        st, cfg = self.cfg.stages, self.cfg
        ids = client.adapters()
        n = len(ids)
        ones, b = np.ones(n), st.beta_bound
        phases: dict[str, dict] = {}
        spent, offset, start = None, 0, ()
        try:
            start = tuple(self._start(store, executor, ids))
            stage = Stage("denoise", StageSpace("alpha", 0.0, 1.0, tuple(ones), start, st.lam_denoise),
                          st.denoise_budget)
            phases["denoise"] = self._stage(store, executor, stage, offset, snap)
            offset += st.denoise_budget // st.popsize
            alpha = tuple(phases["denoise"]["x"])
            stages = [Stage("scale", StageSpace("beta", -b, b, start, alpha, st.lam_scale), st.scale_budget)]
            if "no_flip" in cfg.ablations:
                stages.append(Stage("no_flip", StageSpace("beta", 0.0, b, start, alpha, st.lam_scale),
                                    st.scale_budget))
            if "no_denoise" in cfg.ablations:
                stages.append(Stage("no_denoise", StageSpace("beta", -b, b, start, tuple(ones), st.lam_scale),
                                    st.scale_budget))
            for stage in stages:
                phases[stage.name] = self._stage(store, executor, stage, offset, snap)
                offset += stage.budget // st.popsize
        except BudgetSpent as e:
            spent = str(e)
            self.console.print(f"[yellow]search stopped: {e}[/]")
        candidates = self._candidates(store, executor, ids, phases, start)
        rows = self._heldout(store, executor, candidates, self.held)
        if cfg.whitebox.enabled and cfg.service.launch == "local":
            from evomerge.blackbox.whitebox import whitebox_results

            base, repo = self._provider_paths()
            rows += whitebox_results(base, repo, self.val, self.held, cfg.whitebox.lams, cfg.whitebox.ties_density)
        for r in rows:
            r["average"] = float(np.mean(list(r["heldout"].values()))) if r["heldout"] else None
        kinds = [e.kind for e in store.evaluations()]
        results = {"best_candidate": rows[0]["label"] if rows else None, "adapters": ids,
                   "validation_examples": len(self.val), "rows": rows, "budget_stop": spent,
                   "queries": {"search": sum(p["queries"] for p in phases.values()),
                               "baselines": kinds.count("tune"), "heldout": kinds.count("heldout"),
                               "total_answered_by_service_this_process": client.queries,
                               "retried": client.retried},
                   "phases": phases}
        self.console.print(render_table(results))
        return results

    def _candidates(self, store, executor, ids, phases, start: tuple[float, ...]) -> list[dict]:
        """The merges the table compares, all reached through the API: the search's results, the LoRAHub-style
        uniform start, the best single adapter (one query per adapter on the validation examples), the base."""
        n = len(ids)
        ones = np.ones(n)
        out = []
        alpha = np.array(phases["denoise"]["x"]) if "denoise" in phases else ones
        names = {"scale": ("Evo-Merging (denoise + scale)", lambda p: alpha),
                 "no_flip": ("ablation: without sign flips", lambda p: alpha),
                 "no_denoise": ("ablation: without denoising", lambda p: ones)}
        for phase, (label, a) in names.items():
            if phase in phases:
                p = phases[phase]
                out.append({"label": label, "alpha": a(p), "beta": np.array(p["x"]), "queries":
                            phases["denoise"]["queries"] + p["queries"] if phase != "no_denoise" else p["queries"],
                            "validation_loss": p["loss"]})
        if "denoise" in phases:
            p = phases["denoise"]
            uniform = self.cfg.stages.start == "uniform"  # `start`: what stage 1 held β at
            out.append({"label": f"stage 1 only (denoise, β = {'1/N' if uniform else 'the start'})", "alpha": alpha,
                        "beta": np.array(start), "queries": p["queries"], "validation_loss": p["loss"]})
        fixed = [("uniform merge (α = 1, β = 1/N)", np.full(n, 1 / n)), ("base model (β = 0)", np.zeros(n))]
        singles = []
        try:
            for k, (label, beta) in enumerate(fixed):
                ev = self._fixed(store, executor, "tune", 1, k, label, ones, beta, SEARCH)
                out.append({"label": label, "alpha": ones, "beta": beta, "queries": 1,
                            "validation_loss": ev.per_task.get("loss")})
            singles = self._singles(store, executor, ids)
        except BudgetSpent:
            pass
        if singles:
            loss, i = min(singles)
            out.append({"label": f"best single adapter ({ids[i]})", "alpha": ones, "beta": _one_hot(n, i),
                        "queries": len(singles), "validation_loss": loss})
        return out

    def _singles(self, store, executor, ids) -> list[tuple[float, int]]:
        """(validation loss, index) of each adapter merged alone (α = 1, β = 1), one query each (stored: asked
        again, the answer is reused)."""
        out = []
        for i in range(len(ids)):
            ev = self._fixed(store, executor, "tune", 0, i, f"single-{ids[i]}", np.ones(len(ids)),
                             _one_hot(len(ids), i), SEARCH)
            if ev.status == "ok":
                out.append((ev.per_task["loss"], i))
        return out

    def _start(self, store, executor, ids) -> np.ndarray:
        """β where the stages start (`stages.start`): 1/N per adapter, or the best single adapter."""
        n = len(ids)
        if self.cfg.stages.start == "uniform":
            return np.full(n, 1.0 / n)
        singles = self._singles(store, executor, ids)
        if not singles:
            raise RunError("stages.start best_single: every single-adapter query failed")
        return _one_hot(n, min(singles)[1])

    def _heldout(self, store, executor, candidates: list[dict], held: dict[str, list[dict]]) -> list[dict]:
        """Held-out accuracy per task of each candidate: one query over all held-out examples, split by task."""
        rows = []
        for c in candidates:
            row = {k_: c[k_] for k_ in ("label", "queries", "validation_loss")}
            row.update(alpha=[float(v) for v in c["alpha"]], beta=[float(v) for v in c["beta"]], heldout={})
            try:
                # keyed by label alone: a resumed run may list more candidates before this one
                ev = self._fixed(store, executor, "heldout", 0, 0, c["label"], c["alpha"], c["beta"], HELDOUT)
            except BudgetSpent as e:
                row["error"] = str(e)
                rows.append(row)
                continue
            if ev.status == "ok":
                correct, start = ev.per_example["correct"], 0
                for task, t_rows in held.items():
                    row["heldout"][task] = float(np.mean(correct[start : start + len(t_rows)]))
                    start += len(t_rows)
            else:
                row["error"] = ev.error
            rows.append(row)
        return rows


def _one_hot(n: int, i: int) -> np.ndarray:
    x = np.zeros(n)
    x[i] = 1.0
    return x


def render_table(results: dict) -> Table:
    rows = results["rows"]
    tasks = sorted({t for r in rows for t in r["heldout"]})
    table = Table(title="held-out accuracy (exact match)")
    for col in ("method", "queries", "val. loss", *tasks, "average"):
        table.add_column(col, justify="left" if col == "method" else "right")
    for r in rows:
        loss = "" if r.get("validation_loss") is None else f"{r['validation_loss']:.4f}"
        accs = [f"{r['heldout'][t]:.3f}" if t in r["heldout"] else "—" for t in tasks]
        avg = "—" if r.get("average") is None else f"{r['average']:.3f}"
        table.add_row(r["label"], str(r["queries"]), loss, *accs, avg)
    return table
