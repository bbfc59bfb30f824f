"""The bundle-propagation event ``io.skylark.bundle.propagated``: build it and read it back (pure).

Attributes: ``source=/skylark/nodes/<origin>/handlers``, ``id=<chain>:<function>:<version>:
<checksum[:12]>:<target>`` (the same for every retry of the same push, so receivers dedupe it),
extensions ``skylarkchain``, ``skylarkfunction``, ``skylarkversion``, ``skylarknode`` (origin),
``skylarkchecksum``, ``skylarksize``, ``skylarktarget`` and, with a signing key,
``skylarksignature``.

**Binary shape** (what this release sends): CloudEvents binary mode, the metadata in extensions
(``skylarkmode``: ``inline`` | ``delta`` | ``claim`` | ``tombstone``; ``skylarkupdated``,
``skylarkfields`` (field count), ``skylarkttl`` (time left, when the state expires),
``skylarkbase`` (a delta's base version), ``skylarkwriter`` (the node that wrote the state, when
not the origin)), and the fields in a compact frame (``datacontenttype`` :data:`BINARY`), one
entry per field, no base64::

    u8 name length, name, u8 encoding, u64 value length, u64 payload length, payload

Encoding :data:`RAW` (payload = value), :data:`ZSTD` (a zstd frame of the value, sent where the
link to the target is slow enough that the CPU costs less than the bytes saved), or
:data:`AT_ORIGIN` (no payload: the receiver pulls the field from the origin's Redis). An inline
event carries every field, a delta the fields the write changed (the bundle it makes is the one
the metadata describes, from ``skylarkbase``), a claim none (the whole bundle is pulled) or, with
``skylarkbase``, the changed fields' names only; a tombstone has no body. Its signature covers
every ``skylark*`` attribute, ``type``, ``source``, ``id``, ``datacontenttype`` and the body as
sent (``signing.sign_event``).

**JSON shape** (the previous release's; still read, and sent with
``SKYLARK_PROPAGATION_FORMAT=json`` during a rolling upgrade), data ``application/json``:

* inline: ``{"meta": {chain, function, version, node, updated_ms, size, checksum, fields,
  ttl_ms?}, "fields": {"<name>": "<base64>"}}`` — ``ttl_ms``, when the state expires on the
  origin, is the time it had left there; the copy expires after as long.
* claim check: ``{"claim": {node, chain, function, version, checksum, size}}`` — the receiver
  pulls the bundle from the origin node's Redis in one round trip.
* tombstone: ``{"tombstone": {chain, function, version, node, updated_ms}}`` — the state was
  deleted at ``version`` on ``node``; the receiver drops its copy (newer wins, as for bundles).
  No ``skylarkchecksum``; ``skylarksize`` is 0.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import zstandard

from cloudevents.core.base import BaseCloudEvent
from cloudevents.core.v1.event import CloudEvent

from eventing import catalogue
from eventing.http import InvalidEvent, new_event
from handlers import signing
from skylark.serving import limits
from skylark.state.bundle import Bundle, BundleMeta, Delta, Tombstone
from skylark.state.names import validate_name
from skylark.state.numbers import INT64_MAX, parse_int

INLINE = "inline"
DELTA = "delta"
CLAIM = "claim"
TOMBSTONE = "tombstone"
MODES = (INLINE, DELTA, CLAIM, TOMBSTONE)
SERVICE = "handlers"
_CHECKSUM = re.compile(r"[0-9a-f]{40}")

BINARY = "application/vnd.skylark.bundle"
EXT_MODE = "skylarkmode"
EXT_UPDATED = "skylarkupdated"
EXT_FIELDS = "skylarkfields"
EXT_TTL = "skylarkttl"
EXT_BASE = "skylarkbase"
EXT_WRITER = "skylarkwriter"

# A field's encoding in the frame.
RAW, ZSTD, AT_ORIGIN = 0, 1, 2
_ENTRY = struct.Struct(">BQQ")  # after the name: encoding, value length, payload length


class InvalidBundleEvent(InvalidEvent):
    """A propagation event whose data or attributes are not a well-formed bundle or claim."""


@dataclass(frozen=True)
class Claim:
    """A reference to a bundle in ``node``'s Redis (sent instead of bundles above the inline limit).

    With ``base_version``, ``fields`` are the fields the write changed since that version: a
    receiver holding the base pulls only those.
    """

    node: str
    chain: str
    function: str
    version: int
    checksum: str
    size: int
    base_version: int | None = None
    fields: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {"node": self.node, "chain": self.chain, "function": self.function,
                "version": self.version, "checksum": self.checksum, "size": self.size}

    def signed_parts(self) -> list[str]:
        return [CLAIM, self.node, self.chain, self.function, str(self.version), self.checksum,
                str(self.size)]


def _inline_parts(bundle: Bundle) -> list[str]:
    m = bundle.meta
    return [INLINE, m.chain, m.function, str(m.version), m.node, str(m.updated_ms), str(m.size),
            m.checksum, str(m.field_count), str(m.ttl_ms or ""), *signing.field_hashes(bundle.fields)]


def _tombstone_parts(t: Tombstone) -> list[str]:
    return [TOMBSTONE, t.node, t.chain, t.function, str(t.version), str(t.updated_ms)]


@dataclass(frozen=True)
class Payload:
    """The encoded data of one push, shared by every target it is sent to as it is.

    ``meta`` names what is pushed (the whole bundle, also for a delta; for a tombstone: its
    version, size 0 and no checksum). Binary shape: ``attributes`` holds the metadata
    extensions; JSON shape: ``attributes`` is None and ``signed_parts`` what a signature covers.
    """

    meta: BundleMeta
    origin: str
    mode: str          # INLINE, DELTA, CLAIM or TOMBSTONE
    data: bytes        # the body
    signed_parts: tuple[str, ...] = ()
    attributes: Mapping[str, str] | None = None
    value_bytes: int = 0  # field bytes the body carries, before compression

    @property
    def binary(self) -> bool:
        return self.attributes is not None


def encode_payload(bundle: Bundle, *, origin: str, inline_max_bytes: int,
                   sign: bool = False) -> Payload:
    """The JSON shape: inline up to ``inline_max_bytes`` of bundle size, else a claim check on
    ``origin``.

    ``sign`` computes the content hashes a signature needs (skipped when no key is set).
    """
    meta = bundle.meta
    if meta.size <= inline_max_bytes:
        document = {
            "meta": {k: v for k, v in meta.to_dict().items() if k != "mechanism"},
            "fields": {name: base64.b64encode(value).decode("ascii")
                       for name, value in bundle.fields.items()},
        }
        parts = tuple(_inline_parts(bundle)) if sign else ()
        mode = INLINE
    else:
        claim = Claim(origin, meta.chain, meta.function, meta.version, meta.checksum, meta.size)
        document = {"claim": claim.to_dict()}
        parts = tuple(claim.signed_parts())
        mode = CLAIM
    data = json.dumps(document, separators=(",", ":")).encode()
    return Payload(meta, origin, mode, data, parts)


def encode_tombstone(tombstone: Tombstone, *, origin: str) -> Payload:
    """The JSON shape of a delete."""
    data = json.dumps({"tombstone": tombstone.to_dict()}, separators=(",", ":")).encode()
    return Payload(_tombstone_meta(tombstone), origin, TOMBSTONE, data, tuple(_tombstone_parts(tombstone)))


def _tombstone_meta(tombstone: Tombstone) -> BundleMeta:
    return BundleMeta(tombstone.chain, tombstone.function, tombstone.version, tombstone.node,
                      tombstone.updated_ms, 0, "", 0)


# -- the binary shape ---------------------------------------------------------------------------


def frame(entries: Sequence[tuple[str, int, int, bytes]]) -> bytes:
    """The body: ``(name, encoding, value length, payload)`` per field."""
    parts: list[bytes] = []
    for name, encoding, length, payload in entries:
        raw_name = name.encode()
        parts += [bytes((len(raw_name),)), raw_name, _ENTRY.pack(encoding, length, len(payload)), payload]
    return b"".join(parts)


def _meta_attributes(meta: BundleMeta, origin: str, mode: str, base_version: int | None = None) -> dict[str, str]:
    attributes = {EXT_MODE: mode, EXT_UPDATED: str(meta.updated_ms), EXT_FIELDS: str(meta.field_count)}
    if meta.ttl_ms is not None:
        attributes[EXT_TTL] = str(meta.ttl_ms)
    if base_version is not None:
        attributes[EXT_BASE] = str(base_version)
    if meta.node != origin:
        attributes[EXT_WRITER] = meta.node
    return attributes


def encode_binary(meta: BundleMeta, fields: Mapping[str, bytes], *, origin: str, inline_max_bytes: int,
                  base_version: int | None = None, compressed: Mapping[str, bytes] | None = None) -> Payload | None:
    """The binary shape of a bundle carried inline (``fields``: all of it) or, with
    ``base_version``, of a delta (``fields``: those the write changed since that version);
    None when the body would be larger than ``inline_max_bytes`` (send :func:`encode_claim`).
    ``compressed`` holds zstd frames to send instead of some values."""
    compressed = compressed or {}
    body = frame([(name, ZSTD, len(value), compressed[name]) if name in compressed else (name, RAW, len(value), value)
                  for name, value in fields.items()])
    if len(body) > inline_max_bytes:
        return None
    mode = INLINE if base_version is None else DELTA
    return Payload(meta, origin, mode, body, attributes=_meta_attributes(meta, origin, mode, base_version),
                   value_bytes=sum(len(value) for value in fields.values()))


def encode_claim(meta: BundleMeta, *, origin: str, base_version: int | None = None,
                 changed: Mapping[str, int] | None = None) -> Payload:
    """A claim check on ``origin``: of the whole bundle, or, with ``base_version``, of the
    ``changed`` fields (name → value length) since that version."""
    body = frame([(name, AT_ORIGIN, length, b"") for name, length in (changed or {}).items()])
    return Payload(meta, origin, CLAIM, body, attributes=_meta_attributes(meta, origin, CLAIM, base_version))


def encode_binary_tombstone(tombstone: Tombstone, *, origin: str) -> Payload:
    meta = _tombstone_meta(tombstone)
    return Payload(meta, origin, TOMBSTONE, b"", attributes=_meta_attributes(meta, origin, TOMBSTONE))


def event_id(meta: BundleMeta, target: str) -> str:
    # One version is either a write or a delete, so the id stays unique per push and target.
    return f"{meta.chain}:{meta.function}:{meta.version}:{meta.checksum[:12] or TOMBSTONE}:{target}"


def propagation_event(payload: Payload, target: str, signing_key: bytes | None = None) -> CloudEvent:
    meta = payload.meta
    source = catalogue.source_for(payload.origin, SERVICE)
    id_ = event_id(meta, target)
    extensions = {
        catalogue.EXT_CHAIN: meta.chain,
        catalogue.EXT_FUNCTION: meta.function,
        catalogue.EXT_VERSION: str(meta.version),
        catalogue.EXT_NODE: payload.origin,
        catalogue.EXT_CHECKSUM: meta.checksum or None,
        catalogue.EXT_SIZE: str(meta.size),
        catalogue.EXT_TARGET: target,
    }
    if not payload.binary:
        if signing_key is not None:
            extensions[catalogue.EXT_SIGNATURE] = signing.sign(
                signing_key, signing.canonical(source, id_, target, payload.signed_parts))
        return new_event(catalogue.BUNDLE_PROPAGATED, source, payload.data, id_=id_, **extensions)
    attributes = {"type": catalogue.BUNDLE_PROPAGATED, "source": source, "id": id_,
                  **{k: v for k, v in extensions.items() if v is not None}, **payload.attributes}
    if payload.data:
        attributes["datacontenttype"] = BINARY
    if signing_key is not None:
        attributes[catalogue.EXT_SIGNATURE] = signing.sign_event(signing_key, attributes, payload.data)
    return CloudEvent(attributes, payload.data or None)


# -- receiving ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Entry:
    """One field of a binary body, not decompressed yet."""

    name: str
    encoding: int
    length: int
    payload: memoryview = field(repr=False)


@dataclass(frozen=True)
class Incoming:
    """A decoded propagation event: exactly one of ``bundle`` (inline), ``delta``, ``claim`` and
    ``tombstone`` is set.

    A binary event's values are read out of its body by :meth:`materialize`, after the
    signature was checked: until then its ``bundle`` / ``delta`` hold no fields.
    """

    source: str
    id: str
    target: str | None
    signature: str | None
    bundle: Bundle | None = None
    claim: Claim | None = None
    tombstone: Tombstone | None = None
    delta: Delta | None = None
    origin: str | None = None  # the node that sent it (``skylarknode``), where a claim is pulled
    # The binary shape: what its signature covers, and the entries still to decompress.
    attributes: Mapping[str, str] | None = field(default=None, repr=False)
    body: bytes = field(default=b"", repr=False)
    entries: tuple[Entry, ...] = field(default=(), repr=False)

    @property
    def _carried(self) -> Bundle | Delta | Claim | Tombstone:
        return self.bundle or self.delta or self.claim or self.tombstone  # type: ignore[return-value]

    @property
    def chain(self) -> str:
        return self._carried.chain

    @property
    def function(self) -> str:
        return self._carried.function

    @property
    def version(self) -> int:
        return self._carried.version

    @property
    def mode(self) -> str:
        return (INLINE if self.bundle is not None else DELTA if self.delta is not None
                else CLAIM if self.claim is not None else TOMBSTONE)

    def verify(self, key: bytes) -> bool:
        """Whether the event carries a valid signature of ``key``."""
        if self.attributes is not None:
            return signing.verify_event(key, self.attributes, self.body, self.signature)
        return signing.verify(key, self.signed_message(), self.signature)

    def signed_message(self) -> bytes:
        """What the JSON shape's signature covers."""
        if self.bundle is not None:
            parts = _inline_parts(self.bundle)
        elif self.claim is not None:
            parts = self.claim.signed_parts()
        else:
            parts = _tombstone_parts(self.tombstone)  # type: ignore[arg-type]
        return signing.canonical(self.source, self.id, self.target or "", parts)

    def materialize(self) -> "Incoming":
        """The event with its values read out of the body, decompressed (bounded by the lengths
        it announced); :class:`InvalidBundleEvent` for a payload that is not what its entry says.
        The JSON shape, claims and tombstones come as they are."""
        if not self.entries:
            return self
        fields = {e.name: _value(e) for e in self.entries}
        if self.bundle is not None:
            return replace(self, bundle=Bundle(self.bundle.meta, fields), entries=())
        delta = self.delta
        return replace(self, delta=Delta(delta.meta, delta.base_version, fields), entries=())  # type: ignore[union-attr]


