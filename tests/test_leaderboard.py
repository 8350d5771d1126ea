"""The leaderboard of real tiny runs in every format: the schema, the order, and numbers equal to the store's."""

import csv
import io
import json
import shutil
from html.parser import HTMLParser

import pytest
from typer.testing import CliRunner

from evomerge.cli import app
from evomerge.optim.pareto import dominates
from evomerge.store import RunDir

pytestmark = pytest.mark.slow


def _store(run_dir):
    store = RunDir.open(run_dir).store()
    try:
        return store.evaluations()
    finally:
        store.close()


def _cli(*args):
    result = CliRunner().invoke(app, [str(a) for a in args])
    return result


def test_json_schema_order_and_numbers_equal_the_store(tiny_runs):
    multi, _ = tiny_runs
    out = _cli("leaderboard", multi, "--format", "json")
    assert out.exit_code == 0, out.stderr
    doc = json.loads(out.stdout)
    assert doc["schema"] == "evomerge-leaderboard" and doc["schema_version"] == 1
    (run,) = doc["runs"]
    assert run["objective"] == "per_task" and run["tasks"] == ["add", "cipher", "reverse"]
    assert run["sources"] == ["add", "cipher", "reverse"]
    evals = _store(multi)
    search = [e for e in evals if e.kind == "search"]
    cands = run["candidates"]
    assert sorted(c["id"] for c in cands) == sorted(e.label for e in search) and len(cands) == 8

    # rank order: best search objective first, the failed candidate last with no rank
    ok = [c for c in cands if c["status"] == "ok"]
    assert [c["rank"] for c in ok] == list(range(1, 8))
    assert [c["objective"] for c in ok] == sorted((e.objective for e in search if e.status == "ok"), reverse=True)
    assert cands[-1]["status"] == "failed" and cands[-1]["rank"] is None and "NaN" in cands[-1]["error"]

    by_label = {e.label: e for e in search}
    heldout = {(e.recipe, e.split): e for e in evals if e.kind != "search" and e.status == "ok"}
    for c in cands:
        e = by_label[c["id"]]
        assert (c["generation"], c["index"], c["status"]) == (e.generation, e.idx, e.status)
        assert (c["merge_seconds"], c["eval_seconds"], c["worker"]) == (e.merge_seconds, e.eval_seconds, e.worker)
        assert c["recipe"] == json.loads(e.recipe) and c["parents"] == []
        if e.status == "ok":
            assert c["objective"] == e.objective and c["search"] == e.per_task
            assert c["objectives"] == [e.per_task[t] for t in ("add", "cipher", "reverse")]
            h = heldout.get((e.recipe, "heldout"))
            assert c["heldout"] == (h.objective if h else None)
            assert c["heldout_per_task"] == (h.per_task if h else None)
    # the Pareto flags, checked by brute force
    pts = {c["id"]: c["objectives"] for c in ok}
    for c in ok:
        assert c["pareto"] == (not any(dominates(q, pts[c["id"]]) for i, q in pts.items() if i != c["id"]))
    # every front member was re-scored on held-out data by the final report, and the join finds it
    assert all(c["heldout"] is not None for c in ok if c["pareto"])
    # the final table's rows are the references, with the store's numbers
    refs = {r["label"]: r for r in run["references"]}
    results = json.loads((multi / "results.json").read_text())
    for row in results["rows"]:
        assert refs[row["label"]]["objective"] == row["average"] and refs[row["label"]]["per_task"] == row["per_task"]
    assert {r["kind"] for r in run["references"]} == {"evolved", "base", "source", "baseline", "tuned"}


