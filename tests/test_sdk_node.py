"""skylark.sdk.node: the node a function runs on. NodeState (a successor waits for a propagated
copy only when the policy sends it there), the peers it resolves other nodes through."""

from __future__ import annotations

from neighbors_service.policies import SLO
from neighbors_service.targets import PolicyTargets
from neighbors_service.topology import Link, Node, Topology
from skylark.sdk.node import GuardedPeers, NodeState, default_placement
from skylark.state.errors import StoreUnavailable
from skylark.state.peers import StaticPeers
from skylark.state.redis_client import connect
from skylark.state.settings import Settings
from skylark.state.store import StateStore


def test_waits_only_where_the_bundle_is_pushed(redis_factory):
    a, b, c = redis_factory(), redis_factory(), redis_factory()
    topology = Topology.from_dict({
        "nodes": [{"name": n, "type": t, "redis_url": r.url, "broker_url": f"http://{n}.invalid/"}
                  for n, t, r in (("node-a", "edge", a), ("node-b", "edge", b), ("node-c", "cloud", c))],
        "links": [{"a": "node-a", "b": "node-b", "latency_ms": 10, "bandwidth_mbps": 90},
                  {"a": "node-b", "b": "node-c", "latency_ms": 10, "bandwidth_mbps": 90}],
    })
    peers = StaticPeers.from_mapping({"node-a": {"redis_url": a.url}, "node-c": {"redis_url": c.url}})
    origin = StateStore(connect(a.url), node="node-a")
    version = origin.put("chain", "preprocess", {"x": b"1"}).meta.version
    opened: list[NodeState] = []

    def state(node: str, server, policy: str = "skylark") -> NodeState:
        settings = Settings(node=node, redis_url=server.url, propagation_wait_ms=300)
        opened.append(NodeState(settings, peers, PolicyTargets.fixed(topology, policy=policy)))
        return opened[-1]

    try:
        # node-b is node-a's neighbour, so the bundle is on its way there: it waits, then reads remotely
        read = state("node-b", b).read("chain", "preprocess", "node-a", version)
        assert (read.location, read.node) == ("remote", "node-a") and read.waited_ms >= 250
        # node-c is no target of node-a: it reads across the link at once
        read = state("node-c", c).read("chain", "preprocess", "node-a", version)
        assert (read.location, read.node) == ("remote", "node-a")
        assert read.waited_ms == 0 and read.elapsed_ms < 250
        # pull: nothing moves, so nobody waits
        read = state("node-b", b, "pull").read("chain", "preprocess", "node-a", version)
        assert (read.location, read.node, read.waited_ms) == ("remote", "node-a", 0)
        # stateless: the bundle goes to the store node (the cloud, node-c); a reader elsewhere
        # reads it there, the nearest copy, once it arrived
        StateStore(connect(c.url), node="node-c").apply(origin.get_bundle("chain", "preprocess"))
        read = state("node-b", b, "stateless").read("chain", "preprocess", "node-a", version)
        assert (read.location, read.node, read.waited_ms) == ("remote", "node-c", 0)
        # once a copy is here, every policy reads it here, without waiting
        StateStore(connect(b.url), node="node-b").apply(origin.get_bundle("chain", "preprocess"))
        for policy in ("skylark", "stateless", "pull"):
            read = state("node-b", b, policy).read("chain", "preprocess", "node-a", version)
            assert (read.location, read.node, read.waited_ms) == ("local", "node-b", 0)
    finally:
        for node_state in opened:
            node_state.close()


