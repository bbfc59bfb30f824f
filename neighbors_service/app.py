"""The neighbors service: topology, neighbours, Redis addresses, SLO and elections over HTTP.

``create_app(settings=None, source=None)``; ``skylark serve neighbors`` runs it under gunicorn on
``$PORT``. Endpoints (all JSON; see ``neighbors_service/README.md`` for examples):

``GET /topology[?snapshot=i]``, ``GET /topology/next``, ``GET /nodes/<name>``,
``GET /neighbors?node=``, ``GET /redis-pods``, ``GET|PUT /slo``,
``GET /elect?from=&to=&size=&policy=``, ``GET /propagation-targets?node=&size=&policy=``,
``GET /healthz``, ``GET /readyz``, ``GET /metrics``.

Client input is bounded: integer parameters (``size``, ``snapshot``) are ASCII digits within
int64 (``skylark.state.numbers.parse_int``; "١٢", "²", "1_000", " 12" and 10**30 are 400s), the
``PUT /slo`` body is at most :data:`MAX_BODY_BYTES` (413, before it is read), must say it is JSON
(415 otherwise) and is parsed with a nesting limit and without NaN/Infinity (400).
"""

from __future__ import annotations

import random
import threading
import time
from typing import Any

from flask import Blueprint, Flask, current_app, jsonify, request
from prometheus_client import CollectorRegistry, Counter, Histogram

from neighbors_service.config import NeighborsSettings
from neighbors_service.policies import POLICIES, SLO, InvalidElection, elect, propagation_plan
from neighbors_service.sources import TopologySource, TopologyUnavailable
from neighbors_service.sources.file import FileTopologySource, load_topology_file
from neighbors_service.topologies import EXAMPLES, example_path
from neighbors_service.topology import Topology, UnknownNode
from skylark.serving import limits
from skylark.serving.logs import configure_logging
from skylark.serving.web import ClientError, health_blueprint, install_error_handlers, json_error, read_body
from skylark.state.numbers import INT64_MAX, parse_int

EXTENSION = "skylark_neighbors"
# The only body is PUT /slo's two numbers; anything near this size is not an SLO.
MAX_BODY_BYTES = 64 * 1024


class SloState:
    """The process's current SLO, changed by ``PUT /slo``; owned by one app, lock-guarded."""

    def __init__(self, initial: SLO) -> None:
        self._lock = threading.Lock()
        self._slo = initial

    def get(self) -> SLO:
        with self._lock:
            return self._slo

    def update(self, changes: dict[str, Any]) -> SLO:
        with self._lock:
            self._slo = SLO.from_dict(changes, base=self._slo)
            return self._slo


class LockedRandom:
    """A seeded generator shared by request threads (``random.Random`` is not thread-safe)."""

    def __init__(self, seed: int | None) -> None:
        self._lock = threading.Lock()
        self._rng = random.Random(seed)

    def choice(self, seq):  # noqa: ANN001, ANN201 - same signature as random.Random.choice
        with self._lock:
            return self._rng.choice(seq)


class State:
    def __init__(self, settings: NeighborsSettings, source: TopologySource) -> None:
        self.settings = settings
        self.source = source
        self.slo = SloState(settings.slo)
        self.rng = LockedRandom(settings.elect_seed)
        self.registry = CollectorRegistry()
        self.decisions = Counter("skylark_elections_total", "Election decisions",
                                 ["policy", "outcome"], registry=self.registry)
        self.decision_seconds = Histogram(
            "skylark_election_seconds", "Time to compute one election", ["policy"],
            buckets=(0.0001, 0.0005, 0.001, 0.005, 0.01, 0.02, 0.05, 0.1, 0.5), registry=self.registry,
        )


def _state() -> State:
    return current_app.extensions[EXTENSION]


def build_source(settings: NeighborsSettings) -> TopologySource:
    """The source the settings ask for (not started)."""
    if settings.topology_source == "file":
        name = settings.topology_file or ""
        return load_topology_file(example_path(name) if name in EXAMPLES else name)
    from neighbors_service.sources.kubernetes import KubernetesTopologySource  # noqa: PLC0415

    return KubernetesTopologySource(
        namespace=settings.k8s_namespace,
        redis_selector=settings.redis_selector,
        broker_url_template=settings.broker_url_template,
        broker=settings.k8s_broker,
        redis_port=settings.redis_port,
        host=settings.k8s_host,
        kubeconfig=settings.kubeconfig,
        refresh=settings.k8s_refresh,
        interval_s=settings.k8s_refresh_interval_s,
    )


# -- parameter parsing ---------------------------------------------------------------------------


def _param(name: str, default: str | None = None) -> str:
    value = request.args.get(name, default)
    if value is None or value == "":
        raise ClientError(400, "missing_parameter", f"query parameter {name!r} is required")
    return value


def _int_param(name: str, raw: str, meaning: str) -> int:
    # ASCII digits within int64: str.isdigit() passes "²" (int() then fails: a 500) and int()
    # reads "١٢" as 12; a size of 10**30 would be taken as meant.
    try:
        return parse_int(raw, name, minimum=0, maximum=INT64_MAX)
    except ValueError:
        shown = raw if len(raw) <= 40 else raw[:37] + "..."
        raise ClientError(400, "invalid_parameter",
                          f"{name}={shown!r} must be {meaning}: ASCII digits, 0 to 2**63-1") from None


def _size() -> int:
    return _int_param("size", _param("size"), "a whole number of bytes")


def _policy() -> str:
    policy = request.args.get("policy") or _state().settings.core.policy
    if policy not in POLICIES:
        raise ClientError(400, "invalid_parameter", f"policy={policy!r} must be one of {', '.join(POLICIES)}")
    return policy


