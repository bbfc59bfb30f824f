"""Flask helpers every service shares: JSON errors, health/readiness endpoints, body limits.

A service's app factory calls :func:`install_error_handlers` and registers
:func:`health_blueprint`, so every service answers the same way to Knative's probes and to bad
input, and no client input can turn into an HTML 500 page or a traceback.

Request bodies are read with :func:`read_body`, never ``request.get_data()`` directly: it answers
413 *before reading* a body whose Content-Length is above the app's ``MAX_CONTENT_LENGTH``, and
stops reading a body without one (``Transfer-Encoding: chunked``) one byte past the limit — where
werkzeug's own stream would silently hand back the first ``MAX_CONTENT_LENGTH`` bytes, truncated.
An app that sets no limit gets :data:`DEFAULT_MAX_BODY_BYTES` from :func:`install_error_handlers`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from flask import Blueprint, Flask, Response, current_app, jsonify, request
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

# The body limit of a service that sets none itself (its largest legitimate body is far below).
DEFAULT_MAX_BODY_BYTES = 1024 * 1024
_READ_CHUNK = 64 * 1024

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


def too_large(limit: int, size: int | None = None) -> ClientError:
    said = f" ({size} bytes)" if size is not None else ""
    return ClientError(413, "request_entity_too_large",
                       f"the request body{said} is larger than this service accepts ({limit} bytes)")


def read_body(limit: int | None = None) -> bytes:
    """The current request's body, at most ``limit`` bytes (default: the app's
    ``MAX_CONTENT_LENGTH``); a 413 :class:`ClientError` above it.

    With a Content-Length the check happens before a single byte is read. Without one (chunked
    transfer), the body is read in 64 KiB pieces and refused as soon as it passes the limit, so
    a never-ending body costs at most ``limit`` bytes of memory. A body the server cannot read
    (a malformed chunk, a client gone before its Content-Length was sent) is a 400.
    """
    if limit is None:
        limit = current_app.config.get("MAX_CONTENT_LENGTH")
    length = request.content_length
    if length is not None and limit is not None and length > limit:
        raise too_large(limit, length)
    try:
        if length is not None:
            return request.get_data(cache=False)  # werkzeug reads exactly Content-Length bytes
        return _read_unsized(request.environ, limit)
    except HTTPException:
        raise  # werkzeug's ClientDisconnected (400), a 413 of ours: answered as they are
    except ClientError:
        raise
    except Exception as exc:  # noqa: BLE001 - the server's reader fails on the client's bytes
        # gunicorn raises its own parse errors (InvalidChunkSize, NoMoreData...) from the body
        # stream, werkzeug an OSError: the client sent a body that is not well-formed HTTP.
        raise ClientError(400, "malformed_body",
                          f"the request body could not be read: {type(exc).__name__}: {str(exc)[:200]}") from None


def _read_unsized(environ: dict, limit: int | None) -> bytes:
    if "wsgi.input_terminated" not in environ:
        # Without a length and without a server that delimits the stream (as gunicorn and
        # werkzeug do for chunked bodies) there is no body one could read safely.
        return b""
    stream = environ["wsgi.input"]
    chunks: list[bytes] = []
    total = 0
    while True:
        want = _READ_CHUNK if limit is None else min(_READ_CHUNK, limit + 1 - total)
        chunk = stream.read(want)
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)
        total += len(chunk)
        if limit is not None and total > limit:
            raise too_large(limit)


def install_error_handlers(app: Flask) -> None:
    if app.config.get("MAX_CONTENT_LENGTH") is None:
        # Every service has a body limit, also one whose factory forgot to set its own.
        app.config["MAX_CONTENT_LENGTH"] = DEFAULT_MAX_BODY_BYTES

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
