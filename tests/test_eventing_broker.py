"""The local broker: Trigger filters, delivery spec (retry, backoff, dead letters), replies, ingress errors."""

from __future__ import annotations

import json
import threading

import pytest
import requests
import yaml

from eventing import catalogue, wiring
from eventing.broker import LocalBroker
from eventing.broker.app import BrokerConfig, create_app
from eventing.broker.triggers import DeliverySpec, Destination, Trigger, load_trigger_objects, parse_duration
from eventing.http import new_event, parse, to_binary, to_structured
from eventing_fixtures import REAL_BINARY_HEADERS, REAL_BODY, sink_factory  # noqa: F401 - fixture
from skylark.state.errors import ConfigError


# A workflow's own event types (the example's): the broker routes whatever types its Triggers name.
PREPROCESS_COMPLETED = "io.skylark.preprocess.completed"
DETECT_COMPLETED = "io.skylark.detect.completed"
ALARM_RAISED = "io.skylark.alarm.raised"


def trigger(name: str, attributes: dict, subscriber: str = "sub", *, uri: str | None = None,
            delivery: dict | None = None, broker: str = "skylark") -> dict:
    sub: dict = {"ref": {"apiVersion": "serving.knative.dev/v1", "kind": "Service", "name": subscriber}}
    if uri:
        sub["uri"] = uri
    spec: dict = {"broker": broker, "filter": {"attributes": attributes}, "subscriber": sub}
    if delivery:
        spec["delivery"] = delivery
    return {"apiVersion": "eventing.knative.dev/v1", "kind": "Trigger",
            "metadata": {"name": name, "namespace": "default"}, "spec": spec}


def event(type_: str = PREPROCESS_COMPLETED, **ext):
    return new_event(type_, "/skylark/nodes/edge-1/preprocess", {"chain": "c1"}, **ext)


def post(url: str, ev) -> requests.Response:
    headers, body = to_binary(ev)
    return requests.post(url, data=body, headers=headers, timeout=5)


# --- pure parts -------------------------------------------------------------------------------

def test_filter_is_exact_match_on_attributes_and_extensions():
    t = Trigger.from_object(trigger("t", {"type": catalogue.BUNDLE_PROPAGATED, "skylarktarget": "edge-2"}))
    assert t.matches(event(catalogue.BUNDLE_PROPAGATED, skylarktarget="edge-2"))
    assert not t.matches(event(catalogue.BUNDLE_PROPAGATED, skylarktarget="edge-3"))
    assert not t.matches(event(catalogue.BUNDLE_PROPAGATED))          # attribute missing
    assert not t.matches(event(DETECT_COMPLETED, skylarktarget="edge-2"))


def test_empty_filter_value_matches_any_value_of_a_present_attribute():
    t = Trigger.from_object(trigger("t", {"skylarkchain": ""}))
    assert t.matches(event(skylarkchain="anything"))
    assert not t.matches(event())
    assert Trigger.from_object(trigger("all", {})).matches(event())


def test_iso_durations_and_backoff():
    assert parse_duration("PT0.2S") == pytest.approx(0.2)
    assert parse_duration("PT1M30S") == 90
    assert parse_duration("P1DT1H") == 90000
    for bad in ("0.2", "PT", "P1Y", "", "PTS"):
        with pytest.raises(ConfigError):
            parse_duration(bad)
    exp = DeliverySpec.from_object({"retry": 3, "backoffPolicy": "exponential", "backoffDelay": "PT0.1S"}, "d")
    assert [exp.backoff_s(n) for n in (1, 2, 3)] == pytest.approx([0.2, 0.4, 0.8])
    lin = DeliverySpec.from_object({"retry": 3, "backoffPolicy": "linear", "backoffDelay": "PT0.1S"}, "d")
    assert [lin.backoff_s(n) for n in (1, 2, 3)] == pytest.approx([0.1, 0.2, 0.3])
    with pytest.raises(ConfigError):
        DeliverySpec.from_object({"backoffPolicy": "fibonacci"}, "d")


