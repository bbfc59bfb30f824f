"""HTTP client of the neighbors service, for the handlers and the functions.

``NeighborsClient`` keeps one pooled ``requests.Session`` whose adapter retries connect errors
and 502/503/504 answers with exponential backoff (urllib3 ``Retry``). Failures map onto typed
errors: :class:`NeighborsUnavailable` when the service cannot answer (after the retries),
:class:`~neighbors_service.topology.UnknownNode` (a ``LookupError``) for a node it does not
know, :class:`NeighborsRequestError` (a ``ValueError``) for any other 4xx.

``CachedTopology`` fetches the topology at most every ``ttl_s`` seconds, for callers that need
it on every event; it also answers the core ``skylark.state.peers.PeerDirectory`` interface.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import quote

import requests
from requests.adapters import HTTPAdapter
from urllib3.util.retry import Retry

from neighbors_service.policies import SLO, Election
from neighbors_service.topology import Node, Topology, UnknownNode
from skylark.state.errors import DependencyUnavailable, SkylarkError


class NeighborsUnavailable(DependencyUnavailable):
    """The neighbors service could not be reached or could not answer (after retries)."""

    code = "neighbors_unavailable"


class NeighborsRequestError(SkylarkError, ValueError):
    """The service rejected the request (4xx other than an unknown node)."""

    code = "neighbors_bad_request"

    def __init__(self, status: int, code: str, detail: str) -> None:
        super().__init__(f"{status} {code}: {detail}")
        self.status = status
        self.error = code
        self.detail = detail


class NeighborsClient:
    """Typed calls to the neighbors service. A ``session`` passed in is used as it is (its
    owner mounts adapters and closes it); otherwise the client makes one with the retrying
    adapter described above."""

    def __init__(self, base_url: str, timeout_s: float = 2.0,
                 session: requests.Session | None = None, retries: int = 3,
                 backoff_s: float = 0.1) -> None:
        self.base_url = base_url.rstrip("/")
        self.timeout_s = timeout_s
        self._owns_session = session is None
        self._session = session or requests.Session()
        if self._owns_session:
            retry = Retry(
                total=retries, connect=retries, read=retries, status=retries,
                backoff_factor=backoff_s, status_forcelist=(502, 503, 504),
                allowed_methods=frozenset({"GET", "PUT"}),  # both idempotent here
                raise_on_status=False,  # hand the last answer back; we map it below
            )
            adapter = HTTPAdapter(max_retries=retry, pool_connections=4, pool_maxsize=16)
            self._session.mount("http://", adapter)
            self._session.mount("https://", adapter)

    def close(self) -> None:
        if self._owns_session:
            self._session.close()

    def __enter__(self) -> "NeighborsClient":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- transport ---------------------------------------------------------------------------

    def _call(self, method: str, path: str, params: dict[str, Any] | None = None,
              body: dict[str, Any] | None = None, node: str | None = None) -> dict[str, Any]:
        url = f"{self.base_url}{path}"
        try:
            response = self._session.request(method, url, params=params, json=body,
                                             timeout=self.timeout_s)
        except requests.RequestException as exc:
            raise NeighborsUnavailable(f"neighbors service at {self.base_url}: {exc}") from exc
        try:
            payload = response.json()
        except ValueError:
            payload = None
        if response.status_code >= 500 or payload is None or not isinstance(payload, dict):
            detail = payload.get("detail") if isinstance(payload, dict) else response.text[:200]
            raise NeighborsUnavailable(
                f"neighbors service {method} {path} answered {response.status_code}: {detail}"
            )
        if response.status_code >= 400:
            code, detail = str(payload.get("error", "error")), str(payload.get("detail", ""))
            if code == "unknown_node":
                raise UnknownNode(node or detail)
            raise NeighborsRequestError(response.status_code, code, detail)
        return payload

    # -- API ---------------------------------------------------------------------------------

    def topology(self) -> Topology:
        return Topology.from_dict(self._call("GET", "/topology"))

    def next_topology(self) -> Topology:
        return Topology.from_dict(self._call("GET", "/topology/next"))

    def node(self, name: str) -> Node:
        return Node.from_dict(self._call("GET", f"/nodes/{quote(name, safe='')}", node=name))

    def neighbors(self, name: str) -> list[Node]:
        payload = self._call("GET", "/neighbors", {"node": name}, node=name)
        return [Node.from_dict(_strip(n, "link")) for n in payload["neighbors"]]

    def redis_pods(self) -> dict[str, str]:
        """Node name → Redis URL of every node that has one."""
        return {p["node"]: p["redis_url"] for p in self._call("GET", "/redis-pods")["redis_pods"]}

    def elect(self, from_: str, to: str, size_bytes: int, policy: str | None = None) -> Election:
        params: dict[str, Any] = {"from": from_, "to": to, "size": size_bytes}
        if policy:
            params["policy"] = policy
        return Election.from_dict(self._call("GET", "/elect", params))

    def propagation_targets(self, node: str, size_bytes: int, policy: str | None = None) -> list[Node]:
        params: dict[str, Any] = {"node": node, "size": size_bytes}
        if policy:
            params["policy"] = policy
        payload = self._call("GET", "/propagation-targets", params, node=node)
        return [Node.from_dict(_strip(t, "migration_ms")) for t in payload["targets"]]

    def slo(self) -> SLO:
        return SLO.from_dict(self._call("GET", "/slo"))

    def set_slo(self, max_latency_ms: float | None = None,
                min_bandwidth_mbps: float | None = None) -> SLO:
        body: dict[str, float] = {}
        if max_latency_ms is not None:
            body["max_latency"] = max_latency_ms
        if min_bandwidth_mbps is not None:
            body["min_bandwidth"] = min_bandwidth_mbps
        if not body:
            raise ValueError("set_slo needs max_latency_ms and/or min_bandwidth_mbps")
        return SLO.from_dict(self._call("PUT", "/slo", body=body))


def _strip(entry: dict[str, Any], key: str) -> dict[str, Any]:
    return {k: v for k, v in entry.items() if k != key}


class CachedTopology:
    """The service's topology, fetched at most once every ``ttl_s`` seconds (thread-safe).

    When a refresh fails and a topology was fetched before, the stale one is returned for
    another ``ttl_s`` (the topology changes slowly; an event should not fail because the
    service blinked) unless ``serve_stale=False``.
    """

    def __init__(self, client: NeighborsClient, ttl_s: float = 5.0, *, serve_stale: bool = True,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._client = client
        self.ttl_s = ttl_s
        self.serve_stale = serve_stale
        self._clock = clock
        self._lock = threading.Lock()
        self._topology: Topology | None = None
        self._fetched_at = 0.0

    def get(self) -> Topology:
        with self._lock:
            if self._topology is not None and self._clock() - self._fetched_at < self.ttl_s:
                return self._topology
            try:
                self._topology = self._client.topology()
            except NeighborsUnavailable:
                if self._topology is None or not self.serve_stale:
                    raise
                self._fetched_at = self._clock()  # retry after another ttl, not on every call
                return self._topology
            self._fetched_at = self._clock()
            return self._topology

    __call__ = get

    def invalidate(self) -> None:
        with self._lock:
            self._fetched_at = 0.0

    # skylark.state.peers.PeerDirectory
    def redis_url(self, node: str) -> str | None:
        topology = self.get()
        if node not in topology:
            return None
        return topology.node(node).redis_url or None

    def broker_url(self, node: str) -> str | None:
        topology = self.get()
        if node not in topology:
            return None
        return topology.node(node).broker_url or None
