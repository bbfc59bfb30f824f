"""The warm-up has no silent cap: past its page size it pages, and every pair is examined."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

from eventing import catalogue
from eventing.http import new_event
from handlers.metrics import HandlerMetrics
from handlers.warmup import Warmer
from neighbors_service.targets import PolicyTargets
from neighbors_service.topology import Link, Node, Topology
from skylark.state.reader import RemoteStores
from skylark.state.redis_client import connect
from skylark.state.store import StateStore


def test_every_pair_is_examined_page_by_page(redis_factory):
    a, b = redis_factory(), redis_factory()
    local, neighbour = StateStore(connect(a.url), node="node-a"), StateStore(connect(b.url), node="node-b")
    for i in range(7):  # missed pushes: seven bundles only the neighbour holds
        neighbour.put(f"c{i}", "detect", {"n": str(i).encode()})
    neighbour.put("c0", "detect", {"n": b"newer"})
    local.apply(neighbour.get_bundle("c1", "detect"))  # one is current already
    topology = Topology((Node("node-a", redis_url=a.url), Node("node-b", redis_url=b.url)),
                        (Link("node-a", "node-b", 1, 1000),))
    targets = PolicyTargets.fixed(topology)
    with ThreadPoolExecutor(2) as executor:
        warmer = Warmer(node="node-a", store=local, remote=RemoteStores(targets.redis_url), targets=targets,
                        executor=executor, metrics=HandlerMetrics(), page_pairs=3)
        report = warmer.handle(new_event(catalogue.PING, "/ping", {"functions": ["detect"]})).to_dict()
    assert (report["checked"], report["pages"], report["refreshed"], report["current"]) == (7, 3, 6, 1)
    assert all(local.local_version(f"c{i}", "detect") == neighbour.local_version(f"c{i}", "detect") for i in range(7))
    assert local.get_bundle("c0", "detect").fields == {"n": b"newer"}
