"""Traces: every Skylark service continues the W3C trace of the event it handles (OpenTelemetry).

Configuration is OpenTelemetry's own, from the standard environment: spans are recorded and sent
with OTLP/HTTP when ``OTEL_EXPORTER_OTLP_ENDPOINT`` (or ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT``)
is set, batched as ``OTEL_BSP_*`` say, named by ``OTEL_SERVICE_NAME`` (default: the service);
``OTEL_SDK_DISABLED=true`` or no endpoint leaves the no-op tracer in place: then a span costs a
context copy, and the trace context still flows through unchanged (a service that does not
record keeps the caller's span as the parent of what it emits, so the trace stays one).

Between services the context travels as the CloudEvents Distributed Tracing extension
(``traceparent``, ``tracestate`` attributes, which Knative brokers pass on); across the change
stream it travels inside the change record (the ``traceparent`` field the writer puts there), so
the RedisStreamSource hop does not break the trace.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Mapping

from cloudevents.core.base import BaseCloudEvent
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

__all__ = ["configure_tracing", "context_of", "context_of_event", "current_traceparent", "flush", "tracer"]

_PROPAGATOR = TraceContextTextMapPropagator()
_lock = threading.Lock()
_provider = None  # the SDK provider this process set up, if any


def configure_tracing(service_name: str) -> bool:
    """Record and export spans when the environment asks for it (idempotent); True if it does."""
    global _provider
    env = os.environ
    endpoint = env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or env.get("OTEL_EXPORTER_OTLP_ENDPOINT")
    if not endpoint or env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    with _lock:
        if _provider is not None:
            return True
        # Imported only when tracing is on: the SDK and the exporter cost start-up time.
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter  # noqa: PLC0415
        from opentelemetry.sdk.resources import Resource  # noqa: PLC0415
        from opentelemetry.sdk.trace import TracerProvider  # noqa: PLC0415
        from opentelemetry.sdk.trace.export import BatchSpanProcessor  # noqa: PLC0415

        resource = Resource.create({"service.name": env.get("OTEL_SERVICE_NAME") or service_name})
        provider = TracerProvider(resource=resource)
        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
        trace.set_tracer_provider(provider)
        _provider = provider
        return True


def flush(timeout_ms: int = 5000) -> None:
    """Send what is batched (a worker about to exit)."""
    if _provider is not None:
        _provider.force_flush(timeout_ms)


def tracer(name: str) -> trace.Tracer:
    return trace.get_tracer(name)


def context_of(traceparent: object, tracestate: object = None) -> otel_context.Context:
    """The context a ``traceparent`` (and ``tracestate``) names; an empty one — a new trace —
    for a missing or malformed value (W3C: an invalid traceparent is ignored, not an error)."""
    carrier: dict[str, str] = {}
    if isinstance(traceparent, str):
        carrier["traceparent"] = traceparent
        if isinstance(tracestate, str) and tracestate:
            carrier["tracestate"] = tracestate
    return _PROPAGATOR.extract(carrier, context=otel_context.Context())


def context_of_event(event: BaseCloudEvent, headers: Mapping[str, str] | None = None) -> otel_context.Context:
    """The trace an event continues: the HTTP ``traceparent`` header it came with (the hop just
    before: a broker's delivery span), else its ``traceparent``/``tracestate`` extension
    attributes (the producer's span, which the CloudEvents extension keeps along the way)."""
    if headers is not None:
        lowered = {k.lower(): v for k, v in headers.items()}
        header = context_of(lowered.get("traceparent"), lowered.get("tracestate"))
        if trace.get_current_span(header).get_span_context().is_valid:
            return header
    return context_of(event.get_extension("traceparent"), event.get_extension("tracestate"))


def current_traceparent() -> dict[str, str]:
    """The current span's context as extension attributes (``traceparent``, ``tracestate``), to
    put on the events and change records that continue the trace; empty without a trace."""
    carrier: dict[str, str] = {}
    _PROPAGATOR.inject(carrier)
    return carrier
