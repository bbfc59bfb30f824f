"""Hostile input against the real services on real HTTP: never a 5xx, always a JSON 4xx, and a
refused request changes nothing.

The services run in this process on real sockets (``ThreadedServer``, werkzeug), the handlers on a
real redis-server: the handlers app (unsigned, and a second one with a signing key), the local
broker app (every accepted event is forwarded to the dead-letter sink), the neighbors service and
the dead-letter sink. Property tests (hypothesis) throw generated headers and bodies at them —
hostile JSON (deep nesting, NaN, huge numbers, invalid UTF-8), random bytes, CloudEvent-shaped
attribute sets with hostile values and the CloudEvents spec's invalid cases (missing or wrong
specversion / id / source / type, non-string attributes in structured mode, invalid extension
names) — and check every answer. Explicit regression tests cover each case of the issue, and one
test runs the dead-letter sink under gunicorn with ``gunicorn_conf.py`` for what only gunicorn
refuses (huge headers, bad request lines, bad chunks).
"""

from __future__ import annotations

import base64
import json
import os
import signal
import socket
import string
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import pytest
import redis
import requests
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from hypothesis.errors import InvalidArgument

from eventing import catalogue
from eventing.broker.app import EXTENSION_KEY, BrokerConfig
from eventing.broker.app import create_app as create_broker
from eventing.broker.dispatcher import Dispatcher
from eventing.http import MAX_ATTRIBUTES, MAX_EVENT_BYTES, new_event, to_binary, to_structured
from eventing.redisstream import encode_stream_event, to_go_binary
from handlers.app import create_app as create_handlers
from handlers.app import services_of
from handlers.bundle_event import encode_payload, encode_tombstone, propagation_event
from handlers.config import HandlerSettings, default_max_request_bytes
from neighbors_service.app import MAX_BODY_BYTES as NEIGHBORS_MAX_BODY
from neighbors_service.app import create_app as create_neighbors
from neighbors_service.config import NeighborsSettings
from neighbors_service.policies import SLO
from neighbors_service.sources.file import load_topology_file
from neighbors_service.targets import PolicyTargets
from neighbors_service.topologies import example_path
from neighbors_service.topology import Node, Topology
from skylark.runtime.deadletter import create_app as create_dead_letter
from skylark.runtime.embedded import EmbeddedRedis, free_port
from skylark.serving.limits import MAX_JSON_DEPTH
from skylark.serving.threaded_server import ThreadedServer
from skylark.state.bundle import Tombstone, make_bundle
from skylark.state.settings import Settings

REPO = Path(__file__).resolve().parents[1]
KEY = b"0123456789abcdef-hostile-test-key"
STREAM_ADDRESS = "redis://127.0.0.1:6379"
STREAM_SOURCE = f"{STREAM_ADDRESS}/skylark:changes"
BROKER_PATH = "/default/skylark"
# 150 examples per property keep the module near 15 s; the services are shared (module scope), so
# the function-scoped fixture check does not apply.
PROPERTY = settings(max_examples=150, deadline=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                           HealthCheck.data_too_large])


# -- the services ------------------------------------------------------------------------------


@dataclass
class Services:
    handlers: str
    signed: str
    broker: str
    dispatcher: Dispatcher
    neighbors: str
    dead_letter: str
    redis: redis.Redis          # the unsigned handlers' Redis
    signed_redis: redis.Redis   # the signed handlers' Redis
    session: requests.Session


def _handlers_app(url: str, signing_key: bytes | None):
    core = Settings(node="node-a", redis_url=url, max_bundle_bytes=64 * 1024, inline_max_bytes=32 * 1024)
    targets = PolicyTargets.fixed(Topology((Node("node-a", redis_url=url),)))
    return create_handlers(HandlerSettings(core=core, signing_key=signing_key), targets=targets)


@pytest.fixture(scope="module")
def services(redis_server) -> Iterator[Services]:
    signed_redis = EmbeddedRedis().start()
    servers: list[ThreadedServer] = []
    apps = []
    dispatchers: list[Dispatcher] = []

    def serve(app) -> str:
        server = ThreadedServer(app, name="hostile").start()
        servers.append(server)
        return server.url

    try:
        plain_app, signed_app = _handlers_app(redis_server.url, None), _handlers_app(signed_redis.url, KEY)
        apps += [plain_app, signed_app]
        dead_letter = serve(create_dead_letter())
        everything = {"apiVersion": "eventing.knative.dev/v1", "kind": "Trigger",
                      "metadata": {"name": "everything", "namespace": "default"},
                      "spec": {"broker": "skylark", "filter": {"attributes": {}},
                               "subscriber": {"ref": {"kind": "Service", "name": "dead-letter"}}}}
        broker_app = create_broker(BrokerConfig(namespace="default", broker="skylark", workers=2),
                                   triggers=[everything], services={"dead-letter": dead_letter})
        dispatchers.append(broker_app.extensions[EXTENSION_KEY])
        neighbors_app = create_neighbors(NeighborsSettings(core=Settings(node="node-a"), topology_file="demo3"),
                                         source=load_topology_file(example_path("demo3")))
        session = requests.Session()
        yield Services(handlers=serve(plain_app), signed=serve(signed_app), broker=serve(broker_app),
                       dispatcher=broker_app.extensions[EXTENSION_KEY], neighbors=serve(neighbors_app),
                       dead_letter=dead_letter, redis=redis_server.client(), signed_redis=signed_redis.client(),
                       session=session)
        session.close()
    finally:
        for server in servers:
            server.stop()
        for dispatcher in dispatchers:
            dispatcher.close()
        for app in apps:
            services_of(app).close()
        signed_redis.stop()


@pytest.fixture()
def svc(services: Services, redis_client) -> Services:
    """The module's services, with both Redis flushed for this test."""
    services.signed_redis.flushall()
    return services


def fingerprint(client: redis.Redis) -> dict[bytes, tuple[bytes, bytes | None]]:
    """Every key with its type and serialized value: an extra stream entry or a changed meta
    field shows, not only a new key."""
    return {key: (client.type(key), client.dump(key)) for key in client.keys("*")}