def test_subscriber_resolution_by_ref_name_with_or_without_release_prefix():
    services = {"handlers": "http://127.0.0.1:9001", "dead-letter": "http://127.0.0.1:9002/x/"}
    assert Destination(ref_name="handlers").resolve(services) == "http://127.0.0.1:9001"
    assert Destination(ref_name="skylark-handlers", uri="/").resolve(services) == "http://127.0.0.1:9001/"
    assert Destination(ref_name="rel-dead-letter", uri="in").resolve(services) == "http://127.0.0.1:9002/x/in"
    assert Destination(uri="http://127.0.0.1:9/abs").resolve(services) == "http://127.0.0.1:9/abs"
    with pytest.raises(ConfigError, match="not in the service map"):
        Destination(ref_name="detect").resolve(services)


def test_trigger_objects_are_validated():
    with pytest.raises(ConfigError, match="metadata.name"):
        Trigger.from_object({"kind": "Trigger", "spec": {}})
    bad = trigger("t", {"type": "x"})
    bad["spec"]["filters"] = [{"exact": {"type": "x"}}]
    with pytest.raises(ConfigError, match="not supported"):
        Trigger.from_object(bad)
    relative = trigger("t", {"type": "x"})
    relative["spec"]["subscriber"] = {"uri": "/no-host"}
    with pytest.raises(ConfigError, match="absolute"):
        Trigger.from_object(relative)


def test_the_charts_triggers_load_and_resolve():
    values = wiring.load_chart_values()
    services = {key: f"http://127.0.0.1:{9000 + i}" for i, key in enumerate(chart_service_keys(values))}
    for prefix in ("", "skylark-"):
        objects = wiring.triggers_from_values(values, prefix=prefix)
        triggers = [Trigger.from_object(o) for o in objects]
        assert triggers and all(t.broker == wiring.broker_from_values(values) for t in triggers)
        for t in triggers:
            t.subscriber.resolve(services)
        node = wiring.nodes_from_values(values)[0]
        [bundles] = [t for t in triggers if t.attributes.get("type") == catalogue.BUNDLE_PROPAGATED
                     and t.attributes.get(catalogue.EXT_TARGET) == node]
        assert bundles.subscriber.resolve(services).startswith(services[wiring.handlers_service(node)])


def chart_service_keys(values) -> list[str]:
    """Every service name the chart's Triggers may reference (handlers once per node, and the
    workflow's functions)."""
    return [k for k in wiring.SERVICE_KEYS if k != "handlers"] + [
        wiring.handlers_service(n) for n in wiring.nodes_from_values(values)] + [
        wiring.function_service(f) for f in wiring.workflow_from_values(values).names]


# --- the broker over HTTP ---------------------------------------------------------------------

@pytest.fixture()
def broker_for():
    started: list[LocalBroker] = []

    def start(triggers, services, **kwargs) -> LocalBroker:
        broker = LocalBroker(triggers, services, broker="skylark", **kwargs).start()
        started.append(broker)
        return broker

    yield start
    for broker in started:
        broker.stop()


