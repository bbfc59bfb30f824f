"""The local stream source against a real Redis and real HTTP sinks: at-least-once, never acked early."""

from __future__ import annotations

import json
import time

import pytest
import redis

from eventing.http import parse
from eventing.publisher import Publisher
from eventing.redisstream import decode_stream_event
from eventing.source import StreamSource, attempts_key
from eventing_fixtures import Received, Sink, change_fields, sink_factory  # noqa: F401 - fixture
from skylark.state import keys

STREAM = keys.DEFAULT_CHANGE_STREAM
GROUP = "skylark-handlers"


def make_source(client: redis.Redis, sink_url: str, consumer: str = "c0", **kwargs) -> StreamSource:
    kwargs.setdefault("block_ms", 50)
    kwargs.setdefault("claim_idle_ms", 100)
    kwargs.setdefault("max_attempts", 100)
    return StreamSource(client, STREAM, GROUP, consumer, sink_url, address="redis://127.0.0.1:6379",
                        publisher=Publisher(retries=0, connect_timeout_s=0.5, read_timeout_s=2), **kwargs)


def add(client: redis.Redis, n: int, start: int = 0) -> list[str]:
    return [client.xadd(STREAM, change_fields(i)).decode() for i in range(start, start + n)]


def pending(client: redis.Redis) -> int:
    return client.xpending(STREAM, GROUP)["pending"]


