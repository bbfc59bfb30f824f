"""The network topology model: nodes, undirected links and their metrics (pure, no I/O).

A :class:`Topology` is immutable. Everything derived from it that the election policies need on
every call (an integer-indexed adjacency list, optionally restricted to links that meet a minimum
bandwidth) is built once per topology and cached on the instance, so a decision on a
10,000-node graph does not pay for building the graph again.

Units, everywhere in this package: latency in milliseconds (``latency_ms``), bandwidth in
megabits per second (``bandwidth_mbps``, 1 Mbps = 10^6 bit/s), sizes in bytes.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from skylark.state.errors import SkylarkError
from skylark.state.names import validate_name

NODE_TYPES = ("cloud", "edge", "satellite")


class TopologyError(SkylarkError, ValueError):
    """A topology (file, API object or JSON) is malformed: unknown node in a link, bad metric..."""

    code = "invalid_topology"


class UnknownNode(SkylarkError, LookupError):
    """A node name that is not part of the topology."""

    code = "unknown_node"

    def __init__(self, name: str) -> None:
        super().__init__(f"node {name!r} is not in the topology")
        self.name = name


@dataclass(frozen=True)
class Node:
    """One node: where its Redis and its broker are, and whether it can take state now."""

    name: str
    type: str = "edge"
    redis_url: str = ""
    broker_url: str = ""
    ready: bool = True
    # Free-form metadata (the Kubernetes node labels, or ``labels:`` in a topology file).
    labels: Mapping[str, str] = field(default_factory=dict, hash=False)

    def __post_init__(self) -> None:
        try:
            validate_name("node name", self.name)
        except SkylarkError as exc:
            raise TopologyError(str(exc)) from None
        if self.type not in NODE_TYPES:
            raise TopologyError(
                f"node {self.name!r}: type {self.type!r} must be one of {', '.join(NODE_TYPES)}"
            )
        if not isinstance(self.ready, bool):
            raise TopologyError(f"node {self.name!r}: ready must be true or false")
        object.__setattr__(self, "labels", {str(k): str(v) for k, v in dict(self.labels).items()})

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "type": self.type,
            "redis_url": self.redis_url,
            "broker_url": self.broker_url,
            "ready": self.ready,
            "labels": dict(self.labels),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "Node":
        if not isinstance(data, Mapping):
            raise TopologyError(f"a node must be an object, not {type(data).__name__}")
        unknown = set(data) - {"name", "type", "redis_url", "broker_url", "ready", "labels"}
        if unknown:
            raise TopologyError(f"node {data.get('name')!r}: unknown keys {sorted(unknown)}")
        labels = data.get("labels") or {}
        if not isinstance(labels, Mapping):
            raise TopologyError(f"node {data.get('name')!r}: labels must be a mapping")
        return cls(
            name=data.get("name"),  # type: ignore[arg-type]  # validated in __post_init__
            type=data.get("type", "edge"),
            redis_url=str(data.get("redis_url") or ""),
            broker_url=str(data.get("broker_url") or ""),
            ready=data.get("ready", True),
            labels=labels,
        )


def _metric(owner: str, name: str, value: object, positive: bool) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise TopologyError(f"link {owner}: {name} must be a finite number, not {value!r}")
    if value < 0 or (positive and value == 0):
        raise TopologyError(f"link {owner}: {name} must be {'> 0' if positive else '>= 0'}")
    return float(value)


@dataclass(frozen=True)
class Link:
    """An undirected link between nodes ``a`` and ``b``."""

    a: str
    b: str
    latency_ms: float
    bandwidth_mbps: float

    def __post_init__(self) -> None:
        owner = f"{self.a}–{self.b}"
        if self.a == self.b:
            raise TopologyError(f"link {owner}: a node cannot link to itself")
        object.__setattr__(self, "latency_ms", _metric(owner, "latency_ms", self.latency_ms, False))
        object.__setattr__(
            self, "bandwidth_mbps", _metric(owner, "bandwidth_mbps", self.bandwidth_mbps, True)
        )

    def other(self, name: str) -> str:
        """The end of the link that is not ``name``."""
        return self.b if name == self.a else self.a

    def to_dict(self) -> dict[str, Any]:
        return {"a": self.a, "b": self.b, "latency_ms": self.latency_ms,
                "bandwidth_mbps": self.bandwidth_mbps}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "Link":
        if not isinstance(data, Mapping):
            raise TopologyError(f"a link must be an object, not {type(data).__name__}")
        missing = {"a", "b", "latency_ms", "bandwidth_mbps"} - set(data)
        if missing:
            raise TopologyError(f"link {dict(data)!r}: missing {sorted(missing)}")
        unknown = set(data) - {"a", "b", "latency_ms", "bandwidth_mbps"}
        if unknown:
            raise TopologyError(f"link {data.get('a')}–{data.get('b')}: unknown keys {sorted(unknown)}")
        return cls(str(data["a"]), str(data["b"]), data["latency_ms"], data["bandwidth_mbps"])


@dataclass(frozen=True)
class Adjacency:
    """Integer-indexed directed adjacency lists of a topology (built once, read-only).

    ``edges[u]`` lists ``(v, latency_ms, bandwidth_mbps)`` for every link of node ``u`` whose
    other end ``v`` is ready and whose bandwidth meets the threshold it was built for. Edges
    *into* a not-ready node are left out (no state goes there and no path passes through it), but
    a not-ready node keeps its outgoing edges, so a node whose Ready condition flapped can still
    send its state away.
    """

    names: tuple[str, ...]
    index: Mapping[str, int]
    edges: tuple[tuple[tuple[int, float, float], ...], ...]
    # ``reverse[v]`` lists ``(u, latency_ms, bandwidth_mbps)`` for each edge u→v in ``edges``:
    # what a search backwards from a target walks.
    reverse: tuple[tuple[tuple[int, float, float], ...], ...]


@dataclass(frozen=True)
class Topology:
    """Nodes and undirected links; at most one link per pair of nodes."""

    nodes: tuple[Node, ...] = ()
    links: tuple[Link, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "nodes", tuple(self.nodes))
        object.__setattr__(self, "links", tuple(self.links))
        by_name: dict[str, Node] = {}
        for node in self.nodes:
            if node.name in by_name:
                raise TopologyError(f"node {node.name!r} appears twice")
            by_name[node.name] = node
        by_pair: dict[frozenset[str], Link] = {}
        incident: dict[str, list[Link]] = {name: [] for name in by_name}
        for link in self.links:
            for end in (link.a, link.b):
                if end not in by_name:
                    raise TopologyError(f"link {link.a}–{link.b}: node {end!r} is not in the topology")
            pair = frozenset((link.a, link.b))
            if pair in by_pair:
                raise TopologyError(f"link {link.a}–{link.b} appears twice")
            by_pair[pair] = link
            incident[link.a].append(link)
            incident[link.b].append(link)
        # Derived lookups and caches: not dataclass fields, so equality and hashing ignore them.
        object.__setattr__(self, "_by_name", by_name)
        object.__setattr__(self, "_by_pair", by_pair)
        object.__setattr__(self, "_incident", incident)
        object.__setattr__(self, "_adjacency", {})
        object.__setattr__(self, "_adjacency_lock", threading.Lock())

    # -- lookups ---------------------------------------------------------------------------

    def node(self, name: str) -> Node:
        try:
            return self._by_name[name]  # type: ignore[attr-defined]
        except KeyError:
            raise UnknownNode(name) from None

    def __contains__(self, name: object) -> bool:
        return name in self._by_name  # type: ignore[attr-defined]

    def link(self, a: str, b: str) -> Link | None:
        """The link between ``a`` and ``b`` (either order), or None if they are not adjacent."""
        return self._by_pair.get(frozenset((a, b)))  # type: ignore[attr-defined]

    def links_of(self, name: str) -> list[Link]:
        self.node(name)
        return list(self._incident[name])  # type: ignore[attr-defined]

    def neighbors(self, name: str) -> list[Node]:
        """Nodes directly linked to ``name`` (ready or not), in link order."""
        return [self._by_name[link.other(name)] for link in self.links_of(name)]  # type: ignore[attr-defined]

    def adjacency(self, min_bandwidth_mbps: float = 0.0) -> Adjacency:
        """The cached adjacency lists keeping only links with bandwidth >= ``min_bandwidth_mbps``."""
        cache: dict[float, Adjacency] = self._adjacency  # type: ignore[attr-defined]
        key = float(min_bandwidth_mbps)
        found = cache.get(key)
        if found is not None:
            return found
        with self._adjacency_lock:  # type: ignore[attr-defined]
            found = cache.get(key)
            if found is None:
                found = self._build_adjacency(key)
                if len(cache) >= 16:  # a handful of SLOs in practice; never grow without bound
                    cache.clear()
                cache[key] = found
            return found

    def _build_adjacency(self, min_bandwidth_mbps: float) -> Adjacency:
        names = tuple(node.name for node in self.nodes)
        index = {name: i for i, name in enumerate(names)}
        ready = [node.ready for node in self.nodes]
        edges: list[list[tuple[int, float, float]]] = [[] for _ in names]
        reverse: list[list[tuple[int, float, float]]] = [[] for _ in names]
        for link in self.links:
            if link.bandwidth_mbps < min_bandwidth_mbps:
                continue
            ia, ib = index[link.a], index[link.b]
            if ready[ib]:
                edges[ia].append((ib, link.latency_ms, link.bandwidth_mbps))
                reverse[ib].append((ia, link.latency_ms, link.bandwidth_mbps))
            if ready[ia]:
                edges[ib].append((ia, link.latency_ms, link.bandwidth_mbps))
                reverse[ia].append((ib, link.latency_ms, link.bandwidth_mbps))
        return Adjacency(names, index, tuple(map(tuple, edges)), tuple(map(tuple, reverse)))

    # -- derivations -----------------------------------------------------------------------

    def with_addresses(self, mapping: Mapping[str, tuple[str, str]]) -> "Topology":
        """A copy where each node named in ``mapping`` gets ``(redis_url, broker_url)``.

        The local cluster calls this after it allocated ports. A name that is not a node is an
        error (a typo would otherwise silently leave a placeholder address in place).
        """
        unknown = set(mapping) - set(self._by_name)  # type: ignore[attr-defined]
        if unknown:
            raise UnknownNode(sorted(unknown)[0])
        nodes = tuple(
            replace(node, redis_url=mapping[node.name][0], broker_url=mapping[node.name][1])
            if node.name in mapping else node
            for node in self.nodes
        )
        return Topology(nodes, self.links)

    def to_dict(self) -> dict[str, Any]:
        return {"nodes": [n.to_dict() for n in self.nodes], "links": [l.to_dict() for l in self.links]}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "Topology":
        """Inverse of :meth:`to_dict`; keys other than ``nodes`` and ``links`` are ignored."""
        if not isinstance(data, Mapping):
            raise TopologyError(f"a topology must be an object, not {type(data).__name__}")
        nodes = data.get("nodes") or []
        links = data.get("links") or []
        if not isinstance(nodes, list) or not isinstance(links, list):
            raise TopologyError("nodes and links must be lists")
        return cls(tuple(Node.from_dict(n) for n in nodes), tuple(Link.from_dict(l) for l in links))