def _value(entry: Entry) -> bytes:
    if entry.encoding == RAW:
        return bytes(entry.payload)
    try:
        # A frame's header may declare any size (decompress() trusts it, allocating that much):
        # it must be the announced length, or absent and then the output is read bounded.
        declared = zstandard.frame_content_size(entry.payload)
        if declared not in (-1, entry.length):
            raise _bad(f"field {entry.name}: a zstd frame of {declared} bytes, announced {entry.length}")
        context = zstandard.ZstdDecompressor()
        if declared == entry.length:
            value = context.decompress(entry.payload)
        else:
            with context.stream_reader(entry.payload) as reader:
                value = reader.read(entry.length + 1)
    except zstandard.ZstdError as exc:
        raise _bad(f"field {entry.name}: not a zstd frame of {entry.length} bytes ({exc})"[:200]) from None
    if len(value) != entry.length:
        raise _bad(f"field {entry.name}: decompressed to {len(value)} bytes, announced {entry.length}")
    return value


def _bad(detail: str) -> InvalidBundleEvent:
    return InvalidBundleEvent("invalid_bundle_event", detail)


def _integer(where: str, value: object, minimum: int = 0) -> int:
    # JSON integers only (not "1", 1.0 or true), and within int64: Python reads 2**64 happily,
    # but the version would then be stored and announced where no int64 consumer can hold it.
    if isinstance(value, bool) or not isinstance(value, int) or not minimum <= value <= INT64_MAX:
        shown = repr(value) if not isinstance(value, int) or value.bit_length() < 128 else "a huge integer"
        raise _bad(f"{where} must be an integer in [{minimum}, 2**63-1], not {shown}"[:200])
    return value


