"""Optimizer snapshots as data: versioned, zlib-compressed JSON of numbers, strings, lists, dicts and tagged numpy
arrays and random states. Decoding builds nothing but those types, so a crafted snapshot (in a run directory or a
shared database anyone may write) can at worst be refused; it never runs code, as a pickle would.

Layout: `{"format": "evomerge.optimizer-state", "version": 1, "optimizer": NAME, "state": ...}`. An array is
`{"__nd__": [dtype, shape, base64 of its bytes]}` (numeric dtypes only, bit-exact), a tuple `{"__tuple__": [...]}`,
a legacy `RandomState` `{"__rs__": its get_state(legacy=False)}`; floats keep NaN and ±inf (Python's JSON does).
"""

from __future__ import annotations

import base64
import json
import zlib

import numpy as np

from evomerge.errors import ConfigError

FORMAT, VERSION = "evomerge.optimizer-state", 1
_DTYPES = {
    "bool",
    "int8",
    "int16",
    "int32",
    "int64",
    "uint8",
    "uint16",
    "uint32",
    "uint64",
    "float16",
    "float32",
    "float64",
}
MAX_STATE_BYTES = 1 << 30  # decompressed: a snapshot larger than this is not one we wrote


class StateError(ValueError):
    """A snapshot that is not a readable evomerge optimizer state (of this optimizer)."""


def _enc(x):
    if isinstance(x, np.ndarray):
        if x.dtype.name not in _DTYPES:
            raise TypeError(f"cannot store an array of dtype {x.dtype}")
        a = np.ascontiguousarray(x)
        return {"__nd__": [a.dtype.name, list(a.shape), base64.b64encode(a.tobytes()).decode()]}
    if isinstance(x, np.random.RandomState):
        return {"__rs__": _enc(x.get_state(legacy=False))}
    if isinstance(x, np.generic):
        return x.item()
    if isinstance(x, tuple):
        return {"__tuple__": [_enc(v) for v in x]}
    if isinstance(x, list):
        return [_enc(v) for v in x]
    if isinstance(x, dict):
        if not all(isinstance(k, str) for k in x):
            raise TypeError("cannot store a dict with non-string keys")
        return {k: _enc(v) for k, v in x.items()}
    if x is None or isinstance(x, (bool, int, float, str)):
        return x
    raise TypeError(f"cannot store a {type(x).__name__} in an optimizer state")


def _dec(x):
    if isinstance(x, list):
        return [_dec(v) for v in x]
    if not isinstance(x, dict):
        return x
    if len(x) == 1:
        ((tag, v),) = x.items()
        if tag == "__nd__":
            return _array(v)
        if tag == "__tuple__":
            if not isinstance(v, list):
                raise StateError("a tuple must hold a list")
            return tuple(_dec(e) for e in v)
        if tag == "__rs__":
            rs = np.random.RandomState()
            try:
                rs.set_state(_dec(v))
            except (TypeError, ValueError, KeyError) as e:
                raise StateError(f"bad random state ({e})") from None
            return rs
    return {k: _dec(v) for k, v in x.items()}


def _array(v) -> np.ndarray:
    try:
        dtype, shape, data = v
        if dtype not in _DTYPES or not all(isinstance(n, int) and n >= 0 for n in shape):
            raise ValueError
        return np.frombuffer(base64.b64decode(data, validate=True), dtype=dtype).reshape(shape).copy()
    except (TypeError, ValueError):
        raise StateError("bad array") from None


def encode(optimizer: str, state) -> bytes:
    """`state` (nested dicts, lists, tuples, numbers, strings, arrays, RandomStates) as snapshot bytes."""
    doc = {"format": FORMAT, "version": VERSION, "optimizer": optimizer, "state": _enc(state)}
    return zlib.compress(json.dumps(doc, separators=(",", ":")).encode())


def decode(blob: bytes, optimizer: str | None = None):
    """The state `encode` stored (for `optimizer`, when given); StateError for anything else."""
    if blob[:1] == b"\x80":  # pickle protocol >= 2: a snapshot from before snapshots were data
        raise StateError("it is a pickle, written by evomerge before optimizer snapshots were stored as data")
    try:
        d = zlib.decompressobj()
        text = d.decompress(blob, MAX_STATE_BYTES)
        if d.unconsumed_tail:
            raise StateError("too large")
        doc = json.loads(text)
    except (zlib.error, UnicodeDecodeError, json.JSONDecodeError, RecursionError):
        raise StateError("not an evomerge optimizer state") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT or "state" not in doc:
        raise StateError("not an evomerge optimizer state")
    if doc.get("version") != VERSION:
        raise StateError(f"state format version {doc.get('version')!r}; this evomerge reads version {VERSION}")
    if optimizer is not None and doc.get("optimizer") != optimizer:
        raise StateError(f"it is a state of optimizer {doc.get('optimizer')!r}, not {optimizer!r}")
    try:
        return _dec(doc["state"])
    except RecursionError:
        raise StateError("nested too deeply") from None


def check_snapshot(blob: bytes, where: str, generation: int) -> None:
    """ConfigError (one line, with what to do) unless `blob` is a readable optimizer state."""
    try:
        decode(blob)
    except StateError as e:
        hint = (
            "start the search again in a new --run-dir (evaluations of this run can still be read with "
            "`evomerge leaderboard`)"
        )
        raise ConfigError(
            f"{where}: the optimizer snapshot of generation {generation + 1} cannot be loaded: {e}; {hint}"
        ) from None


def set_attrs(obj, saved: dict, what: str) -> None:
    """Copy a saved `__dict__` onto `obj`: only attributes it already has, each of the type it already has (a
    RandomState's state is set in place), so a snapshot cannot add or retype anything."""
    if not isinstance(saved, dict) or set(saved) != set(vars(obj)):
        raise StateError(f"{what}: the saved attributes are not those of {type(obj).__name__}")
    for k, v in saved.items():
        cur = getattr(obj, k)
        if isinstance(cur, np.random.RandomState):
            if not isinstance(v, np.random.RandomState):
                raise StateError(f"{what}.{k}: expected a random state")
            cur.set_state(v.get_state())
            continue
        if not _same_kind(cur, v):
            raise StateError(f"{what}.{k}: expected {type(cur).__name__}, got {type(v).__name__}")
        setattr(obj, k, v)


def _same_kind(cur, new) -> bool:
    if cur is None or new is None:
        return True  # cmaes fills some fields (eigen decomposition) lazily
    num = (int, float, np.integer, np.floating)
    if isinstance(cur, num) and not isinstance(cur, (bool, np.bool_)):
        return isinstance(new, num) and not isinstance(new, bool)
    if isinstance(cur, (bool, np.bool_)):
        return isinstance(new, bool)
    if isinstance(cur, np.ndarray):
        return isinstance(new, np.ndarray)
    return type(cur) is type(new)
