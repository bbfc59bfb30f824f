"""Local stand-in for a Knative RedisStreamSource: a node's change stream → CloudEvents to a sink.

Each entry is POSTed as exactly the event the real adapter sends (see :mod:`eventing.redisstream`),
so the handlers cannot tell the two apart. Unlike the real adapter, delivery is at-least-once:

- the consumer group is created at id ``0`` (with MKSTREAM), not ``$``: entries written before the
  source started are delivered too;
- an entry is XACKed only after the sink answered 2xx;
- on start the consumer first re-delivers its own pending entries (a restart loses nothing);
- ``XAUTOCLAIM`` takes over entries that stayed pending longer than ``claim_idle_ms`` — a dead
  consumer's, and our own failed ones (that is also the retry delay);
- an entry whose delivery failed ``max_attempts`` times, or that the sink rejected (a 4xx other than
  404/408/409/429: Knative does not retry those, see :mod:`eventing.dataplane`), is moved to the dead-letter stream with the reason
  (XADD + XACK in one MULTI);
- entries trimmed away (MAXLEN) while pending are acked and skipped (the real adapter retries them
  forever);
- dead-lettered entries are delivered again once the sink takes events again (every
  ``replay_interval_s``, oldest first, stopping at the first that still fails): one the sink
  takes leaves the dead-letter stream; one it rejects for good stays there for the operator
  (``skylark deadletter``). Receivers dedupe on the entry id, so a replay is harmless.

Attempts are counted in a HASH ``<stream>:attempts:<group>`` (entry id → failed deliveries), not
from the PEL's delivery counter: XAUTOCLAIM and re-reads bump that counter whether or not a POST
was made (and Redis 6.2 and 7.x count claims of trimmed entries differently), while the hash counts
exactly the failed POSTs. Its field is removed when the entry is acked or dead-lettered.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field

import redis
from opentelemetry.trace import SpanKind

from eventing.background import BackgroundSource
from eventing.dataplane import is_retryable
from eventing.publisher import PublishOutcome, Publisher
from eventing.redisstream import encode_stream_event, flat_array, text_of, to_go_binary
from skylark.serving.tracing import context_of, current_traceparent, tracer
from skylark.state import keys

log = logging.getLogger(__name__)
_TRACER = tracer("skylark.stream-source")

def attempts_key(stream: str, group: str) -> str:
    """HASH of failed delivery attempts per pending entry id."""
    return f"{stream}:attempts:{group}"


@dataclass
class SourceStats:
    delivered: int = 0
    failed_attempts: int = 0
    dead_lettered: int = 0
    replayed: int = 0
    skipped_trimmed: int = 0
    claimed: int = 0
    redelivered_pending: int = 0


@dataclass(frozen=True)
class _Entry:
    entry_id: str
    fields: dict[str, str] | None  # None: trimmed away while pending


@dataclass
class _State:
    group_ready: bool = False          # XGROUP CREATE done (again after a NOGROUP)
    recovered: bool = False            # own pending entries re-delivered since start
    claim_cursor: str = "0-0"          # XAUTOCLAIM scan position
    last_claim: float = 0.0
    last_replay: float = 0.0
    stats: SourceStats = field(default_factory=SourceStats)


class StreamSource(BackgroundSource):
    """Reads ``stream`` with consumer ``consumer`` of ``group`` and POSTs each entry to ``sink_url``."""

    def __init__(self, redis_client: redis.Redis, stream: str, group: str, consumer: str,
                 sink_url: str, *, address: str, batch: int = 64, block_ms: int = 500,
                 max_attempts: int = 5, claim_idle_ms: int = 2000, replay_interval_s: float = 5.0,
                 dead_letter_stream: str | None = None, publisher: Publisher | None = None,
                 namespace: str | None = None, extensions: Mapping[str, str] | None = None) -> None:
        if max_attempts < 1:
            raise ValueError("max_attempts must be >= 1")
        self.redis = redis_client
        self.stream = stream
        self.group = group
        self.consumer = consumer
        self.sink_url = sink_url
        self.address = address
        self.batch = batch
        self.block_ms = block_ms
        self.max_attempts = max_attempts
        self.claim_idle_ms = claim_idle_ms
        self.replay_interval_s = replay_interval_s
        self.dead_letter_stream = dead_letter_stream or keys.dead_letter_stream(stream)
        # One POST per attempt: retries are the source's business (counted, then dead-lettered).
        super().__init__(publisher, f"stream-source-{consumer}", retries=0, connect_timeout_s=1.0,
                         read_timeout_s=10.0)
        self.namespace = namespace      # the real adapter's Kn-Namespace header
        self.extensions = dict(extensions or {})  # the RedisStreamSource's ceOverrides
        self._attempts_key = attempts_key(stream, group)
        self._state = _State()

    @property
    def stats(self) -> SourceStats:
        return self._state.stats

    # -- lifecycle ---------------------------------------------------------------------------

    def ensure_group(self) -> None:
        try:
            self.redis.xgroup_create(self.stream, self.group, id="0", mkstream=True)
        except redis.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    def run(self, stop_event: threading.Event) -> None:
        """Deliver until ``stop_event`` is set; Redis outages are logged and retried."""
        while not stop_event.is_set():
            try:
                self.run_once()
            except redis.RedisError as exc:
                log.warning("stream source: redis error, retrying", extra={"error": str(exc)})
                stop_event.wait(0.5)

    # -- one step ----------------------------------------------------------------------------

    def run_once(self, *, block_ms: int | None = None) -> int:
        """One round: own pending (first time), idle claims, then new entries. Returns deliveries tried."""
        if not self._state.group_ready:
            self.ensure_group()
            self._state.group_ready = True
        try:
            return self._round(block_ms)
        except redis.ResponseError as exc:
            if "NOGROUP" not in str(exc):
                raise
            # The stream (and with it the group) was deleted: create both again, from 0.
            log.warning("stream source: group missing, re-creating", extra={"stream": self.stream})
            self._state.group_ready = False
            return 0

    def _round(self, block_ms: int | None) -> int:
        tried = 0
        if not self._state.recovered:
            tried += self._redeliver_own_pending()
            self._state.recovered = True
        now = time.monotonic()
        # Scan for idle entries a few times per claim_idle_ms (at least once a second).
        if now - self._state.last_claim >= min(self.claim_idle_ms / 2000, 1.0):
            tried += self._claim_idle()
            self._state.last_claim = now
        if now - self._state.last_replay >= self.replay_interval_s:
            tried += self.replay_dead_letters()
            self._state.last_replay = now
        entries = self._read(">", self.block_ms if block_ms is None else block_ms)
        tried += self._deliver_all(entries)
        return tried

    def replay_dead_letters(self, limit: int = 100) -> int:
        """Deliver this source's dead-lettered entries again, oldest first, until one still fails
        (the sink is down yet: try later). Returns the deliveries tried."""
        tried = 0
        for dead_id, fields in self.redis.xrange(self.dead_letter_stream, count=limit):
            if text_of(fields.get(b"stream", b"")) != self.stream or text_of(fields.get(b"group", b"")) != self.group:
                continue  # another source's
            status = text_of(fields.get(b"status", b""))
            if status.isascii() and status.isdigit() and not is_retryable(int(status)):
                continue  # the sink refused it for good: the operator's to look at, not to resend
            try:
                flat = json.loads(fields.get(b"data") or b"[]")
                record = {str(k): str(v) for k, v in zip(flat[::2], flat[1::2])}
            except (ValueError, TypeError):
                continue  # unreadable: left for the operator
            tried += 1
            outcome = self._post(_Entry(text_of(fields.get(b"entry_id", b"")), record))
            if outcome.ok:
                self.redis.xdel(self.dead_letter_stream, dead_id)
                self.stats.replayed += 1
                log.info("stream source: dead letter replayed", extra={"entry": text_of(fields.get(b"entry_id", b""))})
            elif is_retryable(outcome.status_code):
                break  # still down
            else:  # refused for good now: keep it, marked so, and stop resending it
                pipe = self.redis.pipeline(transaction=True)
                pipe.xdel(self.dead_letter_stream, dead_id)
                pipe.xadd(self.dead_letter_stream, {**{text_of(k): v for k, v in fields.items()},
                                                    "status": str(outcome.status_code),
                                                    "reason": f"replay rejected: {outcome.status_code} {outcome.reason}"[:1000]})
                pipe.execute()
        return tried

    def _read(self, start_id: str, block_ms: int | None) -> list[_Entry]:
        reply = self.redis.xreadgroup(self.group, self.consumer, {self.stream: start_id},
                                      count=self.batch, block=block_ms or None)  # BLOCK 0 would wait forever
        out: list[_Entry] = []
        for _stream, items in reply or []:
            for entry_id, fields in items:
                out.append(_entry(entry_id, fields))
        return out

    def _redeliver_own_pending(self) -> int:
        tried, cursor = 0, "0"
        while True:
            reply = self.redis.xreadgroup(self.group, self.consumer, {self.stream: cursor}, count=self.batch)
            entries = [_entry(i, f) for _s, items in reply or [] for i, f in items]
            if not entries:
                return tried
            self.stats.redelivered_pending += len(entries)
            tried += self._deliver_all(entries)
            cursor = entries[-1].entry_id

    def _claim_idle(self) -> int:
        reply = self.redis.xautoclaim(self.stream, self.group, self.consumer, self.claim_idle_ms,
                                      start_id=self._state.claim_cursor, count=self.batch)
        cursor, items = reply[0], reply[1]
        deleted = reply[2] if len(reply) > 2 else []
        self._state.claim_cursor = _s(cursor)
        entries = [_entry(i, f) for i, f in items if i is not None]
        if len(entries) < len(items):
            # Redis 6.2 claims trimmed entries as nil placeholders and keeps them pending; our own
            # pending read shows them (empty), so ack them from there.
            self._ack_trimmed_own_pending()
        if deleted:
            # Redis 7: trimmed entries were dropped from the PEL by XAUTOCLAIM itself.
            ids = [_s(i) for i in deleted]
            self.redis.hdel(self._attempts_key, *ids)
            self.stats.skipped_trimmed += len(ids)
        self.stats.claimed += len(entries)
        return self._deliver_all(entries)

    def _ack_trimmed_own_pending(self) -> None:
        cursor = "0"
        while True:
            reply = self.redis.xreadgroup(self.group, self.consumer, {self.stream: cursor}, count=self.batch)
            entries = [_entry(i, f) for _s, items in reply or [] for i, f in items]
            if not entries:
                return
            self._skip_trimmed([e.entry_id for e in entries if e.fields is None])
            cursor = entries[-1].entry_id

    def _deliver_all(self, entries: list[_Entry]) -> int:
        delivered: list[str] = []
        trimmed = [e.entry_id for e in entries if e.fields is None]
        for entry in entries:
            if entry.fields is None:
                continue
            outcome = self._post(entry)
            if outcome.ok:
                delivered.append(entry.entry_id)
            else:
                self._failed(entry, outcome)
        if delivered:
            pipe = self.redis.pipeline(transaction=False)
            pipe.xack(self.stream, self.group, *delivered)
            pipe.hdel(self._attempts_key, *delivered)
            pipe.execute()
            self.stats.delivered += len(delivered)
        self._skip_trimmed(trimmed)
        return len(entries) - len(trimmed)

    def _skip_trimmed(self, ids: list[str]) -> None:
        if not ids:
            return
        log.warning("stream source: entries trimmed while pending, skipped",
                    extra={"stream": self.stream, "ids": ids})
        pipe = self.redis.pipeline(transaction=False)
        pipe.xack(self.stream, self.group, *ids)
        pipe.hdel(self._attempts_key, *ids)
        pipe.execute()
        self.stats.skipped_trimmed += len(ids)

    def _post(self, entry: _Entry) -> PublishOutcome:
        event = encode_stream_event(self.address, self.stream, entry.entry_id, entry.fields or {},
                                    extensions=self.extensions)
        headers, body = to_go_binary(event)
        if self.namespace:
            headers["kn-namespace"] = self.namespace
        # A span of the writer's trace (its traceparent is in the change record), handed to the
        # sink in the HTTP traceparent header: the real adapter does not, so the handlers read
        # the record's too.
        with _TRACER.start_as_current_span(f"stream {self.stream}", kind=SpanKind.PRODUCER,
                                           context=context_of((entry.fields or {}).get("traceparent")),
                                           attributes={"messaging.message.id": entry.entry_id}):
            return self.publisher.post(self.sink_url, {**headers, **current_traceparent()}, body)

    def _failed(self, entry: _Entry, outcome: PublishOutcome) -> None:
        self.stats.failed_attempts += 1
        attempts = int(self.redis.hincrby(self._attempts_key, entry.entry_id, 1))
        retryable = is_retryable(outcome.status_code)
        if retryable and attempts < self.max_attempts:
            log.info("stream source: delivery failed, will retry",
                     extra={"entry": entry.entry_id, "attempt": attempts, "status": outcome.status_code,
                            "reason": outcome.reason[:200]})
            return
        why = "rejected" if not retryable else f"failed {attempts} times"
        reason = f"{why}: {outcome.status_code or 'no answer'} {outcome.reason}".strip()[:1000]
        pipe = self.redis.pipeline(transaction=True)
        pipe.xadd(self.dead_letter_stream, {
            "entry_id": entry.entry_id,
            "stream": self.stream,
            "group": self.group,
            "sink": self.sink_url,
            "attempts": str(attempts),
            "status": str(outcome.status_code or ""),
            "reason": reason,
            "failed_ms": str(int(time.time() * 1000)),
            # The event data as the sink would have received it, to replay from.
            "data": json.dumps(flat_array(entry.fields or {}), separators=(",", ":")),
        })
        pipe.xack(self.stream, self.group, entry.entry_id)
        pipe.hdel(self._attempts_key, entry.entry_id)
        pipe.execute()
        self.stats.dead_lettered += 1
        log.warning("stream source: entry dead-lettered",
                    extra={"entry": entry.entry_id, "attempts": attempts, "reason": reason[:200]})


def _s(value: bytes | str) -> str:
    return value.decode() if isinstance(value, (bytes, bytearray)) else value


def _entry(entry_id: bytes | str, fields: Mapping | None) -> _Entry:
    # An entry always has at least one field pair; none means the entry was trimmed away.
    if not fields:
        return _Entry(_s(entry_id), None)
    return _Entry(_s(entry_id), {text_of(k): text_of(v) for k, v in fields.items()})
