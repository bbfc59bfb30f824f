"""The three example functions as the SDK serves them (``skylark.sdk.create_app``), over real HTTP
with real Redis servers (one per simulated node)."""

from __future__ import annotations

import base64
import io
import json
import time

import numpy as np
import pytest
import requests
import xxhash
from PIL import Image

from eventing import catalogue
from eventing.http import new_event, to_structured
from eventing.publisher import Publisher
from ex_alarm.function import ALARM_CLEAR, ALARM_RAISED, DEFAULT_ALARM_STREAM, Alarm
from ex_detect.function import DETECT_COMPLETED, Detect
from ex_preprocess.function import IMAGE_SUBMITTED, PREPROCESS_COMPLETED, Preprocess
from functions_fixtures import (  # noqa: F401 - serve is a fixture
    ASTRONAUT_FACE,
    Recorder,
    assert_json_error,
    announcing,
    astronaut,
    blank,
    chelsea,
    core,
    encode,
    envelope,
    function_app,
    header_only_png,
    last_stage,
    overlap,
    post_event,
    reply_event,
    serve,
    submitted,
)
from skylark.sdk import Function, FunctionSettings, create_app
from skylark.state import keys
from skylark.state.peers import StaticPeers
from skylark.state.settings import Settings
from skylark.state.store import StateStore
from skylark.workflow import parse_workflow

TRACE_KEYS = {"function", "node", "version", "fetch_location", "fetch_node", "fetch_ms", "waited_ms",
              "compute_ms", "store_ms"}


def snapshot(client) -> dict:
    """Everything in a Redis (keys and their types), to show that nothing was written."""
    return {k: client.type(k) for k in client.keys("*")}


@pytest.fixture()
def node_a(redis_server, redis_client):
    return redis_server


# -- preprocess ----------------------------------------------------------------------------------


def test_preprocess_stores_the_normalised_image_and_replies_with_its_event(node_a, redis_client, serve):
    app = serve(function_app(Preprocess(), core(node_a)))
    response = post_event(app.url, submitted("chain-1", encode(astronaut())))
    event = reply_event(response)
    bundle = StateStore(redis_client, node="node-a").get_bundle("chain-1", "preprocess")
    assert event.get_type() == PREPROCESS_COMPLETED
    assert event.get_source() == "/skylark/nodes/node-a/preprocess"
    # the state it wrote, announced in the extensions: which function, where, which version, how big
    assert event.get_extension("skylarkchain") == "chain-1"
    assert event.get_extension("skylarknode") == "node-a"
    assert event.get_extension("skylarkfunction") == "preprocess"
    assert event.get_extension("skylarkversion") == "1"
    assert event.get_extension("skylarksize") == str(bundle.meta.size)
    # the data: the function's own JSON object + Skylark's envelope (no chain, node or route)
    data = event.get_data()
    assert set(data) == {"fields", "image", "original", "tiles", "skylark"}
    assert data["fields"] == ["image", "info"] and data["tiles"] == 0
    assert data["image"] == {"width": 512, "height": 512, "scale": 1.0}
    [stage] = envelope(event)["trace"]
    assert set(stage) == TRACE_KEYS
    assert (stage["function"], stage["node"], stage["version"]) == ("preprocess", "node-a", 1)
    assert (stage["fetch_location"], stage["fetch_node"], stage["fetch_ms"]) == ("inline", "node-a", 0)
    assert stage["compute_ms"] > 0 and stage["store_ms"] > 0
    assert envelope(event)["state"] == {"preprocess": {"node": "node-a", "version": 1, "size": bundle.meta.size}}

    image = Image.open(io.BytesIO(bundle.fields["image"]))
    assert (image.format, image.mode, image.size) == ("PNG", "L", (512, 512))
    info = json.loads(bundle.fields["info"])
    assert info["original"] == {"width": 512, "height": 512, "format": "JPEG", "mode": "RGB"}
    # no timings and no input location in the stored info: those travel in the trace
    assert set(info) == {"original", "image", "tile_scale", "input"}
    assert info["input"] == {"bytes": len(encode(astronaut()))}
    # the change stream got the entry the propagation handlers react to
    assert redis_client.xlen(keys.DEFAULT_CHANGE_STREAM) == 1


