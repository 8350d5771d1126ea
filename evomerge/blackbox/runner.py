"""A black-box merging run: two CMA-ES stages over the merge service's API, baselines, held-out table.

Stage 1 (denoise) searches the per-adapter sparsity α ∈ [0,1]^N with β fixed at 1/N, minimizing
loss + λ₁·mean|α|; stage 2 (scale) fixes the best α and searches β ∈ [−b, b]^N (sign flips allowed), minimizing
loss + λ₂·mean|β| (DESIGN §6, the paper's defaults). Every query is one stored evaluation of the run's store, so a
stopped run continues where it was: CMA-ES is replayed from the seed and stored answers are reused (no query is
sent twice). A query that fails after the client's retries is a recorded failed evaluation and ranks last; a used-up
budget is recorded too and ends the search — what was found so far is still reported.

This process holds no weight: it sends vectors and examples and reads scalars. Only the optional white-box
baselines (whitebox.py) read the adapters, and only when the run is given the repository.
"""

from __future__ import annotations

import json
import time
from contextlib import ExitStack
from pathlib import Path

import numpy as np
from cmaes import CMA
from rich.console import Console
from rich.table import Table

from evomerge.blackbox.client import BudgetExhausted, MergeClient, ServiceError, TransportFailure, read_token
from evomerge.blackbox.config import BlackboxExperiment, load_blackbox
from evomerge.errors import ConfigError
from evomerge.fitness.tasks import load_split
from evomerge.runner import _check_config
from evomerge.store import RunDir, RunStore
from evomerge.store.database import Evaluation
from evomerge.store.rundir import DB_FILE

BUDGET_PREFIX = "budget exhausted: "
TRANSPORT_PREFIX = "transport: "  # the service was unreachable: not the candidate's fault, asked again on resume
FAILED_VALUE = 1e3  # the fitness of a failed query: ranks below any real loss
# phase -> generation offset in the store (each phase's generations are numbered from its offset)
PHASE_OFFSET = {"denoise": 0, "scale": 1000, "no_denoise": 2000, "no_flip": 3000}


class BudgetSpent(Exception):
    pass


