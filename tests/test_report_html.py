"""The HTML report of real tiny runs: one offline file with its plots, sections left out with a reason where a run
lacks their data, opened in headless Chromium (screenshot, no console messages)."""

import base64
import io
import os
import re
import shutil
import subprocess

import pytest
from typer.testing import CliRunner

from evomerge.reporting.browser import find_chromium, screenshot
from evomerge.cli import app
from evomerge.reporting.html_report import SECTIONS, archive_diversity, render_report, write_report
from evomerge.reporting.leaderboard import read_board
from tests.test_leaderboard import _Cells

pytestmark = pytest.mark.slow


def _images(page: str) -> list[bytes]:
    return [base64.b64decode(m) for m in re.findall(r"src='data:image/png;base64,([A-Za-z0-9+/=]+)'", page)]


def _section(page: str, key: str) -> str:
    return re.search(rf"<section id='{key}'>(.*?)</section>", page, re.S).group(1)


def test_report_is_one_offline_file_with_the_plots_the_run_has(tiny_runs, tmp_path):
    from PIL import Image

    multi, single = tiny_runs
    out = CliRunner().invoke(app, ["report", str(multi)])
    assert out.exit_code == 0, out.stderr
    page = (multi / "report.html").read_text()
    assert not re.search(r"(src|href)=['\"]?(https?:)?//", page)  # nothing fetched: it works offline
    assert [m for m in re.findall(r"<section id='(\w+)'>", page)] == [s.key for s in SECTIONS]
    for key in ("progress", "tasks", "pareto", "recipe"):  # a multi-objective TIES run has data for these
        imgs = _images(_section(page, key))
        assert len(imgs) == 1, key
        w, h = Image.open(io.BytesIO(imgs[0])).size
        assert w > 300 and h > 150
    for key in ("dfs", "archive"):
        assert "Left out: " in _section(page, key) and not _images(_section(page, key))
    assert "no layer path" in _section(page, "dfs") and "no archive history" in _section(page, "archive")
    assert "densit" in _section(page, "recipe") and _section(page, "leaderboard").count("<tr>") == 1 + 8

    page = render_report(read_board(single))
    assert "Left out: a single-objective run" in _section(page, "pareto")
    assert "http-equiv='refresh'" not in page  # a finished run's page does not reload itself
    assert "http-equiv='refresh'" in render_report(read_board(single), live=True)


def test_a_dfs_path_and_an_archive_history_are_drawn(tiny_runs):
    """The sections a DFS space and M2N2 fill: fed here by hand (a recipe path, an archive history in the store's
    meta), as those searches will."""
    multi, _ = tiny_runs
    board = read_board(multi)
    best = board.candidates[0]
    best.recipe["path"] = [["A", 0], ["A", 1], ["B", 1], ["A", 1], ["B", 0]]
    ok = [c.id for c in board.candidates if c.status == "ok"]
    board.meta["archive_history"] = (
        '[{"evaluation": 4, "members": ["%s", "%s"]}, {"evaluation": 8, "members": ["%s", "%s", "%s"]}]'
        % (ok[0], ok[1], ok[0], ok[2], ok[3]))
    page = render_report(board)
    assert len(_images(_section(page, "dfs"))) == 1 and len(_images(_section(page, "archive"))) == 1

    # diversity numbers, by hand for the two-member archive
    rows = archive_diversity(board, [{"evaluation": 4, "members": ok[:2]}])
    evs = {e.label: e for e in board.evaluations if e.kind == "search"}
    a, b = ([v for t in sorted(evs[i].per_example) for v in evs[i].per_example[t]] for i in ok[:2])
    assert rows[0]["disagreement"] == pytest.approx(sum(x != y for x, y in zip(a, b)) / len(a))
    assert rows[0]["coverage"] == pytest.approx(sum(max(x, y) for x, y in zip(a, b)) / len(a))


