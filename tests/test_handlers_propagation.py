"""End to end on 127.0.0.1: a write on node A reaches B (and C) through A's stream source, A's
handlers, B's local broker and B's handlers; each node has its own real Redis."""

from __future__ import annotations

import os
import time

import pytest
import requests

from eventing.http import to_binary, to_structured
from eventing.redisstream import encode_stream_event, to_go_binary
from neighbors_service.placement import seeded_rng
from handlers.bundle_event import encode_payload, encode_tombstone, propagation_event
from skylark.state.bundle import Tombstone, make_bundle
from skylark.state.errors import BundleNotFound

from handlers_fixtures import cluster_factory  # noqa: F401 - pytest fixture

CHAIN = "chain-1"


def _same_state(a, b, chain: str, function: str) -> None:
    meta_a, meta_b = a.meta(chain, function), b.meta(chain, function)
    assert (meta_b.version, meta_b.checksum, meta_b.size) == (meta_a.version, meta_a.checksum, meta_a.size)
    assert b.store.get_bundle(chain, function).fields == a.store.get_bundle(chain, function).fields


def test_inline_write_on_a_appears_on_both_neighbours(cluster_factory):
    cluster = cluster_factory(["node-a", "node-b", "node-c"], [("node-a", "node-b"), ("node-a", "node-c")])
    a, b, c = cluster["node-a"], cluster["node-b"], cluster["node-c"]
    a.store.put(CHAIN, "preprocess", {"image": os.urandom(1024), "shape": b"32x32"})
    result = a.store.put(CHAIN, "preprocess", {"shape": b"64x64"})  # v2: merged, newest wins
    for node in (b, c):
        node.wait_for_version(CHAIN, "preprocess", result.meta.version)
        _same_state(a, node, CHAIN, "preprocess")
    assert b.store.get_bundle(CHAIN, "preprocess").fields["shape"] == b"64x64"
    assert a.metric("skylark_handler_bytes_sent_total", mode="inline") > 1024
    # the origin notes where the newest version went, for readers that wait for a copy
    placed = a.store.placement(CHAIN, "preprocess")
    assert placed.version == result.meta.version and sorted(placed.nodes) == ["node-b", "node-c"]
    assert 0 < a.store.client.pttl(f"skylark:placed:{CHAIN}:preprocess") <= 86_400_000
    assert b.metric("skylark_handler_events_total", type="io.skylark.bundle.propagated",
                    outcome="applied") >= 1


def test_claim_check_above_the_inline_limit(cluster_factory):
    cluster = cluster_factory(["node-a", "node-b"], [("node-a", "node-b")], inline_max_bytes=4096)
    a, b = cluster["node-a"], cluster["node-b"]
    big = os.urandom(300 * 1024)
    result = a.store.put(CHAIN, "detect", {"frame": big, "small": b"x"})
    b.wait_for_version(CHAIN, "detect", result.meta.version)
    _same_state(a, b, CHAIN, "detect")
    assert a.metric("skylark_handler_propagation_seconds_count", mode="claim") >= 1
    assert a.metric("skylark_handler_bytes_sent_total", mode="claim") < 1024  # only the reference
    assert b.metric("skylark_handler_bytes_pulled_total") >= len(big)
    # A small bundle on the same nodes still goes inline.
    small = a.store.put(CHAIN, "alarm", {"rule": b"person"})
    b.wait_for_version(CHAIN, "alarm", small.meta.version)
    assert a.metric("skylark_handler_propagation_seconds_count", mode="inline") >= 1


