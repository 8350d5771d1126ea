"""Every candidate of a run, ranked: one row per search evaluation with its per-task scores on the search split and,
where the run scored the same recipe there, on the held-out split; exported as CSV, JSON, Markdown or HTML, and
compared across runs.

The store is the only source of numbers. A candidate's held-out score is another evaluation (kind heldout, leader,
front or rescore_heldout) of the same recipe on the held-out split: equal recipe and split under one run's fitness
settings mean an equal cache key, so rows are joined on (recipe, split).

JSON layout (`schema_version` 1; a change that removes or renames a field bumps it):

    {"schema": "evomerge-leaderboard", "schema_version": 1,
     "runs": [{"run_dir", "run_id", "name", "state", "optimizer", "space", "objective" ("mean" | "per_task"),
               "tasks", "search_split", "heldout_split", "sources": [names],
               "candidates": [CANDIDATE, ...],             # rank order
               "references": [{"label", "kind" (base | source | baseline | tuned | evolved), "split",
                               "objective", "per_task"}]}],  # the final table's rows, when the run finished
     "comparison": [COMPARISON, ...]}                       # one per run

    CANDIDATE = {"rank" (1 = best search objective; null when failed), "id", "evaluation" (1-based order in the
                 run), "generation", "index", "parents" (ids; [] when the optimizer does not know), "status",
                 "objective", "objectives" (the optimizer's values: [objective] or one per task), "pareto" (on the
                 search's Pareto front; null for single-objective runs), "search" ({task: score}), "heldout" (mean
                 or null), "heldout_per_task", "full_search" (the score on every example of the search split when
                 the search scored fewer — a subset, a race stopped early, IRT anchors — or null), "examples" (how
                 many search examples this evaluation scored; null: all of them, its objective then exact),
                 "operator", "recipe_summary", "recipe" (the full recipe), "merge_seconds", "eval_seconds",
                 "worker", "cached" (copied from an equal recipe scored before), "error"}
    COMPARISON = {"run_dir", "name", "optimizer", "evaluations", "failed", "best_id", "best_objective",
                  "best_heldout", "evaluations_to_95" (the first evaluation whose best-so-far reached 95% of the
                  final best), "evaluation_seconds" (merge + evaluation time summed)}
"""

from __future__ import annotations

import csv
import html
import io
import json
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from pydantic import ValidationError

from evomerge.config import format_validation_error
from evomerge.errors import ConfigError
from evomerge.optim.pareto import pareto_front
from evomerge.reporting.status import run_settings
from evomerge.run.lifecycle import RunSettings
from evomerge.store import EvalKind, Evaluation, RunDir, RunStore

SCHEMA = "evomerge-leaderboard"
SCHEMA_VERSION = 1
FORMATS = ("csv", "json", "md", "html")
TO_95 = 0.95  # the comparison's "how fast": evaluations until the best-so-far reaches this fraction of the final best

# Where a candidate's parents come from, by optimizer type: f(store, search evaluations) -> {id: [parent ids]}.
# Optimizers that breed (M2N2, GA-style) register a reader for whatever they keep; the others have no parents.
PARENTS: dict[str, Callable[[RunStore, list[Evaluation]], dict[str, list[str]]]] = {}


# Store meta keys a board carries for report sections (e.g. an optimizer's archive history); append to add one.
META_KEYS = ["archive_history"]


def register_parents(optimizer: str):
    def deco(fn):
        PARENTS[optimizer] = fn
        return fn
    return deco


@register_parents("m2n2")
def _stored_parents(store: RunStore, search: list[Evaluation]) -> dict[str, list[str]]:
    """Breeding optimizers' searches record {child: [parent, parent]} in the store's meta `parents`."""
    return json.loads(store.get_meta("parents") or "{}")


@dataclass
class Candidate:
    rank: int | None
    id: str
    evaluation: int
    generation: int
    index: int
    parents: list[str]
    status: str
    objective: float | None
    objectives: list[float] | None
    pareto: bool | None
    search: dict[str, float]
    heldout: float | None
    heldout_per_task: dict[str, float] | None
    full_search: float | None
    examples: int | None
    operator: str
    recipe_summary: str
    recipe: dict
    merge_seconds: float
    eval_seconds: float
    worker: str | None
    cached: bool
    error: str | None


