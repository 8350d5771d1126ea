"""Installing evomerge where GPU users live: beside their own torch build, without the optional web stack.

Offline and cheap: the "cluster's torch" is a dummy distribution of another version built here, and every other
requirement comes from the environment running the tests, so pip resolves with --no-index and downloads nothing.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OTHER_TORCH = "2.4.1"  # any version other than constraints.txt's pin


def _dummy_wheel(folder: Path, name: str, version: str) -> Path:
    """A minimal, valid pure-Python wheel of `name`==`version`."""
    info = f"{name}-{version}.dist-info"
    files = {
        f"{name}/__init__.py": f'__version__ = "{version}"\n',
        f"{info}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n",
        f"{info}/WHEEL": "Wheel-Version: 1.0\nGenerator: evomerge-test\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    path = folder / f"{name}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as z:
        for arc, text in files.items():
            z.writestr(arc, text)
        z.writestr(f"{info}/RECORD", "".join(f"{a},,\n" for a in files) + f"{info}/RECORD,,\n")
    return path


def _venv_with_torch(tmp: Path) -> Path:
    """A fresh venv holding torch==OTHER_TORCH; this environment's packages are visible behind it (a .pth line),
    so pip finds evomerge's other requirements installed and needs no index."""
    venv = tmp / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    py = venv / "bin" / "python"
    site = Path(subprocess.check_output([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                                        text=True).strip())
    ours = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}
    (site / "zz_outer.pth").write_text("\n".join(sorted(ours)) + "\n")
    wheel = _dummy_wheel(tmp, "torch", OTHER_TORCH)
    subprocess.run([str(py), "-m", "pip", "install", "-q", "--no-index", "--no-deps", str(wheel)], check=True)
    return py


def _project_copy(tmp: Path) -> Path:
    """pyproject.toml and README.md with an empty package: what pip reads to resolve (no build output in ROOT)."""
    src = tmp / "src"
    (src / "evomerge").mkdir(parents=True)
    for f in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / f, src / f)
    (src / "evomerge" / "__init__.py").write_text("")
    return src


def _torch_version(py: Path) -> str:
    code = "import importlib.metadata as m; print(m.version('torch'))"
    return subprocess.check_output([str(py), "-c", code], text=True).strip()


def test_install_beside_another_torch_keeps_it(tmp_path):
    py = _venv_with_torch(tmp_path)
    assert _torch_version(py) == OTHER_TORCH
    report = tmp_path / "report.json"
    env = {**os.environ, "PIP_NO_INPUT": "1", "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
    proc = subprocess.run([str(py), "-m", "pip", "install", "--no-index", "--no-build-isolation", "--report",
                           str(report), str(_project_copy(tmp_path))], capture_output=True, text=True, env=env,
                          check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    installed = [item["metadata"]["name"] for item in json.loads(report.read_text())["install"]]
    assert installed == ["evomerge"]  # nothing else installed or replaced, torch least of all
    assert _torch_version(py) == OTHER_TORCH


def test_missing_extra_is_one_line_naming_it(tmp_path):
    # The web stack hidden from this interpreter: `evomerge serve` stops before doing anything, exit status 2.
    code = ("import sys\n"
            "for m in ('fastapi', 'uvicorn', 'httpx'): sys.modules[m] = None\n"
            "from evomerge.cli import main\n"
            f"sys.argv = ['evomerge', 'serve', '--base', {str(tmp_path)!r}, '--repository', {str(tmp_path)!r}]\n"
            "main()\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert proc.returncode == 2, proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, proc.stderr
    assert "pip install 'evomerge[blackbox]'" in lines[0] and "fastapi" in lines[0]
