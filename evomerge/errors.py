"""Errors a user can act on. The CLI prints them on one line and exits with status 2.

Also the two helpers that turn bad input files into such errors (a YAML file that must hold a mapping; a pydantic
validation error as one line naming the field paths), used by every module that reads a user's file.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import yaml

if TYPE_CHECKING:
    from pydantic import ValidationError


class EvomergeError(Exception):
    """Base class of user-facing errors."""


class ConfigError(EvomergeError):
    """The experiment file is invalid; the message names the field and what was expected."""


class SourceError(EvomergeError):
    """A source model cannot be loaded or does not match the base."""


class MergeError(EvomergeError):
    """A recipe could not be materialized (unknown operator, missing group, non-finite weights)."""


class RunError(EvomergeError):
    """A run cannot go on (for example, every candidate of a generation failed). The store stays intact."""


def _loc(loc: tuple) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def format_validation_error(err: ValidationError, source: str) -> str:
    parts = []
    for e in err.errors():
        msg = e["msg"].removeprefix("Value error, ")
        where = _loc(e["loc"])
        if e["type"] == "missing":
            msg = "required field is missing"
        elif e["type"] == "extra_forbidden":
            msg = "unknown field"
        elif "input" in e and e["type"] not in ("value_error",):
            msg += f" (got {e['input']!r})"
        parts.append(f"{where}: {msg}" if e["loc"] else msg)  # model-level checks name their fields themselves
    return f"{source}: " + "; ".join(parts)


def read_mapping(path: Path, what: str) -> dict:
    """Read a YAML file that must hold a mapping; `what` prefixes every error (a field or the file itself)."""
    if not path.is_file():
        raise ConfigError(f"{what}: {str(path)!r} not found (expected a YAML file)")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise ConfigError(f"{what}: {path} is not valid YAML: {e}".replace("\n", " ")) from None
    if not isinstance(data, dict):
        raise ConfigError(f"{what}: {path} must hold a YAML mapping of fields")
    return data
