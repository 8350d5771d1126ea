"""Per-example checks: an answer counts only when it is right AND its text passes the check.

The PS paper counted a math answer only when the number was right and the reasoning was in Japanese; a merge that
gains accuracy by drifting into another language is not what the user asked for. A check is named in the config
(`fitness.tasks.NAME.check`) as `KIND:ARGUMENT`:

- `script:NAME[:FRACTION]` — at least FRACTION (default 0.5) of the answer's letters are in that writing system
  (`latin`, `japanese` (kana and kanji), `cjk`, `cyrillic`, `greek`, `arabic`, `hangul`, `devanagari`);
- `regex:PATTERN` — the whole answer matches the Python regular expression.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable

# Unicode character-name prefixes per writing system (unicodedata has no script property; names carry it).
_SCRIPTS = {
    "latin": ("LATIN",),
    "japanese": ("HIRAGANA", "KATAKANA", "CJK UNIFIED IDEOGRAPH", "CJK COMPATIBILITY IDEOGRAPH"),
    "cjk": ("CJK UNIFIED IDEOGRAPH", "CJK COMPATIBILITY IDEOGRAPH"),
    "cyrillic": ("CYRILLIC",),
    "greek": ("GREEK",),
    "arabic": ("ARABIC",),
    "hangul": ("HANGUL",),
    "devanagari": ("DEVANAGARI",),
}


def script_fraction(text: str, script: str) -> float:
    """The share of `text`'s letters (digits, spaces and punctuation do not vote) that belong to `script`."""
    prefixes = _SCRIPTS[script]
    letters = [c for c in text if c.isalpha()]
    if not letters:
        return 0.0
    return sum(unicodedata.name(c, "").startswith(prefixes) for c in letters) / len(letters)


def _script(arg: str) -> Callable[[str], bool]:
    name, _, frac = arg.partition(":")
    if name not in _SCRIPTS:
        raise ValueError(f"unknown script {name!r}; expected one of {sorted(_SCRIPTS)}")
    try:
        need = float(frac) if frac else 0.5
    except ValueError:
        raise ValueError(f"script check: {frac!r} is not a fraction") from None
    if not 0 < need <= 1:
        raise ValueError(f"script check: the fraction must be in (0, 1], got {need}")
    return lambda text: script_fraction(text, name) >= need


def _regex(arg: str) -> Callable[[str], bool]:
    try:
        pattern = re.compile(arg, re.DOTALL)
    except re.error as e:
        raise ValueError(f"regex check: {arg!r} is not a valid regular expression ({e})") from None
    return lambda text: pattern.fullmatch(text) is not None


CHECKS: dict[str, Callable[[str], Callable[[str], bool]]] = {"script": _script, "regex": _regex}


def make_check(spec: str) -> Callable[[str], bool]:
    """The check named by `KIND:ARGUMENT`; ValueError naming what was expected."""
    kind, sep, arg = spec.partition(":")
    if not sep or kind not in CHECKS:
        raise ValueError(f"check {spec!r}: expected KIND:ARGUMENT with KIND one of {sorted(CHECKS)}")
    return CHECKS[kind](arg)