def _string(where: str, value: object) -> str:
    if not isinstance(value, str):
        raise _bad(f"{where} must be a string")
    return value


def _name(kind: str, value: object) -> str:
    try:
        return validate_name(kind, value)
    except ValueError as exc:
        raise _bad(str(exc)) from None


def _checksum(where: str, value: object) -> str:
    text = _string(where, value)
    if _CHECKSUM.fullmatch(text) is None:
        raise _bad(f"{where} must be 40 lowercase hex characters")
    return text


def _object(where: str, value: object, keys: set[str]) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise _bad(f"{where} must be a JSON object")
    missing = keys - set(value)
    if missing:
        raise _bad(f"{where} lacks {', '.join(sorted(missing))}")
    return value


def _decode_inline(document: Mapping[str, Any]) -> Bundle:
    raw_meta = _object("meta", document.get("meta"),
                       {"chain", "function", "version", "node", "updated_ms", "size", "checksum", "fields"})
    raw_fields = document.get("fields")
    if not isinstance(raw_fields, Mapping):
        raise _bad("fields must be a JSON object of name → base64")
    fields: dict[str, bytes] = {}
    for name, encoded in raw_fields.items():
        _name("field name", name)
        try:
            fields[name] = base64.b64decode(_string(f"fields.{name}", encoded), validate=True)
        except (binascii.Error, ValueError):
            raise _bad(f"fields.{name} is not valid base64") from None
    meta = BundleMeta(
        chain=_name("chain id", raw_meta["chain"]),
        function=_name("function name", raw_meta["function"]),
        version=_integer("meta.version", raw_meta["version"], 1),
        node=_name("node name", raw_meta["node"]),
        updated_ms=_integer("meta.updated_ms", raw_meta["updated_ms"]),
        size=_integer("meta.size", raw_meta["size"]),
        checksum=_checksum("meta.checksum", raw_meta["checksum"]),
        field_count=_integer("meta.fields", raw_meta["fields"]),
        ttl_ms=_integer("meta.ttl_ms", raw_meta["ttl_ms"], 1) if "ttl_ms" in raw_meta else None,
    )
    return Bundle(meta, fields)


