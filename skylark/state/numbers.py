"""Strict integers and decimals from text (pure): ASCII digits only, within int64 / finite.

``int()`` accepts far more than a client should be able to send: Unicode digits ("١٢" is 12,
"²" passes ``str.isdigit()`` and then fails), underscores ("1_000"), surrounding whitespace and
numbers of any size. Versions, sizes, timestamps and query parameters are read with
:func:`parse_int` instead, so a value either is what it looks like or is refused by name.
Decimals (durations, SLO figures in settings) likewise with :func:`parse_float`, which also
refuses what ``float()`` lets through: "nan", "inf", "1_0.5", "١٫٥".
"""

from __future__ import annotations

import math
import re

INT64_MIN = -(2**63)
INT64_MAX = 2**63 - 1

_INTEGER = re.compile(r"-?[0-9]{1,19}")  # [0-9], not \d: ASCII only
# A plain decimal number: no "nan", "inf", "1_0", Unicode digits or surrounding blanks, which
# float() would all accept; at most 40 characters (the exponent bounds the magnitude).
_DECIMAL = re.compile(r"-?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][-+]?[0-9]{1,3})?")
_MAX_DECIMAL_CHARS = 40


def parse_int(value: object, what: str, *, minimum: int | None = INT64_MIN, maximum: int | None = INT64_MAX) -> int:
    """``value`` (an int, or its decimal text) as an int in [minimum, maximum]; :class:`ValueError`
    naming ``what`` otherwise. Booleans and floats are refused, not truncated."""
    if isinstance(value, bool):
        raise ValueError(f"{what} must be an integer, not a boolean")
    if isinstance(value, int):
        number = value
    else:
        if isinstance(value, bytes):
            value = value.decode("ascii", "replace")
        if not isinstance(value, str):
            raise ValueError(f"{what} must be an integer, not {type(value).__name__}")
        if _INTEGER.fullmatch(value) is None:
            shown = value if len(value) <= 30 else value[:27] + "..."
            raise ValueError(f"{what} {shown!r} is not an integer (ASCII digits, at most 19)")
        number = int(value)
    if minimum is not None and number < minimum:
        raise ValueError(f"{what} {number} must be >= {minimum}")
    if maximum is not None and number > maximum:
        raise ValueError(f"{what} {number} must be <= {maximum}")
    return number


def parse_float(value: object, what: str, *, minimum: float | None = None,
                maximum: float | None = None) -> float:
    """``value`` (an int, a float, or its plain decimal text) as a finite float in [minimum,
    maximum]; :class:`ValueError` naming ``what`` otherwise. Booleans are refused."""
    if isinstance(value, bool):
        raise ValueError(f"{what} must be a number, not a boolean")
    if isinstance(value, int):
        try:
            number = float(value)
        except OverflowError:
            raise ValueError(f"{what} is out of range") from None
    elif isinstance(value, float):
        number = value
    elif isinstance(value, str):
        if len(value) > _MAX_DECIMAL_CHARS or _DECIMAL.fullmatch(value) is None:
            shown = value if len(value) <= 30 else value[:27] + "..."
            raise ValueError(f"{what} {shown!r} is not a decimal number (ASCII digits, '.', exponent)")
        number = float(value)
    else:
        raise ValueError(f"{what} must be a number, not {type(value).__name__}")
    if not math.isfinite(number):
        raise ValueError(f"{what} must be a finite number")
    if minimum is not None and number < minimum:
        raise ValueError(f"{what} {number} must be >= {minimum}")
    if maximum is not None and number > maximum:
        raise ValueError(f"{what} {number} must be <= {maximum}")
    return number
