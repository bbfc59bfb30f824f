"""The local dead-letter sink: the stand-in for the chart's Knative ``event_display`` service.

Events that ran out of delivery retries end here; each is logged as one JSON line (type, source,
id, the broker's failure extensions, a data excerpt) and counted, which is what event_display
does in a cluster. ``skylark serve dead-letter`` runs it.

It takes what a broker may send (``eventing.http.MAX_EVENT_BYTES``; 413 above, before reading a
body with a Content-Length) and does not decode a binary-mode body: only its first bytes are
logged, so hostile data (deep JSON, invalid UTF-8) is never parsed. Answers: 202, or 400 / 413
``{"error", "detail"}``.
"""

from __future__ import annotations

import logging

from flask import Flask, jsonify, request
from prometheus_client import CollectorRegistry, Counter

from eventing.http import MAX_EVENT_BYTES, InvalidEvent, parse
from skylark.serving.limits import BoundedLabels
from skylark.serving.logs import configure_logging
from skylark.serving.web import health_blueprint, install_error_handlers, json_error, read_body

log = logging.getLogger("skylark.runtime.deadletter")


def create_app(settings=None) -> Flask:
    configure_logging("INFO")
    app = Flask(__name__)
    app.config["MAX_CONTENT_LENGTH"] = MAX_EVENT_BYTES
    registry = CollectorRegistry()
    received = Counter("skylark_dead_letters_total", "Events that ran out of delivery retries",
                       ["type"], registry=registry)
    type_label = BoundedLabels()  # clients choose event types: a bounded number of series
    install_error_handlers(app)
    app.register_blueprint(health_blueprint(registry=registry))

    @app.post("/")
    def dead_letter():
        try:
            event = parse(request.headers, read_body(), decode_data=False)
        except InvalidEvent as exc:
            return json_error(400, exc.code, exc.detail)
        attributes = {k: v for k, v in event.get_attributes().items() if k != "time"}
        data = event.get_data()
        if isinstance(data, (bytes, bytearray)):
            excerpt = bytes(data[:200]).decode("utf-8", "replace")
        else:  # structured mode: JSON data, bounded by eventing.http.parse
            excerpt = (data if isinstance(data, str) else str(data))[:200]
        received.labels(type_label(event.get_type())).inc()
        log.warning("dead letter", extra={"event": attributes, "data_excerpt": excerpt})
        return jsonify({"status": "recorded"}), 202

    return app
