"""Read a bundle where it is: locally when it was propagated here, else from another node's Redis.

The successor of a function calls :meth:`BundleReader.read` with the node(s) that may hold the
state (the origin named in the event first). The result says where it was found and how long
the read took, which is what the demo and the benchmarks report.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from skylark.state.bundle import Bundle
from skylark.state.errors import BundleNotFound, StoreUnavailable
from skylark.state.redis_client import ClientPool
from skylark.state.store import StateStore

LOCAL = "local"
REMOTE = "remote"
POLL_S = 0.002  # how often a waiting reader looks for the propagated copy


@dataclass(frozen=True)
class BundleRead:
    bundle: Bundle
    location: str  # LOCAL or REMOTE
    node: str      # the node whose Redis answered
    elapsed_ms: float  # the whole read, waiting for a propagated copy included
    waited_ms: float = 0.0  # of which spent waiting for the local copy to arrive

    @property
    def is_local(self) -> bool:
        return self.location == LOCAL


class RemoteStores:
    """StateStores for other nodes, built on demand from a node → Redis URL resolver.

    Clients are pooled per URL for the life of the process, so repeated remote reads reuse their
    connections instead of paying a TCP handshake across a slow link each time.
    """

    def __init__(self, resolve_url: Callable[[str], str | None], pool: ClientPool | None = None) -> None:
        self._resolve_url = resolve_url
        self._pool = pool or ClientPool()

    def store_for(self, node: str) -> StateStore | None:
        url = self._resolve_url(node)
        if not url:
            return None
        return StateStore(self._pool.get(url), node=node)

    def close(self) -> None:
        self._pool.close()


class BundleReader:
    def __init__(self, local: StateStore, remote: RemoteStores | None = None) -> None:
        self.local = local
        self.remote = remote

    def read(self, chain: str, function: str, candidates: Sequence[str] = (), *,
             min_version: int = 0, wait_local_ms: float = 0.0) -> BundleRead:
        """The bundle from the local Redis, else from the first candidate node that has it.

        Only a copy of at least ``min_version`` counts (the version the caller was told was
        written), so a stale local copy is never used. With ``wait_local_ms`` the local Redis is
        polled that long for such a copy to arrive by propagation before the candidates are asked.

        Unreachable candidates are skipped (the node may be gone) while others are tried;
        :class:`BundleNotFound` when every place answered that it has none,
        :class:`StoreUnavailable` when it was found nowhere and some place did not answer.
        """
        start = time.perf_counter()
        failures: list[str] = []
        waited = 0.0
        try:
            bundle, waited = self._wait_local(chain, function, min_version, start + wait_local_ms / 1000)
            if bundle is not None:
                elapsed = (time.perf_counter() - start) * 1000
                return BundleRead(bundle, LOCAL, self.local.node, elapsed, waited)
        except StoreUnavailable as exc:
            failures.append(f"{self.local.node}: {exc}")
        for node in candidates:
            if node == self.local.node or self.remote is None:
                continue
            store = self.remote.store_for(node)
            if store is None:
                failures.append(f"{node}: no Redis address known")
                continue
            try:
                bundle = store.get_bundle(chain, function)
            except BundleNotFound:
                continue
            except StoreUnavailable as exc:
                failures.append(f"{node}: {exc}")
                continue
            if bundle.version < min_version:
                continue
            return BundleRead(bundle, REMOTE, node, (time.perf_counter() - start) * 1000, waited)
        if failures:
            # Someone who may hold the state did not answer: "not found" would be a guess.
            raise StoreUnavailable("bundle not found where reachable; unreachable: " + "; ".join(failures))
        raise BundleNotFound(chain, function, where="local and " + (", ".join(candidates) or "no other node"))

    def _wait_local(self, chain: str, function: str, min_version: int,
                    deadline: float) -> tuple[Bundle | None, float]:
        """The local bundle once its version reaches ``min_version`` (None at the deadline), and
        how long was waited for it. Polls the version only (one small HGET) until it is there."""
        start = time.perf_counter()
        waited = 0.0
        while True:
            if self.local.local_version(chain, function) >= max(min_version, 1):
                try:
                    bundle = self.local.get_bundle(chain, function)
                except BundleNotFound:  # deleted (a tombstone has a version too)
                    bundle = None
                if bundle is not None and bundle.version >= min_version:
                    return bundle, waited
            now = time.perf_counter()
            if now >= deadline:
                return None, (now - start) * 1000 if deadline > start else 0.0
            waited = (now - start) * 1000
            time.sleep(min(POLL_S, deadline - now))
