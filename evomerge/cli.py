"""The `evomerge` command line."""

from __future__ import annotations

import contextlib
import os
import signal
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape

from evomerge.errors import ConfigError, EvomergeError, RunError, Stopped

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Evolutionary search for model-merge recipes.")
zoo_app = typer.Typer(no_args_is_help=True, help="The tiny model zoo built locally for demos and tests.")
app.add_typer(zoo_app, name="zoo")
console = Console()
err_console = Console(stderr=True)


def _fail(e: Exception) -> None:
    """User errors (bad config or sources) exit 2; a run that cannot go on exits 1."""
    from evomerge.config import one_line

    err_console.print(f"[red]error:[/] {escape(one_line(str(e)))}", highlight=False, soft_wrap=True)
    raise typer.Exit(1 if isinstance(e, RunError) else 2)


def _out_file(out: Path | None, flag: str = "--out") -> None:
    """A file the command will write: checked before any work, so that a wrong path is one line, not a traceback
    after the work is done."""
    if out is None:
        return
    if out.is_dir():
        raise ConfigError(f"{flag}: {out} is a directory (expected the path of a file to write)")
    if not out.parent.is_dir():
        raise ConfigError(f"{flag}: the folder {out.parent} does not exist (expected a file in an existing folder)")


def _out_model_dir(out: Path) -> None:
    """The directory an export writes a model into: new, empty, or an earlier export it replaces. Not a folder of
    other files: the model would be mixed with them (another checkpoint's shard index would even be loaded instead
    of the export's weights)."""
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out: {out} is a file (expected a directory to write the model into)")
    if out.is_dir() and any(out.iterdir()) and not (out / "evomerge_recipe.json").is_file():
        raise ConfigError(f"--out: {out} is not empty and not an earlier export (expected a new or empty directory)")


WorkersOpt = Annotated[int | None, typer.Option(help="run on this many Ray workers (implies executor type ray)")]
RayAddressOpt = Annotated[str | None, typer.Option(
    help="attach to a Ray cluster: 'auto' (this node is part of it) or 'ray://HEAD:10001'; default: a local Ray "
         "instance when the executor is ray")]


def _executor_overrides(workers: int | None, ray_address: str | None) -> dict:
    return {k: v for k, v in (("workers", workers), ("address", ray_address)) if v is not None}


