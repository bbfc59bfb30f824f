"""Where a bundle goes and where other nodes' Redis are: what the handlers (where to push) and
the functions (where to read) need from the neighbors service.

Neither calls the neighbors service per event. :class:`PolicyTargets` runs the placement
(``neighbors_service.placement``, the neighbors service's own election code) in-process on a
topology snapshot; :func:`targets_from_neighbors` feeds it from the service over HTTP, refreshed
at most every ``ttl_s`` seconds (a stale snapshot is served while the service blinks).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from neighbors_service.placement import Placer, TreeCache
from neighbors_service.policies import SLO
from neighbors_service.topology import Topology
from skylark.workflow import Workflow


@dataclass(frozen=True)
class Target:
    """A node a bundle is pushed to, and the broker ingress that reaches its handlers."""

    node: str
    broker_url: str


class TargetResolver(Protocol):
    def targets(self, node: str, function: str, size_bytes: int, *, chain: str = "",
                version: int = 0) -> list[Target]:
        """Nodes that should get ``function``'s new bundle (``chain``, ``version``) from ``node``:
        where its readers will look for it.

        Raises :class:`~skylark.state.errors.SkylarkError` subclasses (e.g. the neighbors service
        being unavailable, a ``ConnectionError``) when no decision can be made.
        """
        ...

    def holders(self, node: str, function: str) -> list[Target]:
        """Every node that may hold a copy of ``function``'s state pushed from ``node``, whatever
        its size: where a delete's tombstone goes."""
        ...

    def redis_url(self, node: str) -> str | None:
        """The Redis of ``node`` (claim-check pulls, warm-up), or None if unknown."""
        ...

    def neighbors(self, node: str) -> list[str]:
        """Ready direct neighbours of ``node``: where a warm-up pulls from by default."""
        ...


class PolicyTargets:
    """The handlers' and the functions' view of placement (``neighbors_service.placement``) over
    a topology snapshot: per event, no call to the neighbors service.

    With a ``workflow``, its policy and SLO decide and its readers are the targets' reason; for
    state the workflow does not declare (or without one) the readers may run on any node, and
    ``policy`` and ``slo`` (the neighbors service's) decide. Targets without a broker address are
    left out (nothing could deliver to them).
    """

    def __init__(self, topology: Callable[[], Topology], slo: Callable[[], SLO], *, policy: str = "skylark",
                 workflow: Workflow | None = None) -> None:
        self._topology = topology
        self._slo = slo
        self.workflow = workflow
        self.policy = workflow.policy if workflow is not None else policy
        self._trees = TreeCache()
        self._placer = Placer(workflow, trees=self._trees) if workflow is not None else None

    @classmethod
    def fixed(cls, topology: Topology, slo: SLO | None = None, *, policy: str = "skylark",
              workflow: Workflow | None = None) -> "PolicyTargets":
        """Over an in-process topology that does not change (tests, benchmarks)."""
        slo = slo or SLO()
        return cls(lambda: topology, lambda: slo, policy=policy, workflow=workflow)

    def placer(self) -> Placer:
        if self._placer is not None:
            return self._placer
        return Placer(policy=self.policy, slo=self._slo(), trees=self._trees)

    def _with_brokers(self, topology: Topology, names: list[str]) -> list[Target]:
        found = (topology.node(name) for name in names)
        return [Target(n.name, n.broker_url) for n in found if n.broker_url]

    def targets(self, node: str, function: str, size_bytes: int, *, chain: str = "", version: int = 0) -> list[Target]:
        topology = self._topology()
        names = self.placer().targets(topology, node, function, size_bytes, chain=chain, version=version)
        return self._with_brokers(topology, names)

    def holders(self, node: str, function: str) -> list[Target]:
        topology = self._topology()
        return self._with_brokers(topology, self.placer().holders(topology, node, function))

    def location(self, origin: str, reader_node: str, function: str, size_bytes: int, *, chain: str = "",
                 version: int = 0, reader: str | None = None) -> str:
        """Where the reader on ``reader_node`` finds the bundle (see ``Placer.location``)."""
        return self.placer().location(self._topology(), origin, reader_node, function, size_bytes, chain=chain,
                                      version=version, reader=reader)

    def path_bandwidth_mbps(self, node: str, target: str) -> float | None:
        """The bottleneck bandwidth of the min-latency path ``node`` → ``target`` (what a push
        there goes through), None when there is none. Not part of :class:`TargetResolver`: a
        resolver without it makes the handlers treat every link as fast."""
        topology = self._topology()
        if node not in topology or target not in topology:
            return None
        adjacency = topology.adjacency(0.0)
        path = self._trees.tree(topology, node, 0.0).path_to(adjacency.index[target])
        return min(path.hop_bandwidth_mbps) if path is not None and path.hop_bandwidth_mbps else None

    def redis_url(self, node: str) -> str | None:
        topology = self._topology()
        return (topology.node(node).redis_url or None) if node in topology else None

    def neighbors(self, node: str) -> list[str]:
        topology = self._topology()
        if node not in topology:
            return []
        return [n.name for n in topology.neighbors(node) if n.ready]


class _Cached:
    """The last value of ``fetch``, refreshed after ``ttl_s``; the stale one if a refresh fails."""

    def __init__(self, fetch: Callable[[], object], ttl_s: float) -> None:
        self._fetch = fetch
        self._ttl_s = ttl_s
        self._lock = threading.Lock()
        self._value: object | None = None
        self._at = 0.0

    def __call__(self):  # noqa: ANN204
        with self._lock:
            if self._value is not None and time.monotonic() - self._at < self._ttl_s:
                return self._value
            try:
                self._value = self._fetch()
            except ConnectionError:
                if self._value is None:
                    raise
                return self._value
            self._at = time.monotonic()
            return self._value


def targets_from_neighbors(base_url: str, *, policy: str, workflow: Workflow | None = None, ttl_s: float = 5.0,
                           timeout_s: float = 2.0) -> tuple[PolicyTargets, Callable[[], None]]:
    """A resolver fed by the neighbors service at ``base_url`` (topology and, without a workflow,
    its SLO, refreshed at most every ``ttl_s``), and a function that closes it."""
    from neighbors_service.client import CachedTopology, NeighborsClient  # noqa: PLC0415 - HTTP adapter

    client = NeighborsClient(base_url, timeout_s=timeout_s)
    resolver = PolicyTargets(CachedTopology(client, ttl_s), _Cached(client.slo, ttl_s), policy=policy,
                             workflow=workflow)
    return resolver, client.close