def test_preprocess_accepts_a_pingsource_event_with_a_binary_image(node_a, redis_client, serve):
    app = serve(function_app(Preprocess(), core(node_a)))
    source = "/apis/v1/namespaces/default/pingsources/camera"
    ping = new_event(catalogue.PING, source, encode(chelsea()),
                     id_="b0e4c7d2-5b0a-4a44-8d53-93f0e0a1a001", datacontenttype="image/jpeg")
    event = reply_event(post_event(app.url, ping))
    # a new chain, derived from the ping's source and id (no longer ping-<id>)
    chain = "c-" + xxhash.xxh3_64_hexdigest(f"{source}\nb0e4c7d2-5b0a-4a44-8d53-93f0e0a1a001".encode())
    assert event.get_extension("skylarkchain") == chain
    assert StateStore(redis_client, node="node-a").get_meta(chain, "preprocess").version == 1
    # the same ping delivered again continues the same chain (reply mode: it is done again)
    again = reply_event(post_event(app.url, ping))
    assert again.get_extension("skylarkchain") == chain and again.get_id() == event.get_id()
    assert StateStore(redis_client, node="node-a").get_meta(chain, "preprocess").version == 2


def test_preprocess_fed_by_the_local_pingsource_runner(node_a, redis_client, serve):
    from eventing.ping import PingSource

    app = serve(function_app(Preprocess(), core(node_a)))
    image = encode(astronaut())
    ping = PingSource("* * * * *", app.url, data_base64=base64.b64encode(image).decode(),
                      content_type="image/jpeg", name="camera")
    outcome = ping.fire_once()
    assert outcome.ok and outcome.status_code == 200
    [chain] = {key.split(":")[2] for key in map(bytes.decode, redis_client.keys("skylark:bundle:*"))}
    assert chain.startswith("c-") and len(chain) == 2 + 16  # c-<xxh3 of source and id>
    info = json.loads(StateStore(redis_client, node="node-a").get_bundle(chain, "preprocess").fields["info"])
    assert info["input"] == {"bytes": len(image)} and info["original"]["format"] == "JPEG"


def test_preprocess_tiles_a_large_image_into_one_bundle(node_a, redis_client, serve):
    app = serve(function_app(Preprocess(), core(node_a)))
    big = encode(np.asarray(Image.fromarray(astronaut()).resize((1800, 1800))))
    data = reply_event(post_event(app.url, submitted("chain-big", big))).get_data()
    assert data["tiles"] == 9
    fields = StateStore(redis_client, node="node-a").get_bundle("chain-big", "preprocess").fields
    assert {f"tile.{i}" for i in range(9)} | {"image", "tiles", "info"} == set(fields)
    assert data["fields"] == sorted(fields)
    # a smaller image in the same chain replaces the bundle: no tile of the big one is left
    reply_event(post_event(app.url, submitted("chain-big", encode(astronaut()))))
    fields = StateStore(redis_client, node="node-a").get_bundle("chain-big", "preprocess").fields
    assert set(fields) == {"image", "info"}


