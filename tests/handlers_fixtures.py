"""A few Skylark nodes on 127.0.0.1 for the handlers tests and the propagate benchmark.

Each node has its own real redis-server, its own handlers app on a real HTTP server (werkzeug,
threaded) and its own local broker serving the chart's per-node ``bundle-propagated`` Trigger; optionally
a local stream source that feeds the node's change stream to its handlers, as a
RedisStreamSource would. Targets come from an in-process topology and the real election
policies (``neighbors_service.targets.PolicyTargets``).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

import pytest
import requests
from flask import Flask

from eventing import catalogue
from eventing.broker.local import LocalBroker
from eventing.source import StreamSource
from handlers.app import Services, create_app, services_of
from handlers.config import HandlerSettings
from neighbors_service.targets import PolicyTargets
from neighbors_service.policies import SLO
from neighbors_service.topology import Link, Node, Topology
from skylark.serving.threaded_server import ThreadedServer
from skylark.state.bundle import BundleMeta
from skylark.runtime.embedded import EmbeddedRedis
from skylark.state.redis_client import connect
from skylark.state.settings import Settings
from skylark.state.store import StateStore

def bundle_trigger(node: str) -> dict:
    """The Trigger the chart renders per node for propagated bundles (``bundle-propagated-<node>``),
    with the handlers of that node as subscriber and without the chart's dead-letter sink."""
    return {
        "apiVersion": "eventing.knative.dev/v1",
        "kind": "Trigger",
        "metadata": {"name": f"bundle-propagated-{node}", "namespace": "default"},
        "spec": {
            "broker": "skylark",
            "filter": {"attributes": {"type": catalogue.BUNDLE_PROPAGATED, "skylarktarget": node}},
            "subscriber": {"ref": {"apiVersion": "serving.knative.dev/v1", "kind": "Service",
                                   "name": "handlers"}, "uri": "/"},
            "delivery": {"retry": 5, "backoffPolicy": "exponential", "backoffDelay": "PT0.2S"},
        },
    }


class ServerThread(ThreadedServer):
    """A WSGI app on a real HTTP server in a daemon thread, serving from construction on."""

    def __init__(self, app: Flask, host: str = "127.0.0.1", port: int = 0) -> None:
        super().__init__(app, host, port, quiet=False, name="handlers-test")
        self.start()


class TopologyHolder:
    """The cluster's topology, filled in once every broker has its port."""

    def __init__(self) -> None:
        self.topology = Topology()

    def __call__(self) -> Topology:
        return self.topology


@dataclass
class SimNode:
    name: str
    redis: EmbeddedRedis
    store: StateStore
    app: Flask
    server: ServerThread
    broker: LocalBroker
    source: StreamSource | None = None

    @property
    def url(self) -> str:
        return self.server.url

    @property
    def services(self) -> Services:
        return services_of(self.app)

    def meta(self, chain: str, function: str) -> BundleMeta | None:
        return self.store.get_meta(chain, function)

    def wait_for_version(self, chain: str, function: str, version: int, timeout_s: float = 10.0) -> BundleMeta:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            meta = self.store.get_meta(chain, function)
            if meta is not None and meta.version >= version:
                return meta
            time.sleep(0.01)
        raise AssertionError(f"{self.name}: {chain}/{function} v{version} did not arrive in {timeout_s} s "
                             f"(have {self.store.get_meta(chain, function)})")

    def post(self, headers: dict, body: bytes, path: str = "/") -> requests.Response:
        return requests.post(self.url + path, headers=headers, data=body, timeout=30)

    def metric(self, name: str, **labels: str) -> float:
        value = self.services.metrics.registry.get_sample_value(name, labels or None)
        return value or 0.0


@dataclass
class SimCluster:
    nodes: dict[str, SimNode]
    holder: TopologyHolder
    closers: list[Callable[[], None]] = field(default_factory=list)

    def __getitem__(self, name: str) -> SimNode:
        return self.nodes[name]

    def drain(self, timeout_s: float = 10.0) -> None:
        for node in self.nodes.values():
            node.broker.drain(timeout_s)

    def close(self) -> None:
        for close in reversed(self.closers):
            try:
                close()
            except Exception:  # noqa: BLE001 - tear everything down even if one part fails
                pass


def start_cluster(names: Sequence[str], links: Sequence[tuple[str, str]], *,
                  start_redis: Callable[[], EmbeddedRedis] | None = None,
                  stream_sources: bool = True, inline_max_bytes: int = 256 * 1024,
                  signing_key: bytes | None = None, policy: str = "skylark",
                  max_bundle_bytes: int = 64 * 1024 * 1024,
                  slo: SLO = SLO(max_latency_ms=1000.0, min_bandwidth_mbps=0.0),
                  latency_ms: float = 1.0, bandwidth_mbps: float = 10_000.0,
                  handler_options: dict | None = None) -> SimCluster:
    """Nodes ``names`` linked by ``links``; every node's handlers pushes to its ready neighbours.
    ``handler_options``: more ``HandlerSettings`` of every node."""
    holder = TopologyHolder()
    cluster = SimCluster({}, holder)
    try:
        for name in names:
            redis_server = start_redis() if start_redis else EmbeddedRedis().start()
            if start_redis is None:
                cluster.closers.append(redis_server.stop)
            core = Settings(node=name, redis_url=redis_server.url, inline_max_bytes=inline_max_bytes,
                            max_bundle_bytes=max_bundle_bytes, policy=policy, redis_timeout_s=2.0)
            settings = HandlerSettings(core=core, signing_key=signing_key, publish_retries=1,
                                       **(handler_options or {}))
            store = StateStore.from_settings(core)
            cluster.closers.append(store.client.close)
            targets = PolicyTargets(holder, lambda: slo, policy=policy)
            app = create_app(settings, targets=targets)
            cluster.closers.append(services_of(app).close)
            server = ServerThread(app)
            cluster.closers.append(server.stop)
            broker = LocalBroker([bundle_trigger(name)], {"handlers": server.url}).start()
            cluster.closers.append(broker.stop)
            cluster.nodes[name] = SimNode(name, redis_server, store, app, server, broker)
        holder.topology = Topology(
            tuple(Node(n.name, redis_url=n.redis.url, broker_url=n.broker.url) for n in cluster.nodes.values()),
            tuple(Link(a, b, latency_ms, bandwidth_mbps) for a, b in links),
        )
        if stream_sources:
            for node in cluster.nodes.values():
                client = connect(node.redis.url)
                cluster.closers.append(client.close)
                node.source = StreamSource(client, "skylark:changes", "skylark-handlers", f"{node.name}-0",
                                           node.url, address=f"redis://127.0.0.1:{node.redis.port}",
                                           block_ms=100, claim_idle_ms=500).start()
                cluster.closers.append(node.source.stop)
    except BaseException:
        cluster.close()
        raise
    return cluster


@pytest.fixture()
def cluster_factory(redis_factory) -> Iterator[Callable[..., SimCluster]]:
    """``cluster_factory(names, links, **options)``; everything is stopped after the test."""
    started: list[SimCluster] = []

    def make(names: Sequence[str], links: Sequence[tuple[str, str]], **options) -> SimCluster:
        cluster = start_cluster(names, links, start_redis=redis_factory, **options)
        started.append(cluster)
        return cluster

    yield make
    for cluster in started:
        cluster.close()