def assert_answer(response: requests.Response) -> None:
    """Below 500; a 4xx is a JSON object with a non-empty "error" code and "detail" text."""
    assert response.status_code < 500, (response.status_code, response.text[:500])
    code = response.json().get("error", "") if response.status_code >= 400 and response.content[:1] == b"{" else ""
    try:
        event(f"{response.status_code} {code}".strip())  # the spread: --hypothesis-show-statistics
    except InvalidArgument:
        pass  # not inside a property test
    if response.status_code >= 400:
        assert response.headers.get("content-type", "").startswith("application/json"), response.text[:300]
        body = response.json()
        assert isinstance(body, dict), body
        assert isinstance(body.get("error"), str) and body["error"], body
        assert isinstance(body.get("detail"), str) and body["detail"], body


def assert_error(response: requests.Response, status: int, error: str | None = None) -> dict:
    assert_answer(response)
    assert response.status_code == status, (response.status_code, response.text[:500])
    body = response.json()
    if error is not None:
        assert body["error"] == error, body
    return body


# -- strategies --------------------------------------------------------------------------------

# Text that int() or str.isdigit() would take for a number, and numbers out of int64.
HOSTILE_INT_TEXT = st.one_of(
    st.sampled_from(["١٢", "²", "1_000", " 12", "12 ", "+1", "-1", "0x10", "1e3", "1.0", "", "٣", "𝟙", "१२",
                     "nan", "inf", "9" * 19, "9" * 30, str(2**63), str(2**63 - 1), str(2**64), "0", "007"]),
    st.integers(min_value=-(2**70), max_value=2**70).map(str),
    st.text(alphabet=string.digits + "²³¹١٢٣٤٥٦٧٨٩٠₁𝟙 _-+.eE", max_size=25),
)
HOSTILE_JSON_INT = st.one_of(
    st.sampled_from([0, 1, -1, 2**31, 2**63 - 1, 2**63, 2**64, -(2**63), 10**30, 10**300]),
    st.integers(), st.floats(allow_nan=False, allow_infinity=False), st.booleans(), st.none(), HOSTILE_INT_TEXT,
)
JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(min_value=-(2**80), max_value=2**80)
    | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=20,
)
DEPTHS = st.integers(min_value=MAX_JSON_DEPTH - 2, max_value=20_000)
HOSTILE_JSON_TEXT = st.one_of(
    JSON_VALUES.map(json.dumps),
    DEPTHS.map(lambda n: "[" * n + "]" * n),
    DEPTHS.map(lambda n: '{"a":' * n + "1" + "}" * n),
    DEPTHS.map(lambda n: '{"chains": ' + "[" * n + '"c1"' + "]" * n + "}"),
    st.integers(min_value=1, max_value=5000).map(lambda n: "[" * n),  # never closed
    st.sampled_from(["NaN", "[NaN]", "Infinity", "-Infinity", '{"a": 1e999}', "-1e999", "1" * 5000,
                     "[" + "1" * 4300 + "]", '"\\ud800"', "\ufeff{}", "", " ", "null", "{", "}", "[",
                     '{"a":1,"a":2}', '"' + "\\" * 999 + '"', '["\\"[[[["]']),
)
HOSTILE_BODY = st.one_of(
    HOSTILE_JSON_TEXT.map(lambda t: t.encode("utf-8", "surrogatepass")),
    st.binary(max_size=512),
    st.sampled_from([b"\xff\xfe[]", b"\xc3\x28", b"\xed\xa0\x80", b"\x00" * 10, b"\xef\xbb\xbf{}", b"[1,\xff]"]),
)
ATTRIBUTE_TEXT = st.one_of(
    st.text(max_size=30),
    st.sampled_from(["", " ", "a\nb", "a\r\nX-Evil: 1", "\x00", "\x7f", "\x85", "\u2028", "é", "€", "x" * 3000,
                     "%0a", "%0D%0AX-Evil:%201", "%ff", "%", "%%", "a%00b"]),
)
EXTENSION_NAMES = st.one_of(
    st.sampled_from(["skylarkversion", "skylarksize", "skylarkchain", "skylarkfunction", "skylarktarget",
                     "skylarksignature", "skylarkchecksum", "knativebrokerttl", "comexampleextension1"]),
    st.sampled_from(["Skylark", "sky_lark", "a" * 21, "data", "données", "x-y", "data_base64", "ümlaut", "ce"]),
    st.from_regex(r"[a-z0-9]{1,25}", fullmatch=True),
)
EXTENSION_VALUES = st.one_of(ATTRIBUTE_TEXT, HOSTILE_INT_TEXT, HOSTILE_JSON_INT,
                             st.lists(st.integers(), max_size=2),
                             st.dictionaries(st.text(max_size=3), st.integers(), max_size=2))
KNOWN_TYPES = st.sampled_from([catalogue.REDIS_STREAM, catalogue.BUNDLE_PROPAGATED, catalogue.PING])
TYPES = st.one_of(KNOWN_TYPES, st.sampled_from(["x", "", " ", "io.skylark.bundle.propagated\n"]), st.text(max_size=20))


def _change(**overrides) -> dict:
    fields = {"chain": "c1", "function": "detect", "op": "put", "mechanism": "bundled", "fields": "n",
              "version": "1", "node": "node-a", "size": "2", "checksum": "0" * 40, "ts": "1"}
    fields.update(overrides)
    return fields


def _inline_document(version: int = 1) -> dict:
    bundle = make_bundle("c1", "detect", {"n": b"1"}, version=1, node="node-b", updated_ms=1)
    document = json.loads(encode_payload(bundle, origin="node-b", inline_max_bytes=1 << 30).data)
    document["meta"]["version"] = version
    return document


@st.composite
def typed_data(draw, event_type: str):
    """Data shaped like what ``event_type`` carries, with hostile values where numbers go."""
    if event_type == catalogue.REDIS_STREAM:
        change = _change(**draw(st.dictionaries(st.sampled_from(["version", "size", "ts", "op", "chain", "fields"]),
                                                HOSTILE_INT_TEXT, max_size=3)))
        flat = [item for pair in change.items() for item in pair]
        return draw(st.sampled_from([flat, flat[:-1], flat + ["x"], [*flat[:-1], 7]]))
    if event_type == catalogue.BUNDLE_PROPAGATED:
        kind = draw(st.sampled_from(["meta", "claim", "tombstone"]))
        if kind == "meta":
            document = _inline_document()
            for key in draw(st.lists(st.sampled_from(["version", "size", "updated_ms", "fields", "ttl_ms"]),
                                     max_size=3)):
                document["meta"][key] = draw(HOSTILE_JSON_INT)
            return document
        base = {"node": "node-b", "chain": "c1", "function": "detect", "version": 1, "checksum": "0" * 40,
                "size": 1, "updated_ms": 1}
        for key in draw(st.lists(st.sampled_from(["version", "size", "updated_ms"]), max_size=2)):
            base[key] = draw(HOSTILE_JSON_INT)
        return {kind: base}
    if event_type == catalogue.PING:
        return draw(st.one_of(st.dictionaries(st.sampled_from(["chains", "functions", "nodes", "x"]),
                                              st.lists(st.text(max_size=8), max_size=3) | JSON_VALUES,
                                              max_size=3),
                              JSON_VALUES))
    return draw(JSON_VALUES)