def _decode_claim(raw: object) -> Claim:
    claim = _object("claim", raw, {"node", "chain", "function", "version", "checksum", "size"})
    return Claim(
        node=_name("node name", claim["node"]),
        chain=_name("chain id", claim["chain"]),
        function=_name("function name", claim["function"]),
        version=_integer("claim.version", claim["version"], 1),
        checksum=_checksum("claim.checksum", claim["checksum"]),
        size=_integer("claim.size", claim["size"]),
    )


def _decode_tombstone(raw: object) -> Tombstone:
    tombstone = _object("tombstone", raw, {"chain", "function", "version", "node", "updated_ms"})
    return Tombstone(
        chain=_name("chain id", tombstone["chain"]),
        function=_name("function name", tombstone["function"]),
        version=_integer("tombstone.version", tombstone["version"], 1),
        node=_name("node name", tombstone["node"]),
        updated_ms=_integer("tombstone.updated_ms", tombstone["updated_ms"]),
    )


def is_binary(event: BaseCloudEvent) -> bool:
    """Whether ``event`` is a propagation event of the binary shape (its data is no JSON)."""
    return event.get_type() == catalogue.BUNDLE_PROPAGATED and EXT_MODE in event.get_attributes()


def decode_propagation(event: BaseCloudEvent) -> Incoming:
    """Read a propagation event of either shape; :class:`InvalidBundleEvent` says what is wrong
    with it. A binary event's values are decompressed by :meth:`Incoming.materialize`.

    JSON shape: the data is authoritative; the extension attributes (used by brokers to filter)
    must agree with it where they are present.
    """
    if event.get_type() != catalogue.BUNDLE_PROPAGATED:
        raise InvalidBundleEvent("wrong_event_type",
                                 f"expected {catalogue.BUNDLE_PROPAGATED}, got {event.get_type()!r}")
    if is_binary(event):
        return _decode_binary(event)
    data = event.get_data()
    if isinstance(data, (bytes, bytearray, str)):
        try:
            data = limits.loads(data)  # bounded depth: never a RecursionError
        except ValueError as exc:
            raise _bad(f"event data is not acceptable JSON: {exc}") from None
    if not isinstance(data, Mapping) or sum(k in data for k in ("meta", "claim", "tombstone")) != 1:
        raise _bad("data must be an object with exactly one of meta + fields (inline), claim or tombstone")
    attributes = event.get_attributes()
    bundle = claim = tombstone = None
    if "claim" in data:
        claim = _decode_claim(data["claim"])
        chain, function, version, checksum, size = claim.chain, claim.function, claim.version, claim.checksum, claim.size
    elif "tombstone" in data:
        tombstone = _decode_tombstone(data["tombstone"])
        chain, function, version, checksum, size = tombstone.chain, tombstone.function, tombstone.version, "", 0
    else:
        bundle = _decode_inline(data)
        m = bundle.meta
        chain, function, version, checksum, size = m.chain, m.function, m.version, m.checksum, m.size
    expected = {
        catalogue.EXT_CHAIN: chain, catalogue.EXT_FUNCTION: function,
        catalogue.EXT_VERSION: str(version), catalogue.EXT_CHECKSUM: checksum,
        catalogue.EXT_SIZE: str(size),
    }
    for name, value in expected.items():
        present = attributes.get(name)
        if present is not None and str(present) != value:
            raise _bad(f"attribute {name}={str(present)[:60]!r} disagrees with the data ({value!r})")
    target = attributes.get(catalogue.EXT_TARGET)
    signature = attributes.get(catalogue.EXT_SIGNATURE)
    origin = claim.node if claim is not None else attributes.get(catalogue.EXT_NODE)
    return Incoming(
        source=str(event.get_source()), id=str(event.get_id()),
        target=str(target) if target is not None else None,
        signature=str(signature) if signature is not None else None,
        bundle=bundle, claim=claim, tombstone=tombstone, origin=str(origin) if origin is not None else None,
    )


