"""A :class:`~skylark.sdk.function.Function` as a Knative service: ``create_app(function)``.

``POST /`` takes a CloudEvent (binary or structured mode) and answers:

- 202, empty body: the result event(s) were published (to ``K_SINK``, or to the broker of the
  node where the consumer of the event runs when the workflow pins it there); 204: the function
  emitted nothing; 200 with the result event (binary mode) when there is no sink (the Knative
  reply convention). Successful answers carry no JSON body: a Knative broker takes a non-empty
  reply that is not a CloudEvent for a failed delivery.
- 4xx JSON ``{"error", "detail"}`` for bad input (400), missing state (404), a body too large
  (413), unusable input state (422); 503 when Redis, a peer or the sink is down (Knative
  redelivers; the result keeps its id, so the next stage drops the duplicate).

``GET /healthz`` (``alive``), ``/readyz`` (the node's Redis and ``ready``), ``/metrics``.

``skylark serve function MODULE:FACTORY`` runs it under gunicorn; the app factory for that is
:func:`create_app` with no arguments, which reads :class:`FunctionSettings` from the environment.
"""

from __future__ import annotations

import importlib
import logging
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from cloudevents.core.base import BaseCloudEvent
from flask import Flask, Response, request
from opentelemetry.trace import SpanKind
from prometheus_client import CollectorRegistry, Counter, Histogram

from eventing import catalogue
from eventing.http import InvalidEvent, new_event, parse, to_binary
from eventing.publisher import Delivery, Publisher
from skylark.sdk.config import Config
from skylark.sdk.context import INLINE, Context, Emit
from skylark.sdk.envelope import (
    ENVELOPE_KEY,
    StageTrace,
    chain_of,
    envelope,
    located_states,
    result_id,
    trace_of,
)
from skylark.sdk.function import Function
from skylark.sdk.node import NodeState, default_peers, default_placement
from skylark.serving.logs import configure_logging
from skylark.serving.metrics import exposition_registry
from skylark.serving.tracing import configure_tracing, context_of_event, current_traceparent, tracer
from skylark.serving.web import ClientError, health_blueprint, install_error_handlers, read_body
from skylark.state.dedupe import Deduper
from skylark.state.errors import ConfigError
from skylark.state.peers import PeerDirectory
from skylark.state.settings import Settings, env_int
from skylark.workflow import FunctionSpec, Workflow, workflow_from_env

__all__ = ["FunctionSettings", "create_app", "load_function"]

log = logging.getLogger("skylark.function")
EXTENSION = "skylark.function"

ENV_ENTRY = "SKYLARK_FUNCTION"
ENV_NAME = "SKYLARK_FUNCTION_NAME"
# How long one delivery may hold an event before a redelivery may handle it again: Knative
# Serving's default request timeout (a Service's timeoutSeconds), which no delivery outlives.
CLAIM_LEASE_S = 300


@dataclass(frozen=True)
class FunctionSettings:
    """How one function process runs; :meth:`from_env` reads it from the environment.

    ``SKYLARK_FUNCTION`` (``entry``, MODULE:FACTORY), ``SKYLARK_FUNCTION_NAME`` (``name``: its
    name in the workflow, default the function's own ``name``), ``SKYLARK_WORKFLOW``
    (``workflow``: a file or the declaration itself), ``SKYLARK_MAX_REQUEST_BYTES``, the core
    ``SKYLARK_*`` settings, and ``SKYLARK_<NAME>_<KEY>`` for the function's config.
    """

    core: Settings = field(default_factory=Settings)
    entry: str | None = None
    name: str | None = None
    workflow: Workflow | None = None
    max_request_bytes: int | None = None
    config: Mapping[str, str] = field(default_factory=dict)  # overrides of the declared config
    env: Mapping[str, str] = field(default_factory=dict, repr=False)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> "FunctionSettings":
        env = dict(os.environ if env is None else env)
        return cls(
            core=Settings.from_env(env),
            entry=env.get(ENV_ENTRY) or None,
            name=env.get(ENV_NAME) or None,
            workflow=workflow_from_env(env),
            max_request_bytes=env_int(env, "SKYLARK_MAX_REQUEST_BYTES", None, 1024),
            env=env,
        )


