"""HMAC-SHA256 signatures of propagation events (pure).

The signature covers what the receiver acts on, in a form that does not depend on how the event
was carried on the way (binary or structured mode, header order, attributes a broker adds).

Binary shape (:func:`sign_event`): ``type``, ``source``, ``id``, ``datacontenttype`` and every
``skylark*`` extension but the signature, sorted by name, then the body exactly as sent (fields,
compressed or not): one HMAC over the bytes the receiver decodes, so nothing is decoded,
decompressed or hashed twice before the event is trusted.

JSON shape (:func:`canonical`, the previous release's): the event's ``source``, ``id``, the
target node, the bundle's metadata, and for an inline bundle the SHA-256 of every field — the
JSON text itself may be re-formatted by an intermediary. The bundle's own checksum is made for
corruption, not tampering (it is built on xxh3), so the content is hashed here again with a
cryptographic hash.

A claim check's content is pulled from the origin's Redis and checked against the signed
checksum and version.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Mapping, Sequence

# What sign() produces. Anything else is refused before comparing: hmac.compare_digest raises
# TypeError on non-ASCII text (a header is Latin-1 text, so "ÿ" would have been a 500).
SIGNATURE = re.compile(r"[0-9a-f]{64}")


def canonical(source: str, event_id: str, target: str, parts: Sequence[str]) -> bytes:
    """The signed message: the event's identity, its target, then what it carries (``parts``)."""
    return "\n".join(["skylark-bundle-v1", source, event_id, target, *parts]).encode()


def field_hashes(fields: Mapping[str, bytes]) -> list[str]:
    """``name\0sha256(value)`` per field, sorted by name: binds the content to a signature."""
    return [f"{name}\0{hashlib.sha256(fields[name]).hexdigest()}" for name in sorted(fields)]


# What the binary shape's signature covers besides the skylark* extensions.
_SIGNED_CONTEXT = ("datacontenttype", "id", "source", "type")


def _event_hmac(key: bytes, attributes: Mapping[str, str], body: bytes) -> str:
    names = sorted(n for n in attributes
                   if n in _SIGNED_CONTEXT or (n.startswith("skylark") and n != "skylarksignature"))
    head = "\n".join(["skylark-bundle-v2", *(f"{n}={attributes[n]}" for n in names), ""]).encode()
    mac = hmac.new(key, head, hashlib.sha256)
    mac.update(body)
    return mac.hexdigest()


def sign_event(key: bytes, attributes: Mapping[str, str], body: bytes) -> str:
    """The signature of a binary-shape event with these attributes (strings) and body."""
    return _event_hmac(key, attributes, body)


def verify_event(key: bytes, attributes: Mapping[str, str], body: bytes, signature: str | None) -> bool:
    """Whether ``signature`` signs this binary-shape event (constant-time, as :func:`verify`)."""
    if not isinstance(signature, str) or SIGNATURE.fullmatch(signature) is None:
        return False
    return hmac.compare_digest(_event_hmac(key, attributes, body).encode("ascii"), signature.encode("ascii"))


def sign(key: bytes, message: bytes) -> str:
    return hmac.new(key, message, hashlib.sha256).hexdigest()


def verify(key: bytes, message: bytes, signature: str | None) -> bool:
    """Whether ``signature`` is the HMAC of ``message`` (constant-time; False for no signature or
    one that is not 64 lowercase hex characters)."""
    if not isinstance(signature, str) or SIGNATURE.fullmatch(signature) is None:
        return False
    return hmac.compare_digest(sign(key, message).encode("ascii"), signature.encode("ascii"))