def run_until(source: StreamSource, predicate, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    source.run_once()
    while not predicate():
        assert time.monotonic() < deadline, f"timed out; stats {source.stats}"
        source.run_once()


def test_entries_written_before_start_are_delivered_as_the_real_event(redis_client, sink_factory):
    ids = add(redis_client, 3)  # before the group exists: the real adapter ($) would skip these
    sink = sink_factory()
    source = make_source(redis_client, sink.url)
    run_until(source, lambda: len(sink.received) >= 3)
    assert sink.ids() == ids
    first = sink.received[0]
    assert first.headers["ce-type"] == "dev.knative.sources.redisstream"
    assert first.headers["ce-source"] == "redis://127.0.0.1:6379/skylark:changes"
    assert first.headers["content-type"] == "application/json"
    assert "ce-time" in first.headers and "ce-subject" not in first.headers
    assert json.loads(first.body)[:4] == ["chain", "c1", "function", "preprocess"]
    decoded = decode_stream_event(parse(first.headers, first.body), stream=STREAM)
    assert decoded.entry_id == ids[0] and decoded.change.version == 1
    assert pending(redis_client) == 0
    assert redis_client.hlen(attempts_key(STREAM, GROUP)) == 0


def test_sink_down_keeps_entries_pending_then_delivers_all(redis_client, sink_factory):
    down = Sink()  # a port with nothing listening yet
    source = make_source(redis_client, down.url)
    ids = add(redis_client, 20)
    for _ in range(5):
        source.run_once()
    # Nothing acked while the sink cannot be reached.
    assert pending(redis_client) == 20
    assert source.stats.delivered == 0 and source.stats.failed_attempts >= 20
    sink = sink_factory(port=down.port)  # the sink comes back on the same address
    run_until(source, lambda: pending(redis_client) == 0)
    got = sink.ids()
    assert set(got) == set(ids)               # none lost
    assert len(redis_client.xrange(keys.dead_letter_stream(STREAM))) == 0
    assert source.stats.delivered == 20


def test_no_entry_is_acked_before_the_sink_answers(redis_client, sink_factory):
    seen_pending: list[int] = []

    def respond(received: Received, _n: int):
        # While the sink holds the request, the entry must still be pending.
        seen_pending.append(redis_client.xpending(STREAM, GROUP)["pending"])
        return 200, {}, b""

    sink = sink_factory(respond=respond)
    source = make_source(redis_client, sink.url)
    add(redis_client, 5)
    run_until(source, lambda: pending(redis_client) == 0)
    assert len(seen_pending) == 5 and all(p >= 1 for p in seen_pending)


def test_5xx_is_retried_until_2xx(redis_client, sink_factory):
    sink = sink_factory(respond=lambda r, n: (503, {}, b"busy") if n <= 2 else (200, {}, b""))
    source = make_source(redis_client, sink.url)
    [entry] = add(redis_client, 1)
    run_until(source, lambda: pending(redis_client) == 0)
    assert sink.ids() == [entry] * 3
    assert source.stats.failed_attempts == 2 and source.stats.delivered == 1


def test_restart_redelivers_own_pending_entries_first(redis_client, sink_factory):
    down = Sink()
    crashed = make_source(redis_client, down.url, consumer="c0", claim_idle_ms=60_000)
    ids = add(redis_client, 4)
    crashed.run_once()  # read and failed: pending for c0
    assert pending(redis_client) == 4
    sink = sink_factory()
    # Same consumer name after a restart; a long claim idle time shows it is the own-pending read.
    restarted = make_source(redis_client, sink.url, consumer="c0", claim_idle_ms=60_000)
    restarted.run_once(block_ms=0)
    assert sink.ids() == ids
    assert restarted.stats.redelivered_pending == 4
    assert pending(redis_client) == 0


def test_xautoclaim_takes_over_a_dead_consumers_entries(redis_client, sink_factory):
    down = Sink()
    dead = make_source(redis_client, down.url, consumer="dead")
    ids = add(redis_client, 6)
    dead.run_once()
    assert redis_client.xpending(STREAM, GROUP)["consumers"] == [{"name": b"dead", "pending": 6}]
    sink = sink_factory()
    alive = make_source(redis_client, sink.url, consumer="alive", claim_idle_ms=200)
    alive.run_once(block_ms=0)
    assert sink.received == []  # not idle long enough yet
    time.sleep(0.25)
    run_until(alive, lambda: pending(redis_client) == 0)
    assert sorted(sink.ids()) == sorted(ids)
    assert alive.stats.claimed == 6


def test_dead_letter_after_k_failures(redis_client, sink_factory):
    sink = sink_factory(respond=lambda r, n: (500, {}, b"boom"))
    source = make_source(redis_client, sink.url, max_attempts=3, claim_idle_ms=50)
    [entry] = add(redis_client, 1)
    run_until(source, lambda: source.stats.dead_lettered == 1)
    assert len(sink.received) == 3
    assert pending(redis_client) == 0
    [(dead_id, dead)] = redis_client.xrange(keys.dead_letter_stream(STREAM))
    assert dead[b"entry_id"].decode() == entry
    assert dead[b"attempts"] == b"3" and dead[b"status"] == b"500"
    assert b"failed 3 times" in dead[b"reason"] and b"boom" in dead[b"reason"]
    assert json.loads(dead[b"data"])[:2] == ["chain", "c1"]
    assert redis_client.hlen(attempts_key(STREAM, GROUP)) == 0


def test_a_400_is_dead_lettered_at_once(redis_client, sink_factory):
    sink = sink_factory(respond=lambda r, n: (400, {}, b'{"error":"bad_change"}'))
    source = make_source(redis_client, sink.url, max_attempts=5)
    add(redis_client, 1)
    run_until(source, lambda: source.stats.dead_lettered == 1)
    assert len(sink.received) == 1
    [(_, dead)] = redis_client.xrange(keys.dead_letter_stream(STREAM))
    assert dead[b"reason"].startswith(b"rejected: 400")


def test_entries_trimmed_while_pending_are_acked_and_skipped(redis_client, sink_factory):
    down = Sink()
    source = make_source(redis_client, down.url, consumer="c0", claim_idle_ms=60_000)
    add(redis_client, 5)
    source.run_once()
    assert pending(redis_client) == 5
    redis_client.xtrim(STREAM, maxlen=2, approximate=False)  # 3 pending entries are gone
    sink = sink_factory()
    restarted = make_source(redis_client, sink.url, consumer="c0", claim_idle_ms=60_000)
    restarted.run_once(block_ms=0)
    assert len(sink.received) == 2
    assert restarted.stats.skipped_trimmed == 3
    assert pending(redis_client) == 0


def test_trimmed_entries_of_a_dead_consumer_are_skipped_on_claim(redis_client, sink_factory):
    down = Sink()
    dead = make_source(redis_client, down.url, consumer="dead")
    add(redis_client, 4)
    dead.run_once()
    redis_client.xtrim(STREAM, maxlen=1, approximate=False)
    sink = sink_factory()
    alive = make_source(redis_client, sink.url, consumer="alive", claim_idle_ms=50)
    time.sleep(0.1)
    run_until(alive, lambda: pending(redis_client) == 0)
    assert len(sink.received) == 1
    assert alive.stats.skipped_trimmed == 3


def test_background_thread_delivers_new_entries(redis_client, sink_factory):
    sink = sink_factory()
    source = make_source(redis_client, sink.url).start()
    try:
        ids = add(redis_client, 10)
        assert sink.wait_for(10, timeout=10)
    finally:
        source.stop()
    assert sink.ids() == ids


def test_rejects_nonsense_configuration(redis_client):
    with pytest.raises(ValueError):
        make_source(redis_client, "http://127.0.0.1:1/", max_attempts=0)


def test_a_deleted_stream_gets_its_group_back(redis_client, sink_factory):
    sink = sink_factory()
    source = make_source(redis_client, sink.url)
    add(redis_client, 1)
    run_until(source, lambda: len(sink.received) == 1)
    redis_client.delete(STREAM)        # e.g. FLUSHALL / a restore: the group is gone too
    assert source.run_once(block_ms=0) == 0
    [entry] = add(redis_client, 1)
    run_until(source, lambda: len(sink.received) == 2)
    assert sink.ids()[-1] == entry