def load_function(entry: str) -> Function:
    """The function an entry point ``MODULE:FACTORY`` makes (a Function subclass, or a callable
    returning a Function); :class:`ConfigError` saying what is wrong otherwise."""
    module_name, sep, attr = entry.partition(":")
    if not sep or not module_name or not attr:
        raise ConfigError(f"function entry {entry!r} must be MODULE:FACTORY, e.g. mypkg.functions:Score")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigError(f"function entry {entry!r}: cannot import {module_name}: {exc}") from None
    factory = getattr(module, attr, None)
    if not callable(factory):
        raise ConfigError(f"function entry {entry!r}: {module_name} has no callable {attr}")
    function = factory()
    if not isinstance(function, Function):
        raise ConfigError(f"function entry {entry!r} made a {type(function).__name__}, not a skylark.sdk.Function")
    return function


def _normalise(result: object, function: str) -> list[Emit]:
    if result is None:
        return []
    if isinstance(result, Emit):
        return [result]
    if isinstance(result, Sequence) and all(isinstance(e, Emit) for e in result):
        return list(result)
    raise TypeError(f"{function}.handle must return ctx.emit(...), a list of them, or None; "
                    f"got {type(result).__name__}")


class _Service:
    """Everything one app needs per request; built once by :func:`create_app`."""

    def __init__(self, function: Function, settings: FunctionSettings, peers: PeerDirectory | None,
                 publisher: Publisher | None, placement=None) -> None:  # noqa: ANN001
        core = settings.core
        self.function = function
        self.name = settings.name or function.name
        if not self.name:
            raise ConfigError(f"{type(function).__name__} has no name: set its name attribute or {ENV_NAME}")
        self.workflow = settings.workflow
        self.spec: FunctionSpec | None = None
        if self.workflow is not None:
            self.spec = self.workflow.function(self.name)
            if self.spec is None:
                raise ConfigError(f"function {self.name!r} is not in workflow {self.workflow.name!r} "
                                  f"({', '.join(self.workflow.names)}): set {ENV_NAME}")
        self.accepts = tuple(self.spec.accepts if self.spec else function.accepts)
        self.reads = self.spec.reads if self.spec else None
        self.emits = tuple(self.spec.emits if self.spec else function.emits)
        self.sink = core.broker_url
        self.config = Config.merged(self.name, self.spec.config if self.spec else {}, settings.env, settings.config)
        self.max_request_bytes = settings.max_request_bytes or function.max_request_bytes

        self.closers: list[Callable[[], None]] = []
        try:
            self._open(function, settings, peers, publisher, placement)
        except BaseException:
            self.stop()  # what was opened before the failure (the placement's HTTP client...)
            raise

        self.tracer = tracer("skylark.sdk")
        self.registry = CollectorRegistry()
        self.events = Counter("skylark_function_events", "Events handled, by outcome",
                              ["function", "outcome"], registry=self.registry)
        self.stage_seconds = Histogram(
            "skylark_function_stage_seconds", "Time per stage of an invocation", ["function", "stage"],
            registry=self.registry,
            buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10))

    def _open(self, function: Function, settings: FunctionSettings, peers: PeerDirectory | None,
              publisher: Publisher | None, placement) -> None:  # noqa: ANN001
        """Start the function and open what it reads and writes through (closed by :meth:`stop`)."""
        core = settings.core
        if placement is None:
            placement, close_placement = default_placement(core, self.workflow, settings.env)
            if close_placement is not None:
                self.closers.append(close_placement)
        try:
            function.start(self.config)
        except ConfigError:
            raise
        except ValueError as exc:  # a config value the function's own checks refuse
            raise ConfigError(f"{self.name}: {exc}") from None
        self.closers.append(function.stop)
        self.state = NodeState(core, peers or default_peers(core, settings.env), placement)
        self.closers.append(self.state.close)
        self.publisher = publisher or Publisher()
        if publisher is None:
            self.closers.append(self.publisher.close)
        self.deduper = Deduper(self.state.store.client, prefix=f"skylark:fn:{self.name}:seen:")

    # -- probes ---------------------------------------------------------------------------

    def alive(self) -> bool:
        return bool(self.function.alive())

    def ready(self) -> tuple[bool, dict[str, Any]]:
        ok, detail = self.state.ready()
        own = self.function.ready()
        if isinstance(own, tuple):
            own, extra = own
            detail = {**detail, **extra}
        return ok and bool(own), {**detail, "function": self.name}

    def stop(self) -> None:
        for close in reversed(self.closers):
            close()
        self.closers.clear()

    # -- one event ------------------------------------------------------------------------

    def handle(self, event: BaseCloudEvent, headers: Mapping[str, str] | None = None) -> Response:
        """One event, in a span that continues its trace (what the function reads and writes
        are child spans; the events it emits carry this span as their parent)."""
        with self.tracer.start_as_current_span(
                self.name, context=context_of_event(event, headers), kind=SpanKind.CONSUMER,
                attributes={"skylark.function": self.name, "skylark.node": self.state.node,
                            "cloudevents.event_type": event.get_type(), "cloudevents.event_id": event.get_id()}) as span:
            return self._handle(event, span)

    def _handle(self, event: BaseCloudEvent, span) -> Response:  # noqa: ANN001
        if self.accepts and event.get_type() not in self.accepts:
            raise ClientError(400, "unsupported_event_type",
                              f"{self.name} accepts {', '.join(self.accepts)}, not {event.get_type()!r}")
        data = event.get_data()
        chain = chain_of(event, data)
        trace = trace_of(data)
        located = located_states(event, data)
        span.set_attribute("skylark.chain", chain)
        # A redelivered input whose result was already published is acknowledged, not redone
        # (no second state version, no second record). In reply mode the result travels in the
        # answer, which may have been lost: there the input is handled again.
        if self.deduper.seen(event.get_source(), event.get_id()):
            self.events.labels(self.name, "duplicate").inc()
            return Response(status=202)
        # A redelivery while the first delivery is still at work (the broker stopped waiting
        # for its answer) must not run the function a second time beside it: 429 is retried
        # with backoff, and by then the first has marked the event done (a 202 above).
        if not self.deduper.claim(event.get_source(), event.get_id(), CLAIM_LEASE_S):
            self.events.labels(self.name, "in_progress").inc()
            raise ClientError(429, "in_progress", "this event is being handled by an earlier delivery; retry later")
        try:
            return self._invoke(event, span, chain, trace, located)
        finally:
            self.deduper.release(event.get_source(), event.get_id())

    def _invoke(self, event: BaseCloudEvent, span, chain: str, trace: list[dict[str, Any]],  # noqa: ANN001
                located: dict[str, Any]) -> Response:
        """Run the function on an event this delivery holds the claim of, publish what it emits."""
        # Where the results will go, known before any state is written: a consumer whose broker
        # nobody knows is a 503 now, not after a write that every redelivery would repeat.
        for event_type in self.emits:
            self._destinations(event_type)
        ctx = Context(event=event, chain=chain, function=self.name, config=self.config, node_state=self.state,
                      reads=self.reads, emits=self.emits, located=located, logger=log)
        start = time.perf_counter()
        emits = _normalise(self.function.handle(ctx), self.name)
        total_ms = (time.perf_counter() - start) * 1000
        stage = self._stage(ctx, total_ms)
        for name, ms in (("fetch", stage.fetch_ms), ("compute", stage.compute_ms), ("store", stage.store_ms)):
            self.stage_seconds.labels(self.name, name).observe(ms / 1000)
        outcome = emits[0].type if emits else "no_event"
        span.set_attributes({f"skylark.{k}": v for k, v in stage.to_dict().items() if v is not None and k != "function"}
                            | {"skylark.outcome": outcome})
        log.info("%s %s", self.name, outcome, extra={
            "chain": chain, "event_id": event.get_id(), "function": self.name, "outcome": outcome,
            **stage.to_dict()})
        events = [self._event(e, i, ctx, event, stage, trace) for i, e in enumerate(emits)]
        response = self._deliver(events)
        self.events.labels(self.name, outcome).inc()
        if response.status_code != 200:
            self.deduper.mark(event.get_source(), event.get_id())
        return response

    def _stage(self, ctx: Context, total_ms: float) -> StageTrace:
        read = ctx.clock.first_read
        own = ctx.written.get(self.name)
        return StageTrace(
            function=self.name, node=ctx.node,
            fetch_location=read.location if read else INLINE, fetch_node=read.node if read else ctx.node,
            fetch_ms=ctx.clock.fetch_ms, waited_ms=read.waited_ms if read else 0.0,
            compute_ms=max(0.0, total_ms - ctx.clock.fetch_ms - ctx.clock.store_ms),
            store_ms=ctx.clock.store_ms, version=own.version if own else None)

    def _event(self, emit: Emit, index: int, ctx: Context, cause: BaseCloudEvent, stage: StageTrace,
               trace: list[dict[str, Any]]) -> BaseCloudEvent:
        data = emit.data
        if isinstance(data, Mapping) or data is None and emit.content_type is None:
            states = {**ctx.located, **ctx.written}
            data = {**(data or {}), ENVELOPE_KEY: envelope([*trace, stage.to_dict()], states)}
        own = ctx.written.get(self.name)
        attributes: dict[str, Any] = {catalogue.EXT_CHAIN: ctx.chain}
        if own is not None:
            attributes.update({catalogue.EXT_FUNCTION: self.name, catalogue.EXT_NODE: own.node,
                               catalogue.EXT_VERSION: own.version, catalogue.EXT_SIZE: own.size})
        attributes.update(current_traceparent())  # this invocation's span is the parent of what follows
        attributes.update(emit.extensions)
        return new_event(emit.type, catalogue.source_for(ctx.node, self.name), data,
                         id_=result_id(self.name, emit.type, index, cause),
                         datacontenttype=emit.content_type or "application/json", **attributes)

    def _destinations(self, event_type: str) -> list[str | None]:
        """Where an event of ``event_type`` goes: the brokers of the nodes its consumers are
        pinned to, else ``K_SINK`` (this node's broker); None stands for "reply"."""
        urls: list[str | None] = []
        consumers = self.workflow.consumers_of(event_type) if self.workflow else []
        for consumer in consumers or [None]:
            url = self.sink
            if consumer is not None and consumer.node is not None and consumer.node != self.state.node:
                url = self.state.peers.broker_url(consumer.node)
                if url is None:
                    raise ClientError(503, "unknown_broker",
                                      f"no broker known for node {consumer.node!r}, where {consumer.name} runs")
            if url not in urls:
                urls.append(url)
        return urls

    def _deliver(self, events: list[BaseCloudEvent]) -> Response:
        if not events:
            return Response(status=204)
        planned = [(e, url) for e in events for url in self._destinations(e.get_type())]
        replies = [e for e, url in planned if url is None]
        if len(replies) > 1:  # a deployment mistake, not the sender's: 500, redelivered until fixed
            raise ClientError(500, "no_sink", f"{self.name} emitted {len(replies)} events and has no K_SINK "
                                              "to publish them to (a reply carries one)")
        for event, url in planned:
            if url is None:
                continue
            outcome = self.publisher.publish(url, event)
            self.stage_seconds.labels(self.name, "publish").observe(outcome.elapsed_ms / 1000)
            if outcome.delivery is Delivery.REJECTED:
                # Our state is written; the broker refused the event for good. Not the sender's fault.
                raise ClientError(502, "sink_rejected", f"{url} answered {outcome.status_code}: {outcome.reason}")
            if not outcome.ok:
                raise ClientError(503, "sink_unavailable", f"{url} not reachable: {outcome.reason}")
        if replies:
            headers, body = to_binary(replies[0])
            return Response(body, status=200, headers=headers)
        return Response(status=202)