def _node_name(param: str) -> str:
    """A node given in the query, defaulting to this service's own node (``SKYLARK_NODE``)."""
    return _param(param, _state().settings.core.node)


def _topology() -> Topology:
    return _state().source.current()


def _node_json(topology: Topology, name: str) -> dict[str, Any]:
    return topology.node(name).to_dict()


# -- routes --------------------------------------------------------------------------------------

bp = Blueprint("neighbors", __name__)


@bp.get("/topology")
def get_topology():
    state = _state()
    raw = request.args.get("snapshot")
    if raw is None:
        topology = state.source.current()
    else:
        if not isinstance(state.source, FileTopologySource):
            raise ClientError(400, "invalid_parameter", "snapshot= needs a topology file source")
        index = _int_param("snapshot", raw, "a whole number")
        try:
            topology = state.source.snapshot(index)
        except IndexError as exc:
            raise ClientError(404, "unknown_snapshot", str(exc)) from None
    return jsonify({**topology.to_dict(), "source": state.source.status()})


@bp.get("/topology/next")
def get_next_topology():
    state = _state()
    return jsonify({**state.source.next().to_dict(), "source": state.source.status()})


@bp.get("/nodes/<name>")
def get_node(name: str):
    return jsonify(_node_json(_topology(), name))


@bp.get("/neighbors")
def get_neighbors():
    topology = _topology()
    name = _node_name("node")
    out = []
    for link in topology.links_of(name):
        other = link.other(name)
        out.append({**_node_json(topology, other),
                    "link": {"latency_ms": link.latency_ms, "bandwidth_mbps": link.bandwidth_mbps}})
    return jsonify({"node": name, "neighbors": out})


@bp.get("/redis-pods")
def get_redis_pods():
    topology = _topology()
    pods = [{"node": n.name, "redis_url": n.redis_url, "ready": n.ready}
            for n in topology.nodes if n.redis_url]
    return jsonify({"redis_pods": pods})


@bp.get("/slo")
def get_slo():
    return jsonify(_state().slo.get().to_dict())


@bp.put("/slo")
def put_slo():
    content_type = request.mimetype or ""
    if content_type and content_type != "application/json" and not content_type.endswith("+json"):
        raise ClientError(415, "unsupported_media_type",
                          f"PUT /slo takes application/json, not {content_type[:60]!r}")
    raw = read_body()  # MAX_BODY_BYTES: 413 before reading, also for chunked bodies
    try:
        # Bounded nesting, no NaN/Infinity: request.get_json() would raise RecursionError (a
        # 500) on 10,000 nested brackets, and take "NaN" as a number.
        body = limits.loads(raw) if raw else None
    except ValueError as exc:
        raise ClientError(400, "invalid_slo", f"body is not acceptable JSON: {exc}") from None
    if not isinstance(body, dict) or not body:
        raise ClientError(400, "invalid_slo",
                          "body must be a JSON object with max_latency (ms) and/or min_bandwidth (Mbps)")
    try:
        slo = _state().slo.update(body)
    except InvalidElection as exc:
        raise ClientError(400, "invalid_slo", str(exc)) from None
    return jsonify(slo.to_dict())


@bp.get("/elect")
def get_elect():
    state = _state()
    from_node = _node_name("from")
    to_node = _param("to")
    size, policy = _size(), _policy()
    slo = state.slo.get()
    topology = _topology()
    started = time.perf_counter()
    election = elect(topology, from_node, to_node, size, slo, policy, rng=state.rng)
    state.decision_seconds.labels(policy).observe(time.perf_counter() - started)
    state.decisions.labels(policy, "stay" if election.node == from_node else "move").inc()
    return jsonify({**election.to_dict(), "from": from_node, "to": to_node, "size_bytes": size,
                    "slo": slo.to_dict(), "target": topology.node(election.node).to_dict()})


@bp.get("/propagation-targets")
def get_propagation_targets():
    state = _state()
    name = _node_name("node")
    size, policy = _size(), _policy()
    slo = state.slo.get()
    topology = _topology()
    plan = propagation_plan(topology, name, size, slo, policy, rng=state.rng)
    return jsonify({
        "node": name, "policy": policy, "size_bytes": size, "slo": slo.to_dict(),
        "targets": [{**_node_json(topology, t.node), "migration_ms": t.migration_ms} for t in plan],
    })


def _install_domain_errors(app: Flask) -> None:
    # Registered after install_error_handlers: Flask picks the most specific class, so these win
    # over the generic SkylarkError handler (which would answer 400 for all of them).
    @app.errorhandler(UnknownNode)
    def _unknown_node(exc: UnknownNode):
        return json_error(404, exc.code, str(exc))

    @app.errorhandler(TopologyUnavailable)
    def _unavailable(exc: TopologyUnavailable):
        return json_error(503, exc.code, str(exc))

    @app.errorhandler(InvalidElection)
    def _invalid(exc: InvalidElection):
        return json_error(400, exc.code, str(exc))


def create_app(settings: NeighborsSettings | None = None,
               source: TopologySource | None = None) -> Flask:
    """The Flask app. A source built here from the settings is started here too; a ``source``
    passed in is used as it is (its owner starts and stops it)."""
    settings = settings or NeighborsSettings.from_env()
    configure_logging(settings.core.log_level)
    if source is None:
        source = build_source(settings)
        source.start()
    state = State(settings, source)

    app = Flask(__name__)
    app.config["MAX_CONTENT_LENGTH"] = MAX_BODY_BYTES
    app.extensions[EXTENSION] = state
    install_error_handlers(app)
    _install_domain_errors(app)

    def ready() -> tuple[bool, dict]:
        status = state.source.status()
        return bool(status.get("ready")), {"topology": status}

    app.register_blueprint(health_blueprint(ready, state.registry))
    app.register_blueprint(bp)
    return app