def test_csv_has_every_candidate_with_the_stored_numbers_and_sorts_by_any_column(tiny_runs):
    multi, _ = tiny_runs
    out = _cli("leaderboard", multi, "--format", "csv")
    assert out.exit_code == 0, out.stderr
    rows = list(csv.DictReader(io.StringIO(out.stdout)))
    by_label = {e.label: e for e in _store(multi) if e.kind == "search"}
    assert len(rows) == 8 and rows[0]["rank"] == "1"
    for r in rows:
        e = by_label[r["id"]]
        if e.status == "ok":  # full precision: the CSV gives the stored floats back exactly
            assert float(r["objective"]) == e.objective
            assert {t: float(r[f"search_{t}"]) for t in e.per_task} == e.per_task
        assert float(r["eval_s"]) == e.eval_seconds
        assert r["pareto"] in ("True", "False", "")
    out = _cli("leaderboard", multi, "--format", "csv", "--sort", "search_cipher", "--desc", "--top", "5")
    rows = list(csv.DictReader(io.StringIO(out.stdout)))
    cipher = [float(r["search_cipher"]) for r in rows]
    assert len(rows) == 5 and cipher == sorted(cipher, reverse=True)
    assert cipher[0] == max(e.per_task["cipher"] for e in by_label.values() if e.status == "ok")
    out = _cli("leaderboard", multi, "--format", "csv", "--sort", "id")
    ids = [r["id"] for r in csv.DictReader(io.StringIO(out.stdout))]
    assert ids == sorted(ids)


class _Cells(HTMLParser):
    def __init__(self):
        super().__init__()
        self.tables, self.row = [], None

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "table":
            self.tables.append({"head": [], "rows": []})
        elif tag == "tr":
            self.row = []
        elif tag == "td":
            self.row.append(a["data-v"])
        elif tag == "script" and "src" in a:
            raise AssertionError("an external script: the page must work offline")

    def handle_data(self, data):
        if self.lasttag == "th" and self.tables and self.row == []:
            self.tables[-1]["head"].append(data)

    def handle_endtag(self, tag):
        if tag == "tr" and self.row:
            self.tables[-1]["rows"].append(self.row)


def test_markdown_and_html_show_the_same_rows(tiny_runs):
    multi, _ = tiny_runs
    md = _cli("leaderboard", multi, "--format", "md").stdout.splitlines()
    table = [line for line in md if line.startswith("| ")]
    header = [c.strip() for c in table[0].strip("|").split("|")]
    assert header[:6] == ["rank", "id", "generation", "parents", "status", "objective"] and "pareto" in header
    body = [[c.strip() for c in line.strip("|").split("|")] for line in table[1:]]
    by_label = {e.label: e for e in _store(multi) if e.kind == "search"}
    assert len(body) == 8
    for row in body:
        e = by_label[row[1]]
        assert row[5] == ("" if e.objective is None else f"{e.objective:.4f}")

    page = _cli("leaderboard", multi, "--format", "html").stdout
    cells = _Cells()
    cells.feed(page)
    (t,) = cells.tables
    assert t["head"][:2] == ["rank", "id"] and len(t["rows"]) == 8
    col = t["head"].index("objective")
    for row in t["rows"]:  # each cell keeps the stored value (the sort script orders by it)
        e = by_label[row[1]]
        assert row[col] == ("" if e.objective is None else str(e.objective))


