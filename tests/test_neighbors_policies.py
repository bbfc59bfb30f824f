"""Election policies on small graphs, every expected answer worked out by hand in the comments.

Units: latency ms, bandwidth Mbps, size bytes. T_mig[ms] = 2·L + size·8 / (B·10^3).
1,250,000 B = 10 Mbit: 100 ms over 100 Mbps, 200 ms over 50 Mbps.
"""

from __future__ import annotations

import random

import pytest

from bench.elect import generate_topology, plain_dijkstra
from neighbors_service.paths import ShortestPathTree, shortest_path
from neighbors_service.policies import (
    SLO,
    Election,
    InvalidElection,
    elect,
    migration_time_ms,
    propagation_plan,
    propagation_targets,
)
from neighbors_service.topology import Link, Node, Topology, UnknownNode

TEN_MBIT = 1_250_000


def topo(nodes: str, links: list[tuple[str, str, float, float]], not_ready: str = "",
         cloud: str = "") -> Topology:
    return Topology(
        tuple(Node(n, "cloud" if n in cloud else "edge", ready=n not in not_ready) for n in nodes),
        tuple(Link(a, b, lat, bw) for a, b, lat, bw in links),
    )


# A —10 ms/100— B —20 ms/50— C —30 ms/100— D
CHAIN = topo("ABCD", [("A", "B", 10, 100), ("B", "C", 20, 50), ("C", "D", 30, 100)], cloud="D")
# From A with 10 Mbit:  B: 2·10 + 10/100 s = 20 + 100 = 120 ms
#                       C: 2·30 + 10/50 s  = 60 + 200 = 260 ms   (bottleneck 50, B–C)
#                       D: 2·60 + 10/50 s  = 120 + 200 = 320 ms  (bottleneck still 50)


def test_migration_time_units_bytes_to_bits_to_ms():
    # 1,000,000 B = 8,000,000 bit; over 8 Mbps = 1 s = 1000 ms; plus 2 × 5 ms.
    assert migration_time_ms(5, 8, 1_000_000) == 1010.0
    assert migration_time_ms(10, 100, TEN_MBIT) == 120.0
    assert migration_time_ms(0, 90, 0) == 0.0


@pytest.mark.parametrize(
    ("max_latency", "node", "migration", "path"),
    [
        (1000, "D", 320.0, ("A", "B", "C", "D")),
        (320, "D", 320.0, ("A", "B", "C", "D")),        # just met: <= counts
        (319.999, "C", 260.0, ("A", "B", "C")),          # just missed the destination
        (260, "C", 260.0, ("A", "B", "C")),
        (259.999, "B", 120.0, ("A", "B")),
        (120, "B", 120.0, ("A", "B")),
        (119.999, "A", 0.0, ("A",)),                     # nothing fits: stay
    ],
)
def test_skylark_walks_back_from_destination(max_latency, node, migration, path):
    election = elect(CHAIN, "A", "D", TEN_MBIT, SLO(max_latency, 10), "skylark")
    assert (election.node, election.migration_ms, election.path) == (node, migration, path)
    assert election.policy == "skylark"


def test_skylark_uses_the_path_bottleneck_not_the_last_link():
    # SLO 250: D costs 320 (bottleneck 50 on B–C). Using the last link (C–D, 100 Mbps) would give
    # 120 + 100 = 220 and wrongly pick D; C costs 260 > 250 too, so B (120) is right.
    assert elect(CHAIN, "A", "D", TEN_MBIT, SLO(250, 10)).node == "B"


def test_skylark_size_zero_is_twice_the_path_latency():
    election = elect(CHAIN, "A", "D", 0, SLO(120, 10))
    assert (election.node, election.migration_ms) == ("D", 120.0)


def test_skylark_follows_minimum_latency_not_minimum_hops():
    # S–T direct is 10 ms; S–X–Y–T is 1+1+1 = 3 ms. Size 0: T_mig = 2·3 = 6 ms.
    t = topo("SXYT", [("S", "T", 10, 100), ("S", "X", 1, 100), ("X", "Y", 1, 100), ("Y", "T", 1, 100)])
    election = elect(t, "S", "T", 0, SLO(500, 10))
    assert election.path == ("S", "X", "Y", "T")
    assert election.migration_ms == 6.0


def test_skylark_settles_a_node_once_after_a_shorter_path_appears():
    # A is first reached at 5 ms (S–A), then at 2 ms via B; T at 3 ms via S–B–A–T.
    t = topo("SABT", [("S", "A", 5, 100), ("S", "B", 1, 100), ("B", "A", 1, 100), ("A", "T", 1, 100)])
    election = elect(t, "S", "T", 0, SLO(500, 10))
    assert election.path == ("S", "B", "A", "T")
    assert election.migration_ms == 6.0


