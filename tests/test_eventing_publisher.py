"""The Publisher against real HTTP servers on 127.0.0.1: outcomes, the retry policy, timeouts."""

from __future__ import annotations

import threading
import time

from eventing.http import new_event, parse
from eventing.publisher import Delivery, Publisher
from eventing_fixtures import Received, sink_factory  # noqa: F401 - fixture
from skylark.runtime.embedded import free_port

HEADERS = {"ce-specversion": "1.0", "ce-id": "e-1", "ce-source": "/test", "ce-type": "test.event",
           "content-type": "application/json"}


def answers(*statuses: int, body: bytes = b"", headers: dict[str, str] | None = None):
    """A responder giving ``statuses`` in turn, then the last one for ever."""

    def respond(_received: Received, n: int):
        status = statuses[min(n, len(statuses)) - 1]
        return status, dict(headers or {}), body

    return respond


def test_2xx_is_delivered_with_body_and_lowercased_headers(sink_factory):
    sink = sink_factory(respond=answers(202, body=b'{"ok":1}', headers={"X-Reply": "yes"}))
    publisher = Publisher(retries=0)
    outcome = publisher.post(sink.url, HEADERS, b'{"a":1}')
    publisher.close()
    assert outcome.ok and outcome.delivery is Delivery.DELIVERED
    assert outcome.status_code == 202 and outcome.reason == "ok"
    assert outcome.body == b'{"ok":1}'
    assert outcome.headers["x-reply"] == "yes"
    assert outcome.elapsed_ms > 0
    got = sink.received[0]
    assert got.body == b'{"a":1}' and got.headers["ce-id"] == "e-1"


def test_publish_sends_the_event_in_binary_mode(sink_factory):
    sink = sink_factory()
    event = new_event("test.event", "/test", {"x": [1, 2]}, id_="e-7", skylarkchain="c1")
    publisher = Publisher(retries=0)
    assert publisher.publish(sink.url, event).ok
    publisher.close()
    got = sink.received[0]
    assert got.headers["ce-id"] == "e-7" and got.headers["ce-skylarkchain"] == "c1"
    back = parse(got.headers, got.body)
    assert back.get_data() == {"x": [1, 2]} and back.get_type() == "test.event"


def test_5xx_and_429_are_retried_until_delivered(sink_factory):
    sink = sink_factory(respond=answers(503, 429, 500, 202))
    publisher = Publisher(retries=3, backoff_s=0.01)
    outcome = publisher.post(sink.url, HEADERS, b"{}")
    publisher.close()
    assert outcome.ok and outcome.status_code == 202
    assert len(sink.received) == 4
    assert sink.ids() == ["e-1"] * 4  # the same event every time: receivers dedupe it


def test_retries_exhausted_on_5xx_give_up_with_the_last_answer(sink_factory):
    sink = sink_factory(respond=answers(502, body=b"upstream down"))
    publisher = Publisher(retries=2, backoff_s=0.01)
    outcome = publisher.post(sink.url, HEADERS, b"{}")
    publisher.close()
    assert outcome.delivery is Delivery.GAVE_UP and not outcome.ok
    assert outcome.status_code == 502 and outcome.reason == "upstream down"
    assert len(sink.received) == 3  # the first try and 2 retries


def test_other_4xx_is_final_and_not_retried(sink_factory):
    for status in (400, 404, 413):
        sink = sink_factory(respond=answers(status, body=b'{"error":"bad"}'))
        publisher = Publisher(retries=3, backoff_s=0.01)
        outcome = publisher.post(sink.url, HEADERS, b"{}")
        publisher.close()
        assert outcome.delivery is Delivery.REJECTED, status
        assert outcome.status_code == status and outcome.reason == '{"error":"bad"}'
        assert len(sink.received) == 1


def test_backoff_grows_exponentially(sink_factory):
    sink = sink_factory(respond=answers(503))
    publisher = Publisher(retries=3, backoff_s=0.05, backoff_max_s=2.0)
    start = time.monotonic()
    outcome = publisher.post(sink.url, HEADERS, b"{}")
    elapsed = time.monotonic() - start
    publisher.close()
    assert outcome.delivery is Delivery.GAVE_UP and len(sink.received) == 4
    # urllib3: no sleep before the first retry, then 0.05 × 2 and 0.05 × 4 (+ up to 0.05 jitter each).
    assert 0.3 <= elapsed < 2.0
    gaps = [b.at - a.at for a, b in zip(sink.received, sink.received[1:])]
    assert gaps[2] > gaps[0]


def test_retry_after_is_respected(sink_factory):
    sink = sink_factory(respond=answers(503, 202, headers={"Retry-After": "1"}))
    publisher = Publisher(retries=1, backoff_s=0.01)
    start = time.monotonic()
    assert publisher.post(sink.url, HEADERS, b"{}").ok
    publisher.close()
    assert time.monotonic() - start >= 0.95


def test_connection_refused_gives_up_without_status():
    url = f"http://127.0.0.1:{free_port()}/"  # nobody listens
    publisher = Publisher(retries=2, backoff_s=0.01, connect_timeout_s=0.5)
    outcome = publisher.post(url, HEADERS, b"{}")
    publisher.close()
    assert outcome.delivery is Delivery.GAVE_UP and outcome.status_code is None
    assert "Connection" in outcome.reason or "refused" in outcome.reason.lower()


def test_read_timeout_gives_up_and_the_per_call_timeout_wins(sink_factory):
    def slow(_received: Received, _n: int):
        time.sleep(0.6)
        return 202, {}, b""

    sink = sink_factory(respond=slow)
    publisher = Publisher(retries=0, read_timeout_s=0.2)
    outcome = publisher.post(sink.url, HEADERS, b"{}")
    assert outcome.delivery is Delivery.GAVE_UP and outcome.status_code is None
    assert "Timeout" in outcome.reason or "timed out" in outcome.reason
    assert publisher.post(sink.url, HEADERS, b"{}", timeout=(1.0, 3.0)).ok
    publisher.close()


def test_read_timeouts_are_retried(sink_factory):
    def slow_first(_received: Received, n: int):
        if n == 1:
            time.sleep(0.6)
        return 202, {}, b""

    sink = sink_factory(respond=slow_first)
    publisher = Publisher(retries=1, read_timeout_s=0.2, backoff_s=0.01)
    assert publisher.post(sink.url, HEADERS, b"{}").ok
    publisher.close()
    assert sink.wait_for(2)


def test_concurrent_posts_share_the_pool(sink_factory):
    sink = sink_factory()
    publisher = Publisher(retries=0, pool_size=4)
    results = []
    lock = threading.Lock()

    def send(i: int) -> None:
        for j in range(10):
            outcome = publisher.post(sink.url, {**HEADERS, "ce-id": f"e-{i}-{j}"}, b"{}")
            with lock:
                results.append(outcome.ok)

    threads = [threading.Thread(target=send, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    publisher.close()
    assert len(results) == 80 and all(results)
    assert len(set(sink.ids())) == 80
