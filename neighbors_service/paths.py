"""Shortest-latency paths on an :class:`~neighbors_service.topology.Adjacency` (pure).

Binary-heap Dijkstra with a visited (settled) set: every node is settled once and stale heap
entries are skipped. A point-to-point query (:func:`shortest_path`) runs it from both ends at
once (bidirectional Dijkstra) and stops when the two frontiers prove no shorter path can exist
(``top_forward + top_backward >= best``): on the thesis's random degree-4 graphs that settles a
few hundred nodes instead of thousands. Heap entries are ``(distance, node index)``, so among
equally short paths the same one is always returned (deterministic, not necessarily the one
through the lowest index).
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


def _dijkstra(adj: Adjacency, source: int) -> tuple[list[float], list[int]]:
    """Single-source Dijkstra over the whole reachable graph: (distances, predecessors)."""
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
    return _hops(adj, order)


def _hops(adj: Adjacency, order: list[int]) -> Path:
    lat: list[float] = []
    bw: list[float] = []
    for u, v in zip(order, order[1:]):
        # There is at most one link per pair of nodes, so at most one u→v edge.
        _, w, b = next(e for e in adj.edges[u] if e[0] == v)
        lat.append(w)
        bw.append(b)
    return Path(tuple(order), tuple(lat), tuple(bw))


class _Frontier:
    """One side of the bidirectional search: distances from its root along its edges."""

    def __init__(self, root: int, edges) -> None:  # noqa: ANN001 - Adjacency.edges or .reverse
        self.edges = edges
        self.dist: dict[int, float] = {root: 0.0}
        self.via: dict[int, int] = {}  # the node each one was reached from, towards the root
        self.done: set[int] = set()
        self.heap: list[tuple[float, int]] = [(0.0, root)]

    def settle(self, other: dict[int, float], best: float, meet: int) -> tuple[float, int]:
        """Settle the nearest open node; returns the best (length, meeting node) known since."""
        d, u = heappop(self.heap)
        if u in self.done:
            return best, meet
        self.done.add(u)
        dist, inf = self.dist, math.inf
        for v, w, _bw in self.edges[u]:
            nd = d + w
            if v not in self.done and nd < dist.get(v, inf):
                dist[v] = nd
                self.via[v] = u
                heappush(self.heap, (nd, v))
                there = other.get(v)
                if there is not None and nd + there < best:
                    best, meet = nd + there, v
        return best, meet


def shortest_path(adj: Adjacency, source: int, target: int) -> Path | None:
    """The minimum-latency path from ``source`` to ``target``, or None if unreachable."""
    if source == target:
        return Path((source,), (), ())
    forward, backward = _Frontier(source, adj.edges), _Frontier(target, adj.reverse)
    best, meet = math.inf, -1
    while forward.heap and backward.heap:
        if forward.heap[0][0] + backward.heap[0][0] >= best:
            break  # every unexplored path is at least as long as the best one found
        # Grow the smaller frontier: keeps the two searches balanced.
        if len(forward.heap) <= len(backward.heap):
            best, meet = forward.settle(backward.dist, best, meet)
        else:
            best, meet = backward.settle(forward.dist, best, meet)
    if meet < 0:
        return None
    order = [meet]
    while order[-1] != source:
        order.append(forward.via[order[-1]])
    order.reverse()
    while order[-1] != target:
        order.append(backward.via[order[-1]])
    return _hops(adj, order)


class ShortestPathTree:
    """All minimum-latency paths from one source (full Dijkstra)."""

    def __init__(self, adj: Adjacency, source: int) -> None:
        self._adj = adj
        self.source = source
        self.dist, self._prev = _dijkstra(adj, source)

    def reachable(self) -> list[int]:
        """Indices of the nodes reachable from the source (the source included), in index order."""
        return [i for i, d in enumerate(self.dist) if not math.isinf(d)]

    def path_to(self, target: int) -> Path | None:
        if math.isinf(self.dist[target]):
            return None
        return _walk_back(self._adj, self._prev, self.source, target)