@st.composite
def attribute_sets(draw, types=TYPES) -> dict:
    """CloudEvent attributes, each required one present (mostly), missing, or of a wrong type."""
    event_type = draw(types)
    attributes: dict = {}
    for name, usual in (("specversion", st.sampled_from(["1.0", "1.0", "1.0", "0.3", "2.0", "1", " 1.0"])),
                        ("id", st.text(min_size=1, max_size=12)),
                        ("source", st.sampled_from([STREAM_SOURCE, "/skylark/nodes/node-b/handlers", "/x"])),
                        ("type", st.just(event_type))):
        roll = draw(st.integers(0, 11))
        if roll == 0:
            continue                                   # missing
        attributes[name] = draw(EXTENSION_VALUES if roll == 1 else usual)  # roll 1: anything at all
    for name, values in (("time", st.sampled_from(["2020-01-01T00:00:00Z", "2020-08-18T18:36:54.719802342Z",
                                                  "yesterday", 5, "2020-13-01T00:00:00Z", "",
                                                  "9999-12-31T23:59:59-23:59", "٢٠٢٠-01-01T00:00:00Z"])),
                         ("datacontenttype", st.sampled_from(["application/json", "text/plain", " application/json",
                                                              "application/json\x01", "€/json", "", 7,
                                                              "application/cloudevents+json"])),
                         ("subject", ATTRIBUTE_TEXT), ("dataschema", ATTRIBUTE_TEXT)):
        if draw(st.integers(0, 4)) == 0:
            attributes[name] = draw(values)
    attributes.update(draw(st.dictionaries(EXTENSION_NAMES, EXTENSION_VALUES, max_size=4)))
    return attributes


_CE_SAFE = "".join(c for c in map(chr, range(0x21, 0x7F)) if c not in ' "%')


def _header_value(draw, value) -> str:
    """How a sender would put ``value`` in a header: percent-encoded (the CloudEvents HTTP
    binding), or as it is when HTTP allows that (Latin-1, no control characters)."""
    text = json.dumps(value) if isinstance(value, (list, dict)) else str(value)
    sendable = (text == text.strip() and all(0x20 <= ord(c) <= 0xFF and c != "\x7f" for c in text))
    if sendable and draw(st.booleans()):
        return text
    return quote(text, safe=_CE_SAFE)


SOURCES = {catalogue.REDIS_STREAM: STREAM_SOURCE, catalogue.BUNDLE_PROPAGATED: "/skylark/nodes/node-b/handlers",
           catalogue.PING: "/apis/v1/namespaces/default/pingsources/warmup"}


@st.composite
def valid_attributes(draw, types=KNOWN_TYPES) -> dict:
    """Attributes a real sender of the type would set, with hostile values only where the
    handlers read numbers from them (so that the data, not the envelope, is what gets tested)."""
    event_type = draw(types)
    attributes = {"specversion": "1.0", "id": draw(st.from_regex(r"[0-9]{1,5}-[0-9]", fullmatch=True)),
                  "source": SOURCES.get(event_type, "/x"), "type": event_type,
                  "datacontenttype": draw(st.sampled_from(["application/json", "application/json",
                                                           "text/plain", "application/octet-stream"]))}
    if event_type == catalogue.BUNDLE_PROPAGATED:
        attributes["skylarktarget"] = draw(st.sampled_from(["node-a", "node-a", "node-z"]))
        for name in draw(st.lists(st.sampled_from(["skylarkversion", "skylarksize", "skylarkchain"]), max_size=2)):
            attributes[name] = draw(HOSTILE_INT_TEXT.filter(lambda t: t == t.strip() and t.isprintable()))
    return attributes


@st.composite
def event_requests(draw, types=TYPES, valid_types=KNOWN_TYPES) -> tuple[dict, bytes]:
    """Headers and body of a CloudEvent-ish request: binary or structured mode; valid attributes
    with typed-but-hostile or arbitrary data, or hostile attribute sets; or hostile bytes under
    CloudEvent headers."""
    hostile_envelope = draw(st.booleans())
    attributes = draw(attribute_sets(types) if hostile_envelope else valid_attributes(valid_types))
    event_type = attributes.get("type") if isinstance(attributes.get("type"), str) else draw(types)
    data = draw(st.one_of(typed_data(event_type), typed_data(event_type), JSON_VALUES))
    mode = draw(st.sampled_from(["binary", "binary", "structured", "structured-raw", "raw"]))
    if mode == "structured-raw":  # a structured body that is hostile JSON, or hostile data spliced in
        content_type = {"content-type": "application/cloudevents+json"}
        if draw(st.booleans()):
            return content_type, draw(HOSTILE_BODY)
        envelope = json.dumps({**attributes, "data": "\x00DATA\x00"})
        return content_type, envelope.replace('"\\u0000DATA\\u0000"', draw(HOSTILE_JSON_TEXT)).encode(
            "utf-8", "surrogatepass")
    if mode == "structured":
        document = dict(attributes)
        roll = draw(st.integers(0, 5))
        if roll == 0:
            document["data_base64"] = draw(st.sampled_from(["!!", base64.b64encode(b"x").decode(), 5, "YQ"]))
        if roll != 1:
            document["data"] = data
        content_type = draw(st.sampled_from([
            "application/cloudevents+json", "application/cloudevents+json; charset=utf-8",
            "application/json", "text/plain", "application/cloudevents+jsonx"]))
        return {"content-type": content_type}, json.dumps(document).encode()
    headers = {}
    for name, value in attributes.items():
        if name == "datacontenttype":
            headers["content-type"] = _header_value(draw, value)
        elif name and name.isascii():  # http.client sends header names as ASCII only
            headers["ce-" + name] = _header_value(draw, value)
    if mode == "raw":
        return headers, draw(HOSTILE_BODY)
    return headers, json.dumps(data).encode()


# -- properties --------------------------------------------------------------------------------


