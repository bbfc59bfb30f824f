"""The election in the data path (neighbors_service.placement): where the handlers push a bundle,
where its reader looks for it, where a delete's tombstone goes — checked against the full
election (``policies.elect``) on the thesis testbed and on random graphs."""

from __future__ import annotations

import random

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ex_workflows import example_path
from neighbors_service.placement import Placer, TreeCache, seeded_rng
from neighbors_service.policies import SLO, elect, migration_time_ms, propagation_targets
from neighbors_service.sources.file import load_topology_file
from neighbors_service.targets import PolicyTargets
from neighbors_service.topologies import example_path as topology_path
from neighbors_service.topology import Link, Node, Topology
from skylark.workflow import load_workflow

THESIS = load_topology_file(topology_path("thesis")).snapshot(0)  # cloud pi5u1 linked to pi5u2
WORKFLOW = load_workflow(example_path("thesis"))  # preprocess@pi5u2 → detect-1@pi5u4 → detect-2@pi4u6 → alarm@pi5u1


def with_slo(max_latency_ms: float, policy: str = "skylark"):
    document = WORKFLOW.to_document()
    document["spec"]["slo"]["max_latency_ms"] = max_latency_ms
    document["spec"]["policy"] = policy
    return type(WORKFLOW).from_document(document)


@pytest.mark.parametrize(("size", "max_latency", "expected"), [
    # pi5u2 → pi5u3 (10 ms) → pi5u4 (15 ms), 90 Mbit/s: T = 2·L + size·8/90e3 ms
    (100_000, 120, "pi5u4"),     # 50 + 8.9 fits: the reader's own node
    (1_000_000, 120, "pi5u3"),   # 50 + 88.9 does not, 20 + 88.9 does: one hop before it
    (2_000_000, 120, "pi5u2"),   # nothing fits: it stays
])
def test_the_bundle_goes_to_the_node_elected_toward_its_reader(size, max_latency, expected):
    workflow = with_slo(max_latency)
    placer = Placer(workflow)
    slo = SLO(max_latency, workflow.slo.min_bandwidth_mbps)
    assert elect(THESIS, "pi5u2", "pi5u4", size, slo).node == expected
    targets = placer.targets(THESIS, "pi5u2", "preprocess", size, chain="c", version=1)
    assert targets == ([] if expected == "pi5u2" else [expected])
    # the reader (detect-1, on pi5u4) computes the same place: its own node, the copy on the way, or the origin
    assert placer.location(THESIS, "pi5u2", "pi5u4", "preprocess", size, chain="c", version=1,
                           reader="detect-1") == expected


def test_every_reader_gets_its_own_election():
    """notify-like fan-out: a function read by two pinned readers is pushed toward both."""
    document = WORKFLOW.to_document()
    document["spec"]["functions"][3]["reads"] = ["detect-2", "preprocess"]  # alarm@pi5u1 reads preprocess too
    workflow = type(WORKFLOW).from_document(document)
    placer = Placer(workflow)
    slo = SLO(workflow.slo.max_latency_ms, workflow.slo.min_bandwidth_mbps)
    size = 50_000
    expected = [elect(THESIS, "pi5u2", d, size, slo).node for d in ("pi5u4", "pi5u1")]
    assert expected == ["pi5u4", "pi5u1"]
    assert placer.targets(THESIS, "pi5u2", "preprocess", size) == expected
    # state nobody reads stays where it was written
    assert placer.targets(THESIS, "pi5u1", "alarm", size) == []


def test_baselines_are_named_for_what_they_do():
    size = 100_000
    stateless = Placer(with_slo(500, "stateless"))
    # the thesis's stateless: every state to the store node (the cloud), every reader reads there
    assert stateless.targets(THESIS, "pi5u2", "preprocess", size) == ["pi5u1"]
    assert stateless.location(THESIS, "pi5u2", "pi5u4", "preprocess", size, reader="detect-1") == "pi5u1"
    assert stateless.targets(THESIS, "pi5u1", "detect-2", size) == []  # written there already
    pull = Placer(with_slo(500, "pull"))
    assert pull.targets(THESIS, "pi5u2", "preprocess", size) == []
    assert pull.location(THESIS, "pi5u2", "pi5u4", "preprocess", size, reader="detect-1") == "pi5u2"
    assert pull.holders(THESIS, "pi5u2", "preprocess") == []
    # random: one draw per bundle version, the same for the writer's handlers and every reader
    rnd = Placer(with_slo(500, "random"))
    reachable = [n.name for n in THESIS.nodes]
    seen = set()
    for version in range(1, 40):
        drawn = seeded_rng("c", "preprocess", version).choice(reachable)
        seen.add(drawn)
        assert rnd.targets(THESIS, "pi5u2", "preprocess", size, chain="c", version=version) == (
            [] if drawn == "pi5u2" else [drawn])
        assert rnd.location(THESIS, "pi5u2", "pi5u4", "preprocess", size, chain="c", version=version,
                            reader="detect-1") == drawn
    assert len(seen) >= 5
    assert set(rnd.holders(THESIS, "pi5u2", "preprocess")) == set(reachable) - {"pi5u2"}


