"""Remember which events were handled, by (source, id), in the node's Redis.

Knative delivers at least once. The mark lives in Redis, so every gunicorn worker (and every
replica on the node) shares it, and it is set only after the event's effect is stored (and, for
a function, its result published): a delivery that failed half-way is retried by Knative
instead of being acknowledged as a duplicate. Used by the handlers and the functions.
"""

from __future__ import annotations

import hashlib

import redis

from skylark.state.store import redis_errors

DEFAULT_TTL_S = 86_400


class Deduper:
    def __init__(self, client: redis.Redis, ttl_s: int = DEFAULT_TTL_S, *,
                 prefix: str = "skylark:handlers:seen:") -> None:
        self._client = client
        self.ttl_s = ttl_s
        self.prefix = prefix

    def key(self, source: str, event_id: str) -> str:
        # Hashed: source and id are client-chosen strings of any length.
        digest = hashlib.sha1(f"{source}\0{event_id}".encode()).hexdigest()
        return self.prefix + digest

    def seen(self, source: str, event_id: str) -> bool:
        with redis_errors("dedupe check"):
            return bool(self._client.exists(self.key(source, event_id)))

    def mark(self, source: str, event_id: str) -> None:
        with redis_errors("dedupe mark"):
            self._client.set(self.key(source, event_id), b"1", nx=True, ex=self.ttl_s)
