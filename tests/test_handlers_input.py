"""Every kind of bad input gets the right 4xx with a JSON body, and nothing is written to Redis."""

from __future__ import annotations

import base64
import json
import random
from collections.abc import Iterator

import pytest
import requests

from eventing import catalogue
from eventing.http import new_event, to_binary, to_structured
from eventing.redisstream import encode_stream_event, to_go_binary
from handlers.app import create_app, services_of
from handlers.bundle_event import encode_payload, encode_tombstone, propagation_event
from handlers.config import HandlerSettings
from neighbors_service.targets import PolicyTargets
from neighbors_service.topology import Node, Topology
from skylark.state.bundle import Tombstone, make_bundle
from skylark.state.settings import Settings
from skylark.state.store import StateStore

from handlers_fixtures import ServerThread

STREAM_SOURCE = "redis://127.0.0.1:6379"
MAX_BUNDLE = 64 * 1024


@pytest.fixture()
def node(redis_server, redis_client) -> Iterator[tuple[str, object]]:
    """node-a alone (no neighbours) on the session's flushed Redis, served over real HTTP."""
    core = Settings(node="node-a", redis_url=redis_server.url, max_bundle_bytes=MAX_BUNDLE,
                    inline_max_bytes=32 * 1024)
    targets = PolicyTargets.fixed(Topology((Node("node-a", redis_url=redis_server.url),)))
    app = create_app(HandlerSettings(core=core, signing_key=None), targets=targets)
    server = ServerThread(app)
    yield server.url, redis_client
    server.stop()
    services_of(app).close()


def _keys(client) -> set[bytes]:
    return set(client.keys("*"))


def _change(**overrides) -> dict[str, str]:
    fields = {"chain": "c1", "function": "detect", "op": "put", "mechanism": "bundled", "fields": "n",
              "version": "1", "node": "node-a", "size": "2", "checksum": "0" * 40, "ts": "1"}
    fields.update(overrides)
    return fields


def _stream(fields, entry_id: str = "1-0", source_stream: str = "skylark:changes"):
    return to_go_binary(encode_stream_event(STREAM_SOURCE, source_stream, entry_id, fields))


def _raw_stream(data: bytes, content_type: str = "application/json"):
    headers, _ = to_go_binary(encode_stream_event(STREAM_SOURCE, "skylark:changes", "1-0", _change()))
    headers["content-type"] = content_type
    return headers, data


def _bundle_event(bundle=None, *, target: str = "node-a", data: dict | None = None, inline_max: int = 1 << 30,
                  **attributes):
    bundle = bundle or make_bundle("c1", "detect", {"n": b"1"}, version=1, node="node-b", updated_ms=1)
    event = propagation_event(encode_payload(bundle, origin="node-b", inline_max_bytes=inline_max), target)
    headers, body = to_binary(event)
    for name, value in attributes.items():
        if value is None:
            headers.pop(f"ce-{name}", None)
        else:
            headers[f"ce-{name}"] = value
    if data is not None:
        body = json.dumps(data).encode()
    return headers, body


def _inline_data(**meta_overrides) -> dict:
    bundle = make_bundle("c1", "detect", {"n": b"1"}, version=1, node="node-b", updated_ms=1)
    data = json.loads(encode_payload(bundle, origin="node-b", inline_max_bytes=1 << 30).data)
    data["meta"].update(meta_overrides)
    return data


def _tombstone(**overrides) -> dict:
    return {"chain": "c1", "function": "detect", "version": 2, "node": "node-b", "updated_ms": 5, **overrides}


def _tombstone_event(version: int = 2, **headers):
    t = Tombstone("c1", "detect", max(version, 1), "node-b", 5)
    event_headers, _ = to_binary(propagation_event(encode_tombstone(t, origin="node-b"), "node-a"))
    return {**event_headers, **headers}, json.dumps({"tombstone": _tombstone(version=version)}).encode()


