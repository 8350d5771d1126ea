"""Optional dependencies: a missing one stops the command with one line naming the extra that installs it."""

from __future__ import annotations

import importlib

from evomerge.errors import EvomergeError

# extra -> the modules it provides (pyproject.toml's [project.optional-dependencies])
EXTRAS = {"blackbox": ("fastapi", "uvicorn", "httpx", "peft")}


class MissingExtra(EvomergeError):
    """An optional package is not installed."""


def require_extra(extra: str, what: str, modules: tuple[str, ...] | None = None) -> None:
    """Raise MissingExtra when one of `extra`'s modules (or just `modules`) cannot be imported."""
    for name in modules or EXTRAS[extra]:
        try:
            importlib.import_module(name)
        except ImportError:
            raise MissingExtra(f"{what} needs the optional package {name!r}, which is not installed: "
                               f"pip install 'evomerge[{extra}]'") from None
