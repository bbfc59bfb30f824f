"""The binary propagation event, field deltas and compression per link, on real nodes (Redis,
handlers, local brokers on 127.0.0.1) and as pure encode / decode."""

from __future__ import annotations

import json
import os
import random
import struct
import time

import pytest
import zstandard

from eventing.http import parse, to_binary
from handlers import bundle_event as be
from handlers.compression import Compressor
from skylark.state.bundle import make_bundle

from handlers_fixtures import cluster_factory  # noqa: F401 - pytest fixture

CHAIN = "chain-1"
KEY = b"0123456789abcdef-test-key"


def _round_trip(payload, target="node-b", key=None):
    headers, body = to_binary(be.propagation_event(payload, target, key))
    return headers, body, be.decode_propagation(parse(headers, body))


def _detections(n_bytes: int, seed: int = 1) -> bytes:
    """JSON like a detector's output: compressible about 4-5×."""
    rng = random.Random(seed)
    items = [{"label": rng.choice(["face", "person", "car", "cat"]), "score": round(rng.random(), 3),
              "box": [rng.randrange(2000) for _ in range(4)], "frame": i} for i in range(n_bytes // 40)]
    return json.dumps(items).encode()[:n_bytes]


# -- the event itself -------------------------------------------------------------------------------------


def test_inline_bundle_travels_as_bytes_and_reads_back_with_its_metadata():
    bundle = make_bundle(CHAIN, "detect", {"image": os.urandom(70_000), "info": b"{}"}, version=3, node="node-a",
                         updated_ms=17)
    payload = be.encode_binary(bundle.meta, bundle.fields, origin="node-a", inline_max_bytes=1 << 20)
    headers, body, incoming = _round_trip(payload)
    assert payload.mode == be.INLINE and headers["content-type"] == be.BINARY
    assert len(body) < 70_000 + 100  # no base64: the values and a few bytes per field
    assert headers["ce-skylarkmode"] == "inline" and headers["ce-skylarkfields"] == "2"
    got = incoming.materialize().bundle
    assert got.meta == bundle.meta and got.fields == bundle.fields
    got.verify()


def test_compressed_fields_delta_claim_and_tombstone_read_back():
    meta = make_bundle(CHAIN, "f", {"a": b"x" * 5000, "b": b"y", "c": b"z"}, version=7, node="node-a",
                       updated_ms=1).meta
    frames = {"a": zstandard.ZstdCompressor().compress(b"x" * 5000)}
    delta = be.encode_binary(meta, {"a": b"x" * 5000}, origin="node-a", inline_max_bytes=1 << 20, base_version=6,
                             compressed=frames)
    _, body, incoming = _round_trip(delta)
    assert delta.mode == be.DELTA and len(body) < 200
    got = incoming.materialize().delta
    assert (got.base_version, got.meta, got.fields) == (6, meta, {"a": b"x" * 5000})
    assert be.encode_binary(meta, {"a": b"x" * 5000}, origin="node-a", inline_max_bytes=100, base_version=6) is None
    claim = be.encode_claim(meta, origin="node-a", base_version=6, changed={"a": 5000})
    _, _, incoming = _round_trip(claim)
    assert incoming.claim == be.Claim("node-a", CHAIN, "f", 7, meta.checksum, meta.size, 6, ("a",))
    whole_claim = be.encode_claim(meta, origin="node-a")
    _, body, incoming = _round_trip(whole_claim)
    assert body == b"" and incoming.claim == be.Claim("node-a", CHAIN, "f", 7, meta.checksum, meta.size)
    from skylark.state.bundle import Tombstone

    _, body, incoming = _round_trip(be.encode_binary_tombstone(Tombstone(CHAIN, "f", 8, "node-z", 5), origin="node-a"))
    assert body == b"" and incoming.tombstone == Tombstone(CHAIN, "f", 8, "node-z", 5)


def test_the_signature_covers_the_binary_body_and_every_skylark_attribute():
    bundle = make_bundle(CHAIN, "f", {"a": b"1" * 100}, version=2, node="node-a", updated_ms=1)
    payload = be.encode_binary(bundle.meta, bundle.fields, origin="node-a", inline_max_bytes=1 << 20)
    headers, body, incoming = _round_trip(payload, key=KEY)
    assert incoming.verify(KEY) and not incoming.verify(b"another-key-0123456789")
    flipped = body[:-1] + bytes([body[-1] ^ 1])
    assert not be.decode_propagation(parse(headers, flipped)).verify(KEY)
    for name, value in (("ce-skylarkfields", "3"), ("ce-skylarkupdated", "2"), ("ce-skylarkttl", "5"),
                        ("ce-skylarkbase", "1"), ("ce-id", "other")):
        changed = {**headers, name: value}
        try:
            assert not be.decode_propagation(parse(changed, body)).verify(KEY), name
        except be.InvalidBundleEvent:
            pass  # refused before the signature is even looked at: as good


def _entry(name: bytes, encoding: int, length: int, payload: bytes) -> bytes:
    return bytes([len(name)]) + name + struct.pack(">BQQ", encoding, length, len(payload)) + payload


@pytest.mark.parametrize("body,detail", [
    (_entry(b"a", 0, 1, b"1")[:-3], "cut short"),
    (_entry(b"a b", 0, 1, b"1"), "field name"),
    (_entry(b"\xff", 0, 1, b"1"), "ASCII"),
    (_entry(b"a", 7, 1, b"1"), "unknown encoding"),
    (_entry(b"a", 0, 2, b"1"), "payload of 1 bytes"),
    (_entry(b"a", 0, 1, b"1") + _entry(b"a", 0, 1, b"1"), "twice"),
    (_entry(b"a", 2, 1, b""), "carries every field"),
    (_entry(b"a", 0, 10**18, b""), "payload of 0 bytes"),
])
def test_malformed_binary_bodies_are_invalid_bundle_events(body, detail):
    meta = make_bundle(CHAIN, "f", {"a": b"1"}, version=1, node="node-a", updated_ms=1).meta
    headers, _ = to_binary(be.propagation_event(
        be.encode_binary(meta, {"a": b"1"}, origin="node-a", inline_max_bytes=1 << 20), "node-b"))
    with pytest.raises(be.InvalidBundleEvent, match=detail):
        be.decode_propagation(parse(headers, body)).materialize()


def test_a_zstd_payload_must_decompress_to_exactly_the_announced_length():
    meta = make_bundle(CHAIN, "f", {"a": b"1" * 2000}, version=1, node="node-a", updated_ms=1).meta
    headers, _ = to_binary(be.propagation_event(
        be.encode_binary(meta, {"a": b"1" * 2000}, origin="node-a", inline_max_bytes=1 << 20), "node-b"))
    bomb = zstandard.ZstdCompressor().compress(b"1" * 10_000_000)  # claims 2000 bytes, holds 10 MB
    unsized = zstandard.ZstdCompressor(write_content_size=False).compress(b"1" * 10_000_000)
    for payload, detail in ((bomb, "frame of 10000000 bytes"), (unsized, "decompressed to 2001 bytes"),
                            (zstandard.ZstdCompressor().compress(b"1" * 1999), "frame of 1999 bytes"),
                            (b"not zstd", "zstd")):
        with pytest.raises(be.InvalidBundleEvent, match=detail):
            be.decode_propagation(parse(headers, _entry(b"a", 1, 2000, payload))).materialize()


# -- compression decisions ----------------------------------------------------------------------------------


def test_compression_pays_on_slow_links_only_and_never_for_incompressible_fields():
    compressor = Compressor()
    text = _detections(256 * 1024)
    assert not compressor.may_pay(len(text), 10_000) and not compressor.may_pay(len(text), None)
    assert compressor.may_pay(len(text), 30)
    packed = compressor.compress({"detections": text, "jpeg": os.urandom(300_000), "tiny": b"{}"})
    assert set(packed.frames) == {"detections"} and packed.saved_bytes > len(text) // 2
    assert compressor.pays(packed, 30) and not compressor.pays(packed, 100_000)
    assert not Compressor(enabled=False).may_pay(len(text), 1)


# -- on real nodes ------------------------------------------------------------------------------------------


def _eventually(check, timeout_s: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def _five_fields(size: int) -> dict[str, bytes]:
    return {f"p{i}": os.urandom(size // 5) for i in range(5)}


def test_a_one_field_update_travels_as_a_delta_and_a_node_without_the_base_pulls_the_whole(cluster_factory):
    cluster = cluster_factory(["node-a", "node-b", "node-c"], [("node-a", "node-b"), ("node-a", "node-c")])
    a, b, c = cluster["node-a"], cluster["node-b"], cluster["node-c"]
    first = a.store.put(CHAIN, "detect", _five_fields(100_000))
    for node in (b, c):
        node.wait_for_version(CHAIN, "detect", first.meta.version)
    c.store.client.flushall()  # C lost its copy: it has no base for the next delta
    # (A counts what it sent once both brokers answered, which may be after B and C applied it)
    assert _eventually(lambda: a.metric("skylark_handler_bytes_sent_total", mode="inline") >= 2 * 100_000)
    full = a.metric("skylark_handler_bytes_sent_total", mode="inline")
    update = a.store.put(CHAIN, "detect", {"p2": os.urandom(20_000)})
    for node in (b, c):
        node.wait_for_version(CHAIN, "detect", update.meta.version)
        assert node.store.get_bundle(CHAIN, "detect").fields == a.store.get_bundle(CHAIN, "detect").fields
    assert _eventually(lambda: a.metric("skylark_handler_bytes_sent_total", mode="delta") >= 2 * 20_000)
    sent = a.metric("skylark_handler_bytes_sent_total", mode="delta")
    assert 2 * 20_000 <= sent < 2 * 20_000 + 400 and sent < 0.25 * full  # two targets, one field each
    assert 20_000 <= b.metric("skylark_handler_bytes_received_total", mode="delta") < 20_200
    assert _eventually(lambda: b.metric("skylark_handler_events_total", type="io.skylark.bundle.propagated",
                                        outcome="applied") == 2)
    assert (b.metric("skylark_handler_delta_fallbacks_total"), c.metric("skylark_handler_delta_fallbacks_total")) \
        == (0, 1)
    assert c.metric("skylark_handler_bytes_pulled_total") == update.meta.size


def test_a_delta_above_the_inline_limit_pulls_only_the_changed_fields(cluster_factory):
    cluster = cluster_factory(["node-a", "node-b"], [("node-a", "node-b")], inline_max_bytes=8 * 1024)
    a, b = cluster["node-a"], cluster["node-b"]
    first = a.store.put(CHAIN, "detect", _five_fields(500_000))
    b.wait_for_version(CHAIN, "detect", first.meta.version)
    pulled = b.metric("skylark_handler_bytes_pulled_total")
    assert pulled == first.meta.size  # the first version: a claim check of the whole
    update = a.store.put(CHAIN, "detect", {"p4": os.urandom(100_000)})
    b.wait_for_version(CHAIN, "detect", update.meta.version)
    assert b.store.get_bundle(CHAIN, "detect").fields == a.store.get_bundle(CHAIN, "detect").fields
    assert b.metric("skylark_handler_bytes_pulled_total") - pulled == len("p4") + 100_000
    assert a.metric("skylark_handler_bytes_sent_total", mode="claim") < 200  # names, no values


def test_slow_links_get_compressible_state_compressed_and_fast_links_never(cluster_factory):
    slow = cluster_factory(["node-a", "node-b"], [("node-a", "node-b")], bandwidth_mbps=30.0)
    a, b = slow["node-a"], slow["node-b"]
    text = _detections(200_000)
    put = a.store.put(CHAIN, "detect", {"detections": text, "jpeg": os.urandom(50_000)})
    b.wait_for_version(CHAIN, "detect", put.meta.version)
    assert b.store.get_bundle(CHAIN, "detect").fields == {"detections": text, "jpeg": a.store.get_bundle(
        CHAIN, "detect").fields["jpeg"]}
    assert a.metric("skylark_handler_compression_total", outcome="compressed") == 1
    assert _eventually(lambda: a.metric("skylark_handler_bytes_sent_total", mode="inline") > 50_000)
    assert a.metric("skylark_handler_bytes_sent_total", mode="inline") < 50_000 + len(text) / 2
    noise = a.store.put(CHAIN, "noise", {"jpeg": os.urandom(200_000)})
    b.wait_for_version(CHAIN, "noise", noise.meta.version)
    assert a.metric("skylark_handler_compression_total", outcome="incompressible") == 1
    fast = cluster_factory(["node-a", "node-b"], [("node-a", "node-b")])  # 10 Gbit/s
    a, b = fast["node-a"], fast["node-b"]
    put = a.store.put(CHAIN, "detect", {"detections": text})
    b.wait_for_version(CHAIN, "detect", put.meta.version)
    assert a.metric("skylark_handler_compression_total", outcome="compressed") == 0
    assert _eventually(lambda: a.metric("skylark_handler_bytes_sent_total", mode="inline") > len(text))


def test_the_previous_release_json_shape_is_still_sent_when_asked_and_read(cluster_factory):
    cluster = cluster_factory(["node-a", "node-b"], [("node-a", "node-b")],
                              handler_options={"propagation_format": "json"})
    a, b = cluster["node-a"], cluster["node-b"]
    a.store.put(CHAIN, "detect", _five_fields(1000))
    update = a.store.put(CHAIN, "detect", {"p1": b"new"})
    b.wait_for_version(CHAIN, "detect", update.meta.version)
    assert b.store.get_bundle(CHAIN, "detect").fields == a.store.get_bundle(CHAIN, "detect").fields
    assert a.metric("skylark_handler_bytes_sent_total", mode="delta") == 0  # JSON has no deltas


def test_a_delta_applied_with_ttl_and_signed(cluster_factory):
    cluster = cluster_factory(["node-a", "node-b"], [("node-a", "node-b")], signing_key=KEY)
    a, b = cluster["node-a"], cluster["node-b"]
    a.store.put(CHAIN, "detect", _five_fields(10_000), ttl_s=300)
    update = a.store.put(CHAIN, "detect", {"p0": b"changed"}, ttl_s=300)
    b.wait_for_version(CHAIN, "detect", update.meta.version)
    copy = b.store.get_bundle(CHAIN, "detect")
    assert copy.fields == a.store.get_bundle(CHAIN, "detect").fields and 0 < copy.meta.ttl_ms <= 300_000
    # (the change of v1 may have pushed v2 already, whole: it was the current bundle by then)
    assert _eventually(lambda: a.metric("skylark_handler_bytes_sent_total", mode="delta") > 0)
