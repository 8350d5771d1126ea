"""Errors a user can act on. The CLI prints them on one line and exits with status 2.

Also how a user's file becomes data or such an error, used by every module that reads one: a small UTF-8 file read
(`read_text`), YAML parsed by a bounded safe loader (no aliases expanded past a limit, no deep nesting, no duplicate
keys: `load_yaml`, `read_mapping`), a pydantic validation error as one line naming the field paths
(`format_validation_error`), and any message cut to one readable line (`one_line`, `shown`).
"""

from __future__ import annotations

import importlib
import re
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import yaml
from pydantic import AfterValidator

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


class Stopped(KeyboardInterrupt):
    """A stop asked by a signal (SIGTERM from a scheduler, SIGHUP from a closed terminal), handled like Ctrl-C: it
    is a KeyboardInterrupt, so that every cleanup written for Ctrl-C runs for it too."""

    def __init__(self, signum: int):
        import signal

        self.signum = signum
        super().__init__(signal.Signals(signum).name)

    @property
    def exit_status(self) -> int:
        return 128 + self.signum  # the shell's convention: 143 for SIGTERM, 129 for SIGHUP


# Bounds on a user's file: far above any real experiment, far below what exhausts a machine.
MAX_FILE_BYTES = 1 << 20  # an experiment or preset file
MAX_YAML_NODES = 100_000  # after alias expansion (a "billion laughs" file is refused, not expanded)
MAX_YAML_DEPTH = 64
MAX_LINE = 400  # an error line is cut to this many characters
MAX_VALUE_SHOWN = 80  # a value echoed in an error


def shown(value) -> str:
    """A value as an error message echoes it: its repr, cut to a readable length."""
    r = repr(value)
    return r if len(r) <= MAX_VALUE_SHOWN else r[: MAX_VALUE_SHOWN - 1] + "…"


def one_line(msg: str) -> str:
    """An error message as one line of at most MAX_LINE characters."""
    msg = " ".join(str(msg).split())
    return msg if len(msg) <= MAX_LINE else msg[: MAX_LINE - 1] + "…"


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
            msg += f" (got {shown(e['input'])})"
        parts.append(f"{where}: {msg}" if e["loc"] else msg)  # model-level checks name their fields themselves
    return one_line(f"{source}: " + "; ".join(parts))


class BoundedLoader(yaml.SafeLoader):
    """PyYAML's safe loader (plain data only) that also refuses what would exhaust memory or the stack: nesting
    deeper than MAX_YAML_DEPTH, more than MAX_YAML_NODES nodes once aliases are expanded (whoever walks the
    result, pydantic or a message, expands them), and a key given twice in one mapping (the last would win
    silently)."""

    def __init__(self, stream):
        super().__init__(stream)
        self._depth = 0

    def compose_node(self, parent, index):
        self._depth += 1
        try:
            if self._depth > MAX_YAML_DEPTH:
                raise yaml.YAMLError(f"nested deeper than {MAX_YAML_DEPTH} levels (line {self.line + 1})")
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def get_single_node(self):
        node = super().get_single_node()
        if node is not None:
            _expanded_size(node, {}, set())
        return node

    def construct_mapping(self, node, deep=False):
        if isinstance(node, yaml.MappingNode):
            seen = set()
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue
                key = self.construct_object(key_node, deep=True)
                try:
                    dup = key in seen
                    seen.add(key)
                except TypeError:  # an unhashable key: the base class reports it
                    continue
                if dup:
                    raise yaml.constructor.ConstructorError(
                        None, None, f"duplicate key {shown(key)} (line {key_node.start_mark.line + 1})")
        return super().construct_mapping(node, deep)


def _expanded_size(node, sizes: dict, visiting: set) -> int:
    """The number of nodes `node` stands for with every alias expanded; YAMLError past MAX_YAML_NODES or on a
    recursive alias (a structure that contains itself)."""
    key = id(node)
    if key in sizes:
        return sizes[key]
    if key in visiting:
        raise yaml.YAMLError("a recursive alias (a value that contains itself)")
    visiting.add(key)
    n = 1
    if isinstance(node, yaml.SequenceNode):
        n += sum(_expanded_size(c, sizes, visiting) for c in node.value)
    elif isinstance(node, yaml.MappingNode):
        n += sum(_expanded_size(k, sizes, visiting) + _expanded_size(v, sizes, visiting) for k, v in node.value)
    visiting.discard(key)
    if n > MAX_YAML_NODES:
        raise yaml.YAMLError(f"more than {MAX_YAML_NODES} values once aliases are expanded")
    sizes[key] = n
    return n


def load_yaml(text: str):
    """YAML text as plain data, bounded (see BoundedLoader)."""
    loader = BoundedLoader(text)
    try:
        return loader.get_single_data()
    finally:
        loader.dispose()


def read_text(path: Path, what: str) -> str:
    """A small UTF-8 text file, or ConfigError saying what it is instead (missing, a directory, too big, binary)."""
    if path.is_dir():
        raise ConfigError(f"{what}: {str(path)!r} is a directory (expected a YAML file)")
    if not path.is_file():
        raise ConfigError(f"{what}: {str(path)!r} not found (expected a YAML file)")
    try:
        size = path.stat().st_size
        if size > MAX_FILE_BYTES:
            raise ConfigError(f"{what}: {path} is {size} bytes; an experiment file is at most {MAX_FILE_BYTES}")
        data = path.read_bytes()[: MAX_FILE_BYTES + 1]
    except OSError as e:
        raise ConfigError(f"{what}: cannot read {path} ({e.strerror})") from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        enc = "UTF-16" if data[:2] in (b"\xff\xfe", b"\xfe\xff") else "not UTF-8"
        raise ConfigError(f"{what}: {path} is {enc} text or binary; expected a UTF-8 YAML file") from None


def read_mapping(path: Path, what: str) -> dict:
    """Read a YAML file that must hold a mapping; `what` prefixes every error (a field or the file itself)."""
    text = read_text(path, what)
    try:
        data = load_yaml(text)
    except (yaml.YAMLError, RecursionError) as e:
        raise ConfigError(one_line(f"{what}: {path} is not valid YAML: {e}")) from None
    if not isinstance(data, dict):
        raise ConfigError(f"{what}: {path} must hold a YAML mapping of fields")
    return data


_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")


def _run_name(v: str) -> str:
    """A run's name becomes a directory under runs/: one plain path component, no '..', no separators."""
    if not _NAME.fullmatch(v) or ".." in v:
        raise ValueError(f"expected a run name of letters, digits, '.', '_' and '-' (not starting with '.' or "
                         f"'-', no '..', at most 128 characters), got {shown(v)}")
    return v


RunName = Annotated[str, AfterValidator(_run_name)]


# -- optional dependencies: a missing one stops the command with one line naming the extra that installs it
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
