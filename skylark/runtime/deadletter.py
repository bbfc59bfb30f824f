"""The local dead-letter sink: where the brokers' deliveries that ran out of retries end.

Each event is logged as one JSON line (type, source, id, the broker's failure extensions, a data
excerpt) and counted, as the chart's Knative ``event_display`` does, and — posted to
``/nodes/<node>`` by that node's broker — kept on the node's Redis with its reason, the subscriber
that failed and the time, to be replayed (``skylark.runtime.deadletters``, ``skylark deadletter``).
``SKYLARK_DEADLETTER_STORES`` maps node names to their Redis URLs (the local cluster sets it).
``skylark serve dead-letter`` runs it.

It takes what a broker may send (``eventing.http.MAX_EVENT_BYTES``; 413 above, before reading a
body with a Content-Length) and does not decode a binary-mode body: only its first bytes are
logged, so hostile data (deep JSON, invalid UTF-8) is never parsed. Answers: 202, or 400 / 413
``{"error", "detail"}``.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import os

from flask import Flask, jsonify, request
from prometheus_client import CollectorRegistry, Counter

from eventing.http import MAX_EVENT_BYTES, InvalidEvent, parse
from skylark.serving.limits import BoundedLabels
from skylark.serving.logs import configure_logging
from skylark.runtime.deadletters import DeadLetters
from skylark.serving.web import health_blueprint, install_error_handlers, json_error, read_body
from skylark.state.errors import ConfigError
from skylark.state.names import NAME_PATTERN
from skylark.state.redis_client import connect

log = logging.getLogger("skylark.runtime.deadletter")


def _stores(raw: str) -> dict[str, DeadLetters]:
    if not raw:
        return {}
    try:
        mapping = json.loads(raw)
    except ValueError as exc:
        raise ConfigError(f"SKYLARK_DEADLETTER_STORES is not JSON: {exc}") from None
    if not isinstance(mapping, dict) or not all(isinstance(v, str) and NAME_PATTERN.fullmatch(k)
                                                for k, v in mapping.items()):
        raise ConfigError("SKYLARK_DEADLETTER_STORES must be a JSON object {node: redis URL}")
    return {node: DeadLetters(connect(url), node) for node, url in mapping.items()}


def _reason(event) -> str:  # noqa: ANN001
    raw = event.get_extension("knativeerrordata")
    if raw is None:
        return ""
    try:
        return base64.b64decode(str(raw), validate=True).decode("utf-8", "replace")[:1000]
    except (binascii.Error, ValueError):
        return str(raw)[:1000]


def create_app(settings=None) -> Flask:
    configure_logging("INFO")
    stores = _stores(os.environ.get("SKYLARK_DEADLETTER_STORES", ""))
    app = Flask(__name__)
    app.config["MAX_CONTENT_LENGTH"] = MAX_EVENT_BYTES
    registry = CollectorRegistry()
    received = Counter("skylark_dead_letters_total", "Events that ran out of delivery retries",
                       ["type"], registry=registry)
    type_label = BoundedLabels()  # clients choose event types: a bounded number of series
    install_error_handlers(app)
    app.register_blueprint(health_blueprint(registry=registry))

    @app.post("/", defaults={"node": None})
    @app.post("/nodes/<node>")
    def dead_letter(node: str | None):
        body = read_body()
        try:
            event = parse(request.headers, body, decode_data=False)
        except InvalidEvent as exc:
            return json_error(400, exc.code, exc.detail)
        store = stores.get(node) if node else None
        if node and store is None:
            return json_error(404, "unknown_node", f"no dead-letter store for node {node!r}")
        if store is not None:
            kept = {k: v for k, v in request.headers.items() if k.lower().startswith("ce-") or k.lower() == "content-type"}
            store.record(event_id=event.get_id(), source=event.get_source(), event_type=event.get_type(),
                         headers=kept, body=body, dest=str(event.get_extension("knativeerrordest") or ""),
                         code=str(event.get_extension("knativeerrorcode") or ""), reason=_reason(event))
        attributes = {k: v for k, v in event.get_attributes().items() if k != "time"}
        data = event.get_data()
        if isinstance(data, (bytes, bytearray)):
            excerpt = bytes(data[:200]).decode("utf-8", "replace")
        else:  # structured mode: JSON data, bounded by eventing.http.parse
            excerpt = (data if isinstance(data, str) else str(data))[:200]
        received.labels(type_label(event.get_type())).inc()
        log.warning("dead letter", extra={"event": attributes, "data_excerpt": excerpt, "node": node,
                                          "kept": store is not None})
        return jsonify({"status": "recorded"}), 202

    return app