def test_a_reader_stops_waiting_for_a_copy_the_origin_sent_elsewhere(redis_factory):
    """The origin's handlers and the reader decide from their own cached topology; around a
    change of the topology they disagree. The reader then learns from the placement the
    handlers recorded at the origin that its copy is not coming, instead of waiting it out."""
    import threading

    from skylark.state.bundle import Placement
    from skylark.state.reader import DOUBT_S

    a, b = redis_factory(), redis_factory()
    topology = Topology.from_dict({
        "nodes": [{"name": n, "type": "edge", "redis_url": r.url, "broker_url": f"http://{n}.invalid/"}
                  for n, r in (("node-a", a), ("node-b", b))] + [
                 {"name": "node-c", "type": "edge", "redis_url": a.url, "broker_url": "http://node-c.invalid/"}],
        "links": [{"a": "node-a", "b": "node-b", "latency_ms": 10, "bandwidth_mbps": 90},
                  {"a": "node-a", "b": "node-c", "latency_ms": 10, "bandwidth_mbps": 90}],
    })
    peers = StaticPeers.from_mapping({"node-a": {"redis_url": a.url}})
    origin = StateStore(connect(a.url), node="node-a")
    here = StateStore(connect(b.url), node="node-b")
    # waiting up to 20 s for the pushed copy, as a bench over slow links does
    state = NodeState(Settings(node="node-b", redis_url=b.url, propagation_wait_ms=20_000), peers,
                      PolicyTargets.fixed(topology))
    try:
        # the handlers sent v1 to node-c only: the reader on node-b stops waiting at its first doubt
        v1 = origin.put("chain", "preprocess", {"x": b"1"}).meta.version
        origin.record_placement("chain", "preprocess", Placement(v1, ("node-c",)))
        read = state.read("chain", "preprocess", "node-a", v1)
        assert (read.location, read.node, read.bundle.version) == ("remote", "node-a", v1)
        assert DOUBT_S * 1000 * 0.8 <= read.waited_ms < DOUBT_S * 1000 * 3
        # the record names node-b: the copy is coming, so the reader keeps waiting past its doubts
        v2 = origin.put("chain", "preprocess", {"x": b"2"}).meta.version
        origin.record_placement("chain", "preprocess", Placement(v2, ("node-b", "node-c")))
        arrive = threading.Timer(3 * DOUBT_S, lambda: here.apply(origin.get_bundle("chain", "preprocess")))
        arrive.start()
        read = state.read("chain", "preprocess", "node-a", v2)
        arrive.join()
        assert (read.location, read.node, read.bundle.version) == ("local", "node-b", v2)
        assert read.waited_ms >= 2.5 * DOUBT_S * 1000
        # a record of an older version says nothing about this one: wait (here until the copy comes)
        v3 = origin.put("chain", "preprocess", {"x": b"3"}).meta.version
        arrive = threading.Timer(2 * DOUBT_S, lambda: here.apply(origin.get_bundle("chain", "preprocess")))
        arrive.start()
        read = state.read("chain", "preprocess", "node-a", v3)
        arrive.join()
        assert (read.location, read.bundle.version) == ("local", v3) and read.waited_ms >= 1.5 * DOUBT_S * 1000
    finally:
        state.close()


def test_placement_records_round_trip_and_foreign_values_are_none():
    from skylark.state.bundle import Placement

    record = Placement(7, ("pi5u4", "pi4u8"))
    assert Placement.decode(record.encode()) == record and record.encode() == b"7 pi5u4,pi4u8"
    assert Placement.decode(b"3 ") == Placement(3, ())
    for foreign in (None, b"", b"x pi5u4", "٣ pi5u4".encode(), b"1 bad name", b"99999999999999999999 a", b"\xff"):
        assert Placement.decode(foreign) is None


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
    # random: each push went to one node drawn among the reachable ready ones, so a delete goes to all
    randomly = PolicyTargets.fixed(topology, slo, policy="random")
    [drawn] = randomly.targets("a", "f", 1_000_000, chain="c1", version=1)
    # drawn from (chain, function, version): the writer's handlers and the reader draw the same node
    assert randomly.targets("a", "f", 1_000_000, chain="c1", version=1) == [drawn]
    assert randomly.location("a", drawn.node, "f", 1_000_000, chain="c1", version=1) == drawn.node
    assert sorted(t.node for t in randomly.holders("a", "f")) == ["far", "near"]
    assert drawn.node in ("near", "far")
    assert PolicyTargets.fixed(topology, slo, policy="stateless").holders("a", "f") == []  # no cloud node


def test_without_a_propagating_policy_nothing_is_waited_for(redis_factory):
    a, b = redis_factory(), redis_factory()
    version = StateStore(connect(a.url), node="node-a").put("chain", "preprocess", {"x": b"1"}).meta.version
    settings = Settings(node="node-b", redis_url=b.url, propagation_wait_ms=300)
    # no neighbors service: no placement to ask, so the read goes to the origin without waiting
    # (whatever SKYLARK_PROPAGATION_WAIT_MS says)
    assert default_placement(settings, None, {}) == (None, None)
    state = NodeState(settings, StaticPeers.from_mapping({"node-a": {"redis_url": a.url}}))
    try:
        assert state.node == "node-b"
        read = state.read("chain", "preprocess", "node-a", version)
        assert (read.location, read.node, read.waited_ms) == ("remote", "node-a", 0) and read.elapsed_ms < 250
        assert state.ready() == (True, {"redis": "ok"})
    finally:
        state.close()


def test_peers_unknown_node_is_none_and_an_unreachable_directory_is_503():
    from neighbors_service.client import CachedTopology, NeighborsClient
    from skylark.runtime.embedded import free_port

    known = GuardedPeers(StaticPeers.from_mapping({"node-b": {"broker_url": "http://b/default/skylark"}}))
    assert known.broker_url("node-b") == "http://b/default/skylark"
    assert known.broker_url("node-x") is None and known.redis_url("node-b") is None
    down = GuardedPeers(CachedTopology(NeighborsClient(f"http://127.0.0.1:{free_port()}")))
    for lookup in (down.broker_url, down.redis_url):
        try:
            lookup("node-b")
        except StoreUnavailable as exc:
            assert "node-b" in str(exc)
        else:
            raise AssertionError("a neighbors service that does not answer must be a 503")