@contextlib.contextmanager
def _stop_on_signals():
    """SIGTERM and SIGHUP stop a run as Ctrl-C does (they raise `Stopped`, a KeyboardInterrupt, in the main
    thread), so that a scheduler's or a closed terminal's stop is clean and `evomerge resume` continues exactly."""
    def stop(signum, _frame):
        raise Stopped(signum)

    old = {sig: signal.signal(sig, stop) for sig in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for sig, handler in old.items():
            signal.signal(sig, handler)


def _run(make_runner) -> None:
    """Run a Runner with the CLI's error handling: user errors exit 2, a run that cannot go on 1, Ctrl-C 130,
    SIGTERM 143, SIGHUP 129."""
    runner = None
    try:
        with _stop_on_signals():
            runner = make_runner()
            console.print(f"run directory: {runner.run_dir}")
            runner.run()
    except EvomergeError as e:
        _fail(e)
    except KeyboardInterrupt as e:
        from evomerge.store import RunDir

        what = f"stopped by {e}" if isinstance(e, Stopped) else "interrupted"
        if runner is not None and RunDir.exists(runner.run_dir):
            said = f"every completed evaluation is saved. Continue with: evomerge resume {runner.run_dir}"
        else:  # stopped while the sources were checked: there is no run to resume
            said = "the run had not started, nothing was written"
        err_console.print(f"{what}; {said}", highlight=False, soft_wrap=True)
        raise typer.Exit(e.exit_status if isinstance(e, Stopped) else 130) from None


@app.command()
def run(
    experiment: Annotated[Path, typer.Argument(help="experiment YAML file")],
    run_dir: Annotated[Path | None,
                       typer.Option(help="run directory (default runs/<name>); an existing one continues")] = None,
    force: Annotated[bool, typer.Option(help="continue an existing run whose config changed in fields that do not "
                                              "define the search (threads, device, executor, baselines, name)")
                     ] = False,
    db: Annotated[str | None, typer.Option(help="keep the run's evaluations in this database (SQLAlchemy URL, e.g. "
                                                "postgresql://user@host/evomerge) instead of RUN_DIR/run.db; a "
                                                "password comes from PGPASSWORD or ~/.pgpass",
                                           envvar="EVOMERGE_DB")] = None,
    workers: WorkersOpt = None,
    ray_address: RayAddressOpt = None,
) -> None:
    """Run (or continue) an experiment (a merge search, black-box merging, the M2N2 digits reproduction) and print
    its comparison table."""
    from evomerge.runner import open_run

    _run(lambda: open_run(experiment, run_dir, console=console, force=force, db=db,
                          executor=_executor_overrides(workers, ray_address)))


@app.command()
def serve(
    base: Annotated[Path, typer.Option(help="base model directory (Hugging Face format)")],
    repository: Annotated[Path, typer.Option(help="directory of PEFT LoRA adapters, one folder each")],
    host: Annotated[str, typer.Option(help="address to listen on")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="port to listen on")] = 8000,
    tokens_file: Annotated[Path | None, typer.Option(help="file of API tokens, lines 'TOKEN [BUDGET]' (default: "
                                                          "the token in $EVOMERGE_SERVICE_TOKEN)")] = None,
    budget: Annotated[int, typer.Option(help="queries per token when the token line names no budget")] = 10_000,
    dataset: Annotated[list[str] | None, typer.Option(help="a dataset clients may name: NAME=DIR of "
                                                           "<split>.jsonl (repeat)")] = None,
    replicas: Annotated[int, typer.Option(help="live copies of the base model (concurrent merges)")] = 1,
    threads: Annotated[int, typer.Option(help="torch threads")] = 1,
    budget_db: Annotated[Path | None, typer.Option(help="SQLite file of each token's budget and spent queries, kept "
                                                        "across restarts (tokens stored as SHA-256 only); default: "
                                                        "beside --tokens-file, else $EVOMERGE_HOME/service-budgets.db")]
    = None,
    rate: Annotated[float, typer.Option(help="queries per second per token (bursts of twice that)", min=0.01)]
    = 50.0,
) -> None:
    """Serve black-box LoRA merging over HTTP: clients send per-adapter α and β, get losses or completions."""
    import sqlite3

    import torch

    from evomerge.errors import require_extra

    try:
        require_extra("blackbox", "evomerge serve")
    except EvomergeError as e:
        _fail(e)
    import uvicorn

    from evomerge.blackbox.service import Limits, MergeService, create_app, read_tokens

    torch.set_num_threads(threads)
    try:
        datasets = {}
        for item in dataset or []:
            name, sep, d = item.partition("=")
            if not sep or not Path(d).is_dir():
                raise EvomergeError(f"--dataset: expected NAME=DIR with an existing directory, got {item!r}")
            datasets[name] = Path(d)
        tokens = read_tokens(tokens_file, budget)
        if budget_db is None:
            from evomerge.zoo.build import evomerge_home

            budget_db = (tokens_file.with_name(tokens_file.name + ".budgets.db") if tokens_file is not None
                         else evomerge_home() / "service-budgets.db")
            budget_db.parent.mkdir(parents=True, exist_ok=True)
        service = MergeService(base, repository, datasets, replicas=replicas,
                               limits=Limits(rate_per_s=rate, burst=max(1, int(2 * rate))))
        app_ = create_app(service, tokens, budget_db)
    except EvomergeError as e:
        _fail(e)
    except sqlite3.Error as e:
        _fail(EvomergeError(f"--budget-db: cannot use {budget_db} ({e})"))
    console.print(f"serving {len(service.repo)} adapters on http://{host}:{port} (OpenAPI: /docs, /openapi.json); "
                  f"budgets in {budget_db}")
    uvicorn.run(app_, host=host, port=port, log_level="warning")


@app.command()
def resume(
    run_dir: Annotated[Path, typer.Argument(help="run directory")],
    workers: WorkersOpt = None,
    ray_address: RayAddressOpt = None,
) -> None:
    """Continue a stopped run (of any kind) with the experiment config it was started with."""
    from evomerge.runner import resume_run

    _run(lambda: resume_run(run_dir, console=console, executor=_executor_overrides(workers, ray_address)))


