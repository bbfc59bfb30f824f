"""The pure topology model and the YAML file source (each snapshot of the shipped examples)."""

from __future__ import annotations

import pytest

from neighbors_service.policies import SLO, elect
from neighbors_service.sources.file import FileTopologySource, load_topology_file
from neighbors_service.topologies import example_path
from neighbors_service.topology import Link, Node, Topology, TopologyError, UnknownNode
from skylark.state.errors import ConfigError

SATELLITES = ["pi5u2", "pi5u3", "pi5u4", "pi4u5", "pi4u6", "pi4u8", "pi4p1"]
CLOUD_LATENCY = [50, 46, 42, 38, 33, 29, 25]


def small() -> Topology:
    return Topology(
        (Node("a", "edge", "redis://a:1/0", "http://a"), Node("b", "satellite"), Node("c", "cloud", ready=False)),
        (Link("a", "b", 10, 90), Link("b", "c", 25.5, 30)),
    )


def test_lookups():
    t = small()
    assert t.node("a").redis_url == "redis://a:1/0"
    assert [n.name for n in t.neighbors("b")] == ["a", "c"]
    assert t.link("c", "b") == Link("b", "c", 25.5, 30)
    assert t.link("a", "c") is None
    assert "a" in t and "z" not in t
    with pytest.raises(UnknownNode) as info:
        t.node("z")
    assert isinstance(info.value, LookupError)
    with pytest.raises(UnknownNode):
        t.neighbors("z")


def test_json_round_trip():
    t = Topology((Node("a", labels={"zone": "leo"}), Node("b")), (Link("a", "b", 1, 2),))
    data = t.to_dict()
    assert data["nodes"][0] == {"name": "a", "type": "edge", "redis_url": "", "broker_url": "",
                                "ready": True, "labels": {"zone": "leo"}}
    assert Topology.from_dict(data) == t
    assert Topology.from_dict({**data, "source": {"anything": 1}}) == t


@pytest.mark.parametrize(
    ("nodes", "links", "message"),
    [
        ([Node("a"), Node("a")], [], "twice"),
        ([Node("a")], [Link("a", "b", 1, 1)], "'b' is not in the topology"),
        ([Node("a"), Node("b")], [Link("a", "b", 1, 1), Link("b", "a", 2, 2)], "twice"),
    ],
)
def test_invalid_topologies(nodes, links, message):
    with pytest.raises(TopologyError, match=message):
        Topology(tuple(nodes), tuple(links))


@pytest.mark.parametrize(
    "build",
    [
        lambda: Node("bad name"),
        lambda: Node("a", type="fog"),
        lambda: Node("a", ready="yes"),
        lambda: Link("a", "a", 1, 1),
        lambda: Link("a", "b", -1, 1),
        lambda: Link("a", "b", 1, 0),
        lambda: Link("a", "b", float("inf"), 1),
        lambda: Link("a", "b", "1", 1),
        lambda: Link.from_dict({"a": "a", "b": "b", "latency_ms": 1}),
        lambda: Node.from_dict({"name": "a", "colour": "red"}),
    ],
)
def test_invalid_parts(build):
    with pytest.raises(TopologyError):
        build()


def test_adjacency_is_cached_and_drops_edges_into_not_ready_nodes():
    t = small()
    adj = t.adjacency(0)
    assert t.adjacency(0) is adj
    ia, ib, ic = (adj.index[n] for n in "abc")
    assert adj.edges[ib] == ((ia, 10.0, 90.0),)      # b→c left out: c is not ready
    assert adj.edges[ic] == ((ib, 25.5, 30.0),)      # c may still send its state away
    assert t.adjacency(50).edges[ia] == ((ib, 10.0, 90.0),)
    assert t.adjacency(91).edges[ia] == ()


def test_with_addresses():
    t = small().with_addresses({"b": ("redis://127.0.0.1:7001/0", "http://127.0.0.1:9001")})
    assert t.node("b").redis_url == "redis://127.0.0.1:7001/0"
    assert t.node("b").broker_url == "http://127.0.0.1:9001"
    assert t.node("a").redis_url == "redis://a:1/0"
    with pytest.raises(UnknownNode):
        small().with_addresses({"z": ("redis://x:1/0", "http://x")})


# -- file source -------------------------------------------------------------------------------


@pytest.mark.parametrize("i", range(7))
def test_thesis_snapshot(i):
    clock_now = [i * 60 + 30.0]
    source = load_topology_file(example_path("thesis"), clock=lambda: clock_now[0])
    assert source.snapshot_count == 7
    current = source.current()
    assert current == source.snapshot(i)
    assert current.node("pi5u1").type == "cloud"
    assert {n.type for n in current.nodes if n.name != "pi5u1"} == {"satellite"}
    # The chain is in every snapshot, 90 Mbps, 10–20 ms.
    for a, b in zip(SATELLITES, SATELLITES[1:]):
        link = current.link(a, b)
        assert link.bandwidth_mbps == 90 and 10 <= link.latency_ms <= 20
    # Exactly one cloud link, to satellite i, 30 Mbps, 25–50 ms.
    cloud_links = current.links_of("pi5u1")
    assert len(cloud_links) == 1
    assert cloud_links[0].other("pi5u1") == SATELLITES[i]
    assert (cloud_links[0].latency_ms, cloud_links[0].bandwidth_mbps) == (CLOUD_LATENCY[i], 30)
    assert source.next() == source.snapshot((i + 1) % 7)
    assert source.status()["snapshot"] == i


