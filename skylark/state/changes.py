"""The change-stream entry (pure): what every state write appends, in the same atomic step.

A Knative RedisStreamSource turns each entry into a CloudEvent whose data is the entry's
field/value pairs as one flat JSON array of strings, so every value here is a plain string.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

from skylark.state.names import validate_name
from skylark.state.numbers import INT64_MAX, parse_int

# Order of the fields in each entry (and so in the RedisStreamSource's flat array); then, when the
# writer was in a trace, ``traceparent`` (W3C): the push continues the writer's trace.
FIELDS = ("chain", "function", "op", "mechanism", "fields", "version", "node", "size", "checksum", "ts")
OPS = ("put", "delete")
MECHANISMS = ("bundled", "single")
_TRACEPARENT = re.compile(r"00-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}")


def traceparent_or_none(value: object) -> str | None:
    """A W3C version-00 traceparent as it is; anything else is none (trace context is not data:
    W3C says to ignore a malformed one, so the push then starts a new trace)."""
    return value if isinstance(value, str) and _TRACEPARENT.fullmatch(value) else None


class InvalidChange(ValueError):
    """A stream entry that is not a Skylark change (missing or malformed fields)."""


@dataclass(frozen=True)
class ChangeRecord:
    chain: str
    function: str
    op: str
    mechanism: str
    fields: tuple[str, ...]
    version: int
    node: str
    size: int
    checksum: str
    ts_ms: int
    traceparent: str | None = None

    def to_stream_fields(self) -> dict[str, str]:
        return {
            "chain": self.chain,
            "function": self.function,
            "op": self.op,
            "mechanism": self.mechanism,
            "fields": ",".join(self.fields),
            "version": str(self.version),
            "node": self.node,
            "size": str(self.size),
            "checksum": self.checksum,
            "ts": str(self.ts_ms),
            **({"traceparent": self.traceparent} if self.traceparent else {}),
        }

    @classmethod
    def from_stream_fields(cls, entry: Mapping[str, str]) -> "ChangeRecord":
        """Parse an entry's fields; :class:`InvalidChange` names what is wrong."""
        missing = [name for name in FIELDS if name not in entry]
        if missing:
            raise InvalidChange(f"change entry lacks field(s): {', '.join(missing)}")
        try:
            chain = validate_name("chain id", entry["chain"])
            function = validate_name("function name", entry["function"])
            node = validate_name("node name", entry["node"])
            names = tuple(n for n in entry["fields"].split(",") if n)
            for name in names:
                validate_name("field name", name)
        except ValueError as exc:
            raise InvalidChange(str(exc)) from None
        if entry["op"] not in OPS:
            raise InvalidChange(f"op {entry['op']!r} must be one of {', '.join(OPS)}")
        if entry["mechanism"] not in MECHANISMS:
            raise InvalidChange(f"mechanism {entry['mechanism']!r} must be one of {', '.join(MECHANISMS)}")
        numbers = {}
        for name in ("version", "size", "ts"):
            # ASCII digits within int64 only: str.isdigit() lets "²" through (int() then fails)
            # and int() reads "١٢" as 12; a version past int64 no consumer (Go, Lua) can hold.
            try:
                numbers[name] = parse_int(entry[name], name, minimum=0, maximum=INT64_MAX)
            except ValueError as exc:
                raise InvalidChange(f"{exc} (a non-negative integer)") from None
        # A malformed traceparent is not an error (W3C: ignore it); the push starts a new trace.
        trace = traceparent_or_none(entry.get("traceparent"))
        return cls(chain, function, entry["op"], entry["mechanism"], names, numbers["version"], node,
                   numbers["size"], entry["checksum"], numbers["ts"], trace)
