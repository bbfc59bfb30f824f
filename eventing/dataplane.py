"""The Knative data-plane contract on answers (pure): which ones end a delivery, which are retried.

2xx is done; 404, 408, 409, 429 and every 5xx are retried (as Knative's dispatcher does), as is no
answer at all (connection refused, timeout); any other 4xx — 400 above all — is final and goes to
the dead-letter sink right away.
"""

from __future__ import annotations

RETRYABLE_4XX = frozenset({404, 408, 409, 429})


def is_success(status: int | None) -> bool:
    return status is not None and 200 <= status < 300


def is_retryable(status: int | None) -> bool:
    """``None`` is "no answer" (network error, timeout)."""
    return status is None or status >= 500 or status in RETRYABLE_4XX
