"""Send our CloudEvents to a broker ingress (binary mode), with pooling, timeouts and retries.

Retries follow the Knative data-plane contract: connection errors, 429 and 5xx are retried with
exponential backoff and jitter; any other 4xx is the receiver's final answer and is not.
"""

from __future__ import annotations

import enum
import time
from collections.abc import Mapping
from dataclasses import dataclass, field

import requests
from cloudevents.core.base import BaseCloudEvent
from requests.adapters import HTTPAdapter
from urllib3.util.retry import Retry

from eventing.http import to_binary

RETRY_STATUSES = (429, 500, 502, 503, 504)


class Delivery(str, enum.Enum):
    DELIVERED = "delivered"  # 2xx
    REJECTED = "rejected"    # a non-retryable answer (4xx other than 429)
    GAVE_UP = "gave_up"      # retries exhausted, or the receiver never answered


@dataclass(frozen=True)
class PublishOutcome:
    delivery: Delivery
    status_code: int | None
    reason: str
    elapsed_ms: float
    body: bytes = b""
    headers: Mapping[str, str] = field(default_factory=dict)  # of a 2xx answer, names lowercased

    @property
    def ok(self) -> bool:
        return self.delivery is Delivery.DELIVERED


class Publisher:
    """One pooled HTTP session for the life of a process (thread-safe for concurrent posts)."""

    def __init__(self, *, connect_timeout_s: float = 2.0, read_timeout_s: float = 10.0,
                 retries: int = 3, backoff_s: float = 0.1, backoff_max_s: float = 2.0,
                 pool_size: int = 16, session: requests.Session | None = None) -> None:
        self.timeout = (connect_timeout_s, read_timeout_s)
        self.session = session or requests.Session()
        retry = Retry(
            total=retries,
            connect=retries,
            read=retries,
            status=retries,
            backoff_factor=backoff_s,
            backoff_max=backoff_max_s,
            backoff_jitter=backoff_s,
            status_forcelist=RETRY_STATUSES,
            allowed_methods=None,  # POST too: receivers dedupe on source + id (at-least-once)
            raise_on_status=False,
            respect_retry_after_header=True,
        )
        adapter = HTTPAdapter(max_retries=retry, pool_connections=pool_size, pool_maxsize=pool_size)
        self.session.mount("http://", adapter)
        self.session.mount("https://", adapter)

    def publish(self, url: str, event: BaseCloudEvent) -> PublishOutcome:
        headers, body = to_binary(event)
        return self.post(url, headers, body)

    def post(self, url: str, headers: Mapping[str, str], body: bytes, *,
             timeout: tuple[float, float] | None = None) -> PublishOutcome:
        """POST an already encoded event (e.g. the stream source's Go-identical body).

        ``timeout``: (connect, read) seconds for this call instead of the publisher's.
        """
        start = time.perf_counter()
        try:
            response = self.session.post(url, data=body, headers=dict(headers),
                                         timeout=timeout or self.timeout)
        except requests.RequestException as exc:
            return PublishOutcome(Delivery.GAVE_UP, None, f"{type(exc).__name__}: {exc}",
                                  (time.perf_counter() - start) * 1000)
        elapsed = (time.perf_counter() - start) * 1000
        code = response.status_code
        if 200 <= code < 300:
            return PublishOutcome(Delivery.DELIVERED, code, "ok", elapsed, response.content,
                                  {k.lower(): v for k, v in response.headers.items()})
        reason = response.text[:500] or response.reason or ""
        if code in RETRY_STATUSES:
            return PublishOutcome(Delivery.GAVE_UP, code, reason, elapsed)
        return PublishOutcome(Delivery.REJECTED, code, reason, elapsed)

    def close(self) -> None:
        self.session.close()