@PROPERTY
@given(request=event_requests(), path=st.sampled_from(["/"] * 5 + ["/stream", "/bundle", "/warmup", "/x"]),
       method=st.sampled_from(["POST"] * 9 + ["PUT", "GET", "DELETE", "PATCH"]))
def test_handlers_answer_hostile_events_below_500_and_write_nothing_when_refusing(svc, request, path, method):
    headers, body = request
    before = fingerprint(svc.redis)
    answer = svc.session.request(method, svc.handlers + path, headers=headers, data=body, timeout=10)
    assert_answer(answer)
    if answer.status_code >= 400:
        assert fingerprint(svc.redis) == before


@PROPERTY
@given(request=event_requests(types=st.just(catalogue.BUNDLE_PROPAGATED),
                              valid_types=st.just(catalogue.BUNDLE_PROPAGATED)), sign=st.booleans())
def test_signed_handlers_refuse_unsigned_and_forged_events_without_a_write(svc, request, sign):
    headers, body = request
    if sign:  # a signature of the right form that cannot match: 403, or 400 before that
        headers = {**headers, "ce-skylarksignature": "ab" * 32}
    before = fingerprint(svc.signed_redis)
    answer = svc.session.post(svc.signed + "/", headers=headers, data=body, timeout=10)
    assert_answer(answer)
    if answer.status_code < 400:  # nothing generated here carries a valid signature: only a
        assert answer.json()["outcome"] == "warmed"  # warm-up (no neighbours) can pass
    assert fingerprint(svc.signed_redis) == before


@PROPERTY
@given(request=event_requests(), path=st.sampled_from([BROKER_PATH] * 7 + ["/default/other", "/x", "/%ff/%00"]))
def test_broker_answers_hostile_events_below_500_and_forwards_what_it_accepts(svc, request, path):
    headers, body = request
    stats = svc.dispatcher.stats
    accepted, failed, lost = stats.accepted, stats.failed, stats.lost
    answer = svc.session.post(svc.broker + path, headers=headers, data=body, timeout=10)
    assert_answer(answer)
    if answer.status_code >= 400:
        assert stats.accepted == accepted
    else:
        assert answer.status_code == 202 and stats.accepted == accepted + 1
        # what the broker accepted, it can send on: the sink (a strict CloudEvent parser too) took it
        assert svc.dispatcher.drain(10)
        assert (stats.failed, stats.lost) == (failed, lost)


@PROPERTY
@given(request=event_requests())
def test_dead_letter_sink_answers_hostile_events_below_500(svc, request):
    headers, body = request
    assert_answer(svc.session.post(svc.dead_letter + "/", headers=headers, data=body, timeout=10))


QUERY_VALUES = st.one_of(HOSTILE_INT_TEXT, ATTRIBUTE_TEXT, st.sampled_from(["node-a", "node-b", "node-c", "10"]))


@PROPERTY
@given(path=st.sampled_from(["/elect", "/propagation-targets", "/topology", "/neighbors", "/topology/next",
                             "/redis-pods", "/slo", "/nodes/node-a", "/nodes/%ff", "/nodes/x%00y"]),
       params=st.fixed_dictionaries({}, optional={
           "size": QUERY_VALUES, "snapshot": QUERY_VALUES, "node": QUERY_VALUES, "from": QUERY_VALUES,
           "to": st.sampled_from(["node-a", "node-b", "node-c"]) | QUERY_VALUES, "x": QUERY_VALUES,
           "policy": st.sampled_from(["skylark", "random", "stateless"]) | QUERY_VALUES}),
       raw_query=st.sampled_from(["", "size=%ff", "size=1&size=2", "size", "&&", "size=%00"]))
def test_neighbors_query_parameters_never_get_a_5xx(svc, path, params, raw_query):
    query = "&".join(filter(None, [raw_query, "&".join(f"{quote(k)}={quote(str(v).encode('utf-8', 'surrogatepass'))}"
                                                          for k, v in params.items())]))
    answer = svc.session.get(f"{svc.neighbors}{path}?{query}", timeout=10)
    assert_answer(answer)


@PROPERTY
@given(body=st.one_of(HOSTILE_BODY, JSON_VALUES.map(lambda v: json.dumps(v).encode()),
                      st.dictionaries(st.sampled_from(["max_latency", "min_bandwidth"]),
                                      HOSTILE_JSON_INT | st.floats(min_value=0.001, max_value=1e6),
                                      min_size=1).map(lambda d: json.dumps(d).encode())),
       content_type=st.sampled_from(["application/json", "application/json", "text/plain", None,
                                     "application/merge-patch+json", "multipart/form-data; boundary=x"]))
def test_neighbors_put_slo_never_gets_a_5xx_and_a_refusal_keeps_the_slo(svc, body, content_type):
    url = svc.neighbors + "/slo"
    before = svc.session.get(url, timeout=10).json()
    headers = {"content-type": content_type} if content_type else {}
    answer = svc.session.put(url, headers=headers, data=body, timeout=10)
    assert_answer(answer)
    if answer.status_code >= 400:
        assert svc.session.get(url, timeout=10).json() == before
    else:
        slo = answer.json()
        assert SLO.from_dict(slo) == SLO(slo["max_latency"], slo["min_bandwidth"])  # finite, valid
        assert svc.session.put(url, json=before, timeout=10).status_code == 200  # next example starts equal


# -- regression tests: the cases of the issue ----------------------------------------------------


def _deep(n: int = 10_000) -> bytes:
    return b"[" * n + b"]" * n


def _structured(data_json: bytes, type_: str = catalogue.PING) -> bytes:
    envelope = json.dumps({"specversion": "1.0", "id": "1", "source": "/s", "type": type_,
                           "datacontenttype": "application/json", "data": None}).encode()
    return envelope.replace(b'"data": null', b'"data": ' + data_json)


