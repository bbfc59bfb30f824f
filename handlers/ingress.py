"""The CloudEvent ingress: ``POST /`` routes by event type; ``/stream``, ``/bundle``, ``/warmup``
accept only their own type (for Knative Triggers that point at a sub-path).

Answers: 202 with a JSON report when done; 400 ``{"error", "detail"}`` for anything that is not
a well-formed event of a known type (Knative does not retry a 400); with a signing key, 401
``missing_signature`` for an unsigned propagation event and 403 ``invalid_signature`` for one
whose signature does not match; 413 above the size limits (the request body, checked before it
is read; the bundle); 503 when the local Redis, a neighbour's Redis needed for a claim check, a
target broker or the neighbors service is down (Knative retries).
"""

from __future__ import annotations

from collections.abc import Callable

from flask import Blueprint, current_app, jsonify, request
from cloudevents.core.base import BaseCloudEvent

from eventing import catalogue
from eventing.http import InvalidEvent, parse
from handlers.bundle_event import is_binary
from handlers.metrics import type_label
from skylark.serving import limits
from skylark.serving.web import ClientError, read_body
from skylark.state.errors import SkylarkError

EXTENSION = "skylark_handlers"

# Event type → (sub-path, name of the service method in the app's Services).
ROUTES = {
    catalogue.REDIS_STREAM: "stream",
    catalogue.BUNDLE_PROPAGATED: "bundle",
    catalogue.PING: "warmup",
}

bp = Blueprint("events", __name__)


def _parse_request() -> BaseCloudEvent:
    body = read_body()  # MAX_CONTENT_LENGTH: 413 before reading, also for chunked bodies
    try:
        return parse(request.headers, body)
    except InvalidEvent as exc:
        raise ClientError(400, exc.code, exc.detail) from None


def _check_raw_data(event: BaseCloudEvent) -> None:
    """Data left undecoded (a non-JSON content type) is still JSON to every handler here, which
    decode it themselves; bound its nesting first, so that none of them can hit a
    RecursionError on it (a 500) whatever parser it uses."""
    data = event.get_data()
    if is_binary(event):
        return  # the binary propagation event: a frame of bytes, no JSON (bundle_event.py)
    if isinstance(data, (bytes, bytearray, str)):
        try:
            limits.check_depth(bytes(data) if isinstance(data, bytearray) else data)
        except ValueError as exc:
            raise InvalidEvent("malformed_data", f"event data: {exc}") from None


def _handle(event: BaseCloudEvent, route: str):
    services = current_app.extensions[EXTENSION]
    handler: Callable = services.handler(route)
    counter = services.metrics.events
    label = type_label(event.get_type())
    try:
        _check_raw_data(event)
        report = handler(event, request.headers)  # the headers: the trace of the hop before
    except InvalidEvent as exc:
        counter.labels(label, exc.code).inc()
        raise ClientError(400, exc.code, exc.detail) from None
    except ClientError as exc:
        counter.labels(label, exc.code).inc()
        raise
    except ConnectionError as exc:
        # StoreUnavailable, NeighborsUnavailable...: a dependency is down, Knative should retry.
        code = getattr(exc, "code", "dependency_unavailable")
        counter.labels(label, code).inc()
        raise ClientError(503, code, str(exc)) from None
    except SkylarkError as exc:
        counter.labels(label, exc.code).inc()
        raise  # skylark.serving.web maps it (400 invalid name / checksum, 413 too large...)
    body = report.to_dict()
    counter.labels(label, body["outcome"]).inc()
    return jsonify(body), 202


@bp.post("/")
def ingress():
    event = _parse_request()
    route = ROUTES.get(event.get_type())
    if route is None:
        current_app.extensions[EXTENSION].metrics.events.labels("other", "unknown_event_type").inc()
        raise ClientError(400, "unknown_event_type",
                          f"event type {event.get_type()!r} is not handled here; expected one of "
                          f"{', '.join(ROUTES)}")
    return _handle(event, route)


def _sub_path(route: str, event_type: str):
    def view():
        event = _parse_request()
        if event.get_type() != event_type:
            current_app.extensions[EXTENSION].metrics.events.labels(
                type_label(event.get_type()), "wrong_event_type").inc()
            raise ClientError(400, "wrong_event_type",
                              f"/{route} takes {event_type} events, not {event.get_type()!r}")
        return _handle(event, route)

    view.__name__ = f"ingress_{route}"
    return view


for _type, _route in ROUTES.items():
    bp.add_url_rule(f"/{_route}", view_func=_sub_path(_route, _type), methods=["POST"])
