"""A run's report as one self-contained HTML file (plots are PNGs embedded as data URIs: it works offline and can be
mailed): how the search went, the leaders against the sources and baselines, the Pareto front, the best recipe, and
every candidate in a sortable table. Every number comes from the run store, through `evomerge.reporting.leaderboard`.

The page is a list of sections, each a function registered with `@section`: it returns the section's HTML, or
raises `Missing` with a one-line reason when the run lacks its data (the page then says so in place of the plot).
An optimizer or search space with its own picture (a DFS layer path, an M2N2 archive) registers one more section.
"""

from __future__ import annotations

import base64
import html
import io
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from evomerge.reporting.leaderboard import Board, columns, flat, html_page, html_table, read_board

REPORT_FILE = "report.html"
TABLE_ROWS = 50  # candidates shown in the page's table (the leaderboard command exports all of them)
LEADERS = 3  # leaders drawn against the sources and baselines
REFRESH_S = 30  # how often a live run's page reloads itself

_STYLE = """
section { margin: 1.5em 0; max-width: 1100px; }
h2 { font-size: 1.15em; border-bottom: 1px solid #ddd; padding-bottom: 0.2em; }
img.plot { max-width: 100%; border: 1px solid #eee; }
p.missing { color: #777; font-style: italic; }
table.facts td { text-align: left; }
table.facts td:first-child { font-weight: bold; }
"""


class Missing(Exception):  # noqa: N818 — a section's reason to be left out, not an error
    """The run has no data for this section; the message says why, in one line."""


@dataclass(frozen=True)
class Section:
    key: str
    title: str
    render: Callable[[Board], str]


SECTIONS: list[Section] = []


def section(key: str, title: str):
    """Register a report section; sections appear in registration order."""
    def deco(fn: Callable[[Board], str]):
        SECTIONS[:] = [s for s in SECTIONS if s.key != key] + [Section(key, title, fn)]
        return fn
    return deco


# -- plotting helpers ------------------------------------------------------------------------------------------------
def _figure(width: float = 9.0, height: float = 4.0):
    from matplotlib.figure import Figure  # no pyplot: no global state, no GUI backend

    return Figure(figsize=(width, height), dpi=100, layout="constrained")


def _img(fig, alt: str) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    data = base64.b64encode(buf.getvalue()).decode()
    return f"<img class='plot' alt='{html.escape(alt, quote=True)}' src='data:image/png;base64,{data}'>"


def _ok(board: Board):
    return [c for c in board.candidates if c.status == "ok"]


def _best(board: Board):
    ok = _ok(board)
    if not ok:
        raise Missing("no successful search evaluation yet")
    return ok[0]


# -- sections ----------------------------------------------------------------------------------------------------------
@section("progress", "Search progress: best so far and the population, over evaluations")
def _progress(board: Board) -> str:
    import numpy as np

    from evomerge.reporting.leaderboard import best_so_far

    cands = sorted(board.candidates, key=lambda c: c.evaluation)
    if not _ok(board):
        raise Missing("no successful search evaluation yet")
    fig = _figure()
    ax = fig.add_subplot()
    ok = [c for c in cands if c.status == "ok"]
    gens = np.array([c.generation for c in ok])
    sc = ax.scatter([c.evaluation for c in ok], [c.objective for c in ok], c=gens, cmap="viridis", s=12, zorder=3,
                    alpha=0.7, label="candidate")
    failed = [c for c in cands if c.status != "ok"]
    if failed:  # no score: marked along the bottom edge
        ax.scatter([c.evaluation for c in failed], [0.03] * len(failed), transform=ax.get_xaxis_transform(),
                   marker="x", color="red", s=20, label=f"failed ({len(failed)})")
    curve = best_so_far(board)
    ax.step(range(1, len(curve) + 1), [np.nan if v is None else v for v in curve], where="post", color="black",
            lw=2, label="best so far")
    by_gen: dict[int, list] = {}
    for c in ok:
        by_gen.setdefault(c.generation, []).append(c)
    if len(by_gen) > 1:
        xs = [max(c.evaluation for c in g) for _, g in sorted(by_gen.items())]
        ax.plot(xs, [float(np.median([c.objective for c in g])) for _, g in sorted(by_gen.items())], "o-",
                color="tab:orange", ms=3, label="generation median")
    ax.set_xlabel("evaluation")
    ax.set_ylabel(f"search objective ({board.cfg.fitness.search_split!r} split)")
    fig.colorbar(sc, ax=ax, label="generation")
    ax.legend(loc="lower right", fontsize=8)
    ax.grid(alpha=0.3)
    return _img(fig, "search objective of every candidate over evaluations, with the best so far")


