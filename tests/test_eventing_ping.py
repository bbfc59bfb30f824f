"""The PingSource runner: schedule (with time zones), the event it sends, and the running loop."""

from __future__ import annotations

import base64
import datetime as dt
import json

import pytest

from eventing import catalogue, wiring
from eventing.http import parse
from eventing.ping import PingSource
from eventing_fixtures import sink_factory  # noqa: F401 - fixture
from skylark.state.errors import ConfigError

UTC = dt.timezone.utc


def test_next_fire_follows_the_cron_schedule():
    ping = PingSource("*/5 * * * *", "http://127.0.0.1:1/")
    assert ping.next_fire(dt.datetime(2024, 1, 1, 10, 2, 30, tzinfo=UTC)) == dt.datetime(2024, 1, 1, 10, 5, tzinfo=UTC)
    assert ping.next_fire(dt.datetime(2024, 1, 1, 10, 5, tzinfo=UTC)) == dt.datetime(2024, 1, 1, 10, 10, tzinfo=UTC)
    assert ping.next_fire(dt.datetime(2024, 1, 1, 10, 2)) == dt.datetime(2024, 1, 1, 10, 5, tzinfo=UTC)  # naive = UTC


def test_next_fire_in_a_time_zone_across_dst():
    ping = PingSource("0 9 * * *", "http://127.0.0.1:1/", timezone="Europe/Vienna")
    # Winter: 09:00 in Vienna is 08:00 UTC; summer (after 31 March 2024): 07:00 UTC.
    assert ping.next_fire(dt.datetime(2024, 3, 1, 12, tzinfo=UTC)) == dt.datetime(2024, 3, 2, 8, tzinfo=UTC)
    assert ping.next_fire(dt.datetime(2024, 4, 1, 12, tzinfo=UTC)) == dt.datetime(2024, 4, 2, 7, tzinfo=UTC)
    inline = PingSource("CRON_TZ=Europe/Vienna 0 9 * * *", "http://127.0.0.1:1/")
    assert inline.next_fire(dt.datetime(2024, 3, 1, 12, tzinfo=UTC)) == dt.datetime(2024, 3, 2, 8, tzinfo=UTC)


@pytest.mark.parametrize("kwargs, words", [
    ({"schedule": "every minute"}, "cron"),
    ({"schedule": "* * * * * *"}, "5-field"),
    ({"schedule": "* * * * *", "timezone": "Mars/Olympus"}, "time zone"),
    ({"schedule": "* * * * *", "data": "{", "content_type": "application/json"}, "not JSON"),
    ({"schedule": "* * * * *", "data": "[1]", "content_type": "application/json"}, "JSON object"),
    ({"schedule": "* * * * *", "data_base64": "***"}, "base64"),
    ({"schedule": "* * * * *", "data": "a", "data_base64": "YQ=="}, "not both"),
])
def test_bad_pingsources_are_refused(kwargs, words):
    with pytest.raises(ConfigError, match=words):
        PingSource(sink_url="http://127.0.0.1:1/", **kwargs)


def test_fire_once_sends_the_pingsource_event(sink_factory):
    sink = sink_factory()
    ping = PingSource("* * * * *", sink.url, data='{"reason": "warm-up", "a": "<x>"}',
                      name="warmup", namespace="edge", extensions={"skylarktarget": "edge-1"})
    assert ping.fire_once().ok
    assert ping.fire_once().ok
    first, second = sink.received
    assert first.headers["ce-type"] == catalogue.PING
    assert first.headers["ce-source"] == "/apis/v1/namespaces/edge/pingsources/warmup"
    assert first.headers["ce-skylarktarget"] == "edge-1"
    assert first.headers["content-type"] == "application/json"
    assert "ce-time" in first.headers
    assert first.headers["ce-id"] != second.headers["ce-id"]  # a new UUID per tick
    # Go re-marshals the object: keys sorted, compact, < > escaped.
    assert first.body == b'{"a":"\\u003cx\\u003e","reason":"warm-up"}'
    assert parse(first.headers, first.body).get_data() == {"reason": "warm-up", "a": "<x>"}


def test_text_and_base64_data(sink_factory):
    sink = sink_factory()
    PingSource("* * * * *", sink.url, data="hello", content_type="text/plain").fire_once()
    jpeg = bytes([0xFF, 0xD8, 0xFF, 0xE0, 0, 1, 2, 3])
    PingSource("* * * * *", sink.url, data_base64=base64.b64encode(jpeg).decode(),
               content_type="image/jpeg").fire_once()
    PingSource("* * * * *", sink.url, data=None).fire_once()
    text, image, empty = sink.received
    assert (text.body, text.headers["content-type"]) == (b"hello", "text/plain")
    assert (image.body, image.headers["content-type"]) == (jpeg, "image/jpeg")  # decoded, as Knative sends it
    assert empty.body == b"" and "ce-datacontenttype" not in empty.headers


def test_run_fires_on_schedule(sink_factory):
    sink = sink_factory()
    real_start = dt.datetime.now(UTC)
    # A clock 0.4 s before a minute boundary, running at real speed: the next tick is 0.4 s away.
    boundary = real_start.replace(second=0, microsecond=0) + dt.timedelta(minutes=1)
    offset = boundary - dt.timedelta(seconds=0.4) - real_start
    ping = PingSource("* * * * *", sink.url, data='{"k": 1}', clock=lambda: dt.datetime.now(UTC) + offset).start()
    try:
        assert sink.wait_for(1, timeout=5)
    finally:
        ping.stop()
    assert len(sink.received) == 1                      # once per minute, not more
    assert json.loads(sink.received[0].body) == {"k": 1}
    assert ping.sent == 1


def test_from_the_charts_pingsource_objects(sink_factory):
    values = wiring.load_chart_values()
    objects = wiring.pingsources_from_values(values)
    assert objects
    services = {}
    for obj in objects:
        name = obj["spec"]["sink"]["ref"]["name"]
        services[name] = sink_factory().url
    pings = [PingSource.from_object(obj, services) for obj in objects]
    for ping in pings:
        assert ping.fire_once().ok
        assert ping.source.startswith("/apis/v1/namespaces/default/pingsources/")
