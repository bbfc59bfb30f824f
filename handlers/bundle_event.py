"""The bundle-propagation event ``io.skylark.bundle.propagated``: build it and read it back (pure).

Attributes: ``source=/skylark/nodes/<origin>/handlers``, ``id=<chain>:<function>:<version>:
<checksum[:12]>:<target>`` (the same for every retry of the same push, so receivers dedupe it),
extensions ``skylarkchain``, ``skylarkfunction``, ``skylarkversion``, ``skylarknode`` (origin),
``skylarkchecksum``, ``skylarksize``, ``skylarktarget`` and, with a signing key,
``skylarksignature``. Data (``application/json``), one of:

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
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from cloudevents.core.base import BaseCloudEvent
from cloudevents.core.v1.event import CloudEvent

from eventing import catalogue
from eventing.http import InvalidEvent, new_event
from handlers import signing
from skylark.serving import limits
from skylark.state.bundle import Bundle, BundleMeta, Tombstone
from skylark.state.names import validate_name
from skylark.state.numbers import INT64_MAX

INLINE = "inline"
CLAIM = "claim"
TOMBSTONE = "tombstone"
SERVICE = "handlers"
_CHECKSUM = re.compile(r"[0-9a-f]{40}")


class InvalidBundleEvent(InvalidEvent):
    """A propagation event whose data or attributes are not a well-formed bundle or claim."""


@dataclass(frozen=True)
class Claim:
    """A reference to a bundle in ``node``'s Redis (sent instead of bundles above the inline limit)."""

    node: str
    chain: str
    function: str
    version: int
    checksum: str
    size: int

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
    """The encoded data of one push, shared by every target of it (encoded once).

    ``meta`` names what is pushed (for a tombstone: its version, size 0 and no checksum).
    """

    meta: BundleMeta
    origin: str
    mode: str          # INLINE, CLAIM or TOMBSTONE
    data: bytes        # the JSON body
    signed_parts: tuple[str, ...]


def encode_payload(bundle: Bundle, *, origin: str, inline_max_bytes: int,
                   sign: bool = False) -> Payload:
    """Inline up to ``inline_max_bytes`` of bundle size, else a claim check on ``origin``.

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
    meta = BundleMeta(tombstone.chain, tombstone.function, tombstone.version, tombstone.node,
                      tombstone.updated_ms, 0, "", 0)
    data = json.dumps({"tombstone": tombstone.to_dict()}, separators=(",", ":")).encode()
    return Payload(meta, origin, TOMBSTONE, data, tuple(_tombstone_parts(tombstone)))


def event_id(meta: BundleMeta, target: str) -> str:
    # One version is either a write or a delete, so the id stays unique per push and target.
    return f"{meta.chain}:{meta.function}:{meta.version}:{meta.checksum[:12] or TOMBSTONE}:{target}"


def propagation_event(payload: Payload, target: str, signing_key: bytes | None = None) -> CloudEvent:
    meta = payload.meta
    source = catalogue.source_for(payload.origin, SERVICE)
    id_ = event_id(meta, target)
    signature = None
    if signing_key is not None:
        signature = signing.sign(signing_key, signing.canonical(source, id_, target, payload.signed_parts))
    return new_event(
        catalogue.BUNDLE_PROPAGATED, source, payload.data, id_=id_,
        **{
            catalogue.EXT_CHAIN: meta.chain,
            catalogue.EXT_FUNCTION: meta.function,
            catalogue.EXT_VERSION: meta.version,
            catalogue.EXT_NODE: payload.origin,
            catalogue.EXT_CHECKSUM: meta.checksum or None,
            catalogue.EXT_SIZE: meta.size,
            catalogue.EXT_TARGET: target,
            catalogue.EXT_SIGNATURE: signature,
        },
    )


# -- receiving ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Incoming:
    """A decoded propagation event: exactly one of ``bundle`` (inline), ``claim`` and
    ``tombstone`` is set."""

    source: str
    id: str
    target: str | None
    signature: str | None
    bundle: Bundle | None = None
    claim: Claim | None = None
    tombstone: Tombstone | None = None

    @property
    def _carried(self) -> Bundle | Claim | Tombstone:
        return self.bundle or self.claim or self.tombstone  # type: ignore[return-value]

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
        return INLINE if self.bundle is not None else CLAIM if self.claim is not None else TOMBSTONE

    def signed_message(self) -> bytes:
        if self.bundle is not None:
            parts = _inline_parts(self.bundle)
        elif self.claim is not None:
            parts = self.claim.signed_parts()
        else:
            parts = _tombstone_parts(self.tombstone)  # type: ignore[arg-type]
        return signing.canonical(self.source, self.id, self.target or "", parts)


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


def decode_propagation(event: BaseCloudEvent) -> Incoming:
    """Read a propagation event; :class:`InvalidBundleEvent` says what is wrong with it.

    The data is authoritative; the extension attributes (used by brokers to filter) must agree
    with it where they are present.
    """
    if event.get_type() != catalogue.BUNDLE_PROPAGATED:
        raise InvalidBundleEvent("wrong_event_type",
                                 f"expected {catalogue.BUNDLE_PROPAGATED}, got {event.get_type()!r}")
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
    return Incoming(
        source=str(event.get_source()), id=str(event.get_id()),
        target=str(target) if target is not None else None,
        signature=str(signature) if signature is not None else None,
        bundle=bundle, claim=claim, tombstone=tombstone,
    )