def _ping(data):
    return to_binary(new_event(catalogue.PING, "/apis/v1/namespaces/default/pingsources/warmup", data))


BAD_INPUTS = {
    # not a CloudEvent at all
    "plain json": (lambda: ({"content-type": "application/json"}, b'{"hello": 1}'), 400, "not_a_cloudevent"),
    "empty body": (lambda: ({}, b""), 400, "not_a_cloudevent"),
    "structured not json": (lambda: ({"content-type": "application/cloudevents+json"}, b"{nope"), 400,
                            "malformed_event"),
    # missing attributes
    "binary without id": (lambda: ({"ce-specversion": "1.0", "ce-type": catalogue.REDIS_STREAM,
                                    "ce-source": "x/y", "content-type": "application/json"}, b"[]"),
                          400, "missing_attribute"),
    "structured without type": (lambda: ({"content-type": "application/cloudevents+json"},
                                         json.dumps({"specversion": "1.0", "id": "1", "source": "s"}).encode()),
                                400, "missing_attribute"),
    # wrong / unknown type
    "unknown type": (lambda: to_binary(new_event("com.example.other", "/x", {"a": 1})), 400, "unknown_event_type"),
    # bad stream data
    "stream data object": (lambda: _raw_stream(b'{"chain": "c1"}'), 400, "bad_stream_data"),
    "stream data odd array": (lambda: _raw_stream(b'["chain", "c1", "function"]'), 400, "bad_stream_data"),
    "stream data numbers": (lambda: _raw_stream(b'["chain", 1]'), 400, "bad_stream_data"),
    "stream data not json": (lambda: _raw_stream(b"chain,c1"), 400, "malformed_data"),
    "stream data not a json type": (lambda: _raw_stream(b"[]", "text/plain"), 400, "bad_stream_data"),
    "stream change lacks fields": (lambda: _stream({"chain": "c1", "function": "detect"}), 400, "bad_change"),
    "stream change bad op": (lambda: _stream(_change(op="drop")), 400, "bad_change"),
    "stream change bad name": (lambda: _stream(_change(chain="../etc")), 400, "bad_change"),
    "stream version unicode digits": (lambda: _stream(_change(version="١٢")), 400, "bad_change"),
    "stream version superscript": (lambda: _stream(_change(version="²")), 400, "bad_change"),
    "stream version past int64": (lambda: _stream(_change(version=str(2**63))), 400, "bad_change"),
    "stream data nested 10000 deep": (lambda: _raw_stream(b"[" * 10_000 + b"]" * 10_000), 400, "malformed_data"),
    "stream data NaN": (lambda: _raw_stream(b'["chain", NaN]'), 400, "malformed_data"),
    "stream from another stream": (lambda: _stream(_change(), source_stream="other"), 400, "bad_stream_source"),
    "unknown chain": (lambda: _stream(_change(chain="never-written")), 400, "unknown_chain"),
    # bad bundle events
    "bundle not json data": (lambda: (_bundle_event()[0], b"\xff\xfe"), 400, "malformed_data"),
    "bundle both shapes": (lambda: _bundle_event(data={**_inline_data(), "claim": {}}), 400, "invalid_bundle_event"),
    "bundle array data": (lambda: _bundle_event(data=[1, 2]), 400, "invalid_bundle_event"),
    "bundle bad base64": (lambda: _bundle_event(data={**_inline_data(), "fields": {"n": "!!"}}), 400,
                          "invalid_bundle_event"),
    "bundle bad field name": (lambda: _bundle_event(data={**_inline_data(), "fields": {"a b": "MQ=="}}), 400,
                              "invalid_bundle_event"),
    "bundle version zero": (lambda: _bundle_event(data=_inline_data(version=0), **{"skylarkversion": "0"}), 400,
                            "invalid_bundle_event"),
    "bundle version string": (lambda: _bundle_event(data=_inline_data(version="1")), 400, "invalid_bundle_event"),
    "bundle version 2**63": (lambda: _bundle_event(data=_inline_data(version=2**63), **{"skylarkversion": None}),
                             400, "invalid_bundle_event"),
    "bundle version 2**64": (lambda: _bundle_event(data=_inline_data(version=2**64), **{"skylarkversion": None}),
                             400, "invalid_bundle_event"),
    "tombstone version 2**64": (lambda: _bundle_event(data={"tombstone": _tombstone(version=2**64)},
                                                      **{"skylarkchecksum": None, "skylarkversion": None,
                                                         "skylarksize": None}), 400, "invalid_bundle_event"),
    "ping data nested, as text": (lambda: ({**_ping({"chains": ["c1"]})[0], "content-type": "text/plain"},
                                           b"[" * 10_000 + b"]" * 10_000), 400, "malformed_data"),
    "bundle ttl zero": (lambda: _bundle_event(data=_inline_data(ttl_ms=0)), 400, "invalid_bundle_event"),
    "bundle ttl text": (lambda: _bundle_event(data=_inline_data(ttl_ms="60s")), 400, "invalid_bundle_event"),
    "bundle bad chain": (lambda: _bundle_event(data=_inline_data(chain="a/b"), **{"skylarkchain": "a/b"}), 400,
                         "invalid_bundle_event"),
    "bundle attribute disagrees": (lambda: _bundle_event(**{"skylarkversion": "7"}), 400, "invalid_bundle_event"),
    "bundle checksum mismatch": (lambda: _bundle_event(data={**_inline_data(), "fields": {"n": "Mg=="}}), 400,
                                 "checksum_mismatch"),
    "bundle for another node": (lambda: _bundle_event(target="node-z"), 400, "wrong_target"),
    "bundle claim missing keys": (lambda: _bundle_event(data={"claim": {"node": "node-b"}}), 400,
                                  "invalid_bundle_event"),
    "tombstone missing keys": (lambda: _bundle_event(data={"tombstone": {"chain": "c1", "function": "detect"}},
                                                     **{"skylarkchecksum": None}), 400, "invalid_bundle_event"),
    "tombstone and bundle": (lambda: _bundle_event(data={**_inline_data(), "tombstone": _tombstone()}), 400,
                             "invalid_bundle_event"),
    "tombstone version zero": (lambda: _tombstone_event(version=0), 400, "invalid_bundle_event"),
    "tombstone with a checksum": (lambda: _tombstone_event(**{"ce-skylarkchecksum": "0" * 40}), 400,
                                  "invalid_bundle_event"),
    # bad warm-up data
    "ping data not json": (lambda: _ping("warm everything"), 400, "malformed_data"),
    "ping data list": (lambda: _ping(["c1"]), 400, "invalid_warmup"),
    "ping nothing named": (lambda: _ping({"nodes": ["node-b"]}), 400, "invalid_warmup"),
    "ping unknown key": (lambda: _ping({"chain": ["c1"]}), 400, "invalid_warmup"),
    "ping bad name": (lambda: _ping({"chains": ["c 1"]}), 400, "invalid_warmup"),
    # size limits
    "request too large": (lambda: _raw_stream(b"[" + b" " * (1024 * 1024 + 10) + b"]"), 413,
                          "request_entity_too_large"),
    "bundle too large": (lambda: _bundle_event(make_bundle("c1", "detect", {"n": b"x" * (MAX_BUNDLE + 1)},
                                                           version=1, node="node-b", updated_ms=1)),
                         413, "bundle_too_large"),
    "claim too large": (lambda: _bundle_event(make_bundle("c1", "detect", {"n": b"x" * MAX_BUNDLE}, version=1,
                                                          node="node-b", updated_ms=1), inline_max=0),
                        413, "bundle_too_large"),
}


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_input_is_a_json_4xx_and_writes_nothing(node, case):
    url, client = node
    build, status, error = BAD_INPUTS[case]
    headers, body = build()
    before = _keys(client)
    answer = requests.post(url + "/", headers=headers, data=body, timeout=10)
    assert answer.status_code == status, answer.text
    assert answer.json()["error"] == error
    assert answer.json()["detail"]
    assert _keys(client) == before


