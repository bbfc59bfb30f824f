"""Plumbing of CloudEvent functions (Knative ``func`` style): a function object and its Flask app.

A function is an object with a ``name``, the event types it ``accepts``, ``start``/``stop``
hooks (open connections, load models: once per process, never at import), ``alive``/``ready``
probes and ``handle(event) -> Handled``. :func:`make_function_app` turns it into a Knative service:

- ``POST /``: a CloudEvent (binary or structured mode); the result event is published to
  ``K_SINK`` (answer 202, empty body) or, without a sink, returned as the reply (200, binary
  mode: the Knative reply convention). No result event: 204. Successful answers carry no JSON
  body because a Knative broker treats a non-empty non-CloudEvent reply as a failed delivery.
- bad input → 4xx JSON ``{"error", "detail"}``; missing state → 404; Redis or the sink down → 503.
- ``/healthz`` (the ``alive`` hook), ``/readyz`` (the ``ready`` hook), ``/metrics`` (per-stage timings).

It also holds what every example function shares: :class:`NodeState` (this node's store plus a
reader that falls back to other nodes' Redis through a :class:`~skylark.state.peers.PeerDirectory`),
the timings each stage records (:class:`StageTimings`) and the attributes the result events carry.
"""

from __future__ import annotations

import logging
import os
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from cloudevents.core.base import BaseCloudEvent
from flask import Flask, Response, request
from prometheus_client import CollectorRegistry, Counter, Histogram

from eventing import catalogue
from eventing.http import InvalidEvent, new_event, parse, to_binary
from eventing.publisher import Delivery, Publisher
from skylark.state.dedupe import Deduper
from skylark.state.errors import SkylarkError, StoreUnavailable
from skylark.state.names import validate_name
from skylark.state.peers import PeerDirectory, StaticPeers
from skylark.state.reader import BundleRead, BundleReader, RemoteStores
from skylark.state.redis_client import ClientPool
from skylark.state.settings import Settings
from skylark.state.store import StateStore
from skylark.serving.web import ClientError, health_blueprint, install_error_handlers

log = logging.getLogger(__name__)

# Result-event ids are derived from the input event, so a redelivered input (Knative delivers at
# least once) yields the same result id and downstream receivers can drop the duplicate.
_EVENT_ID_NAMESPACE = uuid.UUID("5b0f3f8e-8c3a-4d57-9b89-2d7a1f0c6e11")

INLINE = "inline"  # fetch_location of input that came inside the event, not from state


# -- timings and traces ---------------------------------------------------------------------


@dataclass(frozen=True)
class StageTimings:
    """What one function invocation spent where; the unit of the chain's ``trace``."""

    function: str
    node: str
    fetch_location: str  # "local" | "remote" | "inline"
    fetch_node: str      # the node whose Redis answered (this node for inline input)
    fetch_ms: float
    compute_ms: float
    store_ms: float
    version: int | None = None  # version of the state this stage wrote, if any

    def timings(self) -> dict[str, Any]:
        return {
            "fetch_ms": round(self.fetch_ms, 3),
            "fetch_location": self.fetch_location,
            "fetch_node": self.fetch_node,
            "compute_ms": round(self.compute_ms, 3),
            "store_ms": round(self.store_ms, 3),
        }

    def trace_entry(self) -> dict[str, Any]:
        return {"function": self.function, "node": self.node, "version": self.version, **self.timings()}


@dataclass(frozen=True)
class Handled:
    """The result of ``handle``: the event to emit (or ``None``), an outcome name and timings."""

    event: BaseCloudEvent | None
    outcome: str
    timings: StageTimings
    chain: str
    extra: dict[str, Any] = field(default_factory=dict)


# -- reading the attributes of incoming events ------------------------------------------------


def data_object(event: BaseCloudEvent) -> dict[str, Any]:
    """The event's data as a JSON object (``{}`` when there is none); 400 for anything else."""
    data = event.get_data()
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ClientError(400, "invalid_event_data", "event data must be a JSON object")
    return data


def _name_or_400(kind: str, value: object, code: str) -> str:
    try:
        return validate_name(kind, value)
    except ValueError as exc:
        raise ClientError(400, code, str(exc)) from None