class BlackboxRunner:
    def __init__(self, experiment: str | Path | None, run_dir: str | Path | None = None,
                 console: Console | None = None, force: bool = False):
        self.console = console or Console()
        self.force = force
        if experiment is not None:
            self.experiment_text = Path(experiment).read_text()
            self.cfg, self.base_dir = load_blackbox(experiment)
            self.run_dir = Path(run_dir) if run_dir else Path("runs") / self.cfg.name
        else:
            self.run_dir = Path(run_dir)

    @classmethod
    def resume(cls, run_dir: str | Path, console: Console | None = None) -> BlackboxRunner:
        """A runner for an existing black-box run, with the config and base directory it was started with."""
        self = cls(None, run_dir, console)
        store = RunDir.open(self.run_dir).store()
        try:
            text, base_dir = store.get_meta("config"), store.get_meta("base_dir")
            self.cfg = BlackboxExperiment.model_validate_json(text)
            self.base_dir = Path(base_dir)
        finally:
            store.close()
        self.experiment_text = (self.run_dir / "experiment.yaml").read_text()
        return self

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

    def _service(self, stack: ExitStack, rundir: RunDir) -> MergeClient:
        s = self.cfg.service
        if s.launch == "local":
            from evomerge.blackbox.launch import local_service

            base, repo = self._provider_paths()
            with self.console.status("starting the merge service"):
                url, token = stack.enter_context(local_service(base, repo, rundir.path / "service.log",
                                                               replicas=s.replicas, threads=self.cfg.threads))
        else:
            url = s.url
            token_file = (self.base_dir / s.token_file).resolve() if s.token_file else None
            token = read_token(s.token_env, token_file)
        client = MergeClient(url, token, retries=s.retries, timeout_s=s.timeout_s, retry_window_s=s.retry_window_s)
        stack.callback(client.close)
        return client

    # -- the run ------------------------------------------------------------------------------------------------
    def run(self) -> dict:
        import torch

        torch.set_num_threads(self.cfg.threads)
        val, held = self._data()
        rundir, fresh = (RunDir.open(self.run_dir), False) if RunDir.exists(self.run_dir) else \
            (RunDir.new(self.run_dir), True)
        with rundir.lock():
            store = rundir.store(self.cfg.name, create=True) if fresh else rundir.store()
            if fresh:
                rundir.save()
            try:
                self._prepare(store, rundir)
                with rundir.session(resumed=not fresh, kind="blackbox") as self.events, ExitStack() as stack:
                    client = self._service(stack, rundir)
                    results = self._run(store, client, val, held)
            finally:
                store.close()
        return results

    def _prepare(self, store: RunStore, rundir: RunDir) -> None:
        stored = store.get_meta("config")
        if stored is None:
            store.set_meta("config", self.cfg.model_dump_json())
            store.set_meta("kind", "blackbox")
            store.set_meta("base_dir", str(self.base_dir))
            store.set_meta("created", str(time.time()))
        elif _check_config(stored, self.cfg, rundir.path / DB_FILE, self.force):
            store.set_meta("config", self.cfg.model_dump_json())
        (rundir.path / "experiment.yaml").write_text(self.experiment_text)
        self.stored = {(e.kind, e.generation, e.idx, e.label): e for e in store.evaluations()}

    def _query(self, store: RunStore, client: MergeClient, kind: str, gen: int, idx: int, label: str,
               alpha, beta, examples: list[dict], *, accuracy: bool = False) -> Evaluation:
        """One query, or its stored answer when this run already asked it (replay on resume)."""
        key = (kind, gen, idx, label)
        genome = [float(v) for v in np.concatenate([alpha, beta])]
        old = self.stored.get(key)
        # a stored answer is reused; a query refused for want of budget (the budget may be new) or lost to an
        # unreachable service is asked again
        if old is not None and old.genome is not None and np.allclose(old.genome, genome) and \
                not (old.error or "").startswith((BUDGET_PREFIX, TRANSPORT_PREFIX)):
            return old
        t0 = time.time()
        try:
            r = client.evaluate(alpha, beta, examples, accuracy=accuracy, per_example=accuracy)
            ev = Evaluation(kind, gen, idx, label, "query", "ok", objective=-r["loss"],
                            per_task={"loss": r["loss"]}, genome=genome, eval_seconds=time.time() - t0,
                            per_example={"correct": [float(c) for c in r.get("per_example_correct", [])]})
        except ServiceError as e:
            prefix = BUDGET_PREFIX if isinstance(e, BudgetExhausted) else \
                TRANSPORT_PREFIX if isinstance(e, TransportFailure) else ""
            error = f"{prefix}{e}"
            ev = Evaluation(kind, gen, idx, label, "query", "failed", genome=genome, error=error,
                            eval_seconds=time.time() - t0)
            store.add(ev)
            self.events.emit("evaluation_failed", label=label, error=str(e))
            if isinstance(e, BudgetExhausted):
                raise BudgetSpent(str(e)) from None
            return ev
        store.add(ev)
        self.events.emit("evaluation", label=label, status="ok", worker="service")
        return ev

    def _stage(self, store, client, phase: str, x0: np.ndarray, bounds: tuple[float, float], budget: int,
               lam: float, merge, examples: list[dict]) -> dict:
        """One CMA-ES stage: minimize loss(merge(x)) + lam·mean|x|; returns the best point and its numbers."""
        st = self.cfg.stages
        n = len(x0)
        es = CMA(mean=x0.astype(float), sigma=st.sigma0, bounds=np.array([bounds] * n, dtype=float),
                 seed=self.cfg.seed, population_size=st.popsize)
        best = {"value": float("inf"), "x": x0.tolist(), "loss": None, "queries": 0, "failed": 0}
        gens = budget // st.popsize
        for g in range(gens):
            told = []
            for i in range(st.popsize):
                x = es.ask()
                alpha, beta = merge(x)
                ev = self._query(store, client, "search", PHASE_OFFSET[phase] + g, i, f"{phase}-g{g}-{i}",
                                 alpha, beta, examples)
                best["queries"] += 1
                if ev.status == "ok":
                    value = ev.per_task["loss"] + lam * float(np.mean(np.abs(x)))
                    if value < best["value"]:
                        best.update(value=value, x=[float(v) for v in x], loss=ev.per_task["loss"])
                else:
                    value = FAILED_VALUE
                    best["failed"] += 1
                told.append((x, value))
            es.tell(told)
            self.events.emit("generation", phase=phase, generation=g, best=best["value"])
            self.console.print(f"{phase} generation {g + 1}/{gens}: best {best['value']:.4f} "
                               f"(loss {best['loss'] if best['loss'] is None else round(best['loss'], 4)})")
        return best

    def _run(self, store: RunStore, client: MergeClient, val: list[dict], held: dict[str, list[dict]]) -> dict:
        st, cfg = self.cfg.stages, self.cfg
        ids = client.adapters()
        n = len(ids)
        budgets = [st.denoise_budget, st.scale_budget] + [st.scale_budget] * len(cfg.ablations)
        store.set_meta("search_total", str(sum(b // st.popsize * st.popsize for b in budgets)))
        ones, uniform = np.ones(n), np.full(n, 1.0 / n)
        phases: dict[str, dict] = {}
        spent = None
        try:
            phases["denoise"] = self._stage(store, client, "denoise", ones, (0.0, 1.0), st.denoise_budget,
                                            st.lam_denoise, lambda x: (x, uniform), val)
            alpha = np.array(phases["denoise"]["x"])
            b = st.beta_bound
            phases["scale"] = self._stage(store, client, "scale", uniform, (-b, b), st.scale_budget, st.lam_scale,
                                          lambda x: (alpha, x), val)
            if "no_flip" in cfg.ablations:
                phases["no_flip"] = self._stage(store, client, "no_flip", uniform, (0.0, b), st.scale_budget,
                                                st.lam_scale, lambda x: (alpha, x), val)
            if "no_denoise" in cfg.ablations:
                phases["no_denoise"] = self._stage(store, client, "no_denoise", uniform, (-b, b), st.scale_budget,
                                                   st.lam_scale, lambda x: (ones, x), val)
        except BudgetSpent as e:
            spent = str(e)
            self.console.print(f"[yellow]search stopped: {e}[/]")
        candidates = self._candidates(store, client, ids, phases, val)
        rows = self._heldout(store, client, candidates, held)
        if cfg.whitebox.enabled and cfg.service.launch == "local":
            from evomerge.blackbox.whitebox import whitebox_results

            base, repo = self._provider_paths()
            rows += whitebox_results(base, repo, val, held, cfg.whitebox.lams, cfg.whitebox.ties_density)
        for r in rows:
            r["average"] = float(np.mean(list(r["heldout"].values()))) if r["heldout"] else None
        kinds = [e.kind for e in store.evaluations()]
        results = {"adapters": ids, "validation_examples": len(val), "rows": rows, "budget_stop": spent,
                   "queries": {"search": sum(p["queries"] for p in phases.values()),
                               "baselines": kinds.count("tune"), "heldout": kinds.count("heldout"),
                               "total_answered_by_service_this_process": client.queries,
                               "retried": client.retried},
                   "phases": phases}
        (self.run_dir / "results.json").write_text(json.dumps(results, indent=2))
        store.set_meta("finished", str(time.time()))
        self.events.emit("run_finished", best=rows[0]["label"] if rows else None)
        self.console.print(render_table(results))
        return results

    def _candidates(self, store, client, ids, phases, val) -> list[dict]:
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
            out.append({"label": "stage 1 only (denoise, β = 1/N)", "alpha": alpha, "beta": np.full(n, 1 / n),
                        "queries": p["queries"], "validation_loss": p["loss"]})
        fixed = [("uniform merge (α = 1, β = 1/N)", np.full(n, 1 / n)), ("base model (β = 0)", np.zeros(n))]
        singles = []
        try:
            for k, (label, beta) in enumerate(fixed):
                ev = self._query(store, client, "tune", 1, k, label, ones, beta, val)
                out.append({"label": label, "alpha": ones, "beta": beta, "queries": 1,
                            "validation_loss": ev.per_task.get("loss")})
            for i in range(n):
                beta = np.zeros(n)
                beta[i] = 1.0
                ev = self._query(store, client, "tune", 0, i, f"single-{ids[i]}", ones, beta, val)
                if ev.status == "ok":
                    singles.append((ev.per_task["loss"], i))
        except BudgetSpent:
            pass
        if singles:
            loss, i = min(singles)
            beta = np.zeros(n)
            beta[i] = 1.0
            out.append({"label": f"best single adapter ({ids[i]})", "alpha": ones, "beta": beta,
                        "queries": len(singles), "validation_loss": loss})
        return out

    def _heldout(self, store, client, candidates: list[dict], held: dict[str, list[dict]]) -> list[dict]:
        """Held-out accuracy per task of each candidate: one query over all held-out examples, split by task."""
        examples = [e for rows in held.values() for e in rows]
        rows = []
        for c in candidates:
            row = {k_: c[k_] for k_ in ("label", "queries", "validation_loss")}
            row.update(alpha=[float(v) for v in c["alpha"]], beta=[float(v) for v in c["beta"]], heldout={})
            try:
                # keyed by label alone: a resumed run may list more candidates before this one
                ev = self._query(store, client, "heldout", 0, 0, c["label"], c["alpha"], c["beta"], examples,
                                 accuracy=True)
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