@pytest.fixture(scope="session")
def chromium():
    """Debian's chromium: found, or installed when this is a Debian machine where we may (root), else skipped."""
    found = find_chromium()
    if found is None and shutil.which("apt-get") and os.geteuid() == 0 and not os.environ.get("EVOMERGE_NO_APT"):
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        for cmd in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", "chromium"]):
            subprocess.run(cmd, env=env, capture_output=True, timeout=900, check=False)
        found = find_chromium()
    if found is None:
        pytest.skip("headless Chromium is not installed and could not be installed here (needs apt-get as root and "
                    "a reachable Debian mirror); install it with `apt-get install chromium`")
    return found


def _colours(png) -> int:
    from PIL import Image

    return len(Image.open(png).convert("RGB").getcolors(1 << 24))


def test_report_in_headless_chromium_shows_its_plots_and_logs_no_console_errors(tiny_runs, chromium, tmp_path):
    multi, single = tiny_runs
    # the check can fail: a page with a script error is caught
    (tmp_path / "broken.html").write_text("<p>x</p><script>console.error('boom'); undefined_fn();</script>")
    logged = screenshot(tmp_path / "broken.html", tmp_path / "broken.png", 600, 400)
    assert any("boom" in m for m in logged) and any("undefined_fn" in m for m in logged)

    page = write_report(multi, tmp_path / "multi.html")
    assert screenshot(page, tmp_path / "multi.png", 1200, 1600) == []
    # the plots are drawn: the same page without its images renders far fewer colours
    (tmp_path / "text.html").write_text(re.sub(r"<img [^>]*>", "", page.read_text()))
    assert screenshot(tmp_path / "text.html", tmp_path / "text.png", 1200, 1600) == []
    with_plots, without = _colours(tmp_path / "multi.png"), _colours(tmp_path / "text.png")
    assert with_plots > 1000 and with_plots > 5 * without, (with_plots, without)

    # the single-objective run's page, through the command line, which fails when the page logs anything
    out = CliRunner().invoke(app, ["report", str(single), "--out", str(tmp_path / "cli.html"),
                                   "--screenshot", str(tmp_path / "cli.png"), "--width", "800", "--height", "600"])
    assert out.exit_code == 0, out.stderr
    from PIL import Image

    assert Image.open(tmp_path / "cli.png").size == (800, 600)


def test_table_columns_sort_on_click_in_chromium(tiny_runs, chromium, tmp_path):
    """The page's own script, run by the browser: two clicks on 'objective' order the rows by it, largest first,
    and empty cells stay last."""
    from evomerge.reporting.browser import dom

    multi, _ = tiny_runs
    page = CliRunner().invoke(app, ["leaderboard", str(multi), "--format", "html", "--sort", "id"]).stdout
    click = "<script>var th = [...document.querySelectorAll('th')].find(h => h.textContent === 'objective');" \
            "th.click(); th.click();</script>"
    (tmp_path / "board.html").write_text(page.replace("</body>", click + "</body>"))
    html_out, logged = dom(tmp_path / "board.html")
    assert logged == []
    cells = _Cells()
    cells.feed(html_out)
    (t,) = cells.tables
    col = t["head"].index("objective")
    values = [r[col] for r in t["rows"]]
    numbers = [float(v) for v in values if v]
    assert numbers == sorted(numbers, reverse=True) and values[-1] == "" and len(numbers) == 7


def test_watching_a_finished_run_shows_it_once_and_returns(tiny_runs, tmp_path):
    _, single = tiny_runs
    out = CliRunner().invoke(app, ["status", str(single), "--watch", "--every", "0.1"])
    assert out.exit_code == 0 and "finished" in out.stdout and "8/8 search" in out.stdout
    out = CliRunner().invoke(app, ["report", str(single), "--watch", "--out", str(tmp_path / "r.html")])
    assert out.exit_code == 0 and out.stdout.count("wrote") == 1 and "finished" in out.stdout
    assert (tmp_path / "r.html").is_file() and not (tmp_path / "r.html.tmp").exists()