@app.command()
def status(
    run_dir: Annotated[Path, typer.Argument(help="run directory")],
    as_json: Annotated[bool, typer.Option("--json", help="print the status as JSON")] = False,
    watch: Annotated[bool, typer.Option(help="keep the table on screen, refreshed, until the run finishes "
                                             "(Ctrl-C to leave)")] = False,
    every: Annotated[float, typer.Option(help="with --watch: seconds between refreshes", min=0.1)] = 2.0,
) -> None:
    """Progress, best so far, failures, evaluations per hour and ETA of a run (live or not)."""
    import json

    from evomerge.reporting.status import render_status, run_status, watch_status

    try:
        if watch:
            watch_status(run_dir, console, every)
            return
        s = run_status(run_dir)
    except EvomergeError as e:
        _fail(e)
    except KeyboardInterrupt:
        raise typer.Exit(130) from None
    console.print_json(json.dumps(s)) if as_json else console.print(render_status(s))


@app.command()
def runs(folder: Annotated[Path, typer.Argument(help="folder holding run directories")] = Path("runs")) -> None:
    """Every run in a folder, one line each."""
    from evomerge.reporting.status import list_runs, render_runs

    if not folder.is_dir():
        _fail(EvomergeError(f"{folder}: no such folder (expected a folder of run directories)"))
    found = list_runs(folder)
    if not found:
        console.print(f"no runs in {folder}")
        return
    console.print(render_runs(found, folder))


@app.command()
def plan(
    experiment: Annotated[Path, typer.Argument(help="experiment YAML file")],
    device_memory: Annotated[str | None, typer.Option(help="memory one worker may use, e.g. 141GB (default: this "
                                                           "machine's GPU or RAM, shared among its workers)")] = None,
    workers: Annotated[int | None, typer.Option(help="workers sharing the device (default: from the "
                                                     "experiment)")] = None,
    device: Annotated[str | None, typer.Option(help="cpu or cuda (default: the experiment's)")] = None,
) -> None:
    """What each worker will hold in memory, from the sources' headers (nothing is loaded), and which layout fits."""
    from evomerge.merge.memory import parse_size
    from evomerge.runner import plan_experiment

    try:
        capacity = None if device_memory is None else parse_size(device_memory, "--device-memory")
        p = plan_experiment(experiment, capacity=capacity, workers=workers, device=device)
    except EvomergeError as e:
        _fail(e)
    console.print(p.render(), highlight=False, soft_wrap=True)
    if p.chosen is None:
        raise typer.Exit(2)


@app.command()
def validate(
    experiment: Annotated[Path, typer.Argument(help="experiment YAML file")],
    config_only: Annotated[bool, typer.Option(help="check the file only: no sources loaded, nothing scored (for "
                                                   "experiments whose models are elsewhere)")] = False,
) -> None:
    """Check an experiment: the file, then a dry run — the sources loaded, their grouping shown, the first candidate
    built and scored on a few examples of every task and split — so that what would fail in `run` fails here."""
    from evomerge.config import experiment_kind, load_experiment, read_mapping

    try:
        kind = experiment_kind(experiment)
        if kind == "m2n2_digits":
            from evomerge.m2n2.digits import load_config

            cfg = load_config(read_mapping(experiment, "experiment file"), str(experiment))
        elif kind == "blackbox":
            from evomerge.blackbox.config import load_blackbox

            cfg, _ = load_blackbox(experiment)
        else:
            cfg, base_dir = load_experiment(experiment)
            if cfg.fitness.type == "lm_eval":  # task files parse (registry names and data: when a run starts)
                from evomerge.fitness.lm_eval_scorer import TaskSource

                for task in cfg.fitness.tasks:
                    source = cfg.fitness.task_spec(task).source
                    if source.endswith((".yaml", ".yml")):
                        TaskSource(source, base_dir, None, f"fitness.tasks.{task}")
        memory = ""
        if kind not in ("m2n2_digits", "blackbox") and not config_only:
            memory = _memory_check(experiment, cfg)  # headers only: refuses what cannot fit before loading
            from evomerge.runner import dry_run

            dry_run(experiment, console)
    except EvomergeError as e:
        _fail(e)
    console.print(f"{experiment}: ok ({cfg.name}){memory}")


def _memory_check(experiment: Path, cfg) -> str:
    """validate's part of the memory plan: refuses a run that cannot fit; says so when it cannot tell yet."""
    from evomerge.config import ExperimentConfig
    from evomerge.runner import plan_experiment

    if not isinstance(cfg, ExperimentConfig) or cfg.space.type == "data_flow":
        return ""
    if any(ref.startswith("run:") for ref in [cfg.sources.base or "", *cfg.sources.models]):
        return "; memory plan with `evomerge plan` (validate does not export run: sources)"
    try:
        p = plan_experiment(experiment)
    except EvomergeError as e:  # sources not there yet (an unbuilt zoo, a template's placeholder paths)
        return f"; no memory plan yet: {e}"
    if p.chosen is None:
        raise ConfigError(p.refusal())
    return f"; memory: {p.total(p.chosen) / 1e9:.2f} GB per worker ({p.chosen}, see evomerge plan)"


