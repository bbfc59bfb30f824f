"""Where a bundle goes and where other nodes' Redis are: what the handlers (and the functions,
to know whether a bundle is coming to them) need from the neighbors service.

Neither calls the neighbors service per event. :class:`PolicyTargets` runs the
neighbors service's own election code (``neighbors_service.policies``) in-process on a topology
and SLO snapshot; :func:`targets_from_neighbors` feeds it from the service over HTTP, refreshed
at most every ``ttl_s`` seconds (a stale snapshot is served while the service blinks).
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from neighbors_service.policies import SLO, propagation_targets
from neighbors_service.topology import Topology


@dataclass(frozen=True)
class Target:
    """A node a bundle is pushed to, and the broker ingress that reaches its handlers."""

    node: str
    broker_url: str


class TargetResolver(Protocol):
    def targets(self, node: str, function: str, size_bytes: int) -> list[Target]:
        """Nodes that may run a successor of ``function`` and should get its bundle from ``node``.

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


class _LockedRandom:
    """``random.Random`` is not safe across request threads; the ``random`` policy needs one."""

    def __init__(self, seed: int | None) -> None:
        self._lock = threading.Lock()
        self._rng = random.Random(seed)

    def choice(self, seq):  # noqa: ANN001, ANN201 - random.Random.choice's signature
        with self._lock:
            return self._rng.choice(seq)


class PolicyTargets:
    """Targets from a topology snapshot and an SLO with one of the election policies.

    ``function`` is accepted for the interface but not used: today every direct neighbour that
    the policy admits for the bundle's size may host the successor (the thesis's model).
    Targets without a broker address are left out (nothing could deliver to them).
    """

    def __init__(self, topology: Callable[[], Topology], slo: Callable[[], SLO], *,
                 policy: str = "skylark", seed: int | None = None) -> None:
        self._topology = topology
        self._slo = slo
        self.policy = policy
        self._rng = _LockedRandom(seed)

    @classmethod
    def fixed(cls, topology: Topology, slo: SLO | None = None, *, policy: str = "skylark",
              seed: int | None = None) -> "PolicyTargets":
        """Over an in-process topology that does not change (tests, benchmarks, ``skylark up``)."""
        slo = slo or SLO()
        return cls(lambda: topology, lambda: slo, policy=policy, seed=seed)

    def targets(self, node: str, function: str, size_bytes: int) -> list[Target]:
        topology = self._topology()
        if node not in topology:
            return []
        names = propagation_targets(topology, node, size_bytes, self._slo(), self.policy, self._rng)
        found = (topology.node(name) for name in names)
        return [Target(n.name, n.broker_url) for n in found if n.broker_url]

    def holders(self, node: str, function: str) -> list[Target]:
        # skylark: a smaller bundle fits every link a larger one fits, so the targets of a 0-byte
        # bundle include every earlier target; random: each push picked any ready neighbour.
        if self.policy != "random":
            return self.targets(node, function, 0)
        topology = self._topology()
        if node not in topology:
            return []
        return [Target(n.name, n.broker_url) for n in topology.neighbors(node) if n.ready and n.broker_url]

    def redis_url(self, node: str) -> str | None:
        topology = self._topology()
        return (topology.node(node).redis_url or None) if node in topology else None

    def neighbors(self, node: str) -> list[str]:
        topology = self._topology()
        if node not in topology:
            return []
        return [n.name for n in topology.neighbors(node) if n.ready]

    def may_receive(self, node: str, origin: str, size_bytes: int) -> bool:
        """Whether the policy may push a bundle of ``size_bytes`` written on ``origin`` to ``node``
        (for ``random``: whether ``node`` is one of the ready neighbours it picks from)."""
        if self.policy == "random":
            return node in self.neighbors(origin)
        return any(t.node == node for t in self.targets(origin, "", size_bytes))


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


def targets_from_neighbors(base_url: str, *, policy: str, ttl_s: float = 5.0,
                           timeout_s: float = 2.0) -> tuple[PolicyTargets, Callable[[], None]]:
    """A resolver fed by the neighbors service at ``base_url``, and a function that closes it."""
    from neighbors_service.client import CachedTopology, NeighborsClient  # noqa: PLC0415 - HTTP adapter

    client = NeighborsClient(base_url, timeout_s=timeout_s)
    resolver = PolicyTargets(CachedTopology(client, ttl_s), _Cached(client.slo, ttl_s), policy=policy)
    return resolver, client.close