def chain_of(event: BaseCloudEvent, data: Mapping[str, Any]) -> str:
    """The chain id: the ``skylarkchain`` extension or ``data.chain`` (they must agree)."""
    from_ext = event.get_extension(catalogue.EXT_CHAIN)
    from_data = data.get("chain")
    if from_ext is not None and from_data is not None and str(from_ext) != from_data:
        raise ClientError(400, "chain_mismatch",
                          f"extension skylarkchain={from_ext!r} but data.chain={from_data!r}")
    chain = from_ext if from_ext is not None else from_data
    if chain is None:
        raise ClientError(400, "missing_chain", "the event names no chain (skylarkchain or data.chain)")
    return _name_or_400("chain id", chain, "invalid_chain")


def origin_of(event: BaseCloudEvent, data: Mapping[str, Any]) -> str | None:
    """The node that wrote the state the event announces (``skylarknode`` or ``data.node``)."""
    node = event.get_extension(catalogue.EXT_NODE) or data.get("node")
    if node is None:
        return None
    return _name_or_400("node name", node, "invalid_node")


def trace_of(data: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The trace accumulated by the previous stages (each an object), ``[]`` at the start."""
    trace = data.get("trace", [])
    if not isinstance(trace, list) or not all(isinstance(entry, dict) for entry in trace):
        raise ClientError(400, "invalid_trace", "data.trace must be a list of objects")
    return list(trace)


def version_of(event: BaseCloudEvent) -> int | None:
    """The ``skylarkversion`` extension: the version of the state the event announces."""
    raw = event.get_extension(catalogue.EXT_VERSION)
    if raw is None:
        return None
    try:
        version = int(raw)
    except (TypeError, ValueError):
        raise ClientError(400, "invalid_version", f"skylarkversion {raw!r} is not an integer") from None
    if version < 0:
        raise ClientError(400, "invalid_version", f"skylarkversion {version} is negative")
    return version


def route_of(data: Mapping[str, Any]) -> list[str] | None:
    """``data.route``: the nodes the next stages run on, in order (see :func:`result_event`)."""
    route = data.get("route")
    if route is None:
        return None
    if not isinstance(route, list):
        raise ClientError(400, "invalid_route", "data.route must be a list of node names")
    return [_name_or_400("node name in route", node, "invalid_route") for node in route]


def result_data(chain: str, timings: StageTimings, trace: Sequence[dict[str, Any]],
                route: list[str] | None, **fields: Any) -> dict[str, Any]:
    """The data of a result event: chain, node, this stage's timings, the trace with it appended."""
    data: dict[str, Any] = {
        "chain": chain,
        "node": timings.node,
        "function": timings.function,
        "version": timings.version,
        **fields,
        "timings": timings.timings(),
        "trace": [*trace, timings.trace_entry()],
    }
    if route is not None:
        data["route"] = route
    return data


def result_event(type_: str, *, cause: BaseCloudEvent, chain: str, timings: StageTimings,
                 data: dict[str, Any]) -> BaseCloudEvent:
    """A result event with the Skylark extensions; its id is derived from the cause's source+id.

    With a ``route`` in the data (the nodes the next stages run on), the event is addressed to
    its first node (``skylarktarget``: the app sends it to that node's broker) and carries the
    rest of the route on.
    """
    event_id = uuid.uuid5(_EVENT_ID_NAMESPACE,
                          f"{timings.function}\n{cause.get_source()}\n{cause.get_id()}")
    target = None
    if data.get("route"):
        target, data = data["route"][0], {**data, "route": data["route"][1:]}
    return new_event(
        type_, catalogue.source_for(timings.node, timings.function), data, id_=str(event_id),
        skylarkchain=chain, skylarknode=timings.node, skylarkfunction=timings.function,
        skylarkversion=timings.version, skylarktarget=target,
    )


# -- state of this node and of its peers -----------------------------------------------------


class _GuardedPeers:
    """A PeerDirectory whose lookup failures (e.g. the neighbors service down) are a 503, and
    whose unknown nodes are None."""

    def __init__(self, peers: PeerDirectory) -> None:
        self._peers = peers

    def _lookup(self, what: str, resolve: Callable[[str], str | None], node: str) -> str | None:
        try:
            return resolve(node)
        except LookupError:
            return None
        except (SkylarkError, ConnectionError, OSError) as exc:
            raise StoreUnavailable(f"cannot resolve the {what} of node {node!r}: {exc}") from exc

    def redis_url(self, node: str) -> str | None:
        return self._lookup("Redis", self._peers.redis_url, node)

    def broker_url(self, node: str) -> str | None:
        return self._lookup("broker", self._peers.broker_url, node)


def default_peers(settings: Settings, env: Mapping[str, str] | None = None) -> PeerDirectory:
    """The neighbors service (cached topology) when ``SKYLARK_NEIGHBORS_URL`` is set, else
    ``SKYLARK_PEERS`` (a static map, possibly empty)."""
    env = os.environ if env is None else env
    if env.get("SKYLARK_NEIGHBORS_URL"):
        try:
            from neighbors_service.client import CachedTopology, NeighborsClient  # noqa: PLC0415
        except ImportError:  # a function image built without the neighbors service package
            log.warning("SKYLARK_NEIGHBORS_URL is set but neighbors_service is not installed")
        else:
            return CachedTopology(NeighborsClient(settings.neighbors_url))
    return StaticPeers.from_env(env)


def default_propagation(settings: Settings, env: Mapping[str, str] | None = None):
    """The handlers' propagation policy as the neighbors service serves it (cached), and a
    function that closes it, when ``SKYLARK_NEIGHBORS_URL`` is set and the policy propagates;
    else ``(None, None)``."""
    env = os.environ if env is None else env
    if settings.policy == "stateless" or not env.get("SKYLARK_NEIGHBORS_URL"):
        return None, None
    from neighbors_service.targets import targets_from_neighbors  # noqa: PLC0415 - HTTP adapter

    return targets_from_neighbors(settings.neighbors_url, policy=settings.policy)


def size_hint(data: Mapping[str, Any]) -> int:
    """``data.size`` (bytes of the state the event announces) when the sender gave it, else 0."""
    size = data.get("size")
    return size if isinstance(size, int) and not isinstance(size, bool) and size >= 0 else 0


class NodeState:
    """This node's :class:`StateStore` and a :class:`BundleReader` that falls back to peers.

    ``propagation`` (the neighbors service's policy, see ``neighbors_service.targets``) tells
    whether a bundle written elsewhere is pushed to this node; only then does a read wait a
    little for it (``SKYLARK_PROPAGATION_WAIT_MS``) before reading it across the link.
    """

    def __init__(self, settings: Settings, peers: PeerDirectory, propagation=None) -> None:
        self.store = StateStore.from_settings(settings)
        self.peers = _GuardedPeers(peers)
        self._pool = ClientPool.from_settings(settings)  # log in to peers as to our own Redis
        self.reader = BundleReader(self.store, RemoteStores(self.peers.redis_url, self._pool))
        self._propagation = propagation
        self.wait_ms = 0 if settings.policy == "stateless" or propagation is None else settings.propagation_wait_ms

    def read(self, chain: str, function: str, origin: str | None, min_version: int | None = None,
             size_bytes: int = 0) -> BundleRead:
        """The bundle (of at least ``min_version``) from the local Redis, else from ``origin``'s
        (where it was written)."""
        wait = 0
        if self.wait_ms and origin and origin != self.store.node and min_version:
            try:
                coming = self._propagation.may_receive(self.store.node, origin, size_bytes)
            except (SkylarkError, ConnectionError, OSError):
                coming = False  # the neighbors service is down: do not wait on a guess
            wait = self.wait_ms if coming else 0
        return self.reader.read(chain, function, [origin] if origin else [],
                                min_version=min_version or 0, wait_local_ms=wait)

    def ready(self) -> tuple[bool, dict[str, Any]]:
        ok = self.store.ping()
        return ok, {"redis": "ok" if ok else "unreachable"}

    def close(self) -> None:
        self._pool.close()
        self.store.client.close()


# -- the function object and its app --------------------------------------------------------


class CloudEventFunction:
    """Base class of a function. Subclasses set ``name``/``accepts`` and implement ``handle``."""

    name: str = ""
    accepts: tuple[str, ...] = ()
    state: NodeState | None = None  # set by ``start`` of functions that use Skylark state

    def start(self) -> None:
        """Open connections and load models (called once per process by the app factory)."""

    def stop(self) -> None:
        """Release what ``start`` opened."""

    def alive(self) -> bool:
        """Liveness (no I/O): False only when the process cannot recover by itself."""
        return True

    def ready(self) -> tuple[bool, dict[str, Any]]:
        return True, {}

    def handle(self, event: BaseCloudEvent) -> Handled:
        raise NotImplementedError


class StatefulFunction(CloudEventFunction):
    """A function that reads and writes Skylark state: its ``start`` opens this node's
    :class:`NodeState` (``settings.core`` is the core settings), ``stop`` closes it, and it is
    ready while the node's Redis answers."""

    _close_propagation: Callable[[], None] | None = None

    def __init__(self, settings: Any, peers: PeerDirectory | None = None) -> None:
        self.settings = settings
        self._peers = peers

    def start(self) -> None:
        core = self.settings.core
        propagation, self._close_propagation = default_propagation(core)
        self.state = NodeState(core, self._peers or default_peers(core), propagation)

    def stop(self) -> None:
        if self.state is not None:
            self.state.close()
        if self._close_propagation is not None:
            self._close_propagation()

    def ready(self) -> tuple[bool, dict[str, Any]]:
        return self.state.ready()


def make_function_app(function: CloudEventFunction, settings: Settings, *,
                      max_body_bytes: int = 16 * 1024 * 1024,
                      publisher: Publisher | None = None) -> Flask:
    """A Flask app serving ``function`` at ``POST /``; calls ``function.start()`` now.

    ``settings.broker_url`` (``K_SINK``) decides between publishing the result (202) and
    replying with it (200). ``app.extensions["skylark.function"]`` is the function, so callers
    can ``stop()`` it; gunicorn workers simply exit.
    """
    function.start()
    sink = settings.broker_url
    publisher = publisher or Publisher()
    deduper = (Deduper(function.state.store.client, prefix=f"skylark:fn:{function.name}:seen:")
               if function.state is not None else None)

    app = Flask(f"skylark.{function.name}")
    app.config["MAX_CONTENT_LENGTH"] = max_body_bytes
    app.extensions["skylark.function"] = function
    install_error_handlers(app)

    registry = CollectorRegistry()
    events = Counter("skylark_function_events", "Events handled, by outcome",
                     ["function", "outcome"], registry=registry)
    stage_seconds = Histogram(
        "skylark_function_stage_seconds", "Time per stage of an invocation",
        ["function", "stage"], registry=registry,
        buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
    )
    app.register_blueprint(health_blueprint(function.ready, registry, function.alive))

    @app.post("/")
    def receive() -> Response:
        try:
            event = parse(request.headers, request.get_data())
        except InvalidEvent as exc:
            raise ClientError(400, exc.code, exc.detail) from None
        if function.accepts and event.get_type() not in function.accepts:
            raise ClientError(400, "unsupported_event_type",
                              f"{function.name} accepts {', '.join(function.accepts)}, "
                              f"not {event.get_type()!r}")
        # A redelivered input whose result was already published is acknowledged, not redone
        # (no second state version, no second alarm record). In reply mode the result travels in
        # the answer, which may have been lost: there the input is handled again.
        if deduper is not None and deduper.seen(event.get_source(), event.get_id()):
            events.labels(function.name, "duplicate").inc()
            return Response(status=202)
        handled = function.handle(event)
        t = handled.timings
        for stage, ms in (("fetch", t.fetch_ms), ("compute", t.compute_ms), ("store", t.store_ms)):
            stage_seconds.labels(function.name, stage).observe(ms / 1000)
        events.labels(function.name, handled.outcome).inc()
        log.info("%s %s", function.name, handled.outcome, extra={
            "chain": handled.chain, "event_id": event.get_id(), "function": function.name,
            "outcome": handled.outcome, **t.timings(), **handled.extra,
        })
        if handled.event is None:
            if deduper is not None:
                deduper.mark(event.get_source(), event.get_id())
            return Response(status=204)
        destination = _destination(function, handled.event, sink)
        if destination is None:
            headers, body = to_binary(handled.event)
            return Response(body, status=200, headers=headers)
        outcome = publisher.publish(destination, handled.event)
        stage_seconds.labels(function.name, "publish").observe(outcome.elapsed_ms / 1000)
        if outcome.delivery is Delivery.REJECTED:
            # Our state is written; the sink refused the event for good. Not the sender's fault.
            raise ClientError(502, "sink_rejected",
                              f"K_SINK answered {outcome.status_code}: {outcome.reason}")
        if not outcome.ok:
            # 503: Knative redelivers the input; the state write repeats (same content, new
            # version) and the result event keeps its id, so the next stage can dedupe.
            raise ClientError(503, "sink_unavailable", f"K_SINK not reachable: {outcome.reason}")
        if deduper is not None:
            deduper.mark(event.get_source(), event.get_id())
        return Response(status=202)

    return app


def _destination(function: CloudEventFunction, event: BaseCloudEvent, sink: str | None) -> str | None:
    """The broker of the node the event is routed to (``skylarktarget``), else ``K_SINK``."""
    target = event.get_extension(catalogue.EXT_TARGET)
    if target is None or function.state is None or target == function.state.store.node:
        return sink
    url = function.state.peers.broker_url(str(target))
    if url is None:
        raise ClientError(400, "unknown_route_node", f"the route names node {target!r}, whose broker is unknown")
    return url
