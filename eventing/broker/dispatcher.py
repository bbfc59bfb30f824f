"""The broker's delivery engine: fan an accepted event out to the matching Triggers' subscribers.

Deliveries run on a bounded pool of worker threads fed by a bounded queue, so ingress never waits
for a subscriber (a full queue is answered 503, which publishers retry). Per Knative's delivery spec:
2xx is done; 404/408/409/429/5xx and network errors are retried ``retry`` times with linear or
exponential backoff (waiting retries sit in a timer heap, not in a worker); anything else, or
retries exhausted, goes to the Trigger's dead-letter sink with Knative's ``knativeerrorcode``,
``knativeerrordest`` and ``knativeerrordata`` extensions, or is dropped (and counted) without one.

A subscriber's 2xx answer that is itself a CloudEvent (a *reply*) is published again on this broker,
its ``knativebrokerttl`` one lower than the event it answers; a reply whose TTL would reach 0 is
dropped, which stops reply loops (Knative's MT broker does the same). Events sent to subscribers
carry ``knativearrivaltime`` (set at ingress) and not the TTL, which is the broker's own business.
"""

from __future__ import annotations

import base64
import datetime as dt
import heapq
import itertools
import logging
import queue
import threading
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, fields

from cloudevents.core.base import BaseCloudEvent
from cloudevents.core.v1.event import CloudEvent
from opentelemetry.trace import SpanKind
from prometheus_client import CollectorRegistry, Counter, Gauge

from eventing.broker.triggers import Trigger
from eventing.dataplane import is_retryable, is_success
from eventing.http import InvalidEvent, parse, to_binary
from eventing.publisher import PublishOutcome, Publisher
from skylark.serving.limits import BoundedLabels
from skylark.serving.tracing import context_of_event, current_traceparent, tracer
from skylark.state.errors import ConfigError
from skylark.state.numbers import parse_int

log = logging.getLogger(__name__)
_TRACER = tracer("skylark.broker")

EXT_ARRIVAL = "knativearrivaltime"
EXT_TTL = "knativebrokerttl"
EXT_ERROR_CODE = "knativeerrorcode"
EXT_ERROR_DEST = "knativeerrordest"
EXT_ERROR_DATA = "knativeerrordata"
DEFAULT_TTL = 255
DEFAULT_TIMEOUT_S = 10.0


class BrokerBusy(Exception):
    """The delivery queue is full: ingress answers 503 so that the sender retries."""


@dataclass
class BrokerStats:
    accepted: int = 0        # events taken in at ingress (replies included)
    unmatched: int = 0       # accepted events no Trigger wanted
    delivered: int = 0       # subscriber deliveries answered 2xx
    retried: int = 0         # retry attempts scheduled
    failed: int = 0          # deliveries that ended without a 2xx (then dead-lettered or dropped)
    dead_lettered: int = 0   # failed deliveries that the dead-letter sink accepted
    lost: int = 0            # failed deliveries with no dead-letter sink, or that it refused too
    replies: int = 0         # subscriber replies published again
    ttl_dropped: int = 0     # replies dropped because their TTL ran out

    def as_dict(self) -> dict[str, int]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


@dataclass
class _Delivery:
    trigger: Trigger
    url: str
    headers: dict[str, str]
    body: bytes
    event: BaseCloudEvent
    ttl: int
    attempt: int = 1                # 1 = first try
    dead_letter: bool = False       # this is the send to the dead-letter sink
    last: PublishOutcome | None = field(default=None, repr=False)


def binary_message(event: BaseCloudEvent, raw_body: bytes | None = None) -> tuple[dict[str, str], bytes]:
    """Binary-mode headers for ``event``; with ``raw_body`` the data goes on exactly as it came in."""
    if raw_body is None:
        return to_binary(event)
    headers, _ = to_binary(CloudEvent(event.get_attributes(), None))
    content_type = event.get_datacontenttype()
    if content_type:
        headers["content-type"] = content_type
    return headers, raw_body


def _with_attributes(event: BaseCloudEvent, set_: Mapping[str, object] = (), drop: Iterable[str] = ()) -> CloudEvent:
    attributes = dict(event.get_attributes())
    for name in drop:
        attributes.pop(name, None)
    attributes.update(set_)
    return CloudEvent(attributes, event.get_data())


def _now_rfc3339() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="microseconds").replace("+00:00", "Z")


class _Metrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.ingress = Counter("skylark_broker_ingress_events", "Events accepted at ingress",
                               ["type"], registry=registry)
        self.type_label = BoundedLabels()  # clients choose event types: bounded series
        self.deliveries = Counter("skylark_broker_deliveries", "Delivery attempts by outcome",
                                  ["trigger", "outcome"], registry=registry)
        self.in_flight = Gauge("skylark_broker_in_flight", "Deliveries not finished yet", registry=registry)


