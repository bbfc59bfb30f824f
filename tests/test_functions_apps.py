"""The three function apps over real HTTP with real Redis servers (one per simulated node)."""

from __future__ import annotations

import base64
import io
import json
import time

import numpy as np
import pytest
import requests
from PIL import Image

from eventing import catalogue
from eventing.http import new_event, to_structured
from eventing.publisher import Publisher
from ex_alarm.app import create_app as alarm_app
from ex_alarm.config import AlarmSettings
from ex_alarm.rule import AlarmRule
from ex_detect.app import create_app as detect_app
from ex_detect.config import DetectSettings
from ex_preprocess.app import create_app as preprocess_app
from ex_preprocess.config import PreprocessSettings
from ex_preprocess.function import PreprocessFunction
from ex_preprocess.imaging import ImageOptions
from functions_fixtures import (  # noqa: F401 - serve is a fixture
    ASTRONAUT_FACE,
    Recorder,
    astronaut,
    blank,
    chelsea,
    encode,
    header_only_png,
    overlap,
    post_event,
    reply_event,
    serve,
    submitted,
)
from skylark.state import keys
from skylark.fn import make_function_app
from skylark.state.peers import StaticPeers
from skylark.state.settings import Settings
from skylark.state.store import StateStore


def core(server, node: str = "node-a", **changes) -> Settings:
    return Settings(node=node, redis_url=server.url, redis_timeout_s=1.0, **changes)


def snapshot(client) -> dict:
    """Everything in a Redis (keys and the stream lengths), to show that nothing was written."""
    return {k: client.type(k) for k in client.keys("*")}


def assert_json_error(response: requests.Response, status: int, code: str) -> None:
    assert response.status_code == status, response.text
    body = response.json()
    assert body["error"] == code and body["detail"]


@pytest.fixture()
def node_a(redis_server, redis_client):
    return redis_server


# -- preprocess ----------------------------------------------------------------------------------


def test_preprocess_stores_the_normalised_image_and_replies_with_its_event(node_a, redis_client, serve):
    app = serve(preprocess_app(PreprocessSettings(core=core(node_a))))
    response = post_event(app.url, submitted("chain-1", encode(astronaut()), route=["node-a", "node-c"]))
    event = reply_event(response)
    assert event.get_type() == catalogue.PREPROCESS_COMPLETED
    assert event.get_source() == "/skylark/nodes/node-a/preprocess"
    assert event.get_extension("skylarkchain") == "chain-1"
    assert event.get_extension("skylarknode") == "node-a"
    assert event.get_extension("skylarkfunction") == "preprocess"
    assert event.get_extension("skylarkversion") == "1"
    # the route's first node is where the next stage runs: here, this node (so: a reply)
    assert event.get_extension("skylarktarget") == "node-a"
    data = event.get_data()
    assert data["chain"] == "chain-1" and data["node"] == "node-a" and data["route"] == ["node-c"]
    assert data["fields"] == ["image", "info"] and data["tiles"] == 0
    assert data["timings"]["fetch_location"] == "inline" and data["timings"]["compute_ms"] > 0
    assert [t["function"] for t in data["trace"]] == ["preprocess"]

    bundle = StateStore(redis_client, node="node-a").get_bundle("chain-1", "preprocess")
    image = Image.open(io.BytesIO(bundle.fields["image"]))
    assert (image.format, image.mode, image.size) == ("PNG", "L", (512, 512))
    info = json.loads(bundle.fields["info"])
    assert info["original"] == {"width": 512, "height": 512, "format": "JPEG", "mode": "RGB"}
    # the change stream got the entry the propagation handlers react to
    assert redis_client.xlen(keys.DEFAULT_CHANGE_STREAM) == 1


