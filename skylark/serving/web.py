"""Flask helpers every service shares: JSON errors, health/readiness endpoints, body limits.

A service's app factory calls :func:`install_error_handlers` and registers
:func:`health_blueprint`, so every service answers the same way to Knative's probes and to bad
input, and no client input can turn into an HTML 500 page or a traceback.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from flask import Blueprint, Flask, Response, jsonify
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from werkzeug.exceptions import HTTPException

from skylark.state.errors import (
    BundleNotFound,
    BundleTooLarge,
    ChecksumMismatch,
    DependencyUnavailable,
    InvalidName,
    SkylarkError,
    VersionConflict,
)

log = logging.getLogger(__name__)

# How core errors map to HTTP: the client's fault is 4xx, a dependency being down is 503 so that
# Knative retries the delivery.
STATUS_OF: dict[type[SkylarkError], int] = {
    InvalidName: 400,
    ChecksumMismatch: 400,
    BundleTooLarge: 413,
    BundleNotFound: 404,
    VersionConflict: 409,
    DependencyUnavailable: 503,
}


class ClientError(Exception):
    """Raised by a handler for bad input; rendered as ``{"error": code, "detail": detail}``."""

    def __init__(self, status: int, code: str, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.code = code
        self.detail = detail


def json_error(status: int, code: str, detail: str) -> tuple[Response, int]:
    return jsonify({"error": code, "detail": detail}), status


def install_error_handlers(app: Flask) -> None:
    @app.errorhandler(ClientError)
    def _client_error(exc: ClientError):
        return json_error(exc.status, exc.code, exc.detail)

    @app.errorhandler(SkylarkError)
    def _skylark_error(exc: SkylarkError):
        status = next((s for cls, s in STATUS_OF.items() if isinstance(exc, cls)), 400)
        if status >= 500:
            log.warning("dependency unavailable: %s", exc)
        return json_error(status, exc.code, str(exc))

    @app.errorhandler(HTTPException)
    def _http_error(exc: HTTPException):
        code = (exc.name or "error").lower().replace(" ", "_")
        return json_error(exc.code or 500, code, exc.description or exc.name)

    @app.errorhandler(Exception)
    def _unexpected(exc: Exception):
        # A bug, never client input: log it with its traceback, answer without one.
        log.exception("unhandled error")
        return json_error(500, "internal_error", "internal error; see the service log")


def health_blueprint(
    ready_check: Callable[[], tuple[bool, dict]] | None = None,
    registry: CollectorRegistry | None = None,
    alive_check: Callable[[], bool] | None = None,
) -> Blueprint:
    """``/healthz`` (liveness: ``alive_check``, which must not do I/O — a dependency being down
    is not a reason to restart the process), ``/readyz`` (``ready_check``), ``/metrics``."""
    bp = Blueprint("health", __name__)

    @bp.get("/healthz")
    def healthz():
        if alive_check is not None and not alive_check():
            return jsonify({"status": "dead"}), 503
        return jsonify({"status": "ok"})

    @bp.get("/readyz")
    def readyz():
        ok, detail = ready_check() if ready_check else (True, {})
        return jsonify({"status": "ready" if ok else "not_ready", **detail}), 200 if ok else 503

    if registry is not None:

        @bp.get("/metrics")
        def metrics():
            return Response(generate_latest(registry), mimetype=CONTENT_TYPE_LATEST)

    return bp
