"""JSON from clients, parsed within bounds (pure: no Flask, no I/O).

``json.loads`` is not safe on its own for input an attacker chooses:

- it recurses once per nesting level, so ``[[[[…]]]]`` 10,000 deep raises ``RecursionError`` (a
  500, not a 400) — and a document that *just* fits the interpreter's recursion limit still
  breaks whatever recurses over it later (``json.dumps`` when a broker forwards it, ``repr`` in
  a log line);
- it accepts ``NaN``, ``Infinity`` and ``1e999`` (→ ``inf``), which are not JSON (RFC 8259) and
  which no Go or JavaScript consumer reads back;
- on bytes it guesses UTF-16/32 from the first bytes, where the HTTP bodies here are UTF-8.

:func:`loads` counts the nesting depth *before* parsing (a linear scan with C-speed regular
expressions, no recursion), refuses non-finite numbers and decodes bytes as strict UTF-8. Every
failure is a :class:`InvalidJSON` (a ``ValueError``) whose text names the problem, so callers
keep mapping ``ValueError`` to their 400.
"""

from __future__ import annotations

import itertools
import json
import math
import re
import threading
from typing import Any

# Skylark's own documents nest at most 4 levels (a structured event around a propagation
# payload around its meta). 64 leaves workflows room for their own event data and stays far
# below every recursion limit met on the way (the json encoder and decoder, repr, logging).
MAX_JSON_DEPTH = 64

_ESCAPE = re.compile(rb"\\.", re.S)
_OTHER_BYTES = bytes(sorted(set(range(256)) - set(b"[]{}")))
_DELTA = [0] * 256
_DELTA[ord("[")] = _DELTA[ord("{")] = 1
_DELTA[ord("]")] = _DELTA[ord("}")] = -1


class InvalidJSON(ValueError):
    """Client JSON that is malformed, nested too deeply or holds a non-finite number."""


def nesting_depth(text: bytes | str) -> int:
    """The deepest bracket nesting of ``text`` outside JSON strings (0 for a scalar).

    Works on malformed text as well (an unterminated string counts as code), which only makes
    a document that is invalid anyway look deeper.
    """
    raw = text.encode("utf-8", "surrogatepass") if isinstance(text, str) else bytes(text)
    # Every step runs in C (no Python-level loop over a large document): drop escape pairs
    # (so that an escaped quote cannot end a string), keep what lies between the strings (the
    # even pieces between quotes), keep only the brackets, and take the running sum's maximum.
    if b"\\" in raw:
        raw = _ESCAPE.sub(b"", raw)
    outside = b"".join(raw.split(b'"')[::2])
    brackets = outside.translate(None, _OTHER_BYTES)
    return max(itertools.accumulate(map(_DELTA.__getitem__, brackets)), default=0)


def check_depth(text: bytes | str, max_depth: int = MAX_JSON_DEPTH) -> None:
    """:class:`InvalidJSON` when ``text`` nests deeper than ``max_depth`` levels."""
    raw = text.encode("utf-8", "surrogatepass") if isinstance(text, str) else text
    if raw.count(b"[") + raw.count(b"{") <= max_depth:
        return  # cannot nest deeper than it has openings (the usual case: a few objects)
    depth = nesting_depth(raw)
    if depth > max_depth:
        raise InvalidJSON(f"JSON nested {depth} levels deep; at most {max_depth} are accepted")


def _constant(name: str) -> Any:
    raise InvalidJSON(f"{name} is not a JSON number (RFC 8259)")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise InvalidJSON(f"number {text[:30]!r} is out of range")
    return value


def loads(data: bytes | bytearray | memoryview | str, *, max_depth: int = MAX_JSON_DEPTH) -> Any:
    """Parse client JSON; :class:`InvalidJSON` naming the problem when it is not acceptable."""
    if isinstance(data, (bytes, bytearray, memoryview)):
        raw = bytes(data)
        check_depth(raw, max_depth)
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise InvalidJSON(f"not valid UTF-8 (byte {exc.start})") from None
    elif isinstance(data, str):
        text = data
        check_depth(text, max_depth)
    else:
        raise InvalidJSON(f"expected JSON text, not {type(data).__name__}")
    try:
        return json.loads(text, parse_constant=_constant, parse_float=_finite_float)
    except InvalidJSON:
        raise
    except ValueError as exc:  # JSONDecodeError, and int() past sys.get_int_max_str_digits()
        raise InvalidJSON(str(exc)[:200]) from None


class BoundedLabels:
    """Metric label values taken from client input (an event's type), at most ``limit`` of them.

    Every distinct label value is a time series kept for the life of the process: labelling by
    whatever a client sends lets it grow memory without bound. The first ``limit`` values (and
    at most 120 characters of each) are kept as they are, any later one is counted as ``other``.
    """

    def __init__(self, limit: int = 100, other: str = "other") -> None:
        self.limit = limit
        self.other = other
        self._seen: set[str] = set()
        self._lock = threading.Lock()

    def __call__(self, value: object) -> str:
        text = str(value)[:120]
        with self._lock:
            if text in self._seen:
                return text
            if len(self._seen) < self.limit:
                self._seen.add(text)
                return text
        return self.other
