"""Shortest-latency paths on an :class:`~neighbors_service.topology.Adjacency` (pure).

Binary-heap Dijkstra with a visited set: every node is settled once, stale heap entries are
skipped, and a point-to-point query stops as soon as the target is settled. Ties between equal
distances are broken by node index (the order of the nodes in the topology), so results are
deterministic.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from heapq import heappop, heappush

from neighbors_service.topology import Adjacency


@dataclass(frozen=True)
class Path:
    """A route as node indices, with per-hop metrics (``hops[k]`` leads to ``nodes[k + 1]``)."""

    nodes: tuple[int, ...]
    hop_latency_ms: tuple[float, ...]
    hop_bandwidth_mbps: tuple[float, ...]

    @property
    def latency_ms(self) -> float:
        return sum(self.hop_latency_ms)


def _dijkstra(adj: Adjacency, source: int, target: int | None) -> tuple[list[float], list[int]]:
    n = len(adj.names)
    edges = adj.edges
    dist = [math.inf] * n
    prev = [-1] * n
    visited = [False] * n
    dist[source] = 0.0
    heap: list[tuple[float, int]] = [(0.0, source)]
    while heap:
        d, u = heappop(heap)
        if visited[u]:
            continue  # a stale entry: u was settled through a shorter path already
        visited[u] = True
        if u == target:
            break
        for v, w, _bw in edges[u]:
            if not visited[v]:
                nd = d + w
                if nd < dist[v]:
                    dist[v] = nd
                    prev[v] = u
                    heappush(heap, (nd, v))
    return dist, prev


def _walk_back(adj: Adjacency, prev: list[int], source: int, target: int) -> Path:
    order = [target]
    while order[-1] != source:
        order.append(prev[order[-1]])
    order.reverse()
    lat: list[float] = []
    bw: list[float] = []
    for u, v in zip(order, order[1:]):
        # The cheapest of the u→v edges is the one Dijkstra relaxed (at most one link per pair).
        _, w, b = next(e for e in adj.edges[u] if e[0] == v)
        lat.append(w)
        bw.append(b)
    return Path(tuple(order), tuple(lat), tuple(bw))


def shortest_path(adj: Adjacency, source: int, target: int) -> Path | None:
    """The minimum-latency path from ``source`` to ``target``, or None if unreachable."""
    dist, prev = _dijkstra(adj, source, target)
    if math.isinf(dist[target]):
        return None
    return _walk_back(adj, prev, source, target)


class ShortestPathTree:
    """All minimum-latency paths from one source (full Dijkstra)."""

    def __init__(self, adj: Adjacency, source: int) -> None:
        self._adj = adj
        self.source = source
        self.dist, self._prev = _dijkstra(adj, source, None)

    def reachable(self) -> list[int]:
        """Indices of the nodes reachable from the source (the source included), in index order."""
        return [i for i, d in enumerate(self.dist) if not math.isinf(d)]

    def path_to(self, target: int) -> Path | None:
        if math.isinf(self.dist[target]):
            return None
        return _walk_back(self._adj, self._prev, self.source, target)