def test_comparison_across_runs(tiny_runs):
    multi, single = tiny_runs
    doc = json.loads(_cli("leaderboard", multi, single, "--format", "json").stdout)
    assert [r["name"] for r in doc["runs"]] == ["multi", "single"]
    for run_dir, comp in zip(tiny_runs, doc["comparison"], strict=True):
        search = [e for e in _store(run_dir) if e.kind == "search"]
        ok = [e for e in search if e.status == "ok"]
        best = max(ok, key=lambda e: e.objective)
        assert comp["best_id"] == best.label and comp["best_objective"] == best.objective
        assert comp["evaluations"] == len(search) and comp["failed"] == len(search) - len(ok)
        # evaluations to 95% of the final best, by brute force over the stored order
        need = next(i for i in range(1, len(search) + 1)
                    if max((e.objective for e in search[:i] if e.status == "ok"), default=-1) >= 0.95 * best.objective)
        assert comp["evaluations_to_95"] == need
    assert doc["comparison"][0]["failed"] == 1
    # one table with a run column; the comparison alone as CSV
    rows = list(csv.DictReader(io.StringIO(_cli("leaderboard", multi, single, "--format", "csv").stdout)))
    assert {r["run"] for r in rows} == {"multi", "single"} and len(rows) == 8 + 8
    comp = list(csv.DictReader(io.StringIO(_cli("leaderboard", multi, single, "--format", "csv",
                                                "--comparison").stdout)))
    assert [r["name"] for r in comp] == ["multi", "single"]
    md = _cli("leaderboard", multi, single).stdout
    assert "### Comparison" in md and "### Candidates" in md


def test_bad_input_is_a_clear_error(tiny_runs, tmp_path):
    multi, _ = tiny_runs
    for args, msg in [(["--sort", "nope"], "--sort: unknown column 'nope'"),
                      (["--format", "xml"], "--format: unknown format 'xml'")]:
        out = _cli("leaderboard", multi, *args)
        assert out.exit_code == 2 and msg in out.stderr
    out = _cli("leaderboard", tmp_path)
    assert out.exit_code == 2 and "not an evomerge run directory" in out.stderr
    # a run made by an evomerge with an optimizer this one lacks: named, not a traceback
    shutil.copytree(multi, tmp_path / "other")
    store = RunDir.open(tmp_path / "other").store()
    try:
        cfg = json.loads(store.get_meta("config"))
        store.set_meta("config", json.dumps({**cfg, "optimizer": {**cfg["optimizer"], "type": "newer_opt"}}))
    finally:
        store.close()
    out = _cli("leaderboard", tmp_path / "other")
    assert out.exit_code == 2
    assert "stored experiment config: optimizer.type: unknown optimizer 'newer_opt'" in out.stderr


def test_export_materializes_a_leaderboard_entry_with_its_scores(tiny_runs, tmp_path):
    from evomerge.reporting.leaderboard import read_board

    _, single = tiny_runs
    board = read_board(single)
    out = _cli("export", single, "--out", tmp_path / "r2", "--rank", "2")
    assert out.exit_code == 0, out.stderr
    second = board.candidates[1]
    assert second.rank == 2
    assert json.loads((tmp_path / "r2" / "evomerge_recipe.json").read_text()) == second.recipe
    assert f"{second.id} (rank 2 of 8" in (tmp_path / "r2" / "README.md").read_text()
    first = board.candidates[0]
    out = _cli("export", single, "--out", tmp_path / "c", "--candidate", first.id)
    assert out.exit_code == 0, out.stderr
    card = (tmp_path / "c" / "README.md").read_text()
    assert first.heldout is not None and f"held-out score: {first.heldout:.4f}" in card
    assert (tmp_path / "c" / "model.safetensors").is_file()


def test_an_optimizer_that_knows_parents_fills_the_column(tiny_runs, monkeypatch):
    """The hook a breeding optimizer (M2N2) uses: a reader registered for its type, fed the store."""
    from evomerge.reporting.leaderboard import PARENTS, read_board

    multi, _ = tiny_runs
    seen = {}

    def first_generation_parents(store, search):
        seen["store"] = store.run_id
        return {e.label: ["g0-0", "g0-1"] for e in search if e.generation == 1}

    monkeypatch.setitem(PARENTS, "random", first_generation_parents)
    board = read_board(multi)
    assert seen["store"] == board.run_id
    assert all(c.parents == (["g0-0", "g0-1"] if c.generation == 1 else []) for c in board.candidates)
    rows = list(csv.DictReader(io.StringIO(_cli("leaderboard", multi, "--format", "csv").stdout)))
    assert {r["parents"] for r in rows} == {"", "g0-0 g0-1"}