def test_skylark_avoids_links_below_min_bandwidth():
    # X–Y has only 5 Mbps: with min 10 Mbps the 3 ms route is unusable, the direct 10 ms is left.
    t = topo("SXYT", [("S", "T", 10, 100), ("S", "X", 1, 100), ("X", "Y", 1, 5), ("Y", "T", 1, 100)])
    assert elect(t, "S", "T", 0, SLO(500, 10)).path == ("S", "T")
    assert elect(t, "S", "T", 0, SLO(500, 0)).path == ("S", "X", "Y", "T")


def test_skylark_unreachable_destination_stays_on_the_current_node():
    t = topo("ABCD", [("A", "B", 10, 100), ("C", "D", 10, 100)])  # two islands
    election = elect(t, "A", "D", TEN_MBIT, SLO(10_000, 10))
    assert (election.node, election.migration_ms, election.path) == ("A", 0.0, ("A",))
    assert "unreachable" in election.reason


def test_skylark_does_not_route_through_or_to_not_ready_nodes():
    # A–B–C (B not ready) and A–D–C: the route must go through D (2·(20+20) = 80 ms at size 0).
    t = topo("ABCD", [("A", "B", 1, 100), ("B", "C", 1, 100), ("A", "D", 20, 100),
                      ("D", "C", 20, 100)], not_ready="B")
    assert elect(t, "A", "C", 0, SLO(500, 10)).path == ("A", "D", "C")
    # Destination not ready: unreachable, the state stays.
    t2 = topo("AB", [("A", "B", 1, 100)], not_ready="B")
    assert elect(t2, "A", "B", 0, SLO(500, 10)).node == "A"


def test_same_source_and_destination():
    for policy in ("skylark", "stateless"):
        election = elect(CHAIN, "B", "B", TEN_MBIT, SLO(1, 10), policy)
        assert (election.node, election.migration_ms, election.path) == ("B", 0.0, ("B",))


def test_stateless_always_chooses_the_destination():
    election = elect(CHAIN, "A", "D", TEN_MBIT, SLO(1, 10), "stateless")  # SLO ignored
    assert (election.node, election.migration_ms, election.path) == ("D", 320.0, ("A", "B", "C", "D"))
    islands = topo("ABCD", [("A", "B", 10, 100), ("C", "D", 10, 100)])
    election = elect(islands, "A", "D", TEN_MBIT, SLO(500, 10), "stateless")
    assert (election.node, election.migration_ms) == ("D", None)


def test_random_is_seeded_and_picks_only_reachable_ready_nodes():
    # Islands {A, B, C} and {D, E}; C not ready. Candidates from A: A and B.
    t = topo("ABCDE", [("A", "B", 10, 100), ("B", "C", 10, 100), ("D", "E", 10, 100)], not_ready="C")
    first = [elect(t, "A", "E", TEN_MBIT, SLO(500, 10), "random", random.Random(7)).node for _ in range(3)]
    again = [elect(t, "A", "E", TEN_MBIT, SLO(500, 10), "random", random.Random(7)).node for _ in range(3)]
    assert first == again  # same seed, same decision
    rng = random.Random(1)
    picks = {elect(t, "A", "E", TEN_MBIT, SLO(500, 10), "random", rng).node for _ in range(200)}
    assert picks == {"A", "B"}
    # The reported migration time is that of the shortest path to the pick.
    rng = random.Random(3)
    for _ in range(20):
        e = elect(t, "A", "E", TEN_MBIT, SLO(500, 10), "random", rng)
        assert e.migration_ms == (0.0 if e.node == "A" else 120.0)


def test_random_matches_its_seeded_generator():
    # Candidates in node order are [A, B, C, D] (all reachable): the pick is rng.choice of them.
    t = topo("ABCD", [("A", "B", 1, 100), ("B", "C", 1, 100), ("C", "D", 1, 100)])
    expected = random.Random(11).choice(["A", "B", "C", "D"])
    assert elect(t, "A", "D", 0, SLO(500, 10), "random", random.Random(11)).node == expected