def test_nesting_10000_deep_is_a_400_on_every_service(svc):
    deep = _deep()
    ping_headers, _ = to_binary(new_event(catalogue.PING, "/p", {"chains": ["c1"]}))
    stream_headers, _ = to_go_binary(encode_stream_event(STREAM_ADDRESS, "skylark:changes",
                                                         "1-0", _change()))
    structured = {"content-type": "application/cloudevents+json"}
    cases = [
        (svc.handlers + "/", ping_headers, deep, "malformed_data"),                   # binary JSON data
        (svc.handlers + "/", {**ping_headers, "content-type": "text/plain"}, deep, "malformed_data"),  # warm-up
        (svc.handlers + "/", stream_headers, deep, "malformed_data"),
        (svc.handlers + "/", structured, _structured(deep), "malformed_event"),
        (svc.handlers + "/", structured, deep, "malformed_event"),
        (svc.signed + "/bundle", {**to_binary(new_event(catalogue.BUNDLE_PROPAGATED, "/s", {}))[0],
                                  "content-type": "text/plain"}, deep, "malformed_data"),
        (svc.broker + BROKER_PATH, structured, _structured(deep), "malformed_event"),
        (svc.dead_letter + "/", structured, _structured(deep), "malformed_event"),
    ]
    before = fingerprint(svc.redis)
    for url, headers, body, error in cases:
        assert_error(svc.session.post(url, headers=headers, data=body, timeout=10), 400, error)
    answer = svc.session.put(svc.neighbors + "/slo", headers={"content-type": "application/json"}, data=deep,
                             timeout=10)
    assert "nested" in assert_error(answer, 400, "invalid_slo")["detail"]
    assert fingerprint(svc.redis) == before
    # the limit itself: 64 levels pass the parser (and are refused for their content), 65 do not
    ok_depth = b'{"chains": ' + b"[" * (MAX_JSON_DEPTH - 1) + b"]" * (MAX_JSON_DEPTH - 1) + b"}"
    too_deep = b'{"chains": ' + b"[" * MAX_JSON_DEPTH + b"]" * MAX_JSON_DEPTH + b"}"
    assert assert_error(svc.session.post(svc.handlers + "/", headers=ping_headers, data=ok_depth, timeout=10),
                        400)["error"] == "invalid_warmup"
    assert_error(svc.session.post(svc.handlers + "/", headers=ping_headers, data=too_deep, timeout=10), 400,
                 "malformed_data")
    # a broker does not parse a binary-mode body at all: it forwards the bytes as they came
    assert svc.session.post(svc.broker + BROKER_PATH, headers=ping_headers, data=deep, timeout=10).status_code == 202


@pytest.mark.parametrize("text", ["١٢", "²", "1_000", " 12", "12 ", "+1", "0x1", str(2**63), str(2**64), "-1", "1.0"])
def test_unicode_digits_and_out_of_range_numbers_are_400s(svc, text):
    # ...as the version, size and ts of a change record (the RedisStreamSource event)
    for field in ("version", "size", "ts"):
        headers, body = to_go_binary(encode_stream_event(STREAM_ADDRESS, "skylark:changes", "1-0",
                                                         _change(**{field: text})))
        detail = assert_error(svc.session.post(svc.handlers + "/", headers=headers, data=body, timeout=10), 400,
                              "bad_change")["detail"]
        assert field in detail
    # ...as query integers of the neighbors service
    for path in (f"/elect?to=node-c&size={quote(text)}", f"/propagation-targets?node=node-a&size={quote(text)}",
                 f"/topology?snapshot={quote(text)}"):
        assert_error(svc.session.get(svc.neighbors + path, timeout=10), 400, "invalid_parameter")
    # ...as a propagated bundle's extension attribute, which must agree with the data
    headers, body = to_binary(propagation_event(
        encode_payload(make_bundle("c1", "detect", {"n": b"1"}, version=1, node="node-b", updated_ms=1),
                       origin="node-b", inline_max_bytes=1 << 20), "node-a"))
    headers["ce-skylarkversion"] = quote(text)
    assert_error(svc.session.post(svc.handlers + "/", headers=headers, data=body, timeout=10), 400,
                 "invalid_bundle_event")
    assert svc.redis.keys("*") == []


def test_huge_query_sizes_are_400s(svc):
    for size in (10**30, 10**19, 2**63, 2**64):
        for path in (f"/elect?to=node-c&size={size}", f"/propagation-targets?node=node-a&size={size}"):
            assert_error(svc.session.get(svc.neighbors + path, timeout=10), 400, "invalid_parameter")
    # the largest int64 is a size like any other
    answer = svc.session.get(f"{svc.neighbors}/elect?to=node-c&size={2**63 - 1}", timeout=10)
    assert answer.status_code == 200 and answer.json()["size_bytes"] == 2**63 - 1


def _propagation(data: dict) -> tuple[dict, bytes]:
    headers, _ = to_binary(propagation_event(
        encode_payload(make_bundle("c1", "detect", {"n": b"1"}, version=1, node="node-b", updated_ms=1),
                       origin="node-b", inline_max_bytes=1 << 20), "node-a"))
    for name in ("ce-skylarkversion", "ce-skylarksize", "ce-skylarkchecksum"):
        headers.pop(name)
    return headers, json.dumps(data).encode()


@pytest.mark.parametrize("version", [2**63, 2**64, 2**63 + 1, 10**30])
def test_versions_above_int64_are_400s_inline_claim_and_tombstone(svc, version):
    claim = {"node": "node-b", "chain": "c1", "function": "detect", "version": version, "checksum": "0" * 40,
             "size": 1}
    tombstone = {"chain": "c1", "function": "detect", "version": version, "node": "node-b", "updated_ms": 1}
    inline_ttl = _inline_document()
    inline_ttl["meta"]["ttl_ms"] = version
    inline_size = _inline_document()
    inline_size["meta"]["updated_ms"] = version
    for data in (_inline_document(version), {"claim": claim}, {"tombstone": tombstone},
                 {"claim": {**claim, "version": 1, "size": version}},
                 {"tombstone": {**tombstone, "version": 1, "updated_ms": version}}, inline_ttl, inline_size):
        headers, body = _propagation(data)
        detail = assert_error(svc.session.post(svc.handlers + "/", headers=headers, data=body, timeout=10), 400,
                              "invalid_bundle_event")["detail"]
        assert "2**63-1" in detail
    assert svc.redis.keys("*") == []


def test_the_largest_int64_version_is_applied(svc):
    headers, body = _propagation(_inline_document(2**63 - 1))
    answer = svc.session.post(svc.handlers + "/", headers=headers, data=body, timeout=10)
    assert answer.status_code == 202 and answer.json()["version"] == 2**63 - 1, answer.text
    assert int(svc.redis.hget("skylark:meta:c1:detect", "version")) == 2**63 - 1


