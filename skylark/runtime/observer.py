"""The local cluster's observer: where the events that end a workflow go, so a person sees them.

A workflow ends with events no function of it accepts (``Workflow.terminal_types``: e.g. the
example's ``io.skylark.alarm.raised`` / ``.clear``). ``skylark up`` adds, on every node's
broker, a Trigger per such type to this sink. It keeps the last events of each chain in memory
(one process, one gunicorn worker; bounded), and ``skylark run`` / ``skylark demo`` ask for them:

- ``POST /``: a CloudEvent (any mode) → 202; a redelivery (same source + id) is kept once.
- ``GET /chains/<chain>?count=N&wait_ms=T``: the chain's events as JSON once at least ``N`` (1)
  arrived, waiting up to ``T`` ms (at most 60 s) for them → ``{"chain", "events": [{"type",
  "source", "id", "received_ms", "data"}...]}`` (200, possibly fewer than N after the wait).

In a Knative cluster you would point a Trigger of your own at any sink (e.g. event_display).
"""

from __future__ import annotations

import base64
import threading
import time
from typing import Any

from flask import Flask, Response, jsonify, request

from eventing import catalogue
from eventing.http import InvalidEvent, parse
from skylark.runtime.waitable import WaitableLists
from skylark.serving.logs import configure_logging
from skylark.serving.web import ClientError, health_blueprint, install_error_handlers, read_body
from skylark.state.names import validate_name
from skylark.state.numbers import parse_int

MAX_CHAINS = 10_000      # the oldest chain is forgotten first
MAX_EVENTS_PER_CHAIN = 64
MAX_WAIT_MS = 60_000


class Observed:
    """Events by chain, bounded, each (source, id) kept once, waitable (thread-safe)."""

    def __init__(self) -> None:
        self._events = WaitableLists(MAX_CHAINS, MAX_EVENTS_PER_CHAIN)
        self._ids: set[tuple[str, str]] = set()
        self._lock = threading.Lock()

    def add(self, chain: str, entry: dict[str, Any]) -> bool:
        key = (entry["source"], entry["id"])
        with self._lock:
            if key in self._ids:
                return False
            self._ids.add(key)
            for dropped in self._events.add(chain, [entry]):
                self._ids.difference_update((e["source"], e["id"]) for e in dropped)
            return True

    def wait(self, chain: str, count: int, wait_ms: int) -> list[dict[str, Any]]:
        return self._events.wait(chain, count, wait_ms)


def create_app() -> Flask:
    configure_logging()
    observed = Observed()
    app = Flask("skylark.observer")
    app.config["MAX_CONTENT_LENGTH"] = 16 * 1024 * 1024
    install_error_handlers(app)
    app.register_blueprint(health_blueprint())

    @app.post("/")
    def receive() -> Response:
        try:
            event = parse(request.headers, read_body())
        except InvalidEvent as exc:
            raise ClientError(400, exc.code, exc.detail) from None
        chain = event.get_extension(catalogue.EXT_CHAIN)
        if chain is None:
            raise ClientError(400, "missing_chain", "the event names no chain (skylarkchain)")
        try:
            chain = validate_name("chain id", chain)
        except ValueError as exc:
            raise ClientError(400, "invalid_chain", str(exc)) from None
        data = event.get_data()
        if isinstance(data, (bytes, bytearray)):
            data = {"data_base64": base64.b64encode(data).decode()}
        observed.add(chain, {"type": event.get_type(), "source": event.get_source(), "id": event.get_id(),
                             "received_ms": time.time_ns() // 1_000_000, "data": data})
        return Response(status=202)

    @app.get("/chains/<chain>")
    def chain_events(chain: str):
        try:
            chain = validate_name("chain id", chain)
            count = parse_int(request.args.get("count", "1"), "count", minimum=1, maximum=MAX_EVENTS_PER_CHAIN)
            wait_ms = parse_int(request.args.get("wait_ms", "0"), "wait_ms", minimum=0, maximum=MAX_WAIT_MS)
        except ValueError as exc:
            raise ClientError(400, "invalid_query", str(exc)) from None
        return jsonify({"chain": chain, "events": observed.wait(chain, count, wait_ms)})

    return app
