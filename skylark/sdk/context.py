"""What ``handle`` gets: the event, its chain, the input state, a way to write, a way to emit.

Every read and write goes through the context, so that it is timed (fetch / store; compute is
the rest of ``handle``), its errors map to the same HTTP answers (Redis down → 503, state not
found → 404), and the state it writes is announced by the event the function emits.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from cloudevents.core.base import BaseCloudEvent

from skylark.sdk.config import Config
from skylark.sdk.envelope import ENVELOPE_KEY, Located
from skylark.sdk.node import NodeState
from skylark.serving.tracing import current_traceparent, tracer
from skylark.serving.web import ClientError
from skylark.state.bundle import Bundle
from skylark.state.keys import DEFAULT_CHANGE_STREAM, dead_letter_stream
from skylark.state.errors import BundleNotFound
from skylark.state.names import validate_name
from skylark.state.reader import BundleRead
from skylark.state.store import PutResult, redis_errors

__all__ = ["Context", "Emit", "InputError", "StateAccess", "StateError", "check_stream"]

_TRACER = tracer("skylark.sdk")

INLINE = "inline"  # the input came inside the event, not from state
# Keys an author may not append to: Skylark's own state and bookkeeping.
_RESERVED_PREFIXES = ("skylark:bundle:", "skylark:meta:", "skylark:single:", "skylark:placed:", "skylark:fn:",
                      "skylark:handlers:")
RESERVED_STREAMS = (DEFAULT_CHANGE_STREAM, dead_letter_stream(DEFAULT_CHANGE_STREAM))


def check_stream(stream: object, change_stream: str = DEFAULT_CHANGE_STREAM) -> str:
    """``stream`` if a function may append to it (not Skylark's own keys), else ValueError: call
    it in ``start`` on a configured stream name, so a bad one stops the start, not each event."""
    if (not isinstance(stream, str) or not stream or len(stream) > 256 or stream.startswith(_RESERVED_PREFIXES)
            or stream in (change_stream, dead_letter_stream(change_stream), *RESERVED_STREAMS)):
        raise ValueError(f"stream {stream!r} is not a key a function may append to (Skylark's own)")
    return stream


class InputError(ClientError):
    """The event asks for something this function cannot do: answered ``status`` (400 by
    default; Knative does not redeliver a 4xx) with ``{"error": code, "detail": detail}``."""

    def __init__(self, code: str, detail: str, status: int = 400) -> None:
        super().__init__(status, code, detail)


class StateError(ClientError):
    """The input state exists but is not what this function expects (422)."""

    def __init__(self, code: str, detail: str) -> None:
        super().__init__(422, code, detail)


@dataclass(frozen=True)
class Emit:
    """An event to emit: its type and data. The SDK adds id, source, chain and the envelope."""

    type: str
    data: Any = None
    content_type: str | None = None
    extensions: Mapping[str, str] = field(default_factory=dict)


class _Clock:
    """Where the invocation's time went so far (milliseconds)."""

    def __init__(self) -> None:
        self.fetch_ms = 0.0
        self.store_ms = 0.0
        self.first_read: BundleRead | None = None


class StateAccess:
    """Writes to this node's Redis for the current chain (``ctx.state``)."""

    def __init__(self, ctx: "Context") -> None:
        self._ctx = ctx

    def put(self, fields: Mapping[str, bytes | str], *, function: str | None = None, replace: bool = True,
            ttl_s: int | None = None, single: bool = False) -> PutResult:
        """Write this chain's state of ``function`` (default: this function) as one versioned
        bundle (``single``: one key per field, the thesis's baseline mechanism). ``replace``
        drops fields the previous version had and this one has not."""
        ctx = self._ctx
        name = validate_name("function name", function or ctx.function)
        values = {k: v.encode() if isinstance(v, str) else v for k, v in fields.items()}
        store = ctx.node_state.store
        start = time.perf_counter()
        with _TRACER.start_as_current_span(f"write {name}", attributes={"skylark.function": name}) as span:
            try:
                write = store.put_single if single else store.put
                result = write(ctx.chain, name, values, replace=replace, ttl_s=ttl_s,
                               traceparent=current_traceparent().get("traceparent"))
            finally:
                ctx.clock.store_ms += (time.perf_counter() - start) * 1000
            span.set_attributes({"skylark.version": result.meta.version, "skylark.bytes": result.meta.size,
                                 "skylark.mechanism": "single" if single else "bundled"})
        ctx.written[name] = Located(store.node, result.meta.version, result.meta.size)
        return result

    def get(self, function: str | None = None) -> Bundle | None:
        """This chain's state of ``function`` (default: this function) on this node, or None."""
        ctx = self._ctx
        name = validate_name("function name", function or ctx.function)
        start = time.perf_counter()
        try:
            return ctx.node_state.store.get_bundle(ctx.chain, name)
        except BundleNotFound:
            return None
        finally:
            ctx.clock.fetch_ms += (time.perf_counter() - start) * 1000

    def append(self, stream: str, record: Mapping[str, str | bytes | int | float], *, maxlen: int = 10_000) -> str:
        """Append ``record`` to the Redis stream ``stream`` on this node (an audit log, alarms);
        returns the entry id."""
        check_stream(stream, self._ctx.node_state.store.change_stream)
        start = time.perf_counter()
        try:
            with redis_errors(f"append to {stream}"):
                entry_id = self._ctx.node_state.store.client.xadd(stream, dict(record), maxlen=maxlen,
                                                                  approximate=True)
        finally:
            self._ctx.clock.store_ms += (time.perf_counter() - start) * 1000
        return entry_id.decode() if isinstance(entry_id, bytes) else str(entry_id)

    def delete(self, function: str | None = None) -> int:
        """Delete this chain's state of ``function`` (default: this function); returns the
        tombstone's version (deletes propagate like writes)."""
        ctx = self._ctx
        name = validate_name("function name", function or ctx.function)
        start = time.perf_counter()
        with _TRACER.start_as_current_span(f"delete {name}", attributes={"skylark.function": name}):
            try:
                return ctx.node_state.store.delete(ctx.chain, name,
                                                   traceparent=current_traceparent().get("traceparent"))
            finally:
                ctx.clock.store_ms += (time.perf_counter() - start) * 1000


class Context:
    """One invocation: ``event``, ``data``, ``chain``, ``input``, ``read``, ``state``, ``emit``."""

    def __init__(self, *, event: BaseCloudEvent, chain: str, function: str, config: Config,
                 node_state: NodeState, reads: Sequence[str] | None, emits: Sequence[str],
                 located: Mapping[str, Located], logger: logging.Logger) -> None:
        self.event = event
        self.chain = chain
        self.function = function
        self.config = config
        self.node_state = node_state
        self.state = StateAccess(self)
        self.clock = _Clock()
        self.located = dict(located)
        self.written: dict[str, Located] = {}
        # Whose state this function reads and what it may emit, as its workflow declares (None:
        # no workflow, the input is the state the event announces).
        self.reads = tuple(reads) if reads is not None else None
        self.emits = tuple(emits)
        self._input: Bundle | None = None
        self.log = logging.LoggerAdapter(logger, {"chain": chain, "function": function, "event_id": event.get_id()})

    @property
    def node(self) -> str:
        """The node this invocation runs on."""
        return self.node_state.node

    @property
    def data(self) -> Any:
        """The event's data: a dict for JSON, bytes for anything else, None for none."""
        return self.event.get_data()

    def json(self) -> dict[str, Any]:
        """The event's data as a JSON object, without Skylark's envelope; 400 if it is not one."""
        data = self.data
        if data is None:
            return {}
        if not isinstance(data, Mapping):
            raise InputError("invalid_event_data", "event data must be a JSON object")
        return {k: v for k, v in data.items() if k != ENVELOPE_KEY}

    # -- reading state --------------------------------------------------------------------

    def _input_function(self) -> str:
        if self.reads is not None:
            if len(self.reads) != 1:
                raise RuntimeError(f"{self.function} reads {len(self.reads)} functions' state "
                                   f"({', '.join(self.reads) or 'none'}): use ctx.read(name)")
            return self.reads[0]
        producer = [fn for fn in self.located if fn != self.function]
        announced = self.event.get_extension("skylarkfunction")
        if announced is not None and str(announced) in self.located:
            return str(announced)
        if not producer:
            raise InputError("no_input_state", "the event announces no state to read (skylarkfunction, "
                             "skylarknode, skylarkversion)")
        return producer[-1]

    @property
    def input(self) -> Bundle:
        """The state of the function this one reads (the version the event announced), read
        where the policy put it; 404 when no node has it."""
        if self._input is None:
            self._input = self.read()
        return self._input

    def read(self, function: str | None = None, *, chain: str | None = None, node: str | None = None,
             min_version: int | None = None) -> Bundle:
        """The bundle of ``function`` (default: the input) for ``chain`` (default: this one).

        Read locally when it is here (waiting briefly for a pushed copy the policy sends
        here), else from the node that wrote it (``node``, or as the chain's events say).
        """
        function = validate_name("function name", function or self._input_function())
        chain = validate_name("chain id", chain or self.chain)
        where = self.located.get(function) if chain == self.chain else None
        origin = node or (where.node if where else None)
        if min_version is None:
            min_version = where.version if where and origin == where.node else 0
        start = time.perf_counter()
        with _TRACER.start_as_current_span(f"read {function}", attributes={
                "skylark.function": function, "skylark.origin": origin or "", "skylark.min_version": min_version}) as span:
            try:
                read = self.node_state.read(chain, function, origin, min_version, where.size if where else 0,
                                            reader=self.function)
            finally:
                self.clock.fetch_ms += (time.perf_counter() - start) * 1000
            span.set_attributes({"skylark.read.location": read.location, "skylark.read.node": read.node,
                                 "skylark.bytes": read.bundle.meta.size, "skylark.version": read.bundle.version,
                                 "skylark.waited_ms": round(read.waited_ms, 3)})
        if self.clock.first_read is None:
            self.clock.first_read = read
        return read.bundle

    # -- emitting -------------------------------------------------------------------------

    def emit(self, type: str, data: Any = None, *, content_type: str | None = None, **extensions: str) -> Emit:  # noqa: A002
        """The event to emit (return it from ``handle``): ``data`` a JSON object (the SDK adds
        its envelope under ``"skylark"``), bytes (with ``content_type``) or None."""
        if isinstance(data, Mapping) and ENVELOPE_KEY in data:
            raise ValueError(f"the key {ENVELOPE_KEY!r} of event data is Skylark's own")
        return Emit(type, data, content_type, {k: str(v) for k, v in extensions.items()})

