"""Remember which events were handled, by (source, id), in the node's Redis.

Knative delivers at least once. The mark lives in Redis, so every gunicorn worker (and every
replica on the node) shares it, and it is set only after the event's effect is stored (and, for
a function, its result published): a delivery that failed half-way is retried by Knative
instead of being acknowledged as a duplicate. Used by the handlers and the functions.

A redelivery can also arrive while the first delivery is still being handled (the broker gave
up waiting for the answer, e.g. a function waiting for a large copy): :meth:`Deduper.claim`
lets one delivery at a time handle an event; the claim expires after a lease, so the event of
a handler that crashed is handled again.
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

    def claim(self, source: str, event_id: str, lease_s: int) -> bool:
        """True when no other delivery of this event is being handled (this one now is, for at
        most ``lease_s``); call :meth:`release` when done, whatever the outcome."""
        with redis_errors("dedupe claim"):
            return bool(self._client.set(self.key(source, event_id) + ":claim", b"1", nx=True, ex=lease_s))

    def release(self, source: str, event_id: str) -> None:
        with redis_errors("dedupe release"):
            self._client.delete(self.key(source, event_id) + ":claim")

    def mark(self, source: str, event_id: str) -> None:
        with redis_errors("dedupe mark"):
            self._client.set(self.key(source, event_id), b"1", nx=True, ex=self.ttl_s)