@section("tasks", "Per-task scores of the leaders against the sources and baselines (held-out split)")
def _tasks(board: Board) -> str:
    import numpy as np

    leaders = [c for c in _ok(board) if c.heldout_per_task][:LEADERS]
    if not leaders:
        raise Missing("no held-out scores yet (they come with the run's final table); the leaderboard below has "
                      "the search-split scores")
    rows = [(f"{c.id} (rank {c.rank})", c.heldout_per_task) for c in leaders]
    rows += [(r["label"], r["per_task"]) for r in board.references if r["kind"] != "evolved"]  # evolved: a leader
    tasks = board.tasks
    fig = _figure(9, 0.18 * len(rows) * (len(tasks) + 1) + 1.2)
    ax = fig.add_subplot()
    h = 0.8 / (len(tasks) + 1)
    ys = np.arange(len(rows))[::-1]
    for j, t in enumerate([*tasks, "average"]):
        vals = [float(np.mean([p[x] for x in tasks])) if t == "average" else p[t] for _, p in rows]
        bars = ax.barh(ys + (len(tasks) / 2 - j) * h, vals, height=h, label=t,
                       color="black" if t == "average" else None, alpha=0.85)
        if t == "average":
            ax.bar_label(bars, fmt="%.3f", fontsize=7, padding=2)
    ax.set_yticks(ys, [label for label, _ in rows], fontsize=8)
    ax.set_xlim(0, 1.08)
    ax.set_xlabel(f"accuracy ({board.cfg.fitness.heldout_split!r} split)")
    ax.legend(loc="lower right", fontsize=8, ncols=len(tasks) + 1)
    ax.grid(axis="x", alpha=0.3)
    return _img(fig, "held-out accuracy per task of the leaders, the sources and the baselines")


@section("pareto", "Pareto front of the search (multi-objective runs)")
def _pareto(board: Board) -> str:
    if board.cfg.n_objectives == 1:
        raise Missing("a single-objective run (fitness.objective: mean): no Pareto front; set fitness.objective: "
                      "per_task for one")
    ok = _ok(board)
    if not ok:
        raise Missing("no successful search evaluation yet")
    tasks = board.tasks
    pairs = [(a, b) for i, a in enumerate(tasks) for b in tasks[i + 1:]]
    fig = _figure(4 * len(pairs), 4)
    for k, (a, b) in enumerate(pairs):
        ax = fig.add_subplot(1, len(pairs), k + 1)
        rest = [c for c in ok if not c.pareto]
        front = sorted((c for c in ok if c.pareto), key=lambda c: c.search[a])
        ax.scatter([c.search[a] for c in rest], [c.search[b] for c in rest], s=10, color="grey", alpha=0.5,
                   label="dominated")
        ax.scatter([c.search[a] for c in front], [c.search[b] for c in front], s=22, color="tab:red",
                   label=f"front ({len(front)})")
        ax.set_xlabel(a)
        ax.set_ylabel(b)
        ax.grid(alpha=0.3)
    fig.axes[0].legend(fontsize=8)
    return _img(fig, "search scores per pair of tasks; the Pareto-front members in red")