@dataclass
class Board:
    """One run's leaderboard, read from its store (and nothing else)."""

    run_dir: str
    run_id: str
    name: str
    state: str
    settings: RunSettings
    sources: list[str]
    candidates: list[Candidate]  # rank order, failures last (in evaluation order)
    references: list[dict] = field(default_factory=list)
    evaluations: list[Evaluation] = field(default_factory=list)  # every stored evaluation, in store order
    meta: dict[str, str] = field(default_factory=dict)  # the store's META_KEYS that the run has

    @property
    def tasks(self) -> list[str]:
        return list(self.settings.tasks)

    def by_id(self, cid: str) -> Candidate | None:
        return next((c for c in self.candidates if c.id == cid), None)


def recipe_summary(recipe: dict) -> str:
    """A short line: groups, and the mean weight (and density) per source over the groups (the operator has its own
    column); for a data flow, its layers per model and the range of its scales."""
    if recipe.get("kind") == "service_merge":  # black-box merging: per-adapter sparsity α and scale β
        alpha, beta = ("/".join(f"{v:.2f}" for v in recipe[k]) for k in ("alpha", "beta"))
        return f"ᾱ={alpha} β={beta}"
    if recipe.get("kind") == "flow":
        path, scales = recipe["path"], recipe["scales"]
        per_model = [sum(1 for m, _ in path if m == k) for k in range(max(m for m, _ in path) + 1)]
        return (f"{len(path)} layers (" + "/".join(map(str, per_model)) + " per model) "
                f"scales {min(scales):.2f}–{max(scales):.2f}")
    groups = list(recipe["groups"].values())
    k = len(groups[0]["weights"])
    mean_w = [sum(g["weights"][i] for g in groups) / len(groups) for i in range(k)]
    parts = [f"{len(groups)} group{'s' * (len(groups) != 1)}",
             "w̄=" + "/".join(f"{w:.2f}" for w in mean_w)]
    dens = [g["densities"] for g in groups if g.get("densities")]
    if dens:
        parts.append("d̄=" + "/".join(f"{sum(d[i] for d in dens) / len(dens):.2f}" for i in range(k)))
    if recipe.get("lam", 1.0) != 1.0:
        parts.append(f"λ={recipe['lam']:g}")
    return " ".join(parts)


def _reference_kind(label: str, sources: list[str]) -> str:
    if label.startswith("evolved"):
        return "evolved"
    if label == "base":
        return "base"
    if label in sources:
        return "source"
    return "tuned" if label.startswith("TA tuned") else "baseline"


def read_board(path: Path) -> Board:
    """The leaderboard of the run in `path` (live or finished; the store is only read)."""
    rundir = RunDir.open(path)
    store = rundir.store()
    try:
        text = store.get_meta("config")
        if text is None:
            raise ConfigError(f"{path}: the run store holds no experiment config (expected a run started by "
                              "`evomerge run`)")
        try:
            settings = run_settings(store)
        except ValidationError as e:
            raise ConfigError(format_validation_error(e, f"{path}: stored experiment config")) from None
        sources = [Path(m).name for m in json.loads(store.get_meta("sources") or '{"models": []}')["models"]]
        evals = store.evaluations()
        finished = store.get_meta("finished") is not None
        parents_of = PARENTS.get(settings.optimizer)
        search = [e for e in evals if e.kind == "search"]
        parents = parents_of(store, search) if parents_of else {}
        meta = {k: v for k in META_KEYS if (v := store.get_meta(k)) is not None}
    finally:
        store.close()
    state = "running" if rundir.running_pid() else ("finished" if finished else "stopped")
    candidates = _candidates(settings, search, evals, parents)
    references = [{"label": e.label, "kind": _reference_kind(e.label, sources), "split": e.split,
                   "objective": e.objective, "per_task": e.per_task}
                  for e in evals if e.kind == "heldout" and e.status == "ok"]
    return Board(str(rundir.path), rundir.run_id, settings.name, state, settings, sources, candidates, references,
                 evals, meta)


