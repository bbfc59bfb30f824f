"""Where other nodes' Redis and broker are: the small interface functions and handlers need.

In a cluster the neighbors service answers it (``neighbors_service.client``); a fixed directory
from the environment (``SKYLARK_PEERS``) serves single-purpose deployments and tests.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol

from skylark.state.errors import ConfigError
from skylark.state.settings import validate_redis_url


class PeerDirectory(Protocol):
    def redis_url(self, node: str) -> str | None: ...

    def broker_url(self, node: str) -> str | None: ...


@dataclass(frozen=True)
class Peer:
    redis_url: str | None = None
    broker_url: str | None = None


class StaticPeers:
    """A fixed node → addresses map, e.g. ``SKYLARK_PEERS='{"node-b": {"redis_url": "redis://..."}}'``."""

    def __init__(self, peers: Mapping[str, Peer]) -> None:
        self._peers = dict(peers)

    @classmethod
    def from_mapping(cls, raw: Mapping[str, Mapping[str, str]]) -> "StaticPeers":
        peers = {}
        for node, entry in raw.items():
            if not isinstance(entry, Mapping):
                raise ConfigError(f"SKYLARK_PEERS[{node!r}] must be an object")
            redis_url = entry.get("redis_url")
            if redis_url:
                validate_redis_url(redis_url)
            peers[node] = Peer(redis_url=redis_url, broker_url=entry.get("broker_url"))
        return cls(peers)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> "StaticPeers":
        raw = (os.environ if env is None else env).get("SKYLARK_PEERS", "")
        if not raw:
            return cls({})
        try:
            parsed = json.loads(raw)
        except ValueError as exc:
            raise ConfigError(f"SKYLARK_PEERS is not JSON: {exc}") from None
        if not isinstance(parsed, dict):
            raise ConfigError("SKYLARK_PEERS must be a JSON object of node → addresses")
        return cls.from_mapping(parsed)

    def redis_url(self, node: str) -> str | None:
        peer = self._peers.get(node)
        return peer.redis_url if peer else None

    def broker_url(self, node: str) -> str | None:
        peer = self._peers.get(node)
        return peer.broker_url if peer else None