def test_sub_path_refuses_other_event_types(node):
    url, client = node
    headers, body = _bundle_event()
    for path in ("/stream", "/warmup"):
        answer = requests.post(url + path, headers=headers, data=body, timeout=10)
        assert answer.status_code == 400
        assert answer.json()["error"] == "wrong_event_type"
    assert _keys(client) == set()


def test_get_and_unknown_paths_are_json_errors(node):
    url, _ = node
    assert requests.get(url + "/", timeout=10).json()["error"] == "method_not_allowed"
    answer = requests.post(url + "/nope", data=b"x", timeout=10)
    assert answer.status_code == 404 and answer.json()["error"] == "not_found"


def test_a_delete_change_is_pushed_only_when_this_node_holds_its_tombstone(node):
    url, client = node

    def post_delete(version: int) -> requests.Response:
        headers, body = _stream(_change(op="delete", version=str(version), size="0", checksum=""))
        return requests.post(url + "/", headers=headers, data=body, timeout=10)

    # a forged or stray delete for state never held here: refused, nothing written
    forged = post_delete(1)
    assert forged.status_code == 400 and forged.json()["error"] == "unknown_chain"
    assert _keys(client) == set()
    store = StateStore(client, node="node-a")
    store.put("c1", "detect", {"n": b"1"})
    contradicted = post_delete(2).json()                              # v1 is live here: no delete
    assert (contradicted["outcome"], contradicted["version"]) == ("no_targets", 1)
    version = store.delete("c1", "detect")
    assert post_delete(version + 5).status_code == 400                # claims a later delete
    answer = post_delete(version)
    assert answer.status_code == 202                                 # the real one (no neighbours)
    assert (answer.json()["outcome"], answer.json()["version"]) == ("no_targets", version)