def test_preprocess_accepts_a_pingsource_event_with_a_binary_image(node_a, redis_client, serve):
    app = serve(preprocess_app(PreprocessSettings(core=core(node_a))))
    ping = new_event(catalogue.PING, "/apis/v1/namespaces/default/pingsources/camera", encode(chelsea()),
                     id_="b0e4c7d2-5b0a-4a44-8d53-93f0e0a1a001", datacontenttype="image/jpeg")
    event = reply_event(post_event(app.url, ping))
    chain = "ping-b0e4c7d2-5b0a-4a44-8d53-93f0e0a1a001"
    assert event.get_extension("skylarkchain") == chain
    assert StateStore(redis_client, node="node-a").get_meta(chain, "preprocess").version == 1


def test_preprocess_fed_by_the_local_pingsource_runner(node_a, redis_client, serve):
    from eventing.ping import PingSource

    app = serve(preprocess_app(PreprocessSettings(core=core(node_a))))
    image = encode(astronaut())
    ping = PingSource("* * * * *", app.url, data_base64=base64.b64encode(image).decode(),
                      content_type="image/jpeg", name="camera")
    outcome = ping.fire_once()
    assert outcome.ok and outcome.status_code == 200
    [chain] = {key.split(":")[2] for key in map(bytes.decode, redis_client.keys("skylark:bundle:*"))}
    assert chain.startswith("ping-")
    info = json.loads(StateStore(redis_client, node="node-a").get_bundle(chain, "preprocess").fields["info"])
    assert info["input"]["bytes"] == len(image) and info["original"]["format"] == "JPEG"


def test_preprocess_tiles_a_large_image_into_one_bundle(node_a, redis_client, serve):
    app = serve(preprocess_app(PreprocessSettings(core=core(node_a))))
    big = encode(np.asarray(Image.fromarray(astronaut()).resize((1800, 1800))))
    data = reply_event(post_event(app.url, submitted("chain-big", big))).get_data()
    assert data["tiles"] == 9
    fields = StateStore(redis_client, node="node-a").get_bundle("chain-big", "preprocess").fields
    assert {f"tile.{i}" for i in range(9)} | {"image", "tiles", "info"} == set(fields)


