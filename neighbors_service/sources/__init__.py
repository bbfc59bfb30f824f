"""Where a topology comes from: a YAML file (local cluster) or the Kubernetes API (cluster mode).

Every source offers the same small interface, :class:`TopologySource`, so the app does not care
which one it serves.
"""

from __future__ import annotations

from typing import Any, Protocol

from neighbors_service.topology import Topology
from skylark.state.errors import SkylarkError


class TopologyUnavailable(SkylarkError, ConnectionError):
    """No topology has been loaded yet (e.g. the Kubernetes API never answered). HTTP 503."""

    code = "topology_unavailable"


class TopologySource(Protocol):
    def current(self) -> Topology:
        """The topology in force now; :class:`TopologyUnavailable` if there is none yet."""

    def next(self) -> Topology:
        """The topology that follows the current one (the same one when it does not change)."""

    def status(self) -> dict[str, Any]:
        """Readiness facts; ``status()["ready"]`` says whether :meth:`current` can answer."""

    def start(self) -> None:
        """Begin background refreshing, if the source has any. Idempotent."""

    def stop(self) -> None:
        """Stop background refreshing. Idempotent."""