def test_preprocess_reads_an_image_stored_on_another_node(redis_factory, node_a, redis_client, serve):
    node_b = redis_factory()
    StateStore(node_b.client(), node="node-b").put("cam-7", "camera", {"frame": encode(astronaut())})
    peers = StaticPeers.from_mapping({"node-b": {"redis_url": node_b.url}})
    app = serve(function_app(Preprocess(), core(node_a), peers=peers))
    ref = new_event(IMAGE_SUBMITTED, "/c", {
        "chain": "chain-ref", "ref": {"chain": "cam-7", "function": "camera", "field": "frame", "node": "node-b"}})
    stage = last_stage(reply_event(post_event(app.url, ref)))
    assert stage["fetch_location"] == "remote" and stage["fetch_node"] == "node-b"
    assert stage["fetch_ms"] > 0 and stage["waited_ms"] == 0
    info = json.loads(StateStore(redis_client, node="node-a").get_bundle("chain-ref", "preprocess").fields["info"])
    assert info["input"] == {"bytes": len(encode(astronaut()))}
    # a field the bundle does not have, and a bundle nobody has: 404, nothing written
    before = snapshot(redis_client)
    for ref_data in ({"chain": "cam-7", "function": "camera", "field": "nope", "node": "node-b"},
                     {"chain": "cam-8", "function": "camera", "field": "frame", "node": "node-b"}):
        missing = new_event(IMAGE_SUBMITTED, "/c", {"chain": "chain-x", "ref": ref_data})
        assert_json_error(post_event(app.url, missing), 404, "bundle_not_found")
    assert snapshot(redis_client) == before


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
def test_preprocess_bad_input_is_4xx_json_and_writes_nothing(node_a, redis_client, serve):
    app = serve(function_app(Preprocess(), core(node_a), config={"max_pixels": "2000000"},
                             max_request_bytes=2 * 1024 * 1024))
    jpeg = encode(astronaut())
    inline = base64.b64encode(encode(blank())).decode()
    cases = [
        (submitted("c1", b"GIF89a definitely not a jpeg"), 400, "invalid_image"),
        (submitted("c1", encode(astronaut(), "GIF")), 400, "invalid_image"),
        (submitted("c1", jpeg[: len(jpeg) // 3]), 400, "invalid_image"),
        (submitted("c1", header_only_png(30_000, 30_000)), 413, "image_too_large"),
        (submitted("c1", encode(blank(1500, 1500), "PNG")), 413, "image_too_large"),
        # no chain is no error any more (a new chain is derived): the image is what is wrong here
        (new_event(IMAGE_SUBMITTED, "/c", {"image_base64": "AAAA"}), 400, "invalid_image"),
        (new_event(IMAGE_SUBMITTED, "/c", {"chain": "bad chain!", "image_base64": inline}), 400, "invalid_chain"),
        (new_event(IMAGE_SUBMITTED, "/c", {"chain": "a", "image_base64": inline}, skylarkchain="b"), 400,
         "chain_mismatch"),
        (new_event(IMAGE_SUBMITTED, "/c", {"chain": "c1"}), 400, "missing_image"),
        (new_event(IMAGE_SUBMITTED, "/c", ["c1"]), 400, "invalid_event_data"),
        (new_event(IMAGE_SUBMITTED, "/c", {"chain": "c1", "image_base64": inline, "skylark": {"trace": [1, 2]}}),
         400, "invalid_envelope"),
        (new_event(DETECT_COMPLETED, "/c", {"chain": "c1"}), 400, "unsupported_event_type"),
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


def test_the_request_size_limit_is_the_functions_unless_configured(node_a, redis_client, serve):
    big_junk = submitted("c-big", bytes(3 * 1024 * 1024))  # 4 MB of base64: read, then refused as an image
    # Preprocess takes up to 16 MiB (Function.max_request_bytes); detect keeps the SDK's 1 MiB
    preprocess = create_app(Preprocess(), settings=FunctionSettings(core=core(node_a)))
    assert preprocess.config["MAX_CONTENT_LENGTH"] == Preprocess.max_request_bytes == 16 * 1024 * 1024
    assert_json_error(post_event(serve(preprocess).url, big_junk), 400, "invalid_image")
    detect = create_app(Detect(), settings=FunctionSettings(core=core(node_a)))
    assert detect.config["MAX_CONTENT_LENGTH"] == 1024 * 1024
    assert post_event(serve(detect).url, big_junk).status_code == 413
    # SKYLARK_MAX_REQUEST_BYTES overrides the function's own limit
    env = {"SKYLARK_NODE": "node-a", "SKYLARK_REDIS_URL": node_a.url, "SKYLARK_MAX_REQUEST_BYTES": str(1024 * 1024)}
    limited = create_app(Preprocess(), settings=FunctionSettings.from_env(env))
    assert limited.config["MAX_CONTENT_LENGTH"] == 1024 * 1024
    assert post_event(serve(limited).url, big_junk).status_code == 413
    assert snapshot(redis_client) == {}


def test_redis_down_is_503_and_not_ready(redis_factory, serve):
    doomed = redis_factory()
    app = serve(function_app(Preprocess(), core(doomed)))
    assert requests.get(f"{app.url}/readyz").status_code == 200
    doomed.stop()
    assert_json_error(post_event(app.url, submitted("c1", encode(blank()))), 503, "store_unavailable")
    ready = requests.get(f"{app.url}/readyz")
    assert ready.status_code == 503 and ready.json()["redis"] == "unreachable"
    assert ready.json()["function"] == "preprocess"
    assert requests.get(f"{app.url}/healthz").status_code == 200  # alive: no restart for a Redis outage


# -- where a result goes: the workflow, not the event ----------------------------------------------

WORKFLOW = """\
apiVersion: skylark.io/v1alpha1
kind: Workflow
metadata: {{name: routed}}
spec:
  functions:
    - name: preprocess
      entry: ex_preprocess.function:Preprocess
      accepts: [io.skylark.image.submitted]
      emits: [io.skylark.preprocess.completed]
      node: node-a
    - name: detect
      entry: ex_detect.function:Detect
      accepts: [io.skylark.preprocess.completed]
      emits: [io.skylark.detect.completed]
      reads: [preprocess]
      node: {detect_node}
"""


def routed(detect_node: str):
    return parse_workflow(WORKFLOW.format(detect_node=detect_node), "routed.yaml")


def test_a_result_goes_to_the_broker_of_the_node_its_consumer_is_pinned_to(node_a, redis_client, serve):
    local, remote = Recorder(), Recorder()
    sink, broker_b = serve(local.app()), serve(remote.app())
    peers = StaticPeers.from_mapping({"node-b": {"broker_url": f"{broker_b.url}/default/skylark"}})
    settings = core(node_a, broker_url=f"{sink.url}/default/skylark")  # K_SINK: node-a's broker
    app = serve(function_app(Preprocess(), settings, peers=peers, workflow=routed("node-b")))
    # a data.route is not read any more: the workflow pins detect to node-b
    response = post_event(app.url, submitted("chain-r", encode(chelsea()), route=["node-c"]))
    assert response.status_code == 202 and response.content == b""
    [event] = remote.wait_for(1)
    assert event.get_type() == PREPROCESS_COMPLETED and event.get_extension("skylarkchain") == "chain-r"
    assert event.get_extension("skylarknode") == "node-a" and "route" not in event.get_data()
    time.sleep(0.2)
    assert local.events == [] and len(remote.events) == 1

    # a consumer on a node whose broker nobody knows: 503 (Knative retries), nothing published;
    # known before the work: nothing is written (a redelivery would otherwise write a version each time)
    lost = serve(function_app(Preprocess(), settings, peers=peers, workflow=routed("node-x")))
    assert_json_error(post_event(lost.url, submitted("chain-u", encode(chelsea()))), 503, "unknown_broker")
    assert StateStore(redis_client, node="node-a").get_meta("chain-u", "preprocess") is None
    time.sleep(0.2)
    assert local.events == [] and len(remote.events) == 1


@pytest.mark.parametrize("detect_node", ["node-a", "any"])
def test_a_consumer_on_this_node_or_on_any_node_gets_the_result_through_k_sink(detect_node, node_a,
                                                                               redis_client, serve):
    local, remote = Recorder(), Recorder()
    sink, broker_b = serve(local.app()), serve(remote.app())
    peers = StaticPeers.from_mapping({"node-b": {"broker_url": f"{broker_b.url}/default/skylark"}})
    settings = core(node_a, broker_url=f"{sink.url}/default/skylark")
    app = serve(function_app(Preprocess(), settings, peers=peers, workflow=routed(detect_node)))
    assert post_event(app.url, submitted("chain-k", encode(chelsea()))).status_code == 202
    [event] = local.wait_for(1)
    assert event.get_type() == PREPROCESS_COMPLETED and event.get_extension("skylarkchain") == "chain-k"
    assert remote.events == []
    # without K_SINK the same result is the reply
    reply = serve(function_app(Preprocess(), core(node_a), peers=peers, workflow=routed(detect_node)))
    assert reply_event(post_event(reply.url, submitted("chain-k2", encode(chelsea())))).get_type() == \
        PREPROCESS_COMPLETED
    assert remote.events == []


def test_a_redelivered_input_is_acknowledged_without_being_redone(node_a, redis_client, serve):
    recorder = Recorder()
    sink = serve(recorder.app())
    app = serve(function_app(Preprocess(), core(node_a, broker_url=f"{sink.url}/default/skylark")))
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
    app = serve(function_app(Preprocess(), core(node_a, broker_url=f"{sink.url}/default/skylark")))
    # structured mode in, binary out
    headers, body = to_structured(submitted("chain-sink", encode(astronaut())))
    response = requests.post(app.url, data=body, headers=headers)
    assert response.status_code == 202 and response.content == b""
    [event] = recorder.wait_for(1)
    assert event.get_type() == PREPROCESS_COMPLETED and event.get_extension("skylarkchain") == "chain-sink"
    metrics = requests.get(f"{app.url}/metrics").text
    # the outcome label is the type of the event emitted
    assert f'skylark_function_events_total{{function="preprocess",outcome="{PREPROCESS_COMPLETED}"}} 1.0' in metrics
    assert 'skylark_function_stage_seconds_count{function="preprocess",stage="publish"} 1.0' in metrics
    for stage in ("fetch", "compute", "store"):
        assert f'skylark_function_stage_seconds_count{{function="preprocess",stage="{stage}"}} 1.0' in metrics


def test_sink_down_is_503_and_the_redelivery_yields_the_same_event_id(node_a, redis_client, serve):
    recorder = Recorder(status=503)
    sink = serve(recorder.app())
    app = serve(function_app(Preprocess(), core(node_a, broker_url=sink.url), publisher=Publisher(retries=0)))
    event = submitted("chain-retry", encode(blank()))
    assert_json_error(post_event(app.url, event), 503, "sink_unavailable")
    recorder.status = 202
    assert post_event(app.url, event).status_code == 202
    first, second = recorder.wait_for(2)
    assert first.get_id() == second.get_id() != event.get_id()  # downstream can drop the duplicate
    assert StateStore(redis_client, node="node-a").get_meta("chain-retry", "preprocess").version == 2
    # the result announces the state version of its own delivery
    assert (first.get_extension("skylarkversion"), second.get_extension("skylarkversion")) == ("1", "2")


# -- detect --------------------------------------------------------------------------------------


def preprocessed(serve, server, chain: str, image: bytes, node: str = "node-a"):
    app = serve(function_app(Preprocess(), core(server, node)))
    return reply_event(post_event(app.url, submitted(chain, image)))


def test_detect_reads_remotely_from_the_origin_then_locally_once_propagated(redis_factory, node_a,
                                                                             redis_client, serve):
    done = preprocessed(serve, node_a, "chain-d", encode(astronaut()))
    node_b = redis_factory()
    peers = StaticPeers.from_mapping({"node-a": {"redis_url": node_a.url}})
    detect = serve(function_app(Detect(), core(node_b, "node-b"), peers=peers))

    event = reply_event(post_event(detect.url, done))
    data = event.get_data()
    assert event.get_type() == DETECT_COMPLETED
    assert event.get_extension("skylarkfunction") == "detect"
    assert event.get_extension("skylarknode") == "node-b" and event.get_extension("skylarkversion") == "1"
    stage = last_stage(event)
    assert stage["fetch_location"] == "remote" and stage["fetch_node"] == "node-a" and stage["waited_ms"] == 0
    assert data["classes"].get("face") == 1 and data["max_score"]["face"] > 0.7
    assert [t["function"] for t in envelope(event)["trace"]] == ["preprocess", "detect"]

    stored = StateStore(node_b.client(), node="node-b").get_bundle("chain-d", "detect")
    pre_size = int(done.get_extension("skylarksize"))
    assert envelope(event)["state"] == {"preprocess": {"node": "node-a", "version": 1, "size": pre_size},
                                        "detect": {"node": "node-b", "version": 1, "size": stored.meta.size}}
    detections = json.loads(stored.fields["detections"])
    [face] = [d for d in detections if d["class"] == "face"]
    assert overlap(tuple(face["box"]), ASTRONAUT_FACE) > 0.8
    info = json.loads(stored.fields["info"])
    assert info["source"] == {"function": "preprocess", "version": 1, "node": "node-a"}
    assert set(info) == {"source", "original", "views", "count", "classes", "max_score"}  # no timings

    # The envelope's state map alone says where the input is (an event without the extensions)
    relayed = new_event(PREPROCESS_COMPLETED, "/relay", {"skylark": envelope(done)}, skylarkchain="chain-d")
    stage = last_stage(reply_event(post_event(detect.url, relayed)))
    assert stage["fetch_location"] == "remote" and stage["fetch_node"] == "node-a"

    # What propagation does: the bundle arrives in node-b's Redis. Now the read is local.
    bundle = StateStore(redis_client, node="node-a").get_bundle("chain-d", "preprocess")
    StateStore(node_b.client(), node="node-b").apply(bundle)
    again = last_stage(reply_event(post_event(detect.url, done)))
    assert again["fetch_location"] == "local" and again["fetch_node"] == "node-b"


def test_detect_waits_for_the_copy_the_policy_pushes_to_its_node(redis_factory, node_a, redis_client, serve):
    import threading

    from neighbors_service.targets import PolicyTargets
    from neighbors_service.topology import Topology

    node_b = redis_factory()
    topology = Topology.from_dict({
        "nodes": [{"name": n, "type": "edge", "redis_url": r.url, "broker_url": f"http://{n}.invalid/"}
                  for n, r in (("node-a", node_a), ("node-b", node_b))],
        "links": [{"a": "node-a", "b": "node-b", "latency_ms": 10, "bandwidth_mbps": 90}]})
    workflow = routed("node-b")  # detect pinned to node-b, reading preprocess: its bundle is pushed there
    done = preprocessed(serve, node_a, "chain-w", encode(astronaut()))
    peers = StaticPeers.from_mapping({"node-a": {"redis_url": node_a.url}})
    detect = serve(create_app(Detect(), peers=peers, placement=PolicyTargets.fixed(topology, workflow=workflow),
                              settings=FunctionSettings(core=core(node_b, "node-b", propagation_wait_ms=2000),
                                                        workflow=workflow)))
    bundle = StateStore(redis_client, node="node-a").get_bundle("chain-w", "preprocess")
    # the push (the handlers' job) lands half a second after the event was sent
    push = threading.Timer(0.5, lambda: StateStore(node_b.client(), node="node-b").apply(bundle))
    push.start()
    stage = last_stage(reply_event(post_event(detect.url, done)))
    push.join()
    assert (stage["fetch_location"], stage["fetch_node"]) == ("local", "node-b")
    assert 100 <= stage["waited_ms"] <= stage["fetch_ms"] < 2000


def test_detect_missing_state_is_404_and_bad_events_are_400(node_a, redis_client, serve):
    detect = serve(function_app(Detect(), core(node_a)))
    before = snapshot(redis_client)
    ghost = announcing(PREPROCESS_COMPLETED, "never-written", "preprocess", "node-a")
    assert_json_error(post_event(detect.url, ghost), 404, "bundle_not_found")
    # no chain: a new one is derived, and nothing was written under it
    nochain = announcing(PREPROCESS_COMPLETED, None, "preprocess", "node-a")
    assert_json_error(post_event(detect.url, nochain), 404, "bundle_not_found")
    # data.node is no longer read: an event that announces no state has no input
    by_data = new_event(PREPROCESS_COMPLETED, "/x", {"chain": "chain-1", "node": "node-a"})
    assert_json_error(post_event(detect.url, by_data), 400, "no_input_state")
    listdata = new_event(PREPROCESS_COMPLETED, "/x", ["chain-1"])
    assert_json_error(post_event(detect.url, listdata), 400, "no_input_state")
    bad_version = announcing(PREPROCESS_COMPLETED, "chain-1", "preprocess", "node-a", version="one")
    assert_json_error(post_event(detect.url, bad_version), 400, "invalid_version")
    bad_node = announcing(PREPROCESS_COMPLETED, "chain-1", "preprocess", "node a!")
    assert_json_error(post_event(detect.url, bad_node), 400, "invalid_node")
    for bad, code in (({"skylark": []}, "invalid_envelope"), ({"skylark": {"trace": "x"}}, "invalid_envelope"),
                      ({"skylark": {"state": []}}, "invalid_envelope"),
                      ({"skylark": {"state": {"preprocess": {"node": "bad node!", "version": 1}}}}, "invalid_envelope"),
                      ({"skylark": {"state": {"preprocess": {"node": "node-a"}}}}, "invalid_version")):
        event = new_event(PREPROCESS_COMPLETED, "/x", bad, skylarkchain="chain-1")
        assert_json_error(post_event(detect.url, event), 400, code)
    assert snapshot(redis_client) == before


def test_detect_refuses_a_bundle_that_is_not_preprocess_output(node_a, redis_client, serve):
    StateStore(redis_client, node="node-a").put("chain-junk", "preprocess", {"image": b"junk", "info": b"{}"})
    detect = serve(function_app(Detect(), core(node_a)))
    event = announcing(PREPROCESS_COMPLETED, "chain-junk", "preprocess", "node-a")
    assert_json_error(post_event(detect.url, event), 422, "invalid_state")
    assert StateStore(redis_client, node="node-a").get_meta("chain-junk", "detect") is None


def test_detect_origin_unreachable_is_503(redis_factory, node_a, serve):
    origin = redis_factory()
    peers = StaticPeers.from_mapping({"node-z": {"redis_url": origin.url}})
    origin.stop()
    detect = serve(function_app(Detect(), core(node_a), peers=peers))
    event = announcing(PREPROCESS_COMPLETED, "chain-z", "preprocess", "node-z")
    assert_json_error(post_event(detect.url, event), 503, "store_unavailable")


# -- alarm ---------------------------------------------------------------------------------------


def detected(serve, server, chain: str, image: bytes):
    done = preprocessed(serve, server, chain, image)
    detect = serve(function_app(Detect(), core(server)))
    return reply_event(post_event(detect.url, done))


def alarms(client, stream: str = DEFAULT_ALARM_STREAM) -> list[dict[str, str]]:
    return [{"id": entry_id.decode(), **{k.decode(): v.decode() for k, v in fields.items()}}
            for entry_id, fields in client.xrange(stream)]


RECORD_FIELDS = {"id", "chain", "node", "outcome", "reason", "detections", "matched", "rule", "source_version",
                 "event_id"}


def test_alarm_raised_for_the_astronaut_and_recorded(node_a, redis_client, serve):
    done = detected(serve, node_a, "chain-al", encode(astronaut()))
    alarm = serve(function_app(Alarm(), core(node_a)))
    event = reply_event(post_event(alarm.url, done))
    assert event.get_type() == ALARM_RAISED and event.get_extension("skylarkchain") == "chain-al"
    assert event.get_source() == "/skylark/nodes/node-a/alarm"
    # alarm writes no bundle (only a stream record), so its event announces no state
    assert event.get_extension("skylarkfunction") is None and event.get_extension("skylarkversion") is None
    data = event.get_data()
    assert data["outcome"] == "alarm" and [d["class"] for d in data["detections"]] == ["face"]
    assert data["rule"] == {"classes": ["face", "person", "upper_body"], "min_score": 0.7, "min_count": 1}
    assert [t["function"] for t in envelope(event)["trace"]] == ["preprocess", "detect", "alarm"]
    assert all(set(t) == TRACE_KEYS for t in envelope(event)["trace"])
    assert set(envelope(event)["state"]) == {"preprocess", "detect"}
    stage = last_stage(event)
    assert stage["fetch_location"] == "local" and stage["version"] is None and stage["store_ms"] > 0
    [record] = alarms(redis_client)
    assert set(record) == RECORD_FIELDS  # no timings, no trace: they are in the event's envelope
    assert record["outcome"] == "alarm" and record["chain"] == "chain-al" and record["node"] == "node-a"
    assert record["event_id"] == done.get_id() and record["source_version"] == "1"
    assert (data["stream"], data["stream_id"]) == (DEFAULT_ALARM_STREAM, record["id"])
    assert json.loads(record["matched"])[0]["class"] == "face"


def test_blank_image_gives_a_recorded_no_alarm_and_an_alarm_clear_event(node_a, redis_client, serve):
    done = detected(serve, node_a, "chain-blank", encode(blank()))
    assert done.get_data()["count"] == 0
    alarm = serve(function_app(Alarm(), core(node_a)))
    event = reply_event(post_event(alarm.url, done))
    assert event.get_type() == ALARM_CLEAR and event.get_extension("skylarkchain") == "chain-blank"
    data = event.get_data()
    assert data["outcome"] == "no_alarm" and data["detections"] == [] and "0 of 0" in data["reason"]
    [record] = alarms(redis_client)
    assert record["outcome"] == "no_alarm" and json.loads(record["detections"]) == []
    assert "0 of 0" in record["reason"] and data["stream_id"] == record["id"]


def test_alarm_rule_and_stream_are_configurable(node_a, redis_client, serve):
    done = detected(serve, node_a, "chain-rule", encode(astronaut()))
    strict = serve(function_app(Alarm(), core(node_a), config={
        "classes": "face", "min_score": "0.7", "min_count": "2", "stream": "alarms:test"}))
    event = reply_event(post_event(strict.url, done))
    assert event.get_type() == ALARM_CLEAR
    assert event.get_data()["rule"] == {"classes": ["face"], "min_score": 0.7, "min_count": 2}
    assert alarms(redis_client) == []
    [record] = alarms(redis_client, "alarms:test")
    assert record["outcome"] == "no_alarm" and event.get_data()["stream"] == "alarms:test"


def test_alarm_missing_and_invalid_state(node_a, redis_client, serve):
    alarm = serve(function_app(Alarm(), core(node_a)))
    ghost = announcing(DETECT_COMPLETED, "nothing-here", "detect", "node-a")
    assert_json_error(post_event(alarm.url, ghost), 404, "bundle_not_found")
    store = StateStore(redis_client, node="node-a")
    for chain, fields in (("chain-bad", {"detections": b'[{"class": 1}]'}), ("chain-junk", {"detections": b"{"}),
                          ("chain-none", {"info": b"{}"})):
        store.put(chain, "detect", fields)
        bad = announcing(DETECT_COMPLETED, chain, "detect", "node-a")
        assert_json_error(post_event(alarm.url, bad), 422, "invalid_state")
    assert alarms(redis_client) == []


# -- plumbing the SDK gives every function -------------------------------------------------------


def test_sink_rejecting_the_event_is_502(node_a, redis_client, serve):
    recorder = Recorder(status=400)
    sink = serve(recorder.app())
    app = serve(function_app(Preprocess(), core(node_a, broker_url=sink.url)))
    assert_json_error(post_event(app.url, submitted("chain-rej", encode(blank()))), 502, "sink_rejected")


def test_default_peers_use_the_neighbors_service_when_configured(node_a):
    from neighbors_service.client import CachedTopology

    from skylark.sdk.node import default_peers

    settings = core(node_a)
    static = default_peers(settings, {"SKYLARK_PEERS": '{"node-b": {"redis_url": "redis://127.0.0.1:1/0"}}'})
    assert isinstance(static, StaticPeers) and static.redis_url("node-b") == "redis://127.0.0.1:1/0"
    assert isinstance(default_peers(settings.with_(neighbors_url="http://127.0.0.1:1"),
                                    {"SKYLARK_NEIGHBORS_URL": "http://127.0.0.1:1"}), CachedTopology)


def test_neighbors_service_down_is_503_when_the_origin_must_be_resolved(node_a, redis_client, serve):
    from skylark.runtime.embedded import free_port
    from skylark.sdk.node import default_peers

    url = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    settings = core(node_a, neighbors_url=url)
    peers = default_peers(settings, {"SKYLARK_NEIGHBORS_URL": url})
    detect = serve(function_app(Detect(), settings, peers=peers))
    event = announcing(PREPROCESS_COMPLETED, "chain-n", "preprocess", "node-far")
    assert_json_error(post_event(detect.url, event), 503, "store_unavailable")


def test_liveness_follows_the_functions_alive_hook(serve):
    class Broken(Function):
        name = "broken"

        def alive(self) -> bool:
            return False  # e.g. its model could not be loaded

    app = serve(create_app(Broken(), settings=FunctionSettings(core=Settings(node="node-a"))))
    response = requests.get(f"{app.url}/healthz")
    assert response.status_code == 503 and response.json()["status"] == "dead"