def _candidates(f: RunSettings, search: list[Evaluation], evals: list[Evaluation],
                parents: dict[str, list[str]]) -> list[Candidate]:
    tasks = list(f.tasks)
    # full scores only: a known candidate scored on a sample, a re-scoring stopped by its race are not
    scored = {(e.recipe, e.split): e for e in evals
              if e.status == "ok" and e.kind != EvalKind.SEARCH and e.examples is None}
    ok = [e for e in search if e.status == "ok"]
    order = sorted(range(len(ok)), key=lambda i: -ok[i].objective)  # stable: ties keep evaluation order
    rank = {id(ok[i]): r + 1 for r, i in enumerate(order)}
    multi = f.n_objectives > 1
    front = {id(ok[i]) for i in pareto_front([[e.per_task[t] for t in tasks] for e in ok])} if multi else set()
    out = []
    for n, e in enumerate(search, 1):
        held = scored.get((e.recipe, f.heldout_split))
        full = scored.get((e.recipe, f.rescore_split)) if f.cheap else None
        if full is None and f.estimator != "full" and e.examples is None:
            full = e  # scored on every example during the search
        recipe = json.loads(e.recipe) if e.recipe else {"operator": "?", "groups": {}}
        good = e.status == "ok"
        out.append(Candidate(
            rank=rank.get(id(e)), id=e.label, evaluation=n, generation=e.generation, index=e.idx,
            parents=list(parents.get(e.label, [])), status=e.status, objective=e.objective,
            objectives=None if not good else ([e.per_task[t] for t in tasks] if multi else [e.objective]),
            pareto=(id(e) in front) if multi and good else None,
            search=dict(e.per_task) if good else {},
            heldout=held.objective if held else None, heldout_per_task=dict(held.per_task) if held else None,
            full_search=full.objective if full and full.status == "ok" else None,
            examples=sum(len(v) for v in e.examples.values()) if e.examples is not None else None,
            operator=recipe.get("operator") or (
                "data_flow" if recipe.get("kind") == "flow" else recipe.get("kind", "?")),
            recipe_summary=recipe_summary(recipe) if recipe.get("groups") or recipe.get("path") or
            recipe.get("kind") == "service_merge" else "",
            recipe=recipe, merge_seconds=e.merge_seconds, eval_seconds=e.eval_seconds, worker=e.worker,
            cached=e.worker == "cache", error=e.error.splitlines()[0] if e.error else None))
    return sorted(out, key=lambda c: (c.rank is None, c.rank or 0, c.evaluation))


# -- the comparison across runs ----------------------------------------------------------------------------------------
def best_so_far(board: Board) -> list[float | None]:
    """The best search objective after each evaluation (None until the first success)."""
    out, best = [], None
    for c in sorted(board.candidates, key=lambda c: c.evaluation):
        if c.status == "ok" and (best is None or c.objective > best):
            best = c.objective
        out.append(best)
    return out


def evaluations_to(board: Board, fraction: float = TO_95) -> int | None:
    curve = best_so_far(board)
    final = next((v for v in reversed(curve) if v is not None), None)
    if final is None:
        return None
    # within (1 - fraction)·|final| of the final best: fraction·final for accuracies, and still reachable for the
    # negative objectives of a loss (black-box runs), where fraction·final lies above the final best
    target = final - (1 - fraction) * abs(final)
    return next(i for i, v in enumerate(curve, 1) if v is not None and v >= target)


def comparison(board: Board) -> dict:
    best = board.candidates[0] if board.candidates and board.candidates[0].rank == 1 else None
    return {
        "run_dir": board.run_dir, "name": board.name, "optimizer": board.settings.optimizer,
        "evaluations": len(board.candidates), "failed": sum(c.status != "ok" for c in board.candidates),
        "best_id": best and best.id, "best_objective": best and best.objective,
        "best_heldout": best and best.heldout, "evaluations_to_95": evaluations_to(board),
        "evaluation_seconds": sum(c.merge_seconds + c.eval_seconds for c in board.candidates),
    }


