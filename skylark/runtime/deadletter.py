"""The local dead-letter sink: the stand-in for the chart's Knative ``event_display`` service.

Events that ran out of delivery retries end here; each is logged as one JSON line (type, source,
id, the broker's failure extensions, a data excerpt) and counted, which is what event_display
does in a cluster. ``skylark serve dead-letter`` runs it.
"""

from __future__ import annotations

import logging

from flask import Flask, jsonify, request
from prometheus_client import CollectorRegistry, Counter

from eventing.http import InvalidEvent, parse
from skylark.serving.logs import configure_logging
from skylark.serving.web import health_blueprint, install_error_handlers, json_error

log = logging.getLogger("skylark.runtime.deadletter")


def create_app(settings=None) -> Flask:
    configure_logging("INFO")
    app = Flask(__name__)
    registry = CollectorRegistry()
    received = Counter("skylark_dead_letters_total", "Events that ran out of delivery retries",
                       ["type"], registry=registry)
    install_error_handlers(app)
    app.register_blueprint(health_blueprint(registry=registry))

    @app.post("/")
    def dead_letter():
        try:
            event = parse(request.headers, request.get_data())
        except InvalidEvent as exc:
            return json_error(400, exc.code, exc.detail)
        attributes = {k: v for k, v in event.get_attributes().items() if k != "time"}
        data = event.get_data()
        excerpt = data[:200] if isinstance(data, (bytes, str)) else str(data)[:200]
        received.labels(event.get_type()).inc()
        log.warning("dead letter", extra={"event": attributes, "data_excerpt": str(excerpt)})
        return jsonify({"status": "recorded"}), 202

    return app