def test_delivers_matching_events_with_arrival_time_and_the_body_as_sent(broker_for, sink_factory):
    detect, alarm = sink_factory(), sink_factory()
    broker = broker_for([trigger("pre", {"type": PREPROCESS_COMPLETED}, "detect"),
                         trigger("stream", {"type": catalogue.REDIS_STREAM}, "alarm", uri="/changes")],
                        {"detect": detect.url, "alarm": alarm.url})
    ev = event(skylarktarget="edge-2")
    assert post(broker.url, ev).status_code == 202
    assert post(broker.url, event(ALARM_RAISED)).status_code == 202  # no Trigger: accepted anyway
    real = requests.post(broker.url, data=REAL_BODY, headers=REAL_BINARY_HEADERS, timeout=5)
    assert real.status_code == 202
    assert broker.drain(5)
    [got] = detect.received
    assert got.headers["ce-id"] == ev.get_id()
    assert got.headers["ce-skylarktarget"] == "edge-2"      # passed through
    assert "ce-knativearrivaltime" in got.headers
    assert "ce-knativebrokerttl" not in got.headers
    assert json.loads(got.body) == {"chain": "c1"}
    [stream_event] = alarm.received
    assert stream_event.path == "/changes"
    assert stream_event.body == REAL_BODY                   # byte for byte, \u003c escapes and all
    assert stream_event.headers["ce-source"] == REAL_BINARY_HEADERS["Ce-Source"]
    assert broker.stats.accepted == 3 and broker.stats.unmatched == 1 and broker.stats.delivered == 2


def test_binary_data_is_routed_unread_and_judged_by_the_subscriber(broker_for, sink_factory):
    # Knative's broker filters on attributes and never parses the data: neither does ours, so a
    # body that is not the JSON its content type says reaches the subscriber as sent (whose 400
    # then sends it to the dead-letter sink, as in a cluster).
    sink = sink_factory()
    broker = broker_for([trigger("t", {"type": DETECT_COMPLETED})], {"sub": sink.url})
    headers, _ = to_binary(event(DETECT_COMPLETED))
    body = b'{"chain":  "c1", "truncated'
    assert requests.post(broker.url, data=body, headers=headers, timeout=5).status_code == 202
    assert broker.drain(5)
    [got] = sink.received
    assert got.body == body and got.headers["content-type"] == "application/json"


def test_structured_events_are_accepted_and_delivered_binary(broker_for, sink_factory):
    sink = sink_factory()
    broker = broker_for([trigger("t", {"type": DETECT_COMPLETED})], {"sub": sink.url})
    headers, body = to_structured(event(DETECT_COMPLETED))
    assert requests.post(broker.url, data=body, headers=headers, timeout=5).status_code == 202
    assert broker.drain(5)
    [got] = sink.received
    assert got.headers["ce-type"] == DETECT_COMPLETED
    assert parse(got.headers, got.body).get_data() == {"chain": "c1"}


def test_ingress_errors_are_json(broker_for, sink_factory):
    broker = broker_for([], {})
    bad = requests.post(broker.url, data=b"hello", headers={"content-type": "text/plain"}, timeout=5)
    assert bad.status_code == 400 and bad.json()["error"] == "not_a_cloudevent"
    missing = requests.post(broker.url, data=b"{}", headers={"ce-id": "1", "ce-specversion": "1.0"}, timeout=5)
    assert missing.status_code == 400 and missing.json()["error"] == "missing_attribute"
    garbage = requests.post(broker.url, data=b"{not json", headers={"content-type": "application/cloudevents+json"},
                            timeout=5)
    assert garbage.status_code == 400 and "detail" in garbage.json()
    other = post(broker.base_url + "/default/other", event())
    assert other.status_code == 404 and other.json()["error"] == "unknown_broker"
    assert requests.get(broker.url, timeout=5).status_code == 405
    assert requests.get(broker.base_url + "/healthz", timeout=5).json() == {"status": "ok"}
    assert requests.get(broker.base_url + "/readyz", timeout=5).status_code == 200
    assert "skylark_broker_in_flight" in requests.get(broker.base_url + "/metrics", timeout=5).text


