"""The RedisStreamSource event (pure): decode it into a typed change, and build it exactly as sent.

What knative-extensions/eventing-redis's source adapter emits for one stream entry
(``source/pkg/adapter/adapter.go``, ``toEvent``):

- ``type`` ``dev.knative.sources.redisstream``; ``source`` ``fmt.Sprintf("%s/%s", address, stream)``,
  e.g. ``redis://10.0.0.5:6379/skylark:changes``; ``id`` the stream entry id (``1519073278252-0``);
- ``datacontenttype`` ``application/json`` and data ``json.Marshal`` of the entry's field/value pairs
  as ONE flat ``[]string`` (``["chain","c1","function","preprocess",...]``) — Go escapes ``<``, ``>``,
  ``&`` (and U+2028/U+2029) as ``\\u003c`` etc. and writes other non-ASCII as UTF-8;
- no ``subject``; ``time`` is set to the sending time by Knative's adapter client
  (``ceclient.WithTimeNow()`` in ``knative.dev/eventing/pkg/adapter/v2``), sent in binary mode.

:func:`encode_stream_event` and :func:`to_go_binary` rebuild that (the local stream source and the
test fixtures use them); :func:`decode_stream_event` turns it into a :class:`StreamChange` or
raises :class:`InvalidStreamEvent` (a 400 for the handlers).
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from cloudevents.core.base import BaseCloudEvent
from cloudevents.core.v1.event import CloudEvent

from eventing import catalogue
from eventing.http import InvalidEvent, to_binary
from skylark.serving import limits
from skylark.state.changes import ChangeRecord, InvalidChange

CONTENT_TYPE = "application/json"


class InvalidStreamEvent(InvalidEvent):
    """Not a usable RedisStreamSource event: ``code`` is ``wrong_event_type``, ``bad_stream_source``,
    ``bad_stream_data`` (not a flat, even-length array of strings) or ``bad_change`` (the pairs are
    not a Skylark change record)."""


@dataclass(frozen=True)
class StreamChange:
    """One decoded change-stream entry, as delivered by a RedisStreamSource."""

    entry_id: str
    stream: str
    address: str
    change: ChangeRecord
    fields: dict[str, str]  # the raw field/value pairs, in stream order

    @property
    def source(self) -> str:
        return f"{self.address}/{self.stream}"


def stream_source(address: str, stream: str) -> str:
    """The ``source`` attribute the adapter sets: ``<address>/<stream>``."""
    return f"{address}/{stream}"


def split_source(source: str, stream: str | None = None) -> tuple[str, str]:
    """Split ``<address>/<stream>`` into its address and stream.

    The address may carry a scheme (``redis://host:port``) and the stream may contain ``:``; when
    the caller knows the stream name (its configured change stream), the split is made at that
    suffix, which is also right for addresses with a path (``redis://h:6379/0``). Otherwise the
    address is ``scheme://authority`` (or ``host:port``) and everything after the next ``/`` is
    the stream.
    """
    if stream:
        suffix = "/" + stream
        if source.endswith(suffix) and len(source) > len(suffix):
            return source[: -len(suffix)], stream
        raise InvalidStreamEvent("bad_stream_source",
                                 f"source {source!r} is not <address>/{stream}")
    scheme_end = source.find("://")
    start = scheme_end + 3 if scheme_end >= 0 else 0
    slash = source.find("/", start)
    if slash <= start or slash == len(source) - 1:
        raise InvalidStreamEvent("bad_stream_source",
                                 f"source {source!r} is not <address>/<stream>")
    return source[:slash], source[slash + 1:]


def pairs_from_array(data: Any) -> dict[str, str]:
    """The flat ``[field, value, field, value, ...]`` array as an ordered dict (strict)."""
    if isinstance(data, (bytes, bytearray, str)):
        # Delivered with a non-JSON content type, or parsed by a caller that kept the raw body.
        try:
            data = limits.loads(data)  # bounded depth: never a RecursionError
        except ValueError as exc:
            raise InvalidStreamEvent("bad_stream_data", f"event data is not acceptable JSON: {exc}") from None
    if not isinstance(data, list):
        kind = "no data" if data is None else f"a JSON {type(data).__name__}"
        raise InvalidStreamEvent("bad_stream_data",
                                 f"expected a flat JSON array of strings [field, value, ...], got {kind}")
    if not data:
        raise InvalidStreamEvent("bad_stream_data", "the field/value array is empty")
    if len(data) % 2:
        raise InvalidStreamEvent("bad_stream_data",
                                 f"the field/value array has an odd length ({len(data)})")
    bad = [i for i, item in enumerate(data) if not isinstance(item, str)]
    if bad:
        raise InvalidStreamEvent("bad_stream_data",
                                 f"array item {bad[0]} is a {type(data[bad[0]]).__name__}, not a string")
    pairs: dict[str, str] = {}
    for i in range(0, len(data), 2):
        name = data[i]
        if name in pairs:
            raise InvalidStreamEvent("bad_stream_data", f"field {name!r} appears twice")
        pairs[name] = data[i + 1]
    return pairs


def decode_stream_event(event: BaseCloudEvent, *, stream: str | None = None) -> StreamChange:
    """A RedisStreamSource CloudEvent → :class:`StreamChange`; :class:`InvalidStreamEvent` if not one.

    ``stream``: the expected stream name, when known (makes the source split exact, and rejects
    events from another stream).
    """
    if event.get_type() != catalogue.REDIS_STREAM:
        raise InvalidStreamEvent("wrong_event_type",
                                 f"expected type {catalogue.REDIS_STREAM}, got {event.get_type()!r}")
    content_type = event.get_datacontenttype()
    if content_type is not None and not content_type.split(";")[0].strip().lower().endswith("json"):
        raise InvalidStreamEvent("bad_stream_data",
                                 f"datacontenttype {content_type!r} is not JSON")
    address, stream_name = split_source(event.get_source(), stream)
    fields = pairs_from_array(event.get_data())
    try:
        change = ChangeRecord.from_stream_fields(fields)
    except InvalidChange as exc:
        raise InvalidStreamEvent("bad_change", f"entry {event.get_id()}: {exc}") from None
    return StreamChange(entry_id=event.get_id(), stream=stream_name, address=address,
                        change=change, fields=fields)


def flat_array(fields: Mapping[str, str] | Iterable[tuple[str, str]]) -> list[str]:
    items = fields.items() if isinstance(fields, Mapping) else fields
    out: list[str] = []
    for name, value in items:
        out += [text_of(name), text_of(value)]
    return out


def text_of(value: str | bytes) -> str:
    # Redis hands back bytes; Go's redis.String + json.Marshal turn invalid UTF-8 into U+FFFD.
    return value.decode("utf-8", errors="replace") if isinstance(value, (bytes, bytearray)) else str(value)


def encode_stream_event(address: str, stream: str, entry_id: str,
                        fields: Mapping[str, str] | Iterable[tuple[str, str]], *,
                        time: dt.datetime | None = None,
                        extensions: Mapping[str, str] | None = None) -> CloudEvent:
    """The event the real adapter emits for one entry (``extensions``: the source's ceOverrides)."""
    attributes: dict[str, Any] = {
        "type": catalogue.REDIS_STREAM,
        "source": stream_source(address, stream),
        "id": entry_id,
        "datacontenttype": CONTENT_TYPE,
        "time": time or dt.datetime.now(dt.timezone.utc),
    }
    for name, value in (extensions or {}).items():
        attributes[name] = str(value)
    return CloudEvent(attributes, flat_array(fields))


_GO_ESCAPES = {"<": "\\u003c", ">": "\\u003e", "&": "\\u0026", "\u2028": "\\u2028", "\u2029": "\\u2029"}


def go_json(value: Any) -> bytes:
    """JSON as Go's ``encoding/json`` writes it: compact, HTML-escaped, other non-ASCII as UTF-8."""
    text = json.dumps(value, ensure_ascii=False, separators=(",", ":"))
    if any(ch in text for ch in _GO_ESCAPES):
        text = "".join(_GO_ESCAPES.get(ch, ch) for ch in text)
    return text.encode("utf-8")


def to_go_binary(event: BaseCloudEvent) -> tuple[dict[str, str], bytes]:
    """Binary-mode headers and body, with the data encoded byte-for-byte like the Go adapter."""
    headers, _ = to_binary(CloudEvent(event.get_attributes(), None))
    headers["content-type"] = event.get_datacontenttype() or CONTENT_TYPE
    return headers, go_json(event.get_data())
