"""A report page opened in headless Chromium: a screenshot, and every message the page logged to its console
(a page that works logs none)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

from evomerge.errors import ConfigError

BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
# Chromium's --enable-logging line for a console message or an uncaught error: ...:INFO:CONSOLE(12)] "text", source: …
_CONSOLE = re.compile(r":CONSOLE[:(]\d*\)?\] (.*)")


def find_chromium() -> str | None:
    for name in BROWSERS:
        if path := shutil.which(name):
            return path
    return None


def _run(page: Path, extra: list[str], timeout_s: float) -> subprocess.CompletedProcess:
    """Chromium, headless, on a local page with a fresh profile (nothing cached, nothing shared) and its log on
    stderr."""
    browser = find_chromium()
    if browser is None:
        raise ConfigError(f"--screenshot: no Chromium found (looked for {list(BROWSERS)}); install Debian's "
                          "chromium package (apt-get install chromium)")
    with tempfile.TemporaryDirectory() as profile:
        args = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--no-first-run",
                "--disable-extensions", "--enable-logging=stderr", "--v=0", f"--user-data-dir={profile}",
                "--virtual-time-budget=5000", *extra, Path(page).resolve().as_uri()]
        return subprocess.run(args, capture_output=True, text=True, timeout=timeout_s,
                              env={**os.environ, "LANG": "C.UTF-8"})


def console_messages(stderr: str) -> list[str]:
    return [m.group(1) for line in stderr.splitlines() if (m := _CONSOLE.search(line))]


def screenshot(page: Path, png: Path, width: int = 1200, height: int = 1600, timeout_s: float = 120) -> list[str]:
    """Load `page` (a local HTML file) in headless Chromium, save a `width`×`height` screenshot to `png`, and return
    the console messages the page logged (errors included)."""
    png = Path(png).resolve()
    png.unlink(missing_ok=True)
    proc = _run(page, [f"--window-size={width},{height}", f"--screenshot={png}"], timeout_s)
    if not png.is_file():
        raise RuntimeError(f"Chromium wrote no screenshot (exit {proc.returncode}): {proc.stderr[-2000:]}")
    return console_messages(proc.stderr)


def dom(page: Path, timeout_s: float = 120) -> tuple[str, list[str]]:
    """The page's DOM after its scripts ran (serialized HTML), and its console messages."""
    proc = _run(page, ["--dump-dom"], timeout_s)
    if proc.returncode != 0:
        raise RuntimeError(f"Chromium could not load {page} (exit {proc.returncode}): {proc.stderr[-2000:]}")
    return proc.stdout, console_messages(proc.stderr)