@pytest.mark.parametrize("policy, delay_s, waits", [
    ("exponential", 0.05, [0.1, 0.2]),
    ("linear", 0.1, [0.1, 0.2]),
])
def test_retryable_answers_are_retried_with_backoff(broker_for, sink_factory, policy, delay_s, waits):
    answers = [503, 404]  # then 200
    sink = sink_factory(respond=lambda r, n: (answers[n - 1], {}, b"") if n <= len(answers) else (200, {}, b""))
    broker = broker_for([trigger("t", {"type": PREPROCESS_COMPLETED},
                                 delivery={"retry": 3, "backoffPolicy": policy, "backoffDelay": f"PT{delay_s}S"})],
                        {"sub": sink.url})
    assert post(broker.url, event()).status_code == 202
    assert broker.drain(5)
    times = [r.at for r in sink.received]
    assert len(times) == 3
    gaps = [b - a for a, b in zip(times, times[1:])]
    for gap, wait in zip(gaps, waits):
        assert wait * 0.9 <= gap < wait + 0.5
    assert broker.stats.retried == 2 and broker.stats.delivered == 1 and broker.stats.failed == 0


def test_400_is_not_retried_and_goes_to_the_dead_letter_sink(broker_for, sink_factory):
    sink = sink_factory(respond=lambda r, n: (400, {}, b'{"error":"bad"}'))
    dead = sink_factory()
    delivery = {"retry": 5, "backoffDelay": "PT0.01S",
                "deadLetterSink": {"ref": {"kind": "Service", "name": "dead-letter"}}}
    broker = broker_for([trigger("t", {"type": PREPROCESS_COMPLETED}, delivery=delivery)],
                        {"sub": sink.url, "dead-letter": dead.url})
    ev = event()
    post(broker.url, ev)
    assert broker.drain(5)
    assert len(sink.received) == 1
    [got] = dead.received
    assert got.headers["ce-id"] == ev.get_id()
    assert got.headers["ce-knativeerrorcode"] == "400"
    assert got.headers["ce-knativeerrordest"] == sink.url
    assert json.loads(got.body) == {"chain": "c1"}
    assert broker.stats.failed == 1 and broker.stats.dead_lettered == 1 and broker.stats.retried == 0


def test_exhausted_retries_go_to_the_dead_letter_sink(broker_for, sink_factory):
    sink = sink_factory(respond=lambda r, n: (500, {}, b"down"))
    dead = sink_factory()
    delivery = {"retry": 2, "backoffPolicy": "linear", "backoffDelay": "PT0.01S",
                "deadLetterSink": {"uri": dead.url + "dls"}}
    broker = broker_for([trigger("t", {"type": PREPROCESS_COMPLETED}, delivery=delivery)],
                        {"sub": sink.url})
    post(broker.url, event())
    assert broker.drain(5)
    assert len(sink.received) == 3          # first try + 2 retries
    [got] = dead.received
    assert got.path == "/dls" and got.headers["ce-knativeerrorcode"] == "500"
    assert broker.stats.dead_lettered == 1


def test_unreachable_subscriber_without_dead_letter_sink_is_counted_lost(broker_for):
    broker = broker_for([trigger("t", {"type": PREPROCESS_COMPLETED},
                                 delivery={"retry": 1, "backoffDelay": "PT0.01S"})],
                        {"sub": "http://127.0.0.1:1"})
    post(broker.url, event())
    assert broker.drain(5)
    assert broker.stats.failed == 1 and broker.stats.lost == 1


def test_replies_are_published_again(broker_for, sink_factory):
    def reply(received, n):
        headers, body = to_binary(new_event(DETECT_COMPLETED, "/skylark/nodes/edge-1/detect",
                                            {"detections": 2}))
        return 200, headers, body

    detect = sink_factory(respond=reply)
    alarm = sink_factory()
    broker = broker_for([trigger("pre", {"type": PREPROCESS_COMPLETED}, "detect"),
                         trigger("det", {"type": DETECT_COMPLETED}, "alarm")],
                        {"detect": detect.url, "alarm": alarm.url})
    post(broker.url, event())
    assert broker.drain(5)
    [got] = alarm.received
    assert got.headers["ce-type"] == DETECT_COMPLETED
    assert json.loads(got.body) == {"detections": 2}
    assert broker.stats.replies == 1 and broker.stats.delivered == 2


