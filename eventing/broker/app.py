"""The local broker's HTTP face: ``POST /<namespace>/<broker>`` ingress, health and metrics.

``skylark serve broker`` runs :func:`create_app` under gunicorn, configured from the environment:

| env | default | meaning |
| --- | --- | --- |
| ``SKYLARK_BROKER_TRIGGERS`` | – | YAML file of Knative Trigger objects (multi-document); unset: the chart's Triggers (``eventing.wiring``) |
| ``SKYLARK_BROKER_SERVICES`` | ``{}`` | JSON map service name → base URL, to resolve ``subscriber.ref`` |
| ``SKYLARK_BROKER_NAMESPACE`` | ``default`` | namespace of the ingress path and of the Triggers served |
| ``SKYLARK_BROKER_NAME`` | the chart's ``eventing.brokerName`` | broker of the ingress path |
| ``SKYLARK_BROKER_WORKERS`` | ``8`` | delivery threads |
| ``SKYLARK_BROKER_MAX_IN_FLIGHT`` | ``10000`` | unfinished deliveries before ingress answers 503 |
| ``SKYLARK_CHART_VALUES`` | the repository's chart | values.yaml to read the Triggers from |

Ingress answers 202 once the event is accepted (deliveries happen later, on the worker pool), 400
with ``{"error", "detail"}`` for anything that is not a CloudEvent (``eventing.http.parse``: missing
or invalid attributes, structured bodies that are not bounded JSON), 404 for another broker's
path, 413 for a body above :data:`MAX_EVENT_BYTES` (before reading it when it has a
Content-Length, one byte past the limit when chunked) and 503 when too many deliveries are
unfinished. A binary-mode body is not parsed at all: it is forwarded as it came.
"""

from __future__ import annotations

import atexit
import json
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from flask import Blueprint, Flask, current_app, jsonify, request
from prometheus_client import CollectorRegistry

from eventing import wiring
from eventing.broker.dispatcher import BrokerBusy, Dispatcher, validate_services
from eventing.broker.triggers import Trigger, load_trigger_objects, parse_triggers
from eventing.http import MAX_ATTRIBUTES, MAX_EVENT_BYTES, InvalidEvent, parse
from skylark.serving.logs import configure_logging
from skylark.serving.tracing import configure_tracing
from skylark.serving.web import ClientError, health_blueprint, install_error_handlers, read_body
from skylark.state.errors import ConfigError
from skylark.state.numbers import parse_int

EXTENSION_KEY = "skylark_broker"
# What the broker adds to an event on its way (knativearrivaltime; on a dead letter also
# knativeerrorcode, knativeerrordest, knativeerrordata): ingress leaves room for them, so that
# whatever it accepts, subscribers and the dead-letter sink (parse's own limit) accept as well.
_OWN_EXTENSIONS = 4


@dataclass(frozen=True)
class BrokerConfig:
    namespace: str = "default"
    broker: str | None = None              # None: the chart's eventing.brokerName
    triggers_path: str | None = None       # None: the chart's Triggers
    chart_values_path: str | None = None
    services: Mapping[str, str] = field(default_factory=dict)
    workers: int = 8
    max_in_flight: int = 10_000
    log_level: str = "INFO"

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> "BrokerConfig":
        env = os.environ if env is None else env
        raw_services = env.get("SKYLARK_BROKER_SERVICES") or "{}"
        try:
            services = validate_services(json.loads(raw_services))
        except ValueError:
            raise ConfigError(f"SKYLARK_BROKER_SERVICES is not JSON: {raw_services[:80]!r}") from None
        return cls(
            namespace=env.get("SKYLARK_BROKER_NAMESPACE") or "default",
            broker=env.get("SKYLARK_BROKER_NAME") or None,
            triggers_path=env.get("SKYLARK_BROKER_TRIGGERS") or None,
            chart_values_path=env.get("SKYLARK_CHART_VALUES") or None,
            services=services,
            workers=_positive(env, "SKYLARK_BROKER_WORKERS", cls.workers),
            max_in_flight=_positive(env, "SKYLARK_BROKER_MAX_IN_FLIGHT", cls.max_in_flight),
            log_level=(env.get("SKYLARK_LOG_LEVEL") or "INFO").upper(),
        )