def test_random_garbage_never_gets_a_5xx(node):
    """A bounded fuzz over headers and bodies: every answer is a 4xx (or 202), never a 500."""
    url, client = node
    rng = random.Random(7)
    types = [catalogue.REDIS_STREAM, catalogue.BUNDLE_PROPAGATED, catalogue.PING, "x", ""]
    bodies = [b"", b"[]", b"{}", b"null", b"[1]", b'["a"]', b'{"meta": {}}', b'{"claim": null}',
              b'{"chains": [1]}', b"\x00\x01", json.dumps(_inline_data()).encode(),
              json.dumps({"claim": {"node": "n", "chain": "c", "function": "f", "version": 1e99,
                                    "checksum": "a" * 40, "size": -1}}).encode(),
              base64.b64encode(b"x" * 100)]
    session = requests.Session()
    for _ in range(150):
        headers = {"ce-specversion": rng.choice(["1.0", "0.3", ""]), "ce-id": rng.choice(["1", ""]),
                   "ce-source": rng.choice(["redis://h:1/skylark:changes", "/s", ""]),
                   "ce-type": rng.choice(types),
                   "content-type": rng.choice(["application/json", "text/plain", "application/cloudevents+json"])}
        if rng.random() < 0.3:
            headers["ce-skylarkversion"] = rng.choice(["1", "x", "-1"])
        headers = {k: v for k, v in headers.items() if v or rng.random() < 0.5}
        answer = session.post(url + rng.choice(["/", "/stream", "/bundle", "/warmup"]), headers=headers,
                              data=rng.choice(bodies), timeout=10)
        assert answer.status_code < 500, (headers, answer.text)
        assert "error" in answer.json() or answer.status_code == 202
    structured = to_structured(new_event(catalogue.PING, "/p", {"chains": ["c1"]}))
    assert session.post(url + "/", headers=structured[0], data=structured[1], timeout=10).status_code == 202
    assert not [k for k in _keys(client) if k.startswith(b"skylark:bundle:")]
