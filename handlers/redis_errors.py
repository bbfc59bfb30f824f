"""Map redis-py failures onto the core's :class:`~skylark.errors.StoreUnavailable` (→ 503).

The handlers read a few keys directly (the single-state snapshot, warm-up version scans, dedupe
marks); they fail the same way the core ``StateStore`` does, so Knative retries the delivery.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import redis

from skylark.errors import StoreUnavailable


@contextmanager
def unavailable_on_error(what: str) -> Iterator[None]:
    try:
        yield
    except (redis.ConnectionError, redis.TimeoutError) as exc:
        raise StoreUnavailable(f"Redis unavailable during {what}: {exc}") from exc
    except redis.ResponseError as exc:
        raise StoreUnavailable(f"Redis refused {what}: {exc}") from exc