@app.command()
def inspect(
    source: Annotated[Path, typer.Argument(help="a Hugging Face model directory (safetensors)")],
    granularity: Annotated[str, typer.Option(help="model | layer | N (blocks per group) | tensor")] = "layer",
) -> None:
    """How a model's tensors are grouped for a search, tied tensors named (a tied LM head moves with 'embed')."""
    from evomerge.merge.grouping import grouping, render_grouping

    try:
        g: str | int = int(granularity) if granularity.isdigit() else granularity
        if g not in ("model", "layer", "tensor") and not (isinstance(g, int) and g > 0):
            raise EvomergeError(f"--granularity: expected model, layer, tensor or a positive number, got "
                                f"{granularity!r}")
        lines = render_grouping(grouping(source, g), source)
    except EvomergeError as e:
        _fail(e)
    for line in lines:
        console.print(line, highlight=False, soft_wrap=True)


@app.command()
def export(
    what: Annotated[Path, typer.Argument(help="a run directory, or a recipe JSON file (then give --base, --source)")],
    out: Annotated[Path, typer.Option(help="where to write the model directory")],
    rank: Annotated[int, typer.Option(help="export the candidate with this rank by search score (rank 1: the final "
                                           "table's evolved row, which may be a source or baseline the search "
                                           "started from)")] = 1,
    candidate: Annotated[str | None, typer.Option(help="export this candidate id instead (e.g. g14-8)")] = None,
    base: Annotated[Path | None, typer.Option(help="with a recipe file: the base model directory")] = None,
    source: Annotated[list[Path] | None,
                      typer.Option(help="with a recipe file: a source model (repeat, in order)")] = None,
) -> None:
    """Export a run's candidate, or any recipe, as a Hugging Face model directory (+ card, recipe, mergekit YAML)."""
    from evomerge.reporting.export import export_from_run, export_recipe_file

    try:
        _out_model_dir(out)
        if what.is_file():
            path, label = export_recipe_file(what, base, source or [], out), str(what)
        else:
            path, label = export_from_run(what, out, rank, candidate)
    except EvomergeError as e:
        _fail(e)
    console.print(f"exported {label} to {path}")


@app.command()
def leaderboard(
    run_dirs: Annotated[list[Path], typer.Argument(help="run directories (several: a comparison is added)")],
    fmt: Annotated[str, typer.Option("--format", help="csv | json | md | html")] = "md",
    sort: Annotated[str, typer.Option(help="order by this column (e.g. heldout, search_add, eval_s)")] = "rank",
    desc: Annotated[bool, typer.Option(help="with --sort: largest first")] = False,
    top: Annotated[int | None, typer.Option(help="only the first N rows", min=1)] = None,
    comparison: Annotated[bool, typer.Option(help="only the comparison of the runs (best per run, evaluations to "
                                                  "95% of the final best)")] = False,
    out: Annotated[Path | None, typer.Option(help="write to this file instead of the terminal")] = None,
) -> None:
    """Every candidate of one or more runs, ranked, with per-task search and held-out scores."""
    import sys

    from evomerge.reporting.leaderboard import read_board, render

    try:
        _out_file(out)
        text = render([read_board(d) for d in run_dirs], fmt, sort, desc, top, comparison)
    except EvomergeError as e:
        _fail(e)
    if out is None:
        sys.stdout.write(text)
    else:
        out.write_text(text)
        console.print(f"wrote {out}")


@app.command()
def report(
    run_dir: Annotated[Path, typer.Argument(help="run directory")],
    out: Annotated[Path | None, typer.Option(help="the HTML file (default RUN_DIR/report.html)")] = None,
    watch: Annotated[bool, typer.Option(help="rewrite the report while the run is live (the page reloads itself)")]
    = False,
    every: Annotated[float, typer.Option(help="with --watch: seconds between rewrites", min=1)] = 30.0,
    screenshot: Annotated[Path | None, typer.Option(help="also save a PNG of the page's top, taken in headless "
                                                         "Chromium")] = None,
    width: Annotated[int, typer.Option(help="with --screenshot: the window's width in pixels", min=200)] = 1200,
    height: Annotated[int, typer.Option(help="with --screenshot: the window's height in pixels", min=200)] = 1600,
) -> None:
    """One self-contained HTML page (plots embedded, works offline): progress, leaders, recipe, every candidate."""
    from evomerge.reporting.browser import screenshot as take
    from evomerge.reporting.html_report import watch_report, write_report

    try:
        _out_file(out)
        _out_file(screenshot, "--screenshot")
        path = watch_report(run_dir, out, every, log=console.print) if watch else write_report(run_dir, out)
        console.print(f"report: {path}")
        if screenshot is not None:
            logged = take(path, screenshot, width, height)
            console.print(f"screenshot: {screenshot}")
            if logged:
                raise RunError(f"the page logged {len(logged)} console messages; the first: {logged[0]}")
    except EvomergeError as e:
        _fail(e)
    except KeyboardInterrupt:
        raise typer.Exit(130) from None