def test_thesis_snapshots_follow_the_clock_and_wrap():
    now = [0.0]
    source = load_topology_file(example_path("thesis"), clock=lambda: now[0])
    seen = []
    for t in (0, 59.9, 60, 419.9, 420, 421 + 60):
        now[0] = t
        seen.append(source.current_index())
    assert seen == [0, 0, 1, 6, 0, 1]
    now[0] = 6 * 60 + 1
    assert source.next() == source.snapshot(0)
    with pytest.raises(IndexError):
        source.snapshot(7)


def test_election_on_thesis_snapshot_3_by_hand():
    # Snapshot 3: the cloud hangs off pi4u5 (38 ms, 30 Mbps). From pi5u2 the path is
    # pi5u2 –10– pi5u3 –15– pi5u4 –20– pi4u5 –38– pi5u1: L = 83 ms, bottleneck 30 Mbps.
    # 1,000,000 B = 8 Mbit: 8/30 s = 266.667 ms → T_mig = 166 + 266.667 = 432.667 ms.
    # With max 400 ms: pi4u5 (L = 45, 90 Mbps): 90 + 88.889 = 178.889 ms.
    source = load_topology_file(example_path("thesis"), clock=lambda: 3 * 60 + 1)
    topology = source.current()
    e = elect(topology, "pi5u2", "pi5u1", 1_000_000, SLO(500, 10))
    assert e.node == "pi5u1" and e.path == ("pi5u2", "pi5u3", "pi5u4", "pi4u5", "pi5u1")
    assert e.migration_ms == pytest.approx(166 + 8e6 / 30e6 * 1e3)
    e = elect(topology, "pi5u2", "pi5u1", 1_000_000, SLO(400, 10))
    assert e.node == "pi4u5" and e.migration_ms == pytest.approx(90 + 8e6 / 90e6 * 1e3)


def test_demo3():
    source = load_topology_file(example_path("demo3"))
    assert source.snapshot_count == 1
    t = source.current()
    assert [n.name for n in t.nodes] == ["node-a", "node-b", "node-c"]
    assert t.node("node-c").type == "cloud"
    assert t.link("node-a", "node-b") is not None and t.link("node-b", "node-c") is not None
    assert t.link("node-a", "node-c") is None
    assert source.next() == t


def test_with_addresses_on_a_file_source_changes_every_snapshot():
    source = load_topology_file(example_path("thesis"))
    mapped = source.with_addresses({n: (f"redis://127.0.0.1:{7000 + i}/0", f"http://127.0.0.1:{9000 + i}")
                                    for i, n in enumerate(["pi5u1", *SATELLITES])})
    for i in range(7):
        assert mapped.snapshot(i).node("pi4p1").redis_url == "redis://127.0.0.1:7007/0"
        assert source.snapshot(i).node("pi4p1").redis_url.endswith(".invalid:6379/0")  # original kept


def write(tmp_path, text: str):
    path = tmp_path / "topology.yaml"
    path.write_text(text)
    return path


def test_single_links_list_and_epoch(tmp_path):
    path = write(tmp_path, """
snapshot_interval_s: 10
epoch_s: 5
nodes:
  - {name: x, type: edge}
  - {name: y, type: cloud, redis_url: "redis://127.0.0.1:7001/0"}
snapshots:
  - [{a: x, b: y, latency_ms: 1, bandwidth_mbps: 10}]
  - [{a: x, b: y, latency_ms: 2, bandwidth_mbps: 10}]
""")
    now = [14.9]
    source = FileTopologySource(path, clock=lambda: now[0])
    assert source.current().link("x", "y").latency_ms == 1   # (14.9 - 5) // 10 = 0
    now[0] = 15.0
    assert source.current().link("x", "y").latency_ms == 2
    only_links = write(tmp_path, "nodes: [{name: x}, {name: y}]\nlinks: [{a: x, b: y, latency_ms: 3, bandwidth_mbps: 4}]\n")
    assert FileTopologySource(only_links).current().link("y", "x").bandwidth_mbps == 4


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("nodes: [", "not valid YAML"),
        ("- 1\n- 2\n", "must be a mapping"),
        ("nodes: []\n", "non-empty list"),
        ("nodes: [{name: x}]\ncolour: red\n", "unknown keys"),
        ("nodes: [{name: x}]\nlinks: [{a: x, b: y, latency_ms: 1, bandwidth_mbps: 1}]\n", "'y' is not in"),
        ("nodes: [{name: x}, {name: y}]\nlinks: [{a: x, b: y, latency_ms: -1, bandwidth_mbps: 1}]\n", "latency_ms"),
        ("nodes: [{name: x}, {name: y}]\nlinks: [{a: x, b: y, latency_ms: 1, bandwidth_mbps: 1}]\n"
         "snapshots: [[{a: y, b: x, latency_ms: 1, bandwidth_mbps: 1}]]\n", "snapshot 0: link y–x appears twice"),
        ("nodes: [{name: x}]\nsnapshot_interval_s: 0\n", "snapshot_interval_s"),
        ("nodes: [{name: x, type: fog}]\n", "type 'fog'"),
    ],
)
def test_bad_topology_files(tmp_path, text, message):
    with pytest.raises(ConfigError, match=message):
        FileTopologySource(write(tmp_path, text))


def test_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="cannot read topology file"):
        load_topology_file(tmp_path / "absent.yaml")
    with pytest.raises(ValueError):
        example_path("mars")