def test_without_a_workflow_the_neighbours_fitting_the_slo_get_it():
    slo = SLO(100, 10)
    placer = Placer(policy="skylark", slo=slo)
    size = 200_000
    assert placer.targets(THESIS, "pi5u3", "anything", size) == propagation_targets(THESIS, "pi5u3", size, slo)
    assert placer.location(THESIS, "pi5u3", "pi5u4", "anything", size) == "pi5u4"
    assert placer.location(THESIS, "pi5u3", "pi4u6", "anything", size) == "pi5u3"  # not a neighbour: origin
    # a reader that runs on any node of a workflow: the same
    document = WORKFLOW.to_document()
    document["spec"]["functions"][1]["node"] = "any"
    anywhere = Placer(type(WORKFLOW).from_document(document))
    assert anywhere.targets(THESIS, "pi5u2", "preprocess", 10_000) == ["pi5u3", "pi5u1"]  # fastest first


def test_holders_cover_every_place_an_earlier_version_may_be():
    placer = Placer(with_slo(120))
    holders = set(placer.holders(THESIS, "pi5u2", "preprocess"))
    for size in (0, 100_000, 1_000_000, 2_000_000, 50_000_000):
        assert set(placer.targets(THESIS, "pi5u2", "preprocess", size)) <= holders
    assert holders == {"pi5u3", "pi5u4"}


def test_the_trees_are_built_once_per_snapshot_and_dropped_when_it_changes():
    trees = TreeCache()
    placer = Placer(with_slo(120), trees=trees)
    for version in range(50):
        placer.targets(THESIS, "pi5u2", "preprocess", 1_000_000, chain="c", version=version)
    assert trees.builds == 1
    same = Topology(THESIS.nodes, THESIS.links)  # a new snapshot object, equal to the last
    placer.targets(same, "pi5u2", "preprocess", 1_000_000)
    assert trees.builds == 1
    moved = load_topology_file(topology_path("thesis")).snapshot(3)
    placer.targets(moved, "pi5u2", "preprocess", 1_000_000)
    assert trees.builds == 2


def test_policy_targets_attach_the_brokers():
    topology = Topology(tuple(Node(n.name, n.type, broker_url=f"http://{n.name}.local/" if n.name != "pi5u3" else "")
                              for n in THESIS.nodes), THESIS.links)
    targets = PolicyTargets.fixed(topology, workflow=with_slo(120))
    # pi5u3 has no broker address: nothing could deliver there, so it is left out
    assert targets.targets("pi5u2", "preprocess", 1_000_000) == []
    assert [t.node for t in targets.targets("pi5u2", "preprocess", 100_000)] == ["pi5u4"]
    assert targets.location("pi5u2", "pi5u4", "preprocess", 1_000_000, reader="detect-1") == "pi5u3"


def random_topology(rng: random.Random, n: int) -> Topology:
    """A connected graph: a random spanning tree plus extra links; float latencies, so that
    shortest paths are unique and both searches must find the same one."""
    nodes = tuple(Node(f"n{i}", ready=rng.random() > 0.1 or i == 0) for i in range(n))
    pairs = {(rng.randrange(i), i) for i in range(1, n)}
    pairs |= {tuple(sorted(rng.sample(range(n), 2))) for _ in range(n)}
    links = tuple(Link(f"n{a}", f"n{b}", rng.uniform(1, 40), rng.choice((5.0, 30.0, 90.0, 1000.0)))
                  for a, b in sorted(pairs))
    return Topology(nodes, links)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 2**32 - 1), n=st.integers(2, 60), size=st.integers(0, 20_000_000),
       max_latency=st.floats(1, 1000), min_bandwidth=st.sampled_from([0.0, 10.0, 50.0]))
def test_the_data_path_decision_equals_the_full_election(seed, n, size, max_latency, min_bandwidth):
    rng = random.Random(seed)
    topology = random_topology(rng, n)
    slo = SLO(max_latency, min_bandwidth)
    placer = Placer(policy="skylark", slo=slo)
    origin, destination = f"n{rng.randrange(n)}", f"n{rng.randrange(n)}"
    full = elect(topology, origin, destination, size, slo)
    assert placer.toward(topology, origin, destination, size) == full.node
    if full.node != origin:  # and the time the election promised does fit
        assert full.migration_ms <= max_latency
        assert full.migration_ms == pytest.approx(migration_time_ms(
            sum(topology.link(a, b).latency_ms for a, b in zip(full.path, full.path[1:])),
            min(topology.link(a, b).bandwidth_mbps for a, b in zip(full.path, full.path[1:])), size))