@section("recipe", "The best candidate's recipe: per-layer weights and densities")
def _recipe(board: Board) -> str:
    import numpy as np

    best = _best(board)
    if "groups" not in best.recipe:
        raise Missing("a data-flow recipe has no per-layer weights; its layer path is drawn below")
    groups = best.recipe["groups"]
    names = list(groups)
    sources = board.sources or [f"source {i}" for i in range(len(groups[names[0]]["weights"]))]
    panels = [("weight", np.array([groups[g]["weights"] for g in names]))]
    if all(groups[g].get("densities") for g in names):
        panels.append(("density", np.array([groups[g]["densities"] for g in names])))
    fig = _figure(3.2 * len(panels) + 1.5, 0.35 * len(names) + 1.6)
    for k, (what, m) in enumerate(panels):
        ax = fig.add_subplot(1, len(panels), k + 1)
        im = ax.imshow(m, cmap="viridis" if what == "weight" else "magma", aspect="auto")
        ax.set_xticks(range(len(sources)), sources, fontsize=8)
        ax.set_yticks(range(len(names)), names, fontsize=8)
        ax.set_title(f"{what} ({best.id}, {best.operator})", fontsize=9)
        for (i, j), v in np.ndenumerate(m):
            ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=7,
                    color="white" if v < (m.min() + m.max()) / 2 else "black")
        fig.colorbar(im, ax=ax)
    extra = f"<p>{html.escape(best.recipe_summary)}; λ={best.recipe.get('lam', 1.0):g}</p>"
    return _img(fig, "heatmap of the best recipe's weight (and density) per layer group and source") + extra


def path_figure(steps: list[tuple[str, int]], title: str):
    """A data-flow path drawn as the sequence of layers it runs: step t on the x axis, the layer's model on the
    y axis, labelled with its layer index."""
    models = list(dict.fromkeys(m for m, _ in steps))
    fig = _figure(min(2 + 0.45 * len(steps), 14), 1 + 0.8 * len(models))
    ax = fig.add_subplot()
    xs, ys = range(len(steps)), [models.index(m) for m, _ in steps]
    ax.plot(xs, ys, "-", color="grey", lw=1, zorder=1)
    ax.scatter(xs, ys, s=260, c=ys, cmap="tab10", vmin=0, vmax=9, zorder=2)
    for x, (m, layer) in zip(xs, steps, strict=True):
        ax.text(x, models.index(m), str(layer), ha="center", va="center", fontsize=7, color="white", zorder=3)
    ax.set_yticks(range(len(models)), models)
    ax.set_xlabel("step of the path (the number is the layer)")
    ax.set_ylim(-0.6, len(models) - 0.4)
    ax.set_title(title, fontsize=9)
    return fig


@section("dfs", "Data-flow (DFS) path of the best candidate")
def _dfs(board: Board) -> str:
    best = _best(board)
    path = best.recipe.get("path")
    if not path:
        raise Missing("this run's recipes have no layer path (a parameter-space search); a data-flow (DFS) search "
                      "space adds one")
    names = board.sources or []
    # [[model, layer], ...] in execution order; models by name where the run knows them
    steps = [(names[m] if isinstance(m, int) and m < len(names) else str(m), int(layer)) for m, layer in path]
    return _img(path_figure(steps, f"{best.id}: {len(steps)} layers"), "the best candidate's layer path")


def archive_diversity(board: Board, history: list[dict]) -> list[dict]:
    """For each archive state {"evaluation": n, "members": [ids]}: how different its members are on the search
    examples (mean pairwise fraction of examples on which two members disagree) and how many examples at least one
    member solves (coverage) — the niches M2N2's resource competition keeps alive."""
    import numpy as np

    rows = {e.label: e for e in board.evaluations if e.kind == "search" and e.status == "ok"}
    out = []
    for state in history:
        members = [rows[m] for m in state["members"] if m in rows]
        if not members:
            continue
        s = np.array([[v for t in sorted(e.per_example) for v in e.per_example[t]] for e in members]) > 0.5
        n = len(members)
        dis = [np.mean(s[i] != s[j]) for i in range(n) for j in range(i + 1, n)]
        out.append({"evaluation": state["evaluation"], "members": n,
                    "disagreement": float(np.mean(dis)) if dis else 0.0, "coverage": float(s.any(axis=0).mean()),
                    "best": float(s.mean(axis=1).max())})
    return out


@section("archive", "M2N2 archive diversity over time")
def _archive(board: Board) -> str:
    history = board.meta.get("archive_history")
    if not history:
        raise Missing(f"no archive history in this run (optimizer {board.cfg.optimizer.type}; M2N2 keeps one)")
    rows = archive_diversity(board, json.loads(history))
    if not rows:
        raise Missing("the archive history names no stored candidate")
    fig = _figure()
    ax = fig.add_subplot()
    x = [r["evaluation"] for r in rows]
    ax.plot(x, [r["coverage"] for r in rows], label="coverage (solved by some member)")
    ax.plot(x, [r["best"] for r in rows], label="best member's accuracy")
    ax.plot(x, [r["disagreement"] for r in rows], label="mean pairwise disagreement")
    ax.set_xlabel("evaluation")
    ax.set_ylim(0, 1.02)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return _img(fig, "archive coverage, best member and pairwise disagreement over evaluations")


