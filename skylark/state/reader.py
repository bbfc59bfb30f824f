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
# How often a waiting reader asks whether the copy is still coming (``coming``: a round trip to
# the origin, so far rarer than the local polls; a copy sent elsewhere costs at most this long).
DOUBT_S = 0.25


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
             min_version: int = 0, wait_ms: float = 0.0, wait_at: str | None = None,
             coming: Callable[[], bool] | None = None) -> BundleRead:
        """The bundle from the local Redis, else from the first candidate node that has it.

        Only a copy of at least ``min_version`` counts (the version the caller was told was
        written), so a stale copy is never used. With ``wait_ms``, the node ``wait_at`` (this
        node when None; else one of the candidates, where the policy pushed the bundle) is
        polled that long for such a copy to arrive by propagation before the others are asked;
        ``coming``, asked every :data:`DOUBT_S` while waiting, ends the wait early when it answers
        False (the copy was sent to another node).

        Unreachable candidates are skipped (the node may be gone) while others are tried;
        :class:`BundleNotFound` when every place answered that it has none,
        :class:`StoreUnavailable` when it was found nowhere and some place did not answer.
        """
        start = time.perf_counter()
        failures: list[str] = []
        wait_at = self.local.node if wait_at is None else wait_at
        local_deadline = start + (wait_ms / 1000 if wait_at == self.local.node else 0.0)
        waited = 0.0
        try:
            bundle, waited = self._wait(self.local, chain, function, min_version, local_deadline, coming)
            if bundle is not None:
                return BundleRead(bundle, LOCAL, self.local.node, (time.perf_counter() - start) * 1000, waited)
        except StoreUnavailable as exc:
            failures.append(f"{self.local.node}: {exc}")
        order = [n for n in dict.fromkeys(candidates) if n != self.local.node]
        if wait_at in order:  # the pushed copy first, then where it was written
            order.remove(wait_at)
            order.insert(0, wait_at)
        for node in order:
            if self.remote is None:
                break
            store = self.remote.store_for(node)
            if store is None:
                failures.append(f"{node}: no Redis address known")
                continue
            deadline = time.perf_counter() + (wait_ms / 1000 if node == wait_at else 0.0)
            try:
                bundle, waited_here = self._wait(store, chain, function, min_version, deadline, coming)
            except StoreUnavailable as exc:
                failures.append(f"{node}: {exc}")
                continue
            waited += waited_here
            if bundle is not None:
                return BundleRead(bundle, REMOTE, node, (time.perf_counter() - start) * 1000, waited)
        if failures:
            # Someone who may hold the state did not answer: "not found" would be a guess.
            raise StoreUnavailable("bundle not found where reachable; unreachable: " + "; ".join(failures))
        raise BundleNotFound(chain, function, where="local and " + (", ".join(candidates) or "no other node"))

    @staticmethod
    def _wait(store: StateStore, chain: str, function: str, min_version: int,
              deadline: float, coming: Callable[[], bool] | None = None) -> tuple[Bundle | None, float]:
        """``store``'s bundle of at least ``min_version`` (None if it has none by the deadline),
        and how long was waited for it (0 when it was there at once). The first try reads the
        bundle itself (one round trip: a remote read must not pay two); while waiting, only its
        version is polled (one small HGET) until it is there, or until ``coming`` says it went
        elsewhere."""
        start = time.perf_counter()

        def fetch() -> Bundle | None:
            try:
                bundle = store.get_bundle(chain, function)
            except BundleNotFound:  # none, or deleted (a tombstone has a version too)
                return None
            return bundle if bundle.version >= min_version else None

        bundle = fetch()
        if bundle is not None:
            return bundle, 0.0
        doubt_at = start + DOUBT_S
        while True:
            now = time.perf_counter()
            if now >= deadline:
                return None, (now - start) * 1000 if deadline > start else 0.0
            if coming is not None and now >= doubt_at:
                if not coming():
                    return None, (now - start) * 1000
                doubt_at = now + DOUBT_S
            time.sleep(min(POLL_S, deadline - now))
            if store.local_version(chain, function) >= max(min_version, 1):
                bundle = fetch()
                if bundle is not None:
                    return bundle, (time.perf_counter() - start) * 1000
