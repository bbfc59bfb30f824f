"""What Skylark carries along a chain of events, apart from the authors' own data (pure).

Attributes (CloudEvent extensions, see ``eventing.catalogue``): ``skylarkchain`` (the chain:
one workflow invocation), and for the state an event announces, ``skylarkfunction``,
``skylarknode`` (where it was written), ``skylarkversion``, ``skylarksize``.

In the data (a JSON object), under the one reserved key ``skylark``:

- ``trace``: one entry per stage so far (function, node, where it read its input, fetch /
  compute / store times) — what ``skylark run`` and the demo print;
- ``state``: for every function of the chain that wrote state so far, where and which version
  (``{"preprocess": {"node": "node-a", "version": 3, "size": 151233}}``), so that a later
  function can read the state of any earlier one, not only of the event's producer.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import xxhash
from cloudevents.core.base import BaseCloudEvent

from eventing import catalogue
from skylark.serving.web import ClientError
from skylark.state.names import validate_name
from skylark.state.numbers import parse_int

__all__ = ["ENVELOPE_KEY", "Located", "StageTrace", "chain_of", "derived_chain", "located_states",
           "result_id", "trace_of"]

ENVELOPE_KEY = "skylark"
MAX_TRACE = 256  # stages carried along one chain (a longer trace is cut, oldest first)

# Result-event ids are derived from the input event, so a redelivered input (Knative delivers at
# least once) yields the same result id and downstream receivers can drop the duplicate.
_EVENT_ID_NAMESPACE = uuid.UUID("5b0f3f8e-8c3a-4d57-9b89-2d7a1f0c6e11")


@dataclass(frozen=True)
class Located:
    """Where a function's state was written, and which version (as an event announced it)."""

    node: str
    version: int
    size: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {"node": self.node, "version": self.version, "size": self.size}


@dataclass(frozen=True)
class StageTrace:
    """What one function invocation spent where: one entry of the chain's ``trace``."""

    function: str
    node: str
    fetch_location: str  # "local" | "remote" | "inline" (the input came in the event)
    fetch_node: str      # whose Redis answered (this node for inline input)
    fetch_ms: float
    compute_ms: float
    store_ms: float
    waited_ms: float = 0.0  # of fetch_ms, spent waiting for a pushed copy to arrive
    version: int | None = None  # of the state this stage wrote
    extra: Mapping[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "function": self.function, "node": self.node, "version": self.version,
            "fetch_location": self.fetch_location, "fetch_node": self.fetch_node,
            "fetch_ms": round(self.fetch_ms, 3), "waited_ms": round(self.waited_ms, 3),
            "compute_ms": round(self.compute_ms, 3), "store_ms": round(self.store_ms, 3),
            **self.extra,
        }


def _name_or_400(kind: str, value: object, code: str) -> str:
    try:
        return validate_name(kind, value)
    except ValueError as exc:
        raise ClientError(400, code, str(exc)) from None


def derived_chain(event: BaseCloudEvent) -> str:
    """A chain id for an input that names none: a hash of its source and id, so a redelivery
    of the same input continues the same chain."""
    return "c-" + xxhash.xxh3_64_hexdigest(f"{event.get_source()}\n{event.get_id()}".encode())


def chain_of(event: BaseCloudEvent, data: object) -> str:
    """The chain: the ``skylarkchain`` extension or ``data.chain`` (they must agree); an input
    that names neither starts a new chain (:func:`derived_chain`)."""
    from_ext = event.get_extension(catalogue.EXT_CHAIN)
    from_data = data.get("chain") if isinstance(data, Mapping) else None
    if from_ext is not None and from_data is not None and str(from_ext) != from_data:
        raise ClientError(400, "chain_mismatch", f"extension skylarkchain={from_ext!r} but data.chain={from_data!r}")
    chain = from_ext if from_ext is not None else from_data
    if chain is None:
        return derived_chain(event)
    return _name_or_400("chain id", chain, "invalid_chain")


def _envelope(data: object) -> Mapping[str, Any]:
    if not isinstance(data, Mapping) or ENVELOPE_KEY not in data:
        return {}
    envelope = data[ENVELOPE_KEY]
    if not isinstance(envelope, Mapping):
        raise ClientError(400, "invalid_envelope", f"data.{ENVELOPE_KEY} must be an object")
    return envelope


def trace_of(data: object) -> list[dict[str, Any]]:
    """The trace of the stages so far (``[]`` at the start of a chain)."""
    trace = _envelope(data).get("trace", [])
    if not isinstance(trace, list) or not all(isinstance(entry, Mapping) for entry in trace):
        raise ClientError(400, "invalid_envelope", f"data.{ENVELOPE_KEY}.trace must be a list of objects")
    return [dict(entry) for entry in trace[-MAX_TRACE:]]


def _version(raw: object, what: str) -> int:
    try:
        return parse_int(raw, what, minimum=0)
    except ValueError as exc:
        raise ClientError(400, "invalid_version", str(exc)) from None


def located_states(event: BaseCloudEvent, data: object) -> dict[str, Located]:
    """Where the state of each earlier function of the chain was written: the envelope's
    ``state`` map, and the state the event itself announces (its extensions win)."""
    out: dict[str, Located] = {}
    states = _envelope(data).get("state", {})
    if not isinstance(states, Mapping):
        raise ClientError(400, "invalid_envelope", f"data.{ENVELOPE_KEY}.state must be an object")
    for function, where in list(states.items())[:MAX_TRACE]:
        fn = _name_or_400("function name", function, "invalid_envelope")
        if not isinstance(where, Mapping):
            raise ClientError(400, "invalid_envelope", f"data.{ENVELOPE_KEY}.state.{fn} must be an object")
        out[fn] = Located(_name_or_400("node name", where.get("node"), "invalid_envelope"),
                          _version(where.get("version"), f"state.{fn}.version"),
                          _version(where.get("size", 0), f"state.{fn}.size"))
    function = event.get_extension(catalogue.EXT_FUNCTION)
    node = event.get_extension(catalogue.EXT_NODE)
    version = event.get_extension(catalogue.EXT_VERSION)
    if function is not None and node is not None and version is not None:
        fn = _name_or_400("function name", function, "invalid_function")
        size = event.get_extension(catalogue.EXT_SIZE)
        out[fn] = Located(_name_or_400("node name", node, "invalid_node"), _version(version, "skylarkversion"),
                          _version(size, "skylarksize") if size is not None else 0)
    return out


def envelope(trace: list[dict[str, Any]], states: Mapping[str, Located]) -> dict[str, Any]:
    return {"trace": trace[-MAX_TRACE:], "state": {fn: where.to_dict() for fn, where in states.items()}}


def result_id(function: str, event_type: str, index: int, cause: BaseCloudEvent) -> str:
    """The id of the ``index``-th event a function emits for ``cause`` (stable across redeliveries)."""
    return str(uuid.uuid5(_EVENT_ID_NAMESPACE,
                          f"{function}\n{event_type}\n{index}\n{cause.get_source()}\n{cause.get_id()}"))