@section("leaderboard", "Leaderboard")
def _leaderboard(board: Board) -> str:
    cols = [c for c in columns([board]) if c not in ("error",) or any(x.error for x in board.candidates)]
    rows = [flat(board, c) for c in board.candidates[:TABLE_ROWS]]
    more = len(board.candidates) - len(rows)
    note = (f"<p>The top {len(rows)} of {len(board.candidates)} candidates; all of them: <code>evomerge leaderboard "
            f"{html.escape(board.run_dir)} --format csv</code></p>") if more > 0 else ""
    return html_table(rows, cols, "click a column to sort") + note


# -- the page ----------------------------------------------------------------------------------------------------------
def _facts(board: Board) -> str:
    cfg, ok = board.cfg, _ok(board)
    best = ok[0] if ok else None
    facts = [
        ("state", board.state), ("run directory", board.run_dir),
        ("optimizer", f"{cfg.optimizer.type}, {cfg.optimizer.generations} generations"),
        ("search space", f"{cfg.space.type}: {cfg.space.operator}, granularity {cfg.space.granularity}"
         if cfg.space.flow is None else f"{cfg.space.type}: {cfg.space.flow.repeats} repeats, "
         f"{cfg.space.flow.scaling} scaling, {cfg.space.flow.indicator} indicators"),
        ("fitness", f"{cfg.fitness.type}, objective {cfg.fitness.objective}, tasks {', '.join(board.tasks)}"),
        ("sources", ", ".join(board.sources)),
        ("evaluations", f"{len(board.candidates)} ({len(board.candidates) - len(ok)} failed)"),
    ]
    if best:
        held = "" if best.heldout is None else f", held-out {best.heldout:.4f}"
        facts.append(("best", f"{best.id}: search {best.objective:.4f}{held}"))
    rows = "".join(f"<tr><td>{html.escape(k)}</td><td>{html.escape(str(v))}</td></tr>" for k, v in facts)
    return f"<table class='facts'>{rows}</table>"


def render_report(board: Board, live: bool | None = None) -> str:
    """The whole page. `live` (default: whether the run is running) makes it reload itself every REFRESH_S."""
    live = board.state == "running" if live is None else live
    parts = [f"<h1>evomerge run: {html.escape(board.name)}</h1>",
             f"<p>Generated {time.strftime('%Y-%m-%d %H:%M:%S %Z')} from the run store"
             + (f"; the run is live: this page reloads every {REFRESH_S} s" if live else "") + ".</p>",
             _facts(board)]
    for s in SECTIONS:
        try:
            body = s.render(board)
        except Missing as why:
            body = f"<p class='missing'>Left out: {html.escape(str(why))}.</p>"
        parts.append(f"<section id='{s.key}'><h2>{html.escape(s.title)}</h2>{body}</section>")
    return html_page(f"evomerge report: {board.name}", "".join(parts), REFRESH_S if live else None, _STYLE)


def write_report(run_dir: Path, out: Path | None = None, live: bool | None = None, board: Board | None = None) -> Path:
    """Write the report of the run in `run_dir` (default: RUN_DIR/report.html), atomically."""
    board = board or read_board(run_dir)
    out = Path(out) if out else Path(run_dir) / REPORT_FILE
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(render_report(board, live))
    tmp.replace(out)  # a reloading browser never sees half a page
    return out


def watch_report(run_dir: Path, out: Path | None = None, every: float = REFRESH_S,
                 log: Callable[[str], None] = print) -> Path:
    """Rewrite the report every `every` seconds while the run is live; once more when it stops."""
    while True:
        board = read_board(run_dir)
        path = write_report(run_dir, out, board=board)
        log(f"{time.strftime('%H:%M:%S')} wrote {path} ({len(board.candidates)} evaluations, {board.state})")
        if board.state != "running":
            return path
        time.sleep(every)