class Dispatcher:
    """Matches events against ``triggers`` (of ``namespace``/``broker``) and delivers them."""

    def __init__(self, triggers: Iterable[Trigger], services: Mapping[str, str], *,
                 namespace: str = "default", broker: str = "default", workers: int = 8,
                 queue_size: int = 10_000, ttl: int = DEFAULT_TTL, publisher: Publisher | None = None,
                 registry: CollectorRegistry | None = None) -> None:
        self.namespace = namespace
        self.broker = broker
        self.ttl = ttl
        # Only this broker's Triggers; subscribers resolved now, so a bad map fails at start-up.
        self.triggers = [t for t in triggers if t.broker == broker and t.namespace == namespace]
        self._urls = {t.name: t.subscriber.resolve(services) for t in self.triggers}
        self._dls = {t.name: t.delivery.dead_letter_sink.resolve(services)
                     for t in self.triggers if t.delivery.dead_letter_sink}
        self.publisher = publisher or Publisher(retries=0, pool_size=max(workers, 4))
        self._own_publisher = publisher is None
        self.stats = BrokerStats()
        self.metrics = _Metrics(registry or CollectorRegistry())
        # The bound is on unfinished deliveries, checked at ingress; the queue itself is unbounded so
        # that workers re-queueing retries and dead letters can never block on it.
        self.max_in_flight = queue_size
        self._queue: queue.Queue[_Delivery | None] = queue.Queue()
        self._lock = threading.Lock()
        self._idle = threading.Condition(self._lock)
        self._in_flight = 0
        self._timers: list[tuple[float, int, _Delivery]] = []
        self._timer_wake = threading.Condition(threading.Lock())
        self._seq = itertools.count()
        self._closed = threading.Event()
        self._threads = [threading.Thread(target=self._work, name=f"broker-worker-{i}", daemon=True)
                         for i in range(max(1, workers))]
        self._threads.append(threading.Thread(target=self._timer_loop, name="broker-timers", daemon=True))
        for thread in self._threads:
            thread.start()

    # -- ingress ---------------------------------------------------------------------------

    def ingest(self, event: BaseCloudEvent, raw_body: bytes | None = None, *, ttl: int | None = None) -> int:
        """Accept ``event``; returns how many deliveries were queued. :class:`BrokerBusy` when full."""
        if ttl is None:
            ttl = _ttl_of(event, self.ttl)
        matching = [t for t in self.triggers if t.matches(event)]
        outgoing = _with_attributes(event, {EXT_ARRIVAL: _now_rfc3339()}, drop=(EXT_TTL,))
        headers, body = binary_message(outgoing, raw_body)
        items = [_Delivery(t, self._urls[t.name], headers, body, outgoing, ttl) for t in matching]
        with self._lock:
            if items and self._in_flight + len(items) > self.max_in_flight:
                raise BrokerBusy(f"{self._in_flight} deliveries in flight (limit {self.max_in_flight})")
            self.stats.accepted += 1
            if not items:
                self.stats.unmatched += 1
            self._in_flight += len(items)
            self.metrics.in_flight.set(self._in_flight)
        self.metrics.ingress.labels(self.metrics.type_label(event.get_type())).inc()
        for item in items:
            self._queue.put(item)
        return len(items)

    # -- workers ---------------------------------------------------------------------------

    def _work(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            try:
                self._attempt(item)
            except Exception:  # a bug must not kill the worker and leave drain() hanging
                log.exception("broker: delivery crashed", extra={"trigger": item.trigger.name})
                self._finish()

    def _attempt(self, item: _Delivery) -> None:
        read_timeout = item.trigger.delivery.timeout_s or DEFAULT_TIMEOUT_S
        # Each attempt is a span of the event's trace; the subscriber gets it as its parent in
        # the HTTP traceparent header, as Knative's broker does (the event's own traceparent
        # extension stays the producer's).
        with _TRACER.start_as_current_span(
                f"deliver {item.trigger.name}", context=context_of_event(item.event), kind=SpanKind.CLIENT,
                attributes={"messaging.destination.name": item.trigger.name, "skylark.attempt": item.attempt,
                            "skylark.dead_letter": item.dead_letter}) as span:
            headers = {**item.headers, **current_traceparent()}
            outcome = self.publisher.post(item.url, headers, item.body,
                                          timeout=(min(2.0, read_timeout), read_timeout))
            span.set_attribute("http.response.status_code", outcome.status_code or 0)
        item.last = outcome
        if is_success(outcome.status_code):
            self._succeeded(item, outcome)
            return
        spec = item.trigger.delivery
        if is_retryable(outcome.status_code) and item.attempt <= spec.retry:
            delay = spec.backoff_s(item.attempt)
            item.attempt += 1
            with self._lock:
                self.stats.retried += 1
            self.metrics.deliveries.labels(item.trigger.name, "retry").inc()
            self._schedule(item, delay)
            return
        self._failed(item, outcome)

    def _succeeded(self, item: _Delivery, outcome: PublishOutcome) -> None:
        if item.dead_letter:
            with self._lock:
                self.stats.dead_lettered += 1
            self.metrics.deliveries.labels(item.trigger.name, "dead_lettered").inc()
        else:
            with self._lock:
                self.stats.delivered += 1
            self.metrics.deliveries.labels(item.trigger.name, "delivered").inc()
            self._maybe_reply(item, outcome)
        self._finish()

    def _maybe_reply(self, item: _Delivery, outcome: PublishOutcome) -> None:
        headers = outcome.headers
        if not outcome.body and not any(k.startswith("ce-") for k in headers):
            return
        try:
            reply = parse(headers, outcome.body)
        except InvalidEvent:
            return  # a plain 2xx body is not a reply
        ttl = item.ttl - 1
        if ttl < 1:
            with self._lock:
                self.stats.ttl_dropped += 1
            log.warning("broker: reply dropped, TTL exhausted",
                        extra={"trigger": item.trigger.name, "type": reply.get_type(), "id": reply.get_id()})
            return
        try:
            self.ingest(reply, ttl=ttl)
        except BrokerBusy:
            with self._lock:
                self.stats.lost += 1
            log.error("broker: reply lost, queue full", extra={"trigger": item.trigger.name})
            return
        with self._lock:
            self.stats.replies += 1

    def _failed(self, item: _Delivery, outcome: PublishOutcome) -> None:
        name = item.trigger.name
        if item.dead_letter:
            with self._lock:
                self.stats.lost += 1
            self.metrics.deliveries.labels(name, "lost").inc()
            log.error("broker: dead-letter sink refused the event too",
                      extra={"trigger": name, "id": item.event.get_id(), "status": outcome.status_code})
            self._finish()
            return
        with self._lock:
            self.stats.failed += 1
        self.metrics.deliveries.labels(name, "failed").inc()
        dls = self._dls.get(name)
        if dls is None:
            with self._lock:
                self.stats.lost += 1
            log.error("broker: delivery failed, no dead-letter sink",
                      extra={"trigger": name, "id": item.event.get_id(), "status": outcome.status_code,
                             "reason": outcome.reason[:200]})
            self._finish()
            return
        errors = {EXT_ERROR_DEST: item.url,
                  EXT_ERROR_CODE: str(outcome.status_code or 0)}
        if outcome.reason:
            errors[EXT_ERROR_DATA] = base64.b64encode(outcome.reason.encode()[:1024]).decode()
        event = _with_attributes(item.event, errors)
        headers, _ = binary_message(event, b"")
        dead = _Delivery(item.trigger, dls, headers, item.body, event, item.ttl, dead_letter=True)
        self._queue.put(dead)  # the same in-flight unit: not finished yet

    def _finish(self) -> None:
        with self._lock:
            self._in_flight -= 1
            self.metrics.in_flight.set(self._in_flight)
            if self._in_flight == 0:
                self._idle.notify_all()

    # -- retry timers ----------------------------------------------------------------------

    def _schedule(self, item: _Delivery, delay_s: float) -> None:
        with self._timer_wake:
            heapq.heappush(self._timers, (time.monotonic() + delay_s, next(self._seq), item))
            self._timer_wake.notify()

    def _timer_loop(self) -> None:
        while not self._closed.is_set():
            with self._timer_wake:
                if not self._timers:
                    self._timer_wake.wait(0.5)
                    continue
                due, _, item = self._timers[0]
                wait = due - time.monotonic()
                if wait > 0:
                    self._timer_wake.wait(wait)
                    continue
                heapq.heappop(self._timers)
            self._queue.put(item)

    # -- lifecycle -------------------------------------------------------------------------

    @property
    def in_flight(self) -> int:
        with self._lock:
            return self._in_flight

    def drain(self, timeout: float = 10.0) -> bool:
        """Wait until every accepted event's deliveries (retries, dead letters, replies) are done."""
        deadline = time.monotonic() + timeout
        with self._lock:
            while self._in_flight > 0:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._idle.wait(left)
        return True

    def alive(self) -> bool:
        return not self._closed.is_set() and all(t.is_alive() for t in self._threads)

    def close(self, drain_timeout: float = 0.0) -> None:
        if drain_timeout:
            self.drain(drain_timeout)
        if self._closed.is_set():
            return
        self._closed.set()
        for _ in self._threads[:-1]:
            self._queue.put(None)
        with self._timer_wake:
            self._timer_wake.notify()
        for thread in self._threads:
            thread.join(2.0)
        if self._own_publisher:
            self.publisher.close()


def _ttl_of(event: BaseCloudEvent, default: int) -> int:
    """The event's ``knativebrokerttl``, else ``default``; a value that is not a plain number in
    [0, default] (int() would read "١٢", " 12" and 10**30) is replaced by the default, as an
    absent one: a sender can lower its own TTL, never raise it past the broker's."""
    raw = event.get_extension(EXT_TTL)
    if raw is None:
        return default
    try:
        return parse_int(raw, EXT_TTL, minimum=0, maximum=default)
    except ValueError:
        return default


def validate_services(services: Mapping[str, str]) -> dict[str, str]:
    if not isinstance(services, Mapping) or not all(
            isinstance(k, str) and isinstance(v, str) and v.startswith(("http://", "https://"))
            for k, v in services.items()):
        raise ConfigError("the service map must be {name: http(s) base URL}")
    return dict(services)