def test_reply_loops_are_stopped_by_the_ttl(broker_for, sink_factory):
    def echo(received, n):  # answers every event with an event the same Trigger matches again
        headers, body = to_binary(new_event(PREPROCESS_COMPLETED, "/loop", {"n": n}))
        return 200, headers, body

    sink = sink_factory(respond=echo)
    broker = broker_for([trigger("loop", {"type": PREPROCESS_COMPLETED})], {"sub": sink.url})
    post(broker.url, event(knativebrokerttl="5"))
    assert broker.drain(5)
    assert len(sink.received) == 5          # ttl 5, 4, 3, 2, 1; the reply to ttl 1 is dropped
    assert broker.stats.replies == 4 and broker.stats.ttl_dropped == 1


def test_ingress_answers_503_when_too_many_deliveries_are_unfinished(broker_for, sink_factory):
    release = threading.Event()
    sink = sink_factory(respond=lambda r, n: (release.wait(5), (200, {}, b""))[1])
    broker = broker_for([trigger("t", {"type": PREPROCESS_COMPLETED})], {"sub": sink.url},
                        max_in_flight=1)
    assert post(broker.url, event()).status_code == 202
    busy = post(broker.url, event())
    assert busy.status_code == 503 and busy.json()["error"] == "broker_busy"
    release.set()
    assert broker.drain(5)
    assert post(broker.url, event()).status_code == 202
    assert broker.drain(5)


def test_create_app_from_environment(tmp_path, monkeypatch, sink_factory):
    sink = sink_factory()
    path = tmp_path / "triggers.yaml"
    path.write_text(yaml.safe_dump_all([trigger("a", {"type": ALARM_RAISED}, "alarm"),
                                        {"kind": "ConfigMap", "metadata": {"name": "ignored"}}]))
    assert len(load_trigger_objects(path.read_text())) == 1
    monkeypatch.setenv("SKYLARK_BROKER_TRIGGERS", str(path))
    monkeypatch.setenv("SKYLARK_BROKER_SERVICES", json.dumps({"alarm": sink.url}))
    monkeypatch.setenv("SKYLARK_BROKER_NAMESPACE", "edge")
    monkeypatch.setenv("SKYLARK_BROKER_NAME", "skylark")
    config = BrokerConfig.from_env()
    assert config.namespace == "edge" and config.services == {"alarm": sink.url}
    # The Trigger's namespace is "default", so this broker (edge/skylark) serves none of them.
    app = create_app(config)
    client = app.test_client()
    headers, body = to_binary(event(ALARM_RAISED))
    assert client.post("/edge/skylark", data=body, headers=headers).status_code == 202
    assert client.get("/stats").get_json()["triggers"] == []
    app.extensions["skylark_broker"].close()


def test_default_triggers_come_from_the_chart(sink_factory):
    values = wiring.load_chart_values()
    sinks = {key: sink_factory().url for key in chart_service_keys(values)}
    broker = LocalBroker(services=sinks).start()
    try:
        assert broker.dispatcher.broker == wiring.broker_from_values(values)
        assert {t.name for t in broker.dispatcher.triggers} == {t["metadata"]["name"]
                                                                for t in wiring.triggers_from_values(values)}
        node = wiring.nodes_from_values(values)[0]
        post(broker.url, new_event(catalogue.BUNDLE_PROPAGATED, "/skylark/nodes/other/handlers", {"v": 1},
                                   skylarktarget=node))
        assert broker.drain(5)
        assert broker.stats.delivered == 1
    finally:
        broker.stop()


def test_bad_configuration_fails_at_start():
    with pytest.raises(ConfigError, match="service map"):
        LocalBroker([trigger("t", {"type": "x"}, "nowhere")], {}, broker="skylark")
    with pytest.raises(ConfigError, match="duplicate"):
        LocalBroker([trigger("t", {"type": "x"}), trigger("t", {"type": "y"})], {"sub": "http://127.0.0.1:1"},
                    broker="skylark")