def _positive(env: Mapping[str, str], name: str, default: int) -> int:
    raw = env.get(name)
    if not raw:
        return default
    try:
        return parse_int(raw, name, minimum=1)  # ASCII digits: isdigit() also passes "²"
    except ValueError:
        raise ConfigError(f"{name}={raw[:40]!r} must be a positive integer") from None


def resolve_triggers(config: BrokerConfig,
                     triggers: Iterable[Mapping[str, Any] | Trigger] | None) -> tuple[list[Trigger], str]:
    """The Triggers to serve and the broker name: given ones, a YAML file, or the chart's wiring."""
    values: dict[str, Any] | None = None
    if triggers is None and config.triggers_path:
        try:
            text = Path(config.triggers_path).read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigError(f"SKYLARK_BROKER_TRIGGERS: cannot read {config.triggers_path}: {exc}") from None
        triggers = load_trigger_objects(text)
    elif triggers is None:
        values = wiring.load_chart_values(config.chart_values_path)
        triggers = wiring.triggers_from_values(values, namespace=config.namespace)
    parsed = parse_triggers(triggers)
    broker = config.broker
    if broker is None:
        if values is None and parsed:
            brokers = {t.broker for t in parsed}
            broker = brokers.pop() if len(brokers) == 1 else None
        if broker is None:
            values = values if values is not None else wiring.load_chart_values(config.chart_values_path)
            broker = wiring.broker_from_values(values)
    return parsed, broker


def ingress_blueprint() -> Blueprint:
    bp = Blueprint("broker_ingress", __name__)

    @bp.post("/<namespace>/<broker>")
    def ingress(namespace: str, broker: str):
        dispatcher: Dispatcher = current_app.extensions[EXTENSION_KEY]
        if (namespace, broker) != (dispatcher.namespace, dispatcher.broker):
            raise ClientError(404, "unknown_broker",
                              f"this is broker {dispatcher.namespace}/{dispatcher.broker}, not {namespace}/{broker}")
        body = read_body()  # MAX_EVENT_BYTES: 413 before reading, also for chunked bodies
        binary = any(k.lower().startswith("ce-") for k in request.headers.keys())
        try:
            # Routing needs only the attributes; a binary-mode body is forwarded as it came.
            event = parse(request.headers, body, decode_data=not binary,
                          max_attributes=MAX_ATTRIBUTES - _OWN_EXTENSIONS)
        except InvalidEvent as exc:
            raise ClientError(400, exc.code, exc.detail) from None
        try:
            dispatcher.ingest(event, body if binary else None)
        except BrokerBusy as exc:
            raise ClientError(503, "broker_busy", str(exc)) from None
        return "", 202

    @bp.get("/stats")
    def stats():
        dispatcher: Dispatcher = current_app.extensions[EXTENSION_KEY]
        return jsonify({**dispatcher.stats.as_dict(), "in_flight": dispatcher.in_flight,
                        "triggers": [t.name for t in dispatcher.triggers]})

    return bp


def create_app(settings: BrokerConfig | None = None, *,
               triggers: Iterable[Mapping[str, Any] | Trigger] | None = None,
               services: Mapping[str, str] | None = None) -> Flask:
    """The broker app. ``settings=None``: from the environment (and then drained on exit)."""
    from_env = settings is None
    config = BrokerConfig.from_env() if from_env else settings
    if from_env:
        configure_logging(config.log_level)
        configure_tracing("skylark-broker")
    parsed, broker = resolve_triggers(config, triggers)
    service_map = validate_services(services if services is not None else config.services)
    registry = CollectorRegistry()
    dispatcher = Dispatcher(parsed, service_map, namespace=config.namespace, broker=broker,
                            workers=config.workers, queue_size=config.max_in_flight, registry=registry)
    if from_env:
        # gunicorn's graceful stop: let accepted events finish (bounded) before the worker exits.
        atexit.register(dispatcher.close, 20.0)

    app = Flask(__name__)
    app.config["MAX_CONTENT_LENGTH"] = MAX_EVENT_BYTES
    app.extensions[EXTENSION_KEY] = dispatcher
    install_error_handlers(app)

    def ready() -> tuple[bool, dict]:
        ok = dispatcher.alive() and dispatcher.in_flight < dispatcher.max_in_flight
        return ok, {"in_flight": dispatcher.in_flight, "triggers": len(dispatcher.triggers)}

    app.register_blueprint(health_blueprint(ready, registry))
    app.register_blueprint(ingress_blueprint())
    return app