def test_preprocess_reads_an_image_stored_on_another_node(redis_factory, node_a, redis_client, serve):
    node_b = redis_factory()
    StateStore(node_b.client(), node="node-b").put("cam-7", "camera", {"frame": encode(astronaut())})
    peers = StaticPeers.from_mapping({"node-b": {"redis_url": node_b.url}})
    app = serve(preprocess_app(PreprocessSettings(core=core(node_a)), peers=peers))
    ref = new_event(catalogue.IMAGE_SUBMITTED, "/c", {
        "chain": "chain-ref", "ref": {"chain": "cam-7", "function": "camera", "field": "frame", "node": "node-b"}})
    timings = reply_event(post_event(app.url, ref)).get_data()["timings"]
    assert timings["fetch_location"] == "remote" and timings["fetch_node"] == "node-b"
    assert timings["fetch_ms"] > 0
    # a field the bundle does not have, and a bundle nobody has: 404, nothing written
    before = snapshot(redis_client)
    for ref_data in ({"chain": "cam-7", "function": "camera", "field": "nope", "node": "node-b"},
                     {"chain": "cam-8", "function": "camera", "field": "frame", "node": "node-b"}):
        missing = new_event(catalogue.IMAGE_SUBMITTED, "/c", {"chain": "chain-x", "ref": ref_data})
        assert_json_error(post_event(app.url, missing), 404, "bundle_not_found")
    assert snapshot(redis_client) == before


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
def test_preprocess_bad_input_is_4xx_json_and_writes_nothing(node_a, redis_client, serve):
    settings = PreprocessSettings(core=core(node_a), image=ImageOptions(max_pixels=2_000_000),
                                  max_body_bytes=2 * 1024 * 1024)
    app = serve(preprocess_app(settings))
    jpeg = encode(astronaut())
    cases = [
        (submitted("c1", b"GIF89a definitely not a jpeg"), 400, "invalid_image"),
        (submitted("c1", encode(astronaut(), "GIF")), 400, "invalid_image"),
        (submitted("c1", jpeg[: len(jpeg) // 3]), 400, "invalid_image"),
        (submitted("c1", header_only_png(30_000, 30_000)), 413, "image_too_large"),
        (submitted("c1", encode(blank(1500, 1500), "PNG")), 413, "image_too_large"),
        (new_event(catalogue.IMAGE_SUBMITTED, "/c", {"image_base64": "AAAA"}), 400, "missing_chain"),
        (new_event(catalogue.IMAGE_SUBMITTED, "/c", {"chain": "c1"}), 400, "missing_image"),
        (new_event(catalogue.DETECT_COMPLETED, "/c", {"chain": "c1"}), 400, "unsupported_event_type"),
    ]
    before = snapshot(redis_client)
    for event, status, code in cases:
        assert_json_error(post_event(app.url, event), status, code)
    # not a CloudEvent at all / a structured event that is not JSON / a body above the limit
    assert_json_error(requests.post(app.url, data=b"hello", headers={"content-type": "text/plain"}),
                      400, "not_a_cloudevent")
    assert_json_error(requests.post(app.url, data=b"{", headers={"content-type": "application/cloudevents+json"}),
                      400, "malformed_event")
    huge = submitted("c1", bytes(3 * 1024 * 1024))
    assert post_event(app.url, huge).status_code == 413
    assert snapshot(redis_client) == before == {}


def test_redis_down_is_503_and_not_ready(redis_factory, serve):
    doomed = redis_factory()
    app = serve(preprocess_app(PreprocessSettings(core=core(doomed))))
    assert requests.get(f"{app.url}/readyz").status_code == 200
    doomed.stop()
    assert_json_error(post_event(app.url, submitted("c1", encode(blank()))), 503, "store_unavailable")
    ready = requests.get(f"{app.url}/readyz")
    assert ready.status_code == 503 and ready.json()["redis"] == "unreachable"
    assert requests.get(f"{app.url}/healthz").status_code == 200  # alive: no restart for a Redis outage


def test_a_routed_result_goes_to_the_broker_of_the_routes_first_node(node_a, redis_client, serve):
    local_sink, remote = Recorder(), Recorder()
    sink, broker_b = serve(local_sink.app()), serve(remote.app())
    peers = StaticPeers.from_mapping({"node-b": {"broker_url": f"{broker_b.url}/default/skylark"}})
    settings = PreprocessSettings(core=core(node_a, broker_url=f"{sink.url}/default/skylark"))
    app = serve(preprocess_app(settings, peers))
    response = post_event(app.url, submitted("chain-r", encode(chelsea()), route=["node-b", "node-c"]))
    assert response.status_code == 202
    [event] = remote.wait_for(1)
    assert event.get_extension("skylarktarget") == "node-b" and event.get_data()["route"] == ["node-c"]
    assert local_sink.events == []
    # a route through a node nobody knows is refused (the state is stored, the chain stops)
    unknown = post_event(app.url, submitted("chain-u", encode(chelsea()), route=["node-x"]))
    assert_json_error(unknown, 400, "unknown_route_node")


def test_a_redelivered_input_is_acknowledged_without_being_redone(node_a, redis_client, serve):
    recorder = Recorder()
    sink = serve(recorder.app())
    app = serve(preprocess_app(PreprocessSettings(core=core(node_a, broker_url=f"{sink.url}/default/skylark"))))
    event = submitted("chain-twice", encode(chelsea()))
    assert post_event(app.url, event).status_code == 202
    assert post_event(app.url, event).status_code == 202  # Knative delivering it again
    assert len(recorder.wait_for(1)) == 1
    time.sleep(0.2)
    assert len(recorder.events) == 1
    assert StateStore(redis_client, node="node-a").get_meta("chain-twice", "preprocess").version == 1
    assert redis_client.xlen(keys.DEFAULT_CHANGE_STREAM) == 1
    metrics = requests.get(f"{app.url}/metrics").text
    assert 'skylark_function_events_total{function="preprocess",outcome="duplicate"} 1.0' in metrics


def test_with_k_sink_the_result_is_published_and_the_answer_is_202(node_a, redis_client, serve):
    recorder = Recorder()
    sink = serve(recorder.app())
    app = serve(preprocess_app(PreprocessSettings(core=core(node_a, broker_url=f"{sink.url}/default/skylark"))))
    # structured mode in, binary out
    headers, body = to_structured(submitted("chain-sink", encode(astronaut())))
    response = requests.post(app.url, data=body, headers=headers)
    assert response.status_code == 202 and response.content == b""
    [event] = recorder.wait_for(1)
    assert event.get_type() == catalogue.PREPROCESS_COMPLETED and event.get_extension("skylarkchain") == "chain-sink"
    metrics = requests.get(f"{app.url}/metrics").text
    assert 'skylark_function_events_total{function="preprocess",outcome="completed"} 1.0' in metrics
    assert 'skylark_function_stage_seconds_count{function="preprocess",stage="publish"} 1.0' in metrics


def test_sink_down_is_503_and_the_redelivery_yields_the_same_event_id(node_a, redis_client, serve):
    recorder = Recorder(status=503)
    sink = serve(recorder.app())
    settings = PreprocessSettings(core=core(node_a, broker_url=sink.url))
    app = serve(make_function_app(PreprocessFunction(settings), settings.core,
                                  publisher=Publisher(retries=0)))
    event = submitted("chain-retry", encode(blank()))
    assert_json_error(post_event(app.url, event), 503, "sink_unavailable")
    recorder.status = 202
    assert post_event(app.url, event).status_code == 202
    first, second = recorder.wait_for(2)
    assert first.get_id() == second.get_id()  # downstream can drop the duplicate
    assert StateStore(redis_client, node="node-a").get_meta("chain-retry", "preprocess").version == 2


# -- detect --------------------------------------------------------------------------------------


def preprocessed(serve, server, chain: str, image: bytes, node: str = "node-a"):
    app = serve(preprocess_app(PreprocessSettings(core=core(server, node))))
    return reply_event(post_event(app.url, submitted(chain, image)))


def test_detect_reads_remotely_from_the_origin_then_locally_once_propagated(redis_factory, node_a,
                                                                             redis_client, serve):
    done = preprocessed(serve, node_a, "chain-d", encode(astronaut()))
    node_b = redis_factory()
    peers = StaticPeers.from_mapping({"node-a": {"redis_url": node_a.url}})
    detect = serve(detect_app(DetectSettings(core=core(node_b, "node-b")), peers=peers))

    event = reply_event(post_event(detect.url, done))
    data = event.get_data()
    assert event.get_type() == catalogue.DETECT_COMPLETED
    assert event.get_extension("skylarknode") == "node-b" and event.get_extension("skylarkversion") == "1"
    assert data["timings"]["fetch_location"] == "remote" and data["timings"]["fetch_node"] == "node-a"
    assert data["classes"].get("face") == 1 and data["max_score"]["face"] > 0.7
    assert [t["function"] for t in data["trace"]] == ["preprocess", "detect"]

    stored = StateStore(node_b.client(), node="node-b").get_bundle("chain-d", "detect")
    detections = json.loads(stored.fields["detections"])
    [face] = [d for d in detections if d["class"] == "face"]
    assert overlap(tuple(face["box"]), ASTRONAUT_FACE) > 0.8
    assert json.loads(stored.fields["info"])["source"] == {"function": "preprocess", "version": 1, "node": "node-a"}

    # What propagation does: the bundle arrives in node-b's Redis. Now the read is local.
    bundle = StateStore(redis_client, node="node-a").get_bundle("chain-d", "preprocess")
    StateStore(node_b.client(), node="node-b").apply(bundle)
    again = reply_event(post_event(detect.url, done)).get_data()["timings"]
    assert again["fetch_location"] == "local" and again["fetch_node"] == "node-b"


def test_detect_missing_state_is_404_and_bad_events_are_400(node_a, redis_client, serve):
    detect = serve(detect_app(DetectSettings(core=core(node_a))))
    before = snapshot(redis_client)
    ghost = new_event(catalogue.PREPROCESS_COMPLETED, "/x", {"chain": "never-written", "node": "node-a"})
    assert_json_error(post_event(detect.url, ghost), 404, "bundle_not_found")
    nochain = new_event(catalogue.PREPROCESS_COMPLETED, "/x", {"node": "node-a"})
    assert_json_error(post_event(detect.url, nochain), 400, "missing_chain")
    listdata = new_event(catalogue.PREPROCESS_COMPLETED, "/x", ["chain-1"])
    assert_json_error(post_event(detect.url, listdata), 400, "invalid_event_data")
    assert snapshot(redis_client) == before


def test_detect_refuses_a_bundle_that_is_not_preprocess_output(node_a, redis_client, serve):
    StateStore(redis_client, node="node-a").put("chain-junk", "preprocess", {"image": b"junk", "info": b"{}"})
    detect = serve(detect_app(DetectSettings(core=core(node_a))))
    event = new_event(catalogue.PREPROCESS_COMPLETED, "/x", {"chain": "chain-junk", "node": "node-a"})
    assert_json_error(post_event(detect.url, event), 422, "invalid_state")
    assert StateStore(redis_client, node="node-a").get_meta("chain-junk", "detect") is None


def test_detect_origin_unreachable_is_503(redis_factory, node_a, serve):
    origin = redis_factory()
    peers = StaticPeers.from_mapping({"node-z": {"redis_url": origin.url}})
    origin.stop()
    detect = serve(detect_app(DetectSettings(core=core(node_a)), peers=peers))
    event = new_event(catalogue.PREPROCESS_COMPLETED, "/x", {"chain": "chain-z", "node": "node-z"})
    assert_json_error(post_event(detect.url, event), 503, "store_unavailable")


# -- alarm ---------------------------------------------------------------------------------------


def detected(serve, server, chain: str, image: bytes):
    done = preprocessed(serve, server, chain, image)
    detect = serve(detect_app(DetectSettings(core=core(server))))
    return reply_event(post_event(detect.url, done))


def alarms(client) -> list[dict[str, str]]:
    return [{k.decode(): v.decode() for k, v in fields.items()}
            for _, fields in client.xrange(keys.DEFAULT_ALARM_STREAM)]


def test_alarm_raised_for_the_astronaut_and_recorded(node_a, redis_client, serve):
    done = detected(serve, node_a, "chain-al", encode(astronaut()))
    alarm = serve(alarm_app(AlarmSettings(core=core(node_a))))
    event = reply_event(post_event(alarm.url, done))
    assert event.get_type() == catalogue.ALARM_RAISED and event.get_extension("skylarkchain") == "chain-al"
    data = event.get_data()
    assert [d["class"] for d in data["detections"]] == ["face"]
    assert data["rule"] == {"classes": ["face", "person", "upper_body"], "min_score": 0.7, "min_count": 1}
    assert [t["function"] for t in data["trace"]] == ["preprocess", "detect", "alarm"]
    assert all({"fetch_ms", "fetch_location", "compute_ms", "store_ms"} <= set(t) for t in data["trace"])
    [record] = alarms(redis_client)
    assert record["outcome"] == "alarm" and record["chain"] == "chain-al" and record["node"] == "node-a"
    assert data["stream_id"] and json.loads(record["matched"])[0]["class"] == "face"
    assert json.loads(record["timings"])["fetch_location"] == "local"


def test_blank_image_gives_a_recorded_no_alarm_and_no_event(node_a, redis_client, serve):
    done = detected(serve, node_a, "chain-blank", encode(blank()))
    assert done.get_data()["count"] == 0
    alarm = serve(alarm_app(AlarmSettings(core=core(node_a))))
    response = post_event(alarm.url, done)
    assert response.status_code == 204 and response.content == b""
    [record] = alarms(redis_client)
    assert record["outcome"] == "no_alarm" and json.loads(record["detections"]) == []
    assert "0 of 0" in record["reason"]


def test_alarm_rule_is_configurable(node_a, redis_client, serve):
    done = detected(serve, node_a, "chain-rule", encode(astronaut()))
    strict = serve(alarm_app(AlarmSettings(core=core(node_a), rule=AlarmRule(frozenset({"face"}), 0.7, 2))))
    assert post_event(strict.url, done).status_code == 204
    assert alarms(redis_client)[-1]["outcome"] == "no_alarm"


def test_alarm_missing_and_invalid_state(node_a, redis_client, serve):
    alarm = serve(alarm_app(AlarmSettings(core=core(node_a))))
    ghost = new_event(catalogue.DETECT_COMPLETED, "/x", {"chain": "nothing-here", "node": "node-a"})
    assert_json_error(post_event(alarm.url, ghost), 404, "bundle_not_found")
    StateStore(redis_client, node="node-a").put("chain-bad", "detect", {"detections": b'[{"class": 1}]'})
    bad = new_event(catalogue.DETECT_COMPLETED, "/x", {"chain": "chain-bad", "node": "node-a"})
    assert_json_error(post_event(alarm.url, bad), 422, "invalid_state")
    assert alarms(redis_client) == []


# -- plumbing shared by the functions (skylark.fn) ---------------------------------------------


def test_sink_rejecting_the_event_is_502(node_a, redis_client, serve):
    recorder = Recorder(status=400)
    sink = serve(recorder.app())
    settings = PreprocessSettings(core=core(node_a, broker_url=sink.url))
    app = serve(preprocess_app(settings))
    assert_json_error(post_event(app.url, submitted("chain-rej", encode(blank()))), 502, "sink_rejected")


def test_default_peers_use_the_neighbors_service_when_configured(node_a):
    from neighbors_service.client import CachedTopology

    from skylark.fn import default_peers

    settings = core(node_a)
    static = default_peers(settings, {"SKYLARK_PEERS": '{"node-b": {"redis_url": "redis://127.0.0.1:1/0"}}'})
    assert isinstance(static, StaticPeers) and static.redis_url("node-b") == "redis://127.0.0.1:1/0"
    assert isinstance(default_peers(settings.with_(neighbors_url="http://127.0.0.1:1"),
                                    {"SKYLARK_NEIGHBORS_URL": "http://127.0.0.1:1"}), CachedTopology)


def test_neighbors_service_down_is_503_when_the_origin_must_be_resolved(node_a, redis_client, serve):
    from skylark.runtime.embedded import free_port
    from skylark.fn import default_peers

    url = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    settings = core(node_a, neighbors_url=url)
    peers = default_peers(settings, {"SKYLARK_NEIGHBORS_URL": url})
    detect = serve(detect_app(DetectSettings(core=settings), peers=peers))
    event = new_event(catalogue.PREPROCESS_COMPLETED, "/x", {"chain": "chain-n", "node": "node-far"})
    assert_json_error(post_event(detect.url, event), 503, "store_unavailable")


def test_liveness_follows_the_functions_alive_hook(serve):
    from skylark.fn import CloudEventFunction

    class Broken(CloudEventFunction):
        name = "broken"

        def alive(self) -> bool:
            return False  # e.g. its model could not be loaded

    app = serve(make_function_app(Broken(), Settings(node="node-a")))
    response = requests.get(f"{app.url}/healthz")
    assert response.status_code == 503 and response.json()["status"] == "dead"