def test_single_state_is_propagated_as_one_bundle(cluster_factory):
    cluster = cluster_factory(["node-a", "node-b"], [("node-a", "node-b")])
    a, b = cluster["node-a"], cluster["node-b"]
    a.store.put_single(CHAIN, "preprocess", {"w": b"640", "h": b"480"})
    result = a.store.put_single(CHAIN, "preprocess", {"h": b"481"})
    meta_b = b.wait_for_version(CHAIN, "preprocess", result.meta.version)
    assert (meta_b.version, meta_b.checksum) == (result.meta.version, result.meta.checksum)
    # One round trip on B: the single fields of A arrived as one bundle.
    assert b.store.get_bundle(CHAIN, "preprocess").fields == {"w": b"640", "h": b"481"}


def _wait_deleted(node, chain: str, function: str, version: int, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while node.store.local_version(chain, function) < version or node.meta(chain, function) is not None:
        assert time.monotonic() < deadline, f"{node.name}: delete v{version} did not arrive"
        time.sleep(0.01)


def test_a_delete_on_a_removes_the_copies_and_a_late_copy_stays_out(cluster_factory):
    cluster = cluster_factory(["node-a", "node-b", "node-c"], [("node-a", "node-b"), ("node-a", "node-c")],
                              inline_max_bytes=4096)
    a, b, c = cluster["node-a"], cluster["node-b"], cluster["node-c"]
    a.store.put(CHAIN, "preprocess", {"frame": os.urandom(512)})
    put = a.store.put_single(CHAIN, "detect", {"boxes": os.urandom(8192)})  # claim-checked, single
    for node in (b, c):
        node.wait_for_version(CHAIN, "detect", put.meta.version)
    old_copy = b.store.get_bundle(CHAIN, "detect")
    version = a.store.delete(CHAIN, "detect")
    for node in (b, c):
        _wait_deleted(node, CHAIN, "detect", version)
        with pytest.raises(BundleNotFound):
            node.store.get_bundle(CHAIN, "detect")
        assert node.store.get_bundle(CHAIN, "preprocess").version == 1  # other state untouched
    assert b.metric("skylark_handler_events_total", type="io.skylark.bundle.propagated", outcome="applied") >= 3
    # the copy of the deleted version, arriving late by another way (here: pushed by another
    # node, so not a redelivery of an event B has seen), does not come back
    headers, body = to_binary(propagation_event(
        encode_payload(old_copy, origin="node-x", inline_max_bytes=1 << 20), "node-b"))
    answer = b.post(headers, body)
    assert answer.status_code == 202 and answer.json()["outcome"] == "stale"
    assert b.meta(CHAIN, "detect") is None
    # written again after the delete: the new version reaches the neighbours as usual
    again = a.store.put(CHAIN, "detect", {"boxes": b"[]"})
    assert again.meta.version == version + 1
    assert b.wait_for_version(CHAIN, "detect", again.meta.version).checksum == again.meta.checksum


def test_with_the_random_policy_a_delete_reaches_every_node_a_push_may_have_picked(cluster_factory):
    """random draws one node among those reachable (the writer's own included: then nothing
    moves) with a seed of (chain, function, version): the writer's handlers and any reader draw
    the same one. A delete goes to every node an earlier push may have reached."""
    cluster = cluster_factory(["node-a", "node-b", "node-c"], [("node-a", "node-b"), ("node-a", "node-c")],
                              policy="random")
    a = cluster["node-a"]
    drawn = {}
    for _ in range(8):
        version = a.store.put(CHAIN, "detect", {"n": os.urandom(8)}).meta.version
        expected = seeded_rng(CHAIN, "detect", version).choice(["node-a", "node-b", "node-c"])  # reachable, in order
        drawn[version] = expected
        if expected != "node-a":
            cluster[expected].wait_for_version(CHAIN, "detect", version)
    assert {"node-b", "node-c"} <= set(drawn.values()), drawn  # eight draws of three: both neighbours came up
    version = a.store.delete(CHAIN, "detect")
    for node in (cluster["node-b"], cluster["node-c"]):
        _wait_deleted(node, CHAIN, "detect", version)


def test_copies_expire_with_the_original_inline_claim_and_single(cluster_factory):
    cluster = cluster_factory(["node-a", "node-b"], [("node-a", "node-b")], inline_max_bytes=4096)
    a, b = cluster["node-a"], cluster["node-b"]
    writes = {"preprocess": a.store.put(CHAIN, "preprocess", {"n": b"1"}, ttl_s=300),          # inline
              "detect": a.store.put(CHAIN, "detect", {"frame": os.urandom(8192)}, ttl_s=300),  # claim
              "alarm": a.store.put_single(CHAIN, "alarm", {"rule": b"face"}, ttl_s=300)}      # single
    for function, result in writes.items():
        b.wait_for_version(CHAIN, function, result.meta.version)
        ttl_ms = b.store.client.pttl(f"skylark:meta:{CHAIN}:{function}")
        assert 280_000 < ttl_ms <= 300_000, (function, ttl_ms)
        assert 0 < b.store.client.pttl(f"skylark:bundle:{CHAIN}:{function}") <= 300_000


def test_duplicate_deliveries_do_not_bump_versions(cluster_factory):
    cluster = cluster_factory(["node-a", "node-b"], [("node-a", "node-b")], stream_sources=False)
    a, b = cluster["node-a"], cluster["node-b"]
    put = a.store.put(CHAIN, "detect", {"boxes": b"[1,2,3,4]"})
    entry_id, fields = a.store.client.xrange("skylark:changes")[-1]
    stream_event = encode_stream_event(f"redis://127.0.0.1:{a.redis.port}", "skylark:changes",
                                       entry_id.decode(), {k.decode(): v.decode() for k, v in fields.items()})
    headers, body = to_go_binary(stream_event)
    # The same stream entry delivered twice to A: B gets the same event id twice.
    for _ in range(2):
        answer = a.post(headers, body)
        assert answer.status_code == 202, answer.text
        assert answer.json()["outcome"] == "propagated"
        cluster.drain()
    meta_b = b.wait_for_version(CHAIN, "detect", put.meta.version)
    assert meta_b.version == put.meta.version == 1
    assert b.metric("skylark_handler_duplicates_total", kind="event") == 1
    # The propagation event itself delivered twice straight to B: applied once, then acknowledged.
    bundle = a.store.get_bundle(CHAIN, "detect")
    event = propagation_event(encode_payload(bundle, origin="node-a", inline_max_bytes=1 << 20), "node-b")
    headers, body = to_binary(event)
    answers = [b.post(headers, body).json()["outcome"] for _ in range(2)]
    assert answers == ["duplicate_event", "duplicate_event"]  # same id as the one the broker delivered
    assert b.meta(CHAIN, "detect").version == 1
    assert a.meta(CHAIN, "detect").version == 1
    assert b.metric("skylark_handler_duplicates_total", kind="event") == 3


def test_older_bundle_after_newer_is_rejected_as_stale(cluster_factory):
    cluster = cluster_factory(["node-a", "node-b"], [("node-a", "node-b")], stream_sources=False)
    b = cluster["node-b"]
    v1 = make_bundle(CHAIN, "detect", {"n": b"1"}, version=1, node="node-a", updated_ms=1)
    v2 = make_bundle(CHAIN, "detect", {"n": b"2"}, version=2, node="node-a", updated_ms=2)
    for bundle, expected in ((v2, "applied"), (v1, "stale")):
        event = propagation_event(encode_payload(bundle, origin="node-a", inline_max_bytes=1 << 20), "node-b")
        answer = b.post(*to_structured(event))  # structured mode works as well as binary
        assert answer.status_code == 202, answer.text
        assert answer.json()["outcome"] == expected
    assert b.store.get_bundle(CHAIN, "detect").fields == {"n": b"2"}
    assert b.meta(CHAIN, "detect").version == 2
    assert b.metric("skylark_handler_stale_total") == 1


def test_redis_down_answers_503_then_recovers(cluster_factory, redis_factory):
    cluster = cluster_factory(["node-a", "node-b"], [("node-a", "node-b")], stream_sources=False)
    b = cluster["node-b"]
    bundle = make_bundle(CHAIN, "detect", {"n": b"1"}, version=1, node="node-a", updated_ms=1)
    headers, body = to_binary(propagation_event(
        encode_payload(bundle, origin="node-a", inline_max_bytes=1 << 20), "node-b"))
    port = b.redis.port
    b.redis.stop()
    answer = b.post(headers, body)
    assert answer.status_code == 503
    assert answer.json()["error"] == "store_unavailable"
    assert requests.get(b.url + "/readyz", timeout=10).status_code == 503
    assert requests.get(b.url + "/healthz", timeout=10).status_code == 200  # alive, just not ready
    redis_factory(port=port)  # the same node's Redis back, empty
    assert requests.get(b.url + "/readyz", timeout=10).status_code == 200
    answer = b.post(headers, body)  # Knative's retry of the same event
    assert answer.status_code == 202, answer.text
    assert answer.json()["outcome"] == "applied"
    assert b.meta(CHAIN, "detect").version == 1


def test_unreachable_target_broker_is_503_so_the_change_is_retried(cluster_factory):
    cluster = cluster_factory(["node-a", "node-b"], [("node-a", "node-b")], stream_sources=False)
    a, b = cluster["node-a"], cluster["node-b"]
    a.store.put(CHAIN, "detect", {"n": b"1"})
    entry_id, fields = a.store.client.xrange("skylark:changes")[-1]
    headers, body = to_go_binary(encode_stream_event(
        "redis://127.0.0.1:1", "skylark:changes", entry_id.decode(),
        {k.decode(): v.decode() for k, v in fields.items()}))
    b.broker.stop()
    answer = a.post(headers, body)
    assert answer.status_code == 503
    assert answer.json()["error"] == "propagation_failed"
    assert b.meta(CHAIN, "detect") is None


def test_signed_propagation_and_forged_events(cluster_factory):
    key = b"0123456789abcdef-test-key"
    cluster = cluster_factory(["node-a", "node-b"], [("node-a", "node-b")], signing_key=key)
    a, b = cluster["node-a"], cluster["node-b"]
    result = a.store.put(CHAIN, "detect", {"n": b"1"})
    b.wait_for_version(CHAIN, "detect", result.meta.version)
    forged = make_bundle(CHAIN, "detect", {"n": b"evil"}, version=99, node="node-a", updated_ms=1)
    payload = encode_payload(forged, origin="node-a", inline_max_bytes=1 << 20, sign=True)
    forged_delete = encode_tombstone(Tombstone(CHAIN, "detect", 99, "node-a", 1), origin="node-a")
    keys_before = set(b.store.client.keys("*"))
    # unsigned: 401 (not authenticated); signed with another key, or a signature that is not
    # even hex (a Latin-1 header): 403 (authenticated, not trusted); nothing written either way
    for forged_payload in (payload, forged_delete):
        for signing_key, status, error in ((None, 401, "missing_signature"),
                                           (b"wrong-key-but-long-enough", 403, "invalid_signature")):
            answer = b.post(*to_binary(propagation_event(forged_payload, "node-b", signing_key)))
            assert (answer.status_code, answer.json()["error"]) == (status, error), answer.text
            assert answer.json()["detail"]
        headers, body = to_binary(propagation_event(forged_payload, "node-b", key))
        for bad in ("\xff" * 64, "0" * 64, headers["ce-skylarksignature"].upper(), "nothex"):
            answer = b.post({**headers, "ce-skylarksignature": bad}, body)
            assert (answer.status_code, answer.json()["error"]) == (403, "invalid_signature"), answer.text
    assert set(b.store.client.keys("*")) == keys_before
    assert b.meta(CHAIN, "detect").version == result.meta.version
    # a signed tombstone from A (its real delete) is accepted
    version = a.store.delete(CHAIN, "detect")
    _wait_deleted(b, CHAIN, "detect", version)


def test_warmup_pulls_missing_and_older_bundles_from_neighbours(cluster_factory):
    cluster = cluster_factory(["node-a", "node-b", "node-c"], [("node-a", "node-b"), ("node-a", "node-c")],
                              stream_sources=False)
    a, b, c = cluster["node-a"], cluster["node-b"], cluster["node-c"]
    # State written on B and C while no stream source ran: propagation was missed.
    b.store.put("c1", "detect", {"n": b"b1"})
    c.store.put("c1", "detect", {"n": b"c1"})
    c.store.put("c1", "detect", {"n": b"c2"})  # C holds the newer version (2)
    c.store.put("c2", "detect", {"n": b"x"})
    b.store.put("c1", "alarm", {"n": b"y"})
    a.store.put("c3", "detect", {"n": b"mine"})
    ping = encode_ping({"functions": ["detect"]})
    answer = a.post(*to_binary(ping))
    assert answer.status_code == 202, answer.text
    report = answer.json()
    assert (report["checked"], report["refreshed"], report["current"]) == (2, 2, 0)
    assert a.store.get_bundle("c1", "detect").fields == {"n": b"c2"}
    assert a.meta("c2", "detect").version == 1
    assert a.meta("c1", "alarm") is None  # not asked for
    again = a.post(*to_binary(encode_ping({"chains": ["c1"], "nodes": ["node-b"]}))).json()
    assert (again["checked"], again["refreshed"]) == (2, 1)  # c1/alarm from B; c1/detect is current
    assert a.metric("skylark_handler_warmup_refreshed_total") == 3
    # C deleted c1/detect while the stream source was down: the warm-up drops A's copy too
    version = c.store.delete("c1", "detect")
    b.store.delete("c1", "alarm")
    repaired = a.post(*to_binary(encode_ping({"chains": ["c1"]}))).json()
    assert (repaired["deleted"], repaired["refreshed"]) == (2, 0)
    assert "c1/detect@node-c (deleted)" in repaired["refreshed_pairs"]
    assert a.meta("c1", "detect") is None and a.store.local_version("c1", "detect") == version
    assert a.meta("c1", "alarm") is None
    # a pair deleted where it is known and never held here is neither pulled nor made up
    c.store.delete("c2", "detect")
    b.store.put("c9", "detect", {"n": b"z"})
    b.store.delete("c9", "detect")
    assert a.store.delete("c2", "detect") == 2  # A's own copy, deleted locally as well
    last = a.post(*to_binary(encode_ping({"chains": ["c2", "c9"], "functions": ["detect"]}))).json()
    assert (last["deleted"], last["missing"], last["current"]) == (0, 1, 1)
    assert a.store.local_version("c9", "detect") == 0


def encode_ping(data: dict):
    from eventing import catalogue
    from eventing.http import new_event

    return new_event(catalogue.PING, "/apis/v1/namespaces/default/pingsources/warmup", data)


@pytest.mark.parametrize("path", ["/", "/bundle"])
def test_sub_paths_route_like_the_root(cluster_factory, path):
    cluster = cluster_factory(["node-a", "node-b"], [("node-a", "node-b")], stream_sources=False)
    b = cluster["node-b"]
    bundle = make_bundle(CHAIN, "detect", {"n": b"1"}, version=1, node="node-a", updated_ms=1)
    event = propagation_event(encode_payload(bundle, origin="node-a", inline_max_bytes=1 << 20), "node-b")
    answer = b.post(*to_binary(event), path=path)
    assert answer.status_code == 202 and answer.json()["outcome"] == "applied"
    metrics = requests.get(b.url + "/metrics", timeout=10).text
    assert 'skylark_handler_events_total{outcome="applied",type="io.skylark.bundle.propagated"} 1.0' in metrics