@zoo_app.command("build")
def zoo_build(
    profile: Annotated[str, typer.Option(help="zoo profile: default | portable (the default zoo, the same on AVX2 "
                                              "and AVX-512 CPUs) | tiny | zoo2 (12 layers; a language expert, "
                                              "a math expert, and addition in the language that neither knows) | "
                                              "zoo2-tiny | scale (untrained, ~1B parameters, bf16, 7.6 GB on disk) "
                                              "| scale-tiny")] = "default",
    force: Annotated[bool, typer.Option(help="rebuild even if cached")] = False,
    lora: Annotated[bool, typer.Option(help="also build the zoo's LoRA repository (adapters of the base, for "
                                            "black-box merging; cached apart from the zoo)")] = False,
) -> None:
    """Build the zoo's base and expert models (cached under $EVOMERGE_HOME)."""
    import json

    from evomerge.zoo.build import PROFILES, build_zoo
    from evomerge.zoo.scale import SCALE_PROFILES, build_scale

    if profile in SCALE_PROFILES:  # untrained, Llama-shaped, ~1B parameters: memory and speed at real sizes
        out = build_scale(SCALE_PROFILES[profile], force=force, log=console.print)
        console.print(f"scale models at {out}: " + ", ".join(p.name for p in sorted(out.iterdir()) if p.is_dir()))
        return
    if profile not in PROFILES:
        _fail(EvomergeError(f"--profile: unknown profile {profile!r}; expected one of "
                            f"{sorted(PROFILES) + sorted(SCALE_PROFILES)}"))
    if lora:
        _build_lora(profile, force)
    out = build_zoo(PROFILES[profile], force=force, log=console.print)
    report = json.loads((out / "zoo.json").read_text())
    console.print(f"zoo at {out} (built in {report['build_seconds']} s)")
    for name, acc in report["models"].items():
        console.print(f"  {name:8s} " + "  ".join(f"{t}={a:.3f}" for t, a in acc.items()))


def _build_lora(profile: str, force: bool) -> None:
    import json

    from evomerge.zoo.lora import LORA_PROFILES, build_lora_repo

    if profile not in LORA_PROFILES:
        _fail(EvomergeError(f"--lora: the {profile!r} zoo has no LoRA repository; expected a profile of "
                            f"{sorted(LORA_PROFILES)}"))
    try:
        out = build_lora_repo(LORA_PROFILES[profile], force=force, log=console.print)
    except EvomergeError as e:
        _fail(e)
    report = json.loads((out / "repo.json").read_text())
    console.print(f"LoRA repository at {out}: {len(report['adapters'])} adapters (built in "
                  f"{report['build_seconds']} s)")


@zoo_app.command("data")
def zoo_data(
    out: Annotated[Path, typer.Option(help="where to write <task>/<split>.jsonl")] = Path("fitness/data/zoo"),
    profile: Annotated[str, typer.Option(help="zoo profile: default | tiny | zoo2 | zoo2-tiny")] = "default",
) -> None:
    """Write the zoo's task splits as JSONL (the files under fitness/data/zoo and fitness/data/zoo2 are made by
    this)."""
    from evomerge.zoo.build import PROFILES, write_task_data

    if profile not in PROFILES:
        _fail(EvomergeError(f"--profile: unknown profile {profile!r}; expected one of {sorted(PROFILES)}"))
    write_task_data(PROFILES[profile], out)
    console.print(f"wrote {out}")


def main() -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # evomerge never downloads: sources are local directories
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    # lm-eval draws tqdm bars per candidate and task; evomerge shows its own progress (read when tqdm is imported)
    os.environ.setdefault("TQDM_DISABLE", "1")
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # per-file load/save bars of tiny models are noise around our own progress
    app()


if __name__ == "__main__":
    main()
