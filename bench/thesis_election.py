"""The thesis's election-cost experiment (part of ``bench thesis``): decision time vs graph size.

The graphs are ``bench elect``'s (the thesis's shape: random, degree ~4, latencies 2–10 ms;
bandwidths 10–100 Mbit/s). Timed per decision, interleaved per graph so that machine noise hits
all three alike: the full election between a random pair (``policies.elect``, what the
neighbors service's ``/elect`` answers), its floor (a plain heapq Dijkstra from the same source
to the same target, same graph), and the data-path decision the handlers and functions take per
event (``Placer.toward`` on a cached shortest-path tree per writer; the first decision of a
writer builds its tree: ``tree_ms``). Every sample is kept.
"""

from __future__ import annotations

import random
import time
from collections.abc import Sequence

from bench.elect import THESIS_MS, generate_topology, plain_dijkstra
from neighbors_service.placement import Placer
from neighbors_service.policies import SLO, elect

__all__ = ["THESIS_MS", "run"]


def _ms(fn, *args) -> float:  # noqa: ANN001
    start = time.perf_counter()
    fn(*args)
    return (time.perf_counter() - start) * 1000


def run(sizes: Sequence[int], repeat: int, *, seed: int = 42, size_bytes: int = 1_000_000,
        writers: int = 4) -> dict:
    slo = SLO(max_latency_ms=500.0, min_bandwidth_mbps=10.0)
    out = {"size_bytes": size_bytes, "slo_ms": slo.max_latency_ms, "repeat": repeat, "graphs": []}
    for n in sizes:
        topology = generate_topology(n, seed=seed)
        adjacency_ms = _ms(topology.adjacency, slo.min_bandwidth_mbps)
        adj = topology.adjacency(slo.min_bandwidth_mbps)
        floor_edges = [[(v, w) for v, w, _ in out_edges] for out_edges in adj.edges]
        rng = random.Random(seed + n)
        names = adj.names
        pairs = [(rng.randrange(n), rng.randrange(n)) for _ in range(repeat)]
        placer = Placer(policy="skylark", slo=slo)
        sources = list(dict.fromkeys(rng.randrange(n) for _ in range(writers)))
        tree_ms = [_ms(placer.toward, topology, names[w], names[(w + 1) % n], size_bytes) for w in sources]
        for a, b in pairs[:3]:  # warm-up
            elect(topology, names[a], names[b], size_bytes, slo, "skylark")
            plain_dijkstra(floor_edges, a, b)
        full, floor, decision = [], [], []
        for i, (a, b) in enumerate(pairs):
            full.append(_ms(elect, topology, names[a], names[b], size_bytes, slo, "skylark"))
            floor.append(_ms(plain_dijkstra, floor_edges, a, b))
            decision.append(_ms(placer.toward, topology, names[sources[i % len(sources)]], names[b], size_bytes))
        out["graphs"].append({"nodes": n, "links": len(topology.links), "adjacency_ms": adjacency_ms,
                              "tree_ms": tree_ms, "elect_ms": full, "floor_ms": floor, "decision_ms": decision,
                              "thesis_ms": THESIS_MS.get(n)})
    return out