def _raw_request(url: str, head: bytes, body_prefix: bytes = b"", timeout: float = 10.0) -> tuple[int, dict]:
    """Send a request line + headers and part of a body on a raw socket, then read the answer
    without sending the rest: a server that wanted the whole body first would time out here."""
    host, port = url.split("//")[1].split(":")
    with socket.create_connection((host, int(port)), timeout=timeout) as sock:
        sock.sendall(head + body_prefix)
        received = b""
        while b"\r\n\r\n" not in received:
            chunk = sock.recv(65536)
            assert chunk, f"connection closed without an answer: {received!r}"
            received += chunk
        header_text, rest = received.split(b"\r\n\r\n", 1)
        length = int(next(line.split(b":", 1)[1] for line in header_text.split(b"\r\n")
                          if line.lower().startswith(b"content-length:")))
        while len(rest) < length:
            chunk = sock.recv(65536)
            assert chunk
            rest += chunk
    status = int(header_text.split(b" ", 2)[1])
    return status, json.loads(rest[:length])


def test_an_81_mib_body_is_a_413_before_it_is_read(svc):
    size = 81 * 1024 * 1024
    assert size > MAX_EVENT_BYTES
    targets = [(svc.handlers, "POST", "/"), (svc.broker, "POST", BROKER_PATH), (svc.dead_letter, "POST", "/"),
               (svc.neighbors, "PUT", "/slo"), (svc.signed, "POST", "/bundle")]
    for base, method, path in targets:
        head = (f"{method} {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/cloudevents+json\r\n"
                f"Content-Length: {size}\r\n\r\n").encode()
        status, body = _raw_request(base, head.replace(b"cloudevents+json", b"json") if method == "PUT" else head,
                                    b"{" * 65536)
        assert status == 413 and body["error"] == "request_entity_too_large", (base, body)
        assert str(size) in body["detail"]