def _attribute_int(attributes: Mapping[str, Any], name: str, minimum: int = 0, required: bool = True) -> int | None:
    value = attributes.get(name)
    if value is None:
        if required:
            raise _bad(f"attribute {name} is missing")
        return None
    try:
        return parse_int(str(value), name, minimum=minimum, maximum=INT64_MAX)
    except ValueError:
        raise _bad(f"attribute {name} must be an integer in [{minimum}, 2**63-1], not {str(value)[:40]!r}") from None


def _entries(body: bytes) -> tuple[Entry, ...]:
    view, at, out, seen = memoryview(body), 0, [], set()
    while at < len(view):
        length = view[at]
        name_end = at + 1 + length
        if name_end + _ENTRY.size > len(view):
            raise _bad(f"body: field entry at byte {at} is cut short")
        try:
            name = bytes(view[at + 1:name_end]).decode("ascii")
        except UnicodeDecodeError:
            raise _bad(f"body: field name at byte {at} is not ASCII") from None
        _name("field name", name)
        encoding, value_length, payload_length = _ENTRY.unpack_from(view, name_end)
        start = name_end + _ENTRY.size
        if encoding not in (RAW, ZSTD, AT_ORIGIN):
            raise _bad(f"body: field {name} has an unknown encoding {encoding}")
        if (encoding == RAW and payload_length != value_length) or (encoding == AT_ORIGIN and payload_length):
            raise _bad(f"body: field {name}: payload of {payload_length} bytes for a value of {value_length}")
        if start + payload_length > len(view):
            raise _bad(f"body: field {name} is cut short")
        if name in seen:
            raise _bad(f"body: field {name} appears twice")
        seen.add(name)
        out.append(Entry(name, encoding, value_length, view[start:start + payload_length]))
        at = start + payload_length
    return tuple(out)