# -- flat rows: what CSV, Markdown and HTML tables show ----------------------------------------------------------------
def columns(boards: list[Board]) -> list[str]:
    tasks = list(dict.fromkeys(t for b in boards for t in b.tasks))
    cols = ["rank", "id", "generation", "parents", "status", "objective",
            *(f"search_{t}" for t in tasks), "heldout", *(f"heldout_{t}" for t in tasks)]
    if any(b.settings.cheap for b in boards):
        cols.append("full_search")
    if any(b.settings.estimator != "full" for b in boards):
        cols.append("examples")
    if any(b.settings.n_objectives > 1 for b in boards):
        cols.append("pareto")
    cols += ["operator", "recipe", "merge_s", "eval_s", "worker", "error"]
    return (["run"] if len(boards) > 1 else []) + cols


def flat(board: Board, c: Candidate) -> dict:
    row = {"run": board.name, "rank": c.rank, "id": c.id, "generation": c.generation, "parents": " ".join(c.parents),
           "status": c.status, "objective": c.objective, "heldout": c.heldout, "full_search": c.full_search,
           "examples": c.examples,
           "pareto": c.pareto, "operator": c.operator, "recipe": c.recipe_summary, "merge_s": c.merge_seconds,
           "eval_s": c.eval_seconds, "worker": c.worker, "error": c.error}
    for t in board.tasks:
        row[f"search_{t}"] = c.search.get(t)
        row[f"heldout_{t}"] = (c.heldout_per_task or {}).get(t)
    return row


COMPARISON_COLUMNS = ("name", "optimizer", "evaluations", "failed", "best_id", "best_objective", "best_heldout",
                      "evaluations_to_95", "evaluation_seconds", "run_dir")


def sort_rows(rows: list[dict], by: str, cols: list[str], descending: bool = False) -> list[dict]:
    """Rows ordered by column `by`; empty cells last whichever the direction."""
    if by not in cols:
        raise ConfigError(f"--sort: unknown column {by!r}; expected one of {cols}")
    empty = [r.get(by) is None or r.get(by) == "" for r in rows]
    present = [r for r, e in zip(rows, empty, strict=True) if not e]
    missing = [r for r, e in zip(rows, empty, strict=True) if e]
    return sorted(present, key=lambda r: r[by], reverse=descending) + missing


def _cell(v, digits: int = 4) -> str:
    if v is None:
        return ""
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    return str(v)