def test_a_chunked_body_past_the_limit_is_a_413_without_reading_to_its_end(svc):
    for base, method, path, limit in ((svc.neighbors, "PUT", "/slo", NEIGHBORS_MAX_BODY),
                                      (svc.handlers, "POST", "/", default_max_request_bytes(32 * 1024))):
        head = (f"{method} {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                f"Transfer-Encoding: chunked\r\n\r\n").encode()
        chunk = b"%x\r\n%s\r\n" % (64 * 1024, b" " * 64 * 1024)
        body = chunk * (limit // (64 * 1024) + 2)  # past the limit, and never the closing 0-chunk
        status, answer = _raw_request(base, head, body)
        assert status == 413 and answer["error"] == "request_entity_too_large", answer
    # below the limit a chunked body is read as any other
    answer = requests.put(svc.neighbors + "/slo", data=iter([b'{"max_latency": ', b"400}"]),
                          headers={"content-type": "application/json"}, timeout=10)
    assert answer.status_code == 200 and answer.json()["max_latency"] == 400
    assert requests.put(svc.neighbors + "/slo", json={"max_latency": 500}, timeout=10).status_code == 200


def test_a_16_kib_header_gets_a_json_answer(svc):
    big = "x" * 16 * 1024
    headers, body = to_binary(new_event(catalogue.PING, "/p", {"chains": ["c1"]}))
    for url in (svc.handlers + "/", svc.broker + BROKER_PATH, svc.dead_letter + "/"):
        detail = assert_error(svc.session.post(url, headers={**headers, "ce-id": big}, data=body, timeout=10), 400,
                              "invalid_attribute")["detail"]
        assert "longer than" in detail
        # an unrelated 16 KiB header is no CloudEvent attribute: it is ignored
        assert svc.session.post(url, headers={**headers, "x-big": big}, data=body, timeout=10).status_code < 300
    assert svc.session.get(svc.neighbors + "/topology", headers={"x-big": big}, timeout=10).status_code == 200


def test_unsigned_and_forged_propagation_events_are_401_and_403(svc):
    bundle = make_bundle("c1", "detect", {"n": b"evil"}, version=5, node="node-b", updated_ms=1)
    payload = encode_payload(bundle, origin="node-b", inline_max_bytes=1 << 20, sign=True)
    delete = encode_tombstone(Tombstone("c1", "detect", 9, "node-b", 1), origin="node-b")
    claim = encode_payload(bundle, origin="node-b", inline_max_bytes=0)
    for carried in (payload, delete, claim):
        headers, body = to_binary(propagation_event(carried, "node-a"))
        assert_error(svc.session.post(svc.signed + "/", headers=headers, data=body, timeout=10), 401,
                     "missing_signature")
        headers, body = to_binary(propagation_event(carried, "node-a", b"another-key-of-16-bytes-or-more"))
        assert_error(svc.session.post(svc.signed + "/", headers=headers, data=body, timeout=10), 403,
                     "invalid_signature")
        for forged in ("\xff" * 64, "Z" * 64, headers["ce-skylarksignature"].upper(), "0" * 63, ""):
            answer = svc.session.post(svc.signed + "/bundle", headers={**headers, "ce-skylarksignature": forged},
                                      data=body, timeout=10)
            assert_error(answer, 401 if forged == "" else 403)
    assert svc.signed_redis.keys("*") == []
    # the same events, signed with the node's key, are taken
    signed = to_binary(propagation_event(payload, "node-a", KEY))
    answer = svc.session.post(svc.signed + "/", headers=signed[0], data=signed[1], timeout=10)
    assert answer.status_code == 202 and answer.json()["outcome"] == "applied", answer.text


def test_json_numbers_outside_json_are_400s(svc):
    ping_headers, _ = to_binary(new_event(catalogue.PING, "/p", {"chains": ["c1"]}))
    for text in (b"NaN", b"Infinity", b"-Infinity", b"1e999", b"-1e400", b"1" * 5000):
        body = b'{"chains": ["c1"], "reason": ' + text + b"}"
        assert_error(svc.session.post(svc.handlers + "/", headers=ping_headers, data=body, timeout=10), 400,
                     "malformed_data")
        assert_error(svc.session.post(svc.broker + BROKER_PATH, data=_structured(text), timeout=10,
                                      headers={"content-type": "application/cloudevents+json"}), 400,
                     "malformed_event")
        assert_error(svc.session.put(svc.neighbors + "/slo", data=b'{"max_latency": ' + text + b"}",
                                     headers={"content-type": "application/json"}, timeout=10), 400, "invalid_slo")
    # an integer past float range in an SLO (math.isfinite raised OverflowError on it)
    assert_error(svc.session.put(svc.neighbors + "/slo", data=b'{"max_latency": 1' + b"0" * 400 + b"}",
                                 headers={"content-type": "application/json"}, timeout=10), 400, "invalid_slo")


def test_cloudevents_spec_invalid_cases_are_400s(svc):
    good = {"specversion": "1.0", "id": "1", "source": "/s", "type": catalogue.PING,
            "datacontenttype": "application/json", "data": {"chains": ["c1"]}}
    structured = {"content-type": "application/cloudevents+json"}
    cases = {
        "no specversion": ({k: v for k, v in good.items() if k != "specversion"}, "missing_attribute"),
        "no id": ({k: v for k, v in good.items() if k != "id"}, "missing_attribute"),
        "no source": ({**good, "source": ""}, "missing_attribute"),
        "null type": ({**good, "type": None}, "missing_attribute"),
        "specversion 0.3": ({**good, "specversion": "0.3"}, "invalid_attribute"),
        "specversion number": ({**good, "specversion": 1.0}, "invalid_attribute"),
        "id number": ({**good, "id": 7}, "invalid_attribute"),
        "source list": ({**good, "source": ["/s"]}, "invalid_attribute"),
        "type object": ({**good, "type": {"a": 1}}, "invalid_attribute"),
        "time number": ({**good, "time": 5}, "invalid_attribute"),
        "time not rfc 3339": ({**good, "time": "yesterday"}, "invalid_attribute"),
        "time unicode digits": ({**good, "time": "٢٠٢٠-01-01T00:00:00Z"}, "invalid_attribute"),
        "extension uppercase": ({**good, "SkylarkChain": "c1"}, "invalid_attribute"),
        "extension underscore": ({**good, "skylark_chain": "c1"}, "invalid_attribute"),
        "extension 21 chars": ({**good, "a" * 21: "x"}, "invalid_attribute"),
        "extension non-ascii": ({**good, "chaîne": "x"}, "invalid_attribute"),
        "extension object": ({**good, "skylarkchain": {"a": 1}}, "invalid_attribute"),
        "extension float": ({**good, "skylarksize": 1.5}, "invalid_attribute"),
        "extension past int32": ({**good, "skylarksize": 2**31}, "invalid_attribute"),
        "control character": ({**good, "id": "a\r\nX-Evil: 1"}, "invalid_attribute"),
        "datacontenttype not a media type": ({**good, "datacontenttype": " application/json"}, "invalid_attribute"),
        "datacontenttype non-latin-1": ({**good, "datacontenttype": "€/json"}, "invalid_attribute"),
        "too many attributes": ({**good, **{f"x{i}": "1" for i in range(80)}}, "invalid_attribute"),
        "data and data_base64": ({**good, "data_base64": "YQ=="}, "malformed_event"),
        "data_base64 invalid": ({k: v for k, v in good.items() if k != "data"} | {"data_base64": "!!"},
                                "malformed_event"),
        "not an object": (["specversion", "1.0"], "malformed_event"),
    }
    for name, (document, error) in cases.items():
        body = json.dumps(document).encode()
        for url in (svc.handlers + "/", svc.broker + BROKER_PATH, svc.dead_letter + "/"):
            answer = svc.session.post(url, headers=structured, data=body, timeout=10)
            assert_error(answer, 400, error), name
    # binary mode: the same rules on ce-* headers
    headers, body = to_binary(new_event(catalogue.PING, "/p", {"chains": ["c1"]}))
    binary_cases = [({"ce-specversion": "0.3"}, "invalid_attribute"), ({"ce-id": ""}, "missing_attribute"),
                    ({"ce-sky.lark": "1"}, "invalid_attribute"),
                    ({"ce-skylark-chain": "1"}, "invalid_attribute"),
                    ({"ce-skylarkchain": "a%0Ab"}, "invalid_attribute"),
                    ({"ce-time": "yesterday"}, "invalid_attribute"), ({"ce-" + "a" * 21: "1"}, "invalid_attribute"),
                    ({"content-type": "no-slash"}, "invalid_attribute")]
    for change, error in binary_cases:
        for url in (svc.handlers + "/", svc.broker + BROKER_PATH, svc.dead_letter + "/"):
            assert_error(svc.session.post(url, headers={**headers, **change}, data=body, timeout=10), 400, error)
    # integers and booleans are valid extension values in structured mode: they become strings
    answer = svc.session.post(svc.dead_letter + "/", headers=structured, timeout=10,
                              data=json.dumps({**good, "knativebrokerttl": 3, "skylarkflag": True}).encode())
    assert answer.status_code == 202


def test_what_the_broker_accepts_its_subscribers_accept_too(svc):
    """The broker adds knativearrivaltime (and three knativeerror* extensions on a dead letter):
    its ingress takes 4 attributes fewer than parse's limit, so the sink never refuses a forward."""
    def event_with(count: int):  # count attributes, time included
        extensions = {f"x{i}": "v" for i in range(count - 5)}  # + specversion id source type time
        return to_binary(new_event("com.example.many", "/p", None, **extensions))

    failed = svc.dispatcher.stats.failed
    headers, body = event_with(MAX_ATTRIBUTES - 4)
    assert svc.session.post(svc.broker + BROKER_PATH, headers=headers, data=body, timeout=10).status_code == 202
    assert svc.dispatcher.drain(10) and svc.dispatcher.stats.failed == failed
    headers, body = event_with(MAX_ATTRIBUTES - 3)
    assert f"at most {MAX_ATTRIBUTES - 4}" in assert_error(svc.session.post(svc.broker + BROKER_PATH, headers=headers, data=body,
                                                         timeout=10), 400, "invalid_attribute")["detail"]
    assert svc.session.post(svc.dead_letter + "/", headers=headers, data=body, timeout=10).status_code == 202
    headers, body = event_with(MAX_ATTRIBUTES + 1)
    assert_error(svc.session.post(svc.dead_letter + "/", headers=headers, data=body, timeout=10), 400,
                 "invalid_attribute")


def test_odd_bodies_headers_and_content_types(svc):
    ping_headers, ping_body = to_binary(new_event(catalogue.PING, "/p", {"chains": ["c1"]}))
    structured = {"content-type": "application/cloudevents+json"}
    before = fingerprint(svc.redis)
    for url in (svc.handlers + "/", svc.broker + BROKER_PATH, svc.dead_letter + "/"):
        assert_error(svc.session.post(url, data=b"", timeout=10), 400, "not_a_cloudevent")
        assert_error(svc.session.post(url, headers=structured, data=b"", timeout=10), 400, "malformed_event")
        assert_error(svc.session.post(url, headers=structured, data=b"\xff\xfe{}", timeout=10), 400, "malformed_event")
        assert_error(svc.session.post(url, headers={"content-type": "text/plain"}, data=ping_body, timeout=10), 400,
                     "not_a_cloudevent")
        # invalid UTF-8 in a percent-encoded attribute decodes to U+FFFD: accepted or refused, never a 500
        assert_answer(svc.session.post(url, headers={**ping_headers, "ce-source": "/%ff%fe"}, data=ping_body,
                                       timeout=10))
    assert_error(svc.session.post(svc.handlers + "/", headers=ping_headers, data=b'["c1", \xff]', timeout=10), 400,
                 "malformed_data")
    assert_error(svc.session.post(svc.handlers + "/", headers={**ping_headers, "content-type": "text/plain"},
                                  data=b"\xff\xfe", timeout=10), 400)
    assert_error(svc.session.put(svc.neighbors + "/slo", data=b'{"max_latency": 400}',
                                 headers={"content-type": "text/plain"}, timeout=10), 415, "unsupported_media_type")
    assert_error(svc.session.put(svc.neighbors + "/slo", data=b"", headers={"content-type": "application/json"},
                                 timeout=10), 400, "invalid_slo")
    # duplicate headers reach the app joined by commas (werkzeug, gunicorn): a type no one handles
    host, port = svc.handlers.split("//")[1].split(":")
    head = b"".join(f"{k}: {v}\r\n".encode("latin-1") for k, v in ping_headers.items())
    status, body = _raw_request(svc.handlers, b"POST / HTTP/1.1\r\nHost: x\r\n" + head
                                + b"Ce-Type: dev.knative.sources.ping\r\n"
                                + f"Content-Length: {len(ping_body)}\r\n\r\n".encode(), ping_body)
    assert status == 400 and body["error"] == "unknown_event_type", body
    assert fingerprint(svc.redis) == before


def test_metric_labels_from_client_event_types_are_bounded(svc):
    for i in range(130):
        headers, body = to_binary(new_event(f"com.example.t{i}", "/p", {"i": i}))
        assert svc.session.post(svc.dead_letter + "/", headers=headers, data=body, timeout=10).status_code == 202
        assert svc.session.post(svc.broker + BROKER_PATH, headers=headers, data=body, timeout=10).status_code == 202
    svc.dispatcher.drain(10)
    for url, metric in ((svc.dead_letter, "skylark_dead_letters_total{"),
                        (svc.broker, "skylark_broker_ingress_events_total{")):
        lines = [line for line in svc.session.get(url + "/metrics", timeout=10).text.splitlines()
                 if line.startswith(metric)]
        # 100 types as they are (these, or earlier tests' of the same module), the rest as "other"
        assert len(lines) == 101 and any('type="other"' in line for line in lines), len(lines)


# -- gunicorn: what the server refuses before any app sees it ------------------------------------


@pytest.fixture(scope="module")
def gunicorn_dead_letter() -> Iterator[str]:
    port = free_port()
    env = {**os.environ, "PORT": str(port), "SKYLARK_BIND_HOST": "127.0.0.1", "SKYLARK_WORKERS": "1",
           "SKYLARK_THREADS": "4", "SKYLARK_GRACEFUL_TIMEOUT": "2"}
    process = subprocess.Popen(
        [sys.executable, "-m", "gunicorn", "-c", str(REPO / "skylark" / "serving" / "gunicorn_conf.py"),
         "skylark.runtime.deadletter:create_app()"],
        cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 20
        while True:
            assert process.poll() is None, process.stderr.read().decode()[-2000:]
            try:
                if requests.get(url + "/healthz", timeout=1).status_code == 200:
                    break
            except requests.ConnectionError:
                pass
            assert time.monotonic() < deadline, "gunicorn did not start"
            time.sleep(0.1)
        yield url
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)
        log = process.stderr.read().decode()
        process.stderr.close()
        assert "Traceback" not in log, log[-3000:]


@pytest.mark.parametrize(("request_bytes", "status", "error"), [
    (b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 16 * 1024 + b"\r\n\r\n", 431,
     "request_header_fields_too_large"),
    (b"GET /healthz HTTP/1.1\r\nHost: x\r\n" + b"".join(b"X-H%d: 1\r\n" % i for i in range(150)) + b"\r\n", 431,
     "request_header_fields_too_large"),
    (b"GET /" + b"a" * 5000 + b" HTTP/1.1\r\nHost: x\r\n\r\n", 414, "uri_too_long"),
    (b"GARBAGE\r\n\r\n", 400, "bad_request"),
    (b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n", 400, "bad_request"),
    (b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello", 400, "bad_request"),
    (b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: \xd9\xa1\xd9\xa2\r\n\r\n", 400, "bad_request"),
    (b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\n\r\n", 400, "bad_request"),
    (b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nce-id: 1\r\n\r\nzz\r\n", 400, "malformed_body"),
    (b"POST / HTTP/1.1\r\nHost: x\r\nContent-Type: application/cloudevents+json\r\nContent-Length: 84934656\r\n\r\n"
     + b"{" * 4096, 413, "request_entity_too_large"),
])
def test_gunicorn_refusals_are_json_too(gunicorn_dead_letter, request_bytes, status, error):
    got_status, body = _raw_request(gunicorn_dead_letter, request_bytes)
    assert (got_status, body["error"]) == (status, error), body
    assert body["detail"]


def test_gunicorn_serves_a_real_event_after_all_that(gunicorn_dead_letter):
    headers, body = to_structured(new_event(catalogue.PING, "/p", {"chains": ["c1"]}))
    assert requests.post(gunicorn_dead_letter + "/", headers=headers, data=body, timeout=10).status_code == 202


def test_the_in_process_server_answers_its_own_errors_in_json():
    """ThreadedServer (local broker, test receivers): a header line above 64 KiB gets the JSON shape."""
    import json as _json
    import socket

    from flask import Flask

    from skylark.serving.threaded_server import ThreadedServer

    server = ThreadedServer(Flask("probe")).start()
    try:
        with socket.create_connection((server.host, server.port), timeout=5) as conn:
            conn.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 70_000 + b"\r\n\r\n")
            reply = b""
            while chunk := conn.recv(65536):
                reply += chunk
    finally:
        server.stop()
    head, _, body = reply.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 431") and b"Content-Type: application/json" in head
    error = _json.loads(body)
    assert error["error"] == "request_header_fields_too_large" and error["detail"]