def test_bad_input_is_rejected():
    with pytest.raises(UnknownNode):
        elect(CHAIN, "A", "Z", 0, SLO(500, 10))
    with pytest.raises(UnknownNode):
        elect(CHAIN, "Z", "A", 0, SLO(500, 10))
    for size in (-1, 1.5, True, "10"):
        with pytest.raises(InvalidElection):
            elect(CHAIN, "A", "D", size, SLO(500, 10))  # type: ignore[arg-type]
    with pytest.raises(InvalidElection):
        elect(CHAIN, "A", "D", 0, SLO(500, 10), "nearest")
    for bad in ({"max_latency_ms": 0}, {"max_latency_ms": -1}, {"min_bandwidth_mbps": -1},
                {"max_latency_ms": float("nan")}, {"max_latency_ms": True}):
        with pytest.raises(InvalidElection):
            SLO(**bad)


def test_slo_wire_form():
    assert SLO(100, 20).to_dict() == {"max_latency": 100.0, "min_bandwidth": 20.0}
    assert SLO.from_dict({"max_latency": 50}, base=SLO(100, 20)) == SLO(50, 20)
    with pytest.raises(InvalidElection):
        SLO.from_dict({"max_latency": 50})  # no base: both keys needed
    with pytest.raises(InvalidElection):
        SLO.from_dict({"max_latency_ms": 50}, base=SLO())
    e = Election("B", 120.0, ("A", "B"), "skylark", "why")
    assert Election.from_dict(e.to_dict()) == e


# Star around N, 10 Mbit bundle:
#   P: 10 ms/100 → 20 + 100 = 120    Q: 5 ms/20 → 10 + 500 = 510    U: 40 ms/100 → 80 + 100 = 180
#   R: 1 ms/5 Mbps (below min 10)    S: ready=False
STAR = topo("NPQRSU", [("N", "P", 10, 100), ("N", "Q", 5, 20), ("N", "R", 1, 5), ("N", "S", 1, 100),
                       ("N", "U", 40, 100)], not_ready="S")


@pytest.mark.parametrize(
    ("slo", "expected"),
    [
        (SLO(500, 10), ["P", "U"]),
        (SLO(180, 10), ["P", "U"]),          # U just met
        (SLO(179.999, 10), ["P"]),           # U just missed
        (SLO(510, 10), ["P", "U", "Q"]),     # fastest first
        (SLO(119, 10), []),
        (SLO(2002, 0), ["P", "U", "Q", "R"]),  # R: 2 + 10 Mbit / 5 Mbps = 2002 ms, allowed at 0 Mbps
    ],
)
def test_skylark_propagation_targets(slo, expected):
    assert propagation_targets(STAR, "N", TEN_MBIT, slo, "skylark") == expected


def test_propagation_plan_reports_single_hop_times():
    plan = propagation_plan(STAR, "N", TEN_MBIT, SLO(510, 10), "skylark")
    assert [(t.node, t.migration_ms) for t in plan] == [("P", 120.0), ("U", 180.0), ("Q", 510.0)]


def test_random_and_stateless_propagation():
    rng = random.Random(5)
    picks = [propagation_targets(STAR, "N", TEN_MBIT, SLO(1, 10), "random", rng) for _ in range(300)]
    assert all(len(p) == 1 for p in picks)
    assert {p[0] for p in picks} == {"P", "Q", "R", "U"}  # every ready neighbour, S never
    assert propagation_targets(STAR, "N", TEN_MBIT, SLO(500, 10), "stateless") == []
    lonely = topo("AB", [("A", "B", 1, 100)], not_ready="B")
    assert propagation_targets(lonely, "A", 0, SLO(500, 10), "random", random.Random(0)) == []
    with pytest.raises(UnknownNode):
        propagation_targets(STAR, "Z", 0, SLO(), "skylark")


@pytest.mark.parametrize("n", [10, 60, 400])
def test_bidirectional_search_agrees_with_plain_dijkstra(n):
    # On the benchmark's random graphs, every shortest path has the plain Dijkstra's length,
    # starts and ends where asked, and uses existing links whose latencies add up.
    topology = generate_topology(n, seed=n)
    adj = topology.adjacency()
    plain = [[(v, w) for v, w, _ in out] for out in adj.edges]
    rng = random.Random(n)
    for _ in range(60):
        a, b = rng.randrange(n), rng.randrange(n)
        path = shortest_path(adj, a, b)
        assert path is not None and path.nodes[0] == a and path.nodes[-1] == b
        assert path.latency_ms == pytest.approx(plain_dijkstra(plain, a, b))
        for (u, v), w in zip(zip(path.nodes, path.nodes[1:]), path.hop_latency_ms):
            assert topology.link(adj.names[u], adj.names[v]).latency_ms == w
        tree = ShortestPathTree(adj, a)
        assert tree.dist[b] == pytest.approx(path.latency_ms)
