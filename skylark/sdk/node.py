"""The node a function runs on: its Redis, and where other nodes' Redis and brokers are.

:class:`NodeState` is what the SDK reads and writes state through: this node's
:class:`~skylark.state.store.StateStore`, a :class:`~skylark.state.reader.BundleReader` that
falls back to other nodes' Redis, and the placement (``neighbors_service.placement``, the same
decision the handlers take when they push the bundle): it says where the bundle written
elsewhere will be — here, on a node on the way (the nearest copy), or only where it was written.
Where it is pushed to, the read waits a little for it (``SKYLARK_PROPAGATION_WAIT_MS``), and
stops waiting when the origin's handlers recorded that they sent it elsewhere.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping
from typing import Any

from skylark.state.errors import SkylarkError, StoreUnavailable
from skylark.state.peers import PeerDirectory, StaticPeers
from skylark.state.reader import BundleRead, BundleReader, RemoteStores
from skylark.state.redis_client import ClientPool
from skylark.state.settings import Settings
from skylark.state.store import StateStore
from skylark.workflow import Workflow

log = logging.getLogger(__name__)


class GuardedPeers:
    """A PeerDirectory whose lookup failures (the neighbors service down) are a 503 and whose
    unknown nodes are None."""

    def __init__(self, peers: PeerDirectory) -> None:
        self._peers = peers

    def _lookup(self, what: str, resolve: Callable[[str], str | None], node: str) -> str | None:
        try:
            return resolve(node)
        except LookupError:
            return None
        except (SkylarkError, ConnectionError, OSError) as exc:
            raise StoreUnavailable(f"cannot resolve the {what} of node {node!r}: {exc}") from exc

    def redis_url(self, node: str) -> str | None:
        return self._lookup("Redis", self._peers.redis_url, node)

    def broker_url(self, node: str) -> str | None:
        return self._lookup("broker", self._peers.broker_url, node)


def default_peers(settings: Settings, env: Mapping[str, str] | None = None) -> PeerDirectory:
    """The neighbors service (cached topology) when ``SKYLARK_NEIGHBORS_URL`` is set, else
    ``SKYLARK_PEERS`` (a static map, possibly empty)."""
    env = os.environ if env is None else env
    if env.get("SKYLARK_NEIGHBORS_URL"):
        from neighbors_service.client import CachedTopology, NeighborsClient  # noqa: PLC0415

        return CachedTopology(NeighborsClient(settings.neighbors_url))
    return StaticPeers.from_env(env)


def default_placement(settings: Settings, workflow: Workflow | None = None,
                      env: Mapping[str, str] | None = None):  # noqa: ANN201
    """The placement over the neighbors service's topology (cached), and a function that closes
    it, when ``SKYLARK_NEIGHBORS_URL`` is set; else ``(None, None)`` (reads go to the origin)."""
    env = os.environ if env is None else env
    if not env.get("SKYLARK_NEIGHBORS_URL"):
        return None, None
    from neighbors_service.targets import targets_from_neighbors  # noqa: PLC0415 - HTTP adapter

    return targets_from_neighbors(settings.neighbors_url, policy=settings.policy, workflow=workflow)


class NodeState:
    """This node's store and a reader that falls back to peers; see the module docstring."""

    def __init__(self, settings: Settings, peers: PeerDirectory, placement=None) -> None:  # noqa: ANN001
        self.store = StateStore.from_settings(settings)
        self.peers = GuardedPeers(peers)
        self._pool = ClientPool.from_settings(settings)  # log in to peers as to our own Redis
        self.reader = BundleReader(self.store, RemoteStores(self.peers.redis_url, self._pool))
        self.placement = placement  # a neighbors_service.targets.PolicyTargets, or None
        self.wait_ms = settings.propagation_wait_ms

    @property
    def node(self) -> str:
        return self.store.node

    def where(self, chain: str, function: str, origin: str, version: int, size_bytes: int,
              reader: str | None) -> str:
        """The node the bundle is pushed to for this reader: this node, one on the way, or
        ``origin`` (nothing moves, or no decision can be made now)."""
        if self.placement is None or origin == self.node or not version:
            return origin
        try:
            return self.placement.location(origin, self.node, function, size_bytes, chain=chain, version=version,
                                           reader=reader)
        except (SkylarkError, ConnectionError, OSError, LookupError):
            return origin  # the neighbors service is down: do not wait on a guess

    def read(self, chain: str, function: str, origin: str | None, min_version: int = 0, size_bytes: int = 0,
             *, reader: str | None = None) -> BundleRead:
        """The bundle (of at least ``min_version``): locally, else where the policy pushed it
        (waiting a little for it there), else from ``origin``, where it was written."""
        if origin is None:
            return self.reader.read(chain, function, [], min_version=min_version)
        where = self.where(chain, function, origin, min_version, size_bytes, reader)
        wait = self.wait_ms if where != origin else 0
        return self.reader.read(chain, function, [where, origin], min_version=min_version, wait_ms=wait,
                                wait_at=where, coming=self._coming(chain, function, origin, where, min_version))

    def _coming(self, chain: str, function: str, origin: str, where: str,
                min_version: int) -> Callable[[], bool] | None:
        """Whether the copy this read waits for on ``where`` is on its way, by the placement the
        origin's handlers recorded: their decision and ours come from two cached topologies, which
        disagree for a while after the topology changes. Undecided, unreadable or older records
        leave the wait as it is (it stays bounded by ``SKYLARK_PROPAGATION_WAIT_MS``)."""
        remote = self.reader.remote
        if where == origin or remote is None:
            return None

        def coming() -> bool:
            try:
                store = remote.store_for(origin)
                placed = store.placement(chain, function) if store is not None else None
            except (SkylarkError, ConnectionError, OSError):
                return True
            return placed is None or placed.version < min_version or where in placed.nodes

        return coming

    def ready(self) -> tuple[bool, dict[str, Any]]:
        ok = self.store.ping()
        return ok, {"redis": "ok" if ok else "unreachable"}

    def close(self) -> None:
        self._pool.close()
        self.store.client.close()
