"""Validation of chain ids, function names and field names (pure)."""

from __future__ import annotations

import re

from skylark.state.errors import InvalidName

NAME_PATTERN = re.compile(r"[A-Za-z0-9_.-]{1,128}")


def validate_name(kind: str, value: object) -> str:
    """Return ``value`` if it is a valid name, else raise :class:`InvalidName` naming ``kind``."""
    if not isinstance(value, str) or NAME_PATTERN.fullmatch(value) is None:
        shown = value if isinstance(value, str) and len(value) <= 40 else type(value).__name__
        raise InvalidName(f"{kind} {shown!r} must match [A-Za-z0-9_.-]{{1,128}}")
    return value
