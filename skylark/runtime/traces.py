"""The local cluster's trace collector: an OTLP/HTTP receiver that keeps spans in memory.

With ``skylark up --trace`` (and ``skylark demo --trace``, ``skylark run --trace``) every service
of the local cluster exports its spans here (``OTEL_EXPORTER_OTLP_ENDPOINT``, batched for
100 ms), and the commands draw an invocation's trace as a waterfall
(:mod:`skylark.runtime.waterfall`) from the spans themselves. In a real cluster you point the
same variables at your collector (Jaeger, Tempo, an OpenTelemetry Collector).

- ``POST /v1/traces``: an OTLP ``ExportTraceServiceRequest`` (``application/x-protobuf``,
  optionally gzip) → 200 with an empty ``ExportTraceServiceResponse``; 400 / 415 otherwise.
- ``GET /traces/<trace id>?min_spans=N&wait_ms=T``: the trace's spans as JSON once at least N
  arrived (waiting up to T ms, at most 60 s), oldest first.

One process, one worker (the spans live in it); the oldest traces are forgotten first.
"""

from __future__ import annotations

import gzip
import re
import zlib
from typing import Any

from flask import Flask, Response, jsonify, request
from google.protobuf.message import DecodeError
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)

from skylark.runtime.waitable import WaitableLists
from skylark.serving.logs import configure_logging
from skylark.serving.web import ClientError, health_blueprint, install_error_handlers, read_body
from skylark.state.numbers import parse_int

MAX_TRACES = 2000
MAX_SPANS_PER_TRACE = 2000
MAX_WAIT_MS = 60_000
_TRACE_ID = re.compile(r"[0-9a-f]{32}")


def _value(any_value) -> Any:  # noqa: ANN001 - an OTLP AnyValue
    kind = any_value.WhichOneof("value")
    if kind is None:
        return None
    if kind == "array_value":
        return [_value(v) for v in any_value.array_value.values]
    if kind == "kvlist_value":
        return {kv.key: _value(kv.value) for kv in any_value.kvlist_value.values}
    if kind == "bytes_value":
        return any_value.bytes_value.hex()
    return getattr(any_value, kind)


def spans_of(export: ExportTraceServiceRequest) -> list[dict[str, Any]]:
    """The spans of an export, as plain dicts (ids in hex, times in ns since the epoch)."""
    out = []
    for resource_spans in export.resource_spans:
        resource = {kv.key: _value(kv.value) for kv in resource_spans.resource.attributes}
        service = str(resource.get("service.name", "?"))
        for scope_spans in resource_spans.scope_spans:
            for span in scope_spans.spans:
                out.append({
                    "trace_id": span.trace_id.hex(), "span_id": span.span_id.hex(),
                    "parent_id": span.parent_span_id.hex() or None, "name": span.name, "service": service,
                    "start_ns": span.start_time_unix_nano, "end_ns": span.end_time_unix_nano,
                    "kind": span.kind, "status": span.status.code,
                    "attributes": {kv.key: _value(kv.value) for kv in span.attributes},
                })
    return out


class SpanStore:
    """Spans by trace id, bounded, waitable (thread-safe)."""

    def __init__(self) -> None:
        self._spans = WaitableLists(MAX_TRACES, MAX_SPANS_PER_TRACE)

    def add(self, spans: list[dict[str, Any]]) -> None:
        by_trace: dict[str, list[dict[str, Any]]] = {}
        for span in spans:
            by_trace.setdefault(span["trace_id"], []).append(span)
        for trace_id, some in by_trace.items():
            self._spans.add(trace_id, some)

    def wait(self, trace_id: str, min_spans: int, wait_ms: int) -> list[dict[str, Any]]:
        return sorted(self._spans.wait(trace_id, min_spans, wait_ms), key=lambda s: s["start_ns"])


def create_app() -> Flask:
    configure_logging()
    store = SpanStore()
    app = Flask("skylark.traces")
    app.config["MAX_CONTENT_LENGTH"] = 16 * 1024 * 1024
    install_error_handlers(app)
    app.register_blueprint(health_blueprint())

    @app.post("/v1/traces")
    def export() -> Response:
        if not request.content_type or not request.content_type.startswith("application/x-protobuf"):
            raise ClientError(415, "unsupported_media_type", "OTLP/HTTP with application/x-protobuf only")
        body = read_body()
        encoding = (request.headers.get("Content-Encoding") or "").lower()
        try:
            if encoding == "gzip":
                body = gzip.decompress(body)
            elif encoding == "deflate":
                body = zlib.decompress(body)
            message = ExportTraceServiceRequest()
            message.ParseFromString(body)
        except (OSError, zlib.error, DecodeError, EOFError) as exc:
            raise ClientError(400, "invalid_export", f"not an OTLP trace export: {exc}") from None
        store.add(spans_of(message))
        return Response(ExportTraceServiceResponse().SerializeToString(), status=200,
                        content_type="application/x-protobuf")

    @app.get("/traces/<trace_id>")
    def trace(trace_id: str):
        if _TRACE_ID.fullmatch(trace_id) is None:
            raise ClientError(400, "invalid_trace_id", "a trace id is 32 lowercase hex characters")
        try:
            min_spans = parse_int(request.args.get("min_spans", "1"), "min_spans", minimum=1, maximum=MAX_SPANS_PER_TRACE)
            wait_ms = parse_int(request.args.get("wait_ms", "0"), "wait_ms", minimum=0, maximum=MAX_WAIT_MS)
        except ValueError as exc:
            raise ClientError(400, "invalid_query", str(exc)) from None
        return jsonify({"trace_id": trace_id, "spans": store.wait(trace_id, min_spans, wait_ms)})

    return app