def _decode_binary(event: BaseCloudEvent) -> Incoming:
    attributes = event.get_attributes()
    mode = attributes.get(EXT_MODE)
    if mode not in MODES:
        raise _bad(f"attribute {EXT_MODE} must be one of {', '.join(MODES)}")
    chain = _name("chain id", attributes.get(catalogue.EXT_CHAIN))
    function = _name("function name", attributes.get(catalogue.EXT_FUNCTION))
    origin = _name("node name", attributes.get(catalogue.EXT_NODE))
    writer = _name("node name", attributes.get(EXT_WRITER, origin))
    version = _attribute_int(attributes, catalogue.EXT_VERSION, 1)
    updated_ms = _attribute_int(attributes, EXT_UPDATED)
    body = event.get_data() or b""
    if not isinstance(body, (bytes, bytearray)):
        raise _bad(f"a binary propagation event carries {BINARY} data")
    body = bytes(body)
    if body and attributes.get("datacontenttype") != BINARY:
        raise _bad(f"a binary propagation event's data is {BINARY}, not {attributes.get('datacontenttype')!r}")
    target, signature = attributes.get(catalogue.EXT_TARGET), attributes.get(catalogue.EXT_SIGNATURE)
    common = {"source": str(event.get_source()), "id": str(event.get_id()), "origin": origin,
              "target": str(target) if target is not None else None,
              "signature": str(signature) if signature is not None else None,
              "attributes": {k: str(v) for k, v in attributes.items() if isinstance(v, str)}, "body": body}
    if mode == TOMBSTONE:
        if body:
            raise _bad("a tombstone carries no data")
        return Incoming(**common, tombstone=Tombstone(chain, function, version, writer, updated_ms))
    ttl = _attribute_int(attributes, EXT_TTL, 1, required=False)
    meta = BundleMeta(chain, function, version, writer, updated_ms, _attribute_int(attributes, catalogue.EXT_SIZE),
                      _checksum(catalogue.EXT_CHECKSUM, attributes.get(catalogue.EXT_CHECKSUM)),
                      _attribute_int(attributes, EXT_FIELDS), ttl_ms=ttl)
    base = _attribute_int(attributes, EXT_BASE, 1, required=mode == DELTA)
    if base is not None and base >= version:
        raise _bad(f"attribute {EXT_BASE} must be below the version ({version})")
    entries = _entries(body)
    carried = sum(e.length + len(e.name) for e in entries)
    if carried > meta.size or len(entries) > meta.field_count:
        raise _bad("the fields in the body are more than the bundle the attributes describe")
    at_origin = [e for e in entries if e.encoding == AT_ORIGIN]
    if mode == CLAIM:
        if len(at_origin) != len(entries) or (entries and base is None):
            raise _bad("a claim check names fields only as changed since its base version")
        return Incoming(**common, claim=Claim(origin, chain, function, version, meta.checksum, meta.size, base,
                                             tuple(e.name for e in entries)))
    if at_origin:
        raise _bad(f"an {mode} event carries every field it names")
    if mode == INLINE:
        if base is not None or carried != meta.size or len(entries) != meta.field_count:
            raise _bad("an inline event carries the whole bundle its attributes describe")
        return Incoming(**common, bundle=Bundle(meta, {}), entries=entries)
    return Incoming(**common, delta=Delta(meta, base, {}), entries=entries)