def to_csv(rows: list[dict], cols: list[str]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(cols)
    for r in rows:  # full precision (repr), so a CSV reader gets the stored numbers back
        w.writerow(["" if r.get(c) is None else r[c] for c in cols])
    return buf.getvalue()


def to_markdown(rows: list[dict], cols: list[str], title: str | None = None) -> str:
    lines = [f"### {title}", ""] if title else []
    lines += ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    for r in rows:
        lines.append("| " + " | ".join(_cell(r.get(c)).replace("|", "\\|") for c in cols) + " |")
    return "\n".join(lines) + "\n"


SORT_SCRIPT = """
document.querySelectorAll('table.sortable th').forEach(function (th) {
  th.addEventListener('click', function () {
    var table = th.closest('table'), body = table.tBodies[0], i = th.cellIndex;
    var asc = th.dataset.order !== 'asc';
    table.querySelectorAll('th').forEach(function (h) { delete h.dataset.order; });
    th.dataset.order = asc ? 'asc' : 'desc';
    var rows = Array.prototype.slice.call(body.rows);
    rows.sort(function (a, b) {
      var x = a.cells[i].dataset.v, y = b.cells[i].dataset.v;
      if (x === '') return 1; if (y === '') return -1;
      var nx = parseFloat(x), ny = parseFloat(y);
      var c = (isNaN(nx) || isNaN(ny)) ? x.localeCompare(y) : nx - ny;
      return asc ? c : -c;
    });
    rows.forEach(function (r) { body.appendChild(r); });
  });
});
"""


def html_table(rows: list[dict], cols: list[str], caption: str | None = None) -> str:
    """A table whose columns sort on click (the page's SORT_SCRIPT); each cell keeps its raw value in data-v."""
    head = "".join(f"<th title='sort by {html.escape(c)}'>{html.escape(c)}</th>" for c in cols)
    body = []
    for r in rows:
        cells = []
        for c in cols:
            v = r.get(c)
            raw = "" if v is None else (str(int(v)) if isinstance(v, bool) else str(v))
            cells.append(f"<td data-v='{html.escape(raw, quote=True)}'>{html.escape(_cell(v))}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    cap = f"<caption>{html.escape(caption)}</caption>" if caption else ""
    return f"<table class='sortable'>{cap}<thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


PAGE_STYLE = """
body { font-family: system-ui, sans-serif; margin: 1.5em; color: #222; }
table { border-collapse: collapse; font-size: 12px; margin: 0.5em 0 1.5em; }
caption { text-align: left; font-weight: bold; padding: 0.3em 0; }
th, td { border: 1px solid #ccc; padding: 2px 6px; text-align: right; white-space: nowrap; }
th { background: #f0f0f0; cursor: pointer; position: sticky; top: 0; }
th[data-order=asc]::after { content: ' ▲'; } th[data-order=desc]::after { content: ' ▼'; }
tbody tr:nth-child(even) { background: #fafafa; }
"""


def html_page(title: str, body: str, refresh_s: int | None = None, style: str = "") -> str:
    refresh = f"<meta http-equiv='refresh' content='{refresh_s}'>" if refresh_s else ""
    return (f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>{refresh}<title>{html.escape(title)}</title>"
            f"<link rel='icon' href='data:,'><style>{PAGE_STYLE}{style}</style></head><body>{body}"
            f"<script>{SORT_SCRIPT}</script></body></html>\n")


# -- the command: one or more runs in one format -----------------------------------------------------------------------
def ordered(boards: list[Board], sort: str = "rank", descending: bool = False,
            top: int | None = None) -> list[tuple[Board, Candidate]]:
    """(run, candidate) pairs ordered by a table column (see `columns`), the first `top` of them."""
    cols = columns(boards)
    pairs = [(b, c) for b in boards for c in b.candidates]
    rows = [{**flat(b, c), "_i": i} for i, (b, c) in enumerate(pairs)]
    return [pairs[r["_i"]] for r in sort_rows(rows, sort, cols, descending)[:top]]


def render(boards: list[Board], fmt: str, sort: str = "rank", descending: bool = False, top: int | None = None,
           compare_only: bool = False) -> str:
    if fmt not in FORMATS:
        raise ConfigError(f"--format: unknown format {fmt!r}; expected one of {list(FORMATS)}")
    pairs = ordered(boards, sort, descending, top)
    if fmt == "json":
        return json.dumps(to_json(boards, pairs, compare_only), indent=2) + "\n"
    cols, ccols = columns(boards), list(COMPARISON_COLUMNS)
    comp = [comparison(b) for b in boards]
    rows = [flat(b, c) for b, c in pairs]
    if fmt == "csv":
        return to_csv(comp, ccols) if compare_only else to_csv(rows, cols)
    if fmt == "md":
        parts = [to_markdown(comp, ccols, "Comparison")] if len(boards) > 1 or compare_only else []
        if not compare_only:
            parts.append(to_markdown(rows, cols, "Candidates"))
        return "\n".join(parts)
    parts = [html_table(comp, ccols, "Comparison of the runs")] if len(boards) > 1 or compare_only else []
    if not compare_only:
        parts.append(html_table(rows, cols, "Every candidate (click a column to sort)"))
    names = ", ".join(b.name for b in boards)
    return html_page(f"evomerge leaderboard: {names}", f"<h1>Leaderboard: {html.escape(names)}</h1>" + "".join(parts))


def to_json(boards: list[Board], pairs: list[tuple[Board, Candidate]] | None = None,
            compare_only: bool = False) -> dict:
    """The JSON document (layout in the module docstring); `pairs` orders and selects the candidates."""
    pairs = [(b, c) for b in boards for c in b.candidates] if pairs is None else pairs
    runs = []
    for b in boards:
        cands = [] if compare_only else [asdict(c) for bb, c in pairs if bb is b]
        runs.append({"run_dir": b.run_dir, "run_id": b.run_id, "name": b.name, "state": b.state,
                     "optimizer": b.settings.optimizer, "space": b.settings.space,
                     "objective": "per_task" if b.settings.n_objectives > 1 else "mean", "tasks": b.tasks,
                     "search_split": b.settings.search_split, "heldout_split": b.settings.heldout_split,
                     "sources": b.sources, "candidates": cands, "references": b.references})
    return {"schema": SCHEMA, "schema_version": SCHEMA_VERSION, "runs": runs,
            "comparison": [comparison(b) for b in boards]}
