"""The RedisStreamSource event: decoding what the real adapter sends, and rebuilding it exactly."""

from __future__ import annotations

import datetime as dt
import json

import pytest

from eventing import catalogue
from eventing.http import InvalidEvent, new_event, parse, to_structured
from eventing.redisstream import (
    InvalidStreamEvent,
    decode_stream_event,
    encode_stream_event,
    go_json,
    split_source,
    to_go_binary,
)
from skylark.state.changes import ChangeRecord
from eventing_fixtures import (
    REAL_BINARY_HEADERS,
    REAL_BODY,
    REAL_ENTRY_ID,
    REAL_FIELDS,
    REAL_SOURCE,
    real_structured_body,
)


def test_decodes_the_real_adapters_binary_event():
    change = decode_stream_event(parse(REAL_BINARY_HEADERS, REAL_BODY))
    assert change.entry_id == REAL_ENTRY_ID
    assert change.address == "redis://10.0.0.5:6379"
    assert change.stream == "skylark:changes"
    assert change.source == REAL_SOURCE
    assert change.fields == REAL_FIELDS  # \u0026 \u003c \u003e decoded back to & < >
    assert change.change == ChangeRecord.from_stream_fields(REAL_FIELDS)
    assert change.change.version == 3 and change.change.fields == ("img", "meta")


def test_decodes_the_structured_form_the_same_way():
    binary = decode_stream_event(parse(REAL_BINARY_HEADERS, REAL_BODY))
    structured = decode_stream_event(parse({"Content-Type": "application/cloudevents+json"},
                                           real_structured_body()))
    assert structured == binary


def test_encode_rebuilds_the_adapters_event_byte_for_byte():
    event = encode_stream_event("redis://10.0.0.5:6379", "skylark:changes", REAL_ENTRY_ID, REAL_FIELDS,
                                time=dt.datetime(2020, 8, 18, 18, 36, 54, 719802, tzinfo=dt.timezone.utc))
    headers, body = to_go_binary(event)
    assert body == REAL_BODY
    assert headers["ce-type"] == catalogue.REDIS_STREAM
    assert headers["ce-source"] == REAL_SOURCE
    assert headers["ce-id"] == REAL_ENTRY_ID
    assert headers["ce-specversion"] == "1.0"
    assert headers["content-type"] == "application/json"
    assert headers["ce-time"].startswith("2020-08-18T18:36:54.719802")
    assert "ce-subject" not in headers
    # ...and what we build decodes like the real one.
    assert decode_stream_event(parse(headers, body)) == decode_stream_event(parse(REAL_BINARY_HEADERS, REAL_BODY))


def test_go_json_matches_gos_encoding():
    assert go_json(["a<b>&c", "é", "\u2028"]) == '["a\\u003cb\\u003e\\u0026c","é","\\u2028"]'.encode()


@pytest.mark.parametrize("source, address, stream", [
    ("redis://10.0.0.5:6379/skylark:changes", "redis://10.0.0.5:6379", "skylark:changes"),
    ("rediss://user:pw@h.example:6380/a:b:c", "rediss://user:pw@h.example:6380", "a:b:c"),
    ("10.0.0.5:6379/mystream", "10.0.0.5:6379", "mystream"),
])
def test_split_source(source, address, stream):
    assert split_source(source) == (address, stream)


def test_split_source_with_a_known_stream_handles_a_db_path():
    assert split_source("redis://h:6379/0/skylark:changes", "skylark:changes") == ("redis://h:6379/0", "skylark:changes")
    with pytest.raises(InvalidStreamEvent) as err:
        split_source("redis://h:6379/other", "skylark:changes")
    assert err.value.code == "bad_stream_source"


def _event(data, type_=catalogue.REDIS_STREAM, source=REAL_SOURCE):
    return new_event(type_, source, data, id_=REAL_ENTRY_ID)


def _flat(fields):
    return [x for pair in fields.items() for x in pair]


@pytest.mark.parametrize("data, code, words", [
    (_flat(REAL_FIELDS)[:-1], "bad_stream_data", "odd length"),
    (_flat(REAL_FIELDS)[:-1] + [17], "bad_stream_data", "not a string"),
    ({"chain": "c1"}, "bad_stream_data", "flat JSON array"),
    ([], "bad_stream_data", "empty"),
    (None, "bad_stream_data", "no data"),
    (["chain", "c1", "chain", "c2"], "bad_stream_data", "twice"),
    (["chain", "c1", "function", "f"], "bad_change", "lacks field"),
    (_flat({**REAL_FIELDS, "version": "three"}), "bad_change", "version"),
    (_flat({**REAL_FIELDS, "chain": "bad chain!"}), "bad_change", "chain"),
])
def test_decoder_errors_are_clear(data, code, words):
    with pytest.raises(InvalidStreamEvent) as err:
        decode_stream_event(_event(data))
    assert err.value.code == code
    assert words in err.value.detail
    assert isinstance(err.value, InvalidEvent)  # handlers map every InvalidEvent to 400


def test_wrong_type_and_bad_source_are_refused():
    with pytest.raises(InvalidStreamEvent) as err:
        decode_stream_event(_event(_flat(REAL_FIELDS), type_=catalogue.PING))
    assert err.value.code == "wrong_event_type"
    with pytest.raises(InvalidStreamEvent) as err:
        decode_stream_event(_event(_flat(REAL_FIELDS), source="nostream"))
    assert err.value.code == "bad_stream_source"


def test_non_json_body_from_the_wire_is_refused():
    headers = dict(REAL_BINARY_HEADERS, **{"Content-Type": "text/plain"})
    with pytest.raises(InvalidStreamEvent) as err:
        decode_stream_event(parse(headers, REAL_BODY))
    assert err.value.code == "bad_stream_data"


def test_odd_array_on_the_wire_is_refused():
    body = json.dumps(json.loads(REAL_BODY)[:-1]).encode()
    with pytest.raises(InvalidStreamEvent, match="odd length"):
        decode_stream_event(parse(REAL_BINARY_HEADERS, body))


def test_structured_round_trip_of_an_encoded_event():
    event = encode_stream_event("redis://127.0.0.1:7000", "skylark:changes", "1-0", REAL_FIELDS)
    headers, body = to_structured(event)
    assert decode_stream_event(parse(headers, body)).fields == REAL_FIELDS