def create_app(function: Function | str | None = None, *, settings: FunctionSettings | None = None,
               peers: PeerDirectory | None = None, publisher: Publisher | None = None,
               placement=None) -> Flask:  # noqa: ANN001
    """The Flask app serving ``function`` (an object, an entry ``MODULE:FACTORY``, or None: the
    entry in ``settings`` / ``SKYLARK_FUNCTION``). Calls the function's ``start`` now;
    ``app.extensions["skylark.function"].stop()`` stops it (gunicorn workers simply exit).

    ``peers`` (where other nodes' Redis and brokers are) and ``placement`` (where the policy
    pushes bundles: a ``neighbors_service.targets.PolicyTargets``) default to the neighbors
    service at ``SKYLARK_NEIGHBORS_URL``, or ``SKYLARK_PEERS`` and none."""
    settings = settings or FunctionSettings.from_env()
    configure_logging(settings.core.log_level)
    configure_tracing(f"skylark-function-{settings.name or 'function'}")
    if function is None:
        function = settings.entry
        if not function:
            raise ConfigError(f"no function to serve: set {ENV_ENTRY}=MODULE:FACTORY")
    if isinstance(function, str):
        function = load_function(function)
    service = _Service(function, settings, peers, publisher, placement)

    app = Flask(f"skylark.{service.name}")
    app.config["MAX_CONTENT_LENGTH"] = service.max_request_bytes
    app.extensions[EXTENSION] = service
    install_error_handlers(app)
    app.register_blueprint(health_blueprint(service.ready, exposition_registry(service.registry), service.alive))

    @app.post("/")
    def receive() -> Response:
        try:
            event = parse(request.headers, read_body())  # bounded, chunked bodies too (413)
        except InvalidEvent as exc:
            raise ClientError(400, exc.code, exc.detail) from None
        return service.handle(event, request.headers)

    return app
