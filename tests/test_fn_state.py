"""NodeState: a successor waits for a propagated copy only when the policy sends it there."""

from __future__ import annotations

from neighbors_service.policies import SLO
from neighbors_service.targets import PolicyTargets
from neighbors_service.topology import Link, Node, Topology
from skylark.fn import NodeState
from skylark.state.peers import StaticPeers
from skylark.state.redis_client import connect
from skylark.state.settings import Settings
from skylark.state.store import StateStore


def test_waits_only_where_the_bundle_is_pushed(redis_factory):
    a, b, c = redis_factory(), redis_factory(), redis_factory()
    topology = Topology.from_dict({
        "nodes": [{"name": n, "type": "edge", "redis_url": r.url, "broker_url": f"http://{n}.invalid/"}
                  for n, r in (("node-a", a), ("node-b", b), ("node-c", c))],
        "links": [{"a": "node-a", "b": "node-b", "latency_ms": 10, "bandwidth_mbps": 90},
                  {"a": "node-b", "b": "node-c", "latency_ms": 10, "bandwidth_mbps": 90}],
    })
    peers = StaticPeers.from_mapping({"node-a": {"redis_url": a.url}})
    version = StateStore(connect(a.url), node="node-a").put("chain", "preprocess", {"x": b"1"}).meta.version
    propagation = PolicyTargets.fixed(topology)

    def state(node: str, server, policy: str = "skylark") -> NodeState:
        settings = Settings(node=node, redis_url=server.url, policy=policy, propagation_wait_ms=300)
        return NodeState(settings, peers, propagation)

    # node-b is node-a's neighbour, so the bundle is on its way there: it waits, then reads remotely
    read = state("node-b", b).read("chain", "preprocess", "node-a", version)
    assert read.location == "remote" and read.waited_ms >= 250
    # node-c is no target of node-a: it reads across the link at once
    read = state("node-c", c).read("chain", "preprocess", "node-a", version)
    assert read.location == "remote" and read.waited_ms == 0 and read.elapsed_ms < 250
    # the stateless baseline never waits
    read = state("node-b", b, "stateless").read("chain", "preprocess", "node-a", version)
    assert read.location == "remote" and read.waited_ms == 0


def test_holders_are_every_node_an_earlier_push_may_have_reached():
    nodes = (*(Node(n, broker_url=f"http://{n}.local/") for n in ("a", "near", "far")),
             Node("down", broker_url="http://down.local/", ready=False))
    links = (Link("a", "near", 1, 1000), Link("a", "far", 40, 1), Link("a", "down", 1, 1000))
    topology = Topology(nodes, links)
    slo = SLO(max_latency_ms=100, min_bandwidth_mbps=0)
    skylark = PolicyTargets.fixed(topology, slo)
    # 1 MB over the 1 Mbit link takes 8 s: that bundle went to "near" only, a small one to both
    assert [t.node for t in skylark.targets("a", "f", 1_000_000)] == ["near"]
    assert sorted(t.node for t in skylark.holders("a", "f")) == ["far", "near"]
    # random: each push picked one ready neighbour, so a delete goes to all of them
    randomly = PolicyTargets.fixed(topology, slo, policy="random", seed=3)
    assert len(randomly.targets("a", "f", 1_000_000)) == 1
    assert sorted(t.node for t in randomly.holders("a", "f")) == ["far", "near"]
    assert PolicyTargets.fixed(topology, slo, policy="stateless").holders("a", "f") == []
