"""The bundle model (pure: no I/O).

A bundle is all state of one (chain, function): named fields of bytes plus metadata. Its checksum
is defined so that Redis (in a Lua script, with ``redis.sha1hex``) and Python compute the same
value without either holding the whole content twice:

    digest(field)  = xxh3_128(value) as 32 hex chars      (fast: ~GB/s, computed by the writer)
    checksum       = sha1("name\\0digest\\n" for each field, sorted by name)

Merging new fields into a stored bundle then only needs the per-field digests of the others,
which live in the metadata hash. The checksum detects corruption and truncation in transit; it is
not a signature (propagation events are signed separately where a key is configured).
"""

from __future__ import annotations

import enum
import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field

import xxhash

from skylark.state.errors import ChecksumMismatch
from skylark.state.names import validate_name
from skylark.state.numbers import INT64_MAX


def _check_int64(owner: str, name: str, value: object) -> None:
    """Versions, sizes and times are int64 wherever they go (Redis, Lua, Go consumers of the
    change stream): one past that range must fail here, where it is made, not there."""
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= INT64_MAX:
        raise ValueError(f"{owner}.{name} must be an integer in [0, 2**63-1], not {value!r}"[:200])


def field_digest(value: bytes) -> str:
    return xxhash.xxh3_128_hexdigest(value)


def checksum_of_digests(digests: Mapping[str, str]) -> str:
    joined = "".join(f"{name}\0{digests[name]}\n" for name in sorted(digests))
    return hashlib.sha1(joined.encode()).hexdigest()


def checksum_of(fields: Mapping[str, bytes]) -> str:
    return checksum_of_digests({name: field_digest(value) for name, value in fields.items()})


def size_of(fields: Mapping[str, bytes]) -> int:
    """Byte size of a bundle: the bytes of every field name plus value."""
    return sum(len(name.encode()) + len(value) for name, value in fields.items())


def validate_fields(fields: Mapping[str, bytes]) -> dict[str, bytes]:
    """Check names and value types; returns a plain dict of bytes."""
    out: dict[str, bytes] = {}
    for name, value in fields.items():
        validate_name("field name", name)
        if isinstance(value, str):
            value = value.encode()
        if not isinstance(value, (bytes, bytearray, memoryview)):
            raise TypeError(f"field {name!r} must be bytes or str, not {type(value).__name__}")
        out[name] = bytes(value)
    return out


class Mechanism(str, enum.Enum):
    BUNDLED = "bundled"
    SINGLE = "single"


@dataclass(frozen=True)
class BundleMeta:
    chain: str
    function: str
    version: int
    node: str
    updated_ms: int
    size: int
    checksum: str
    field_count: int
    mechanism: Mechanism = Mechanism.BUNDLED
    # Time left before the state expires where it was read (a write's ``ttl_s``), None when it
    # does not expire. Relative, not a deadline: nodes at the edge need not share a clock.
    ttl_ms: int | None = None

    def __post_init__(self) -> None:
        for name in ("version", "updated_ms", "size", "field_count"):
            _check_int64("BundleMeta", name, getattr(self, name))
        if self.ttl_ms is not None:
            _check_int64("BundleMeta", "ttl_ms", self.ttl_ms)

    def to_dict(self) -> dict:
        out = {
            "chain": self.chain,
            "function": self.function,
            "version": self.version,
            "node": self.node,
            "updated_ms": self.updated_ms,
            "size": self.size,
            "checksum": self.checksum,
            "fields": self.field_count,
            "mechanism": self.mechanism.value,
        }
        if self.ttl_ms is not None:
            out["ttl_ms"] = self.ttl_ms
        return out


class _Described:
    """What a bundle and a delta both answer from their metadata: which state, which version."""

    meta: BundleMeta

    @property
    def chain(self) -> str:
        return self.meta.chain

    @property
    def function(self) -> str:
        return self.meta.function

    @property
    def version(self) -> int:
        return self.meta.version


@dataclass(frozen=True)
class Bundle(_Described):
    meta: BundleMeta
    fields: dict[str, bytes] = field(repr=False)

    def verify(self) -> dict[str, str]:
        """Raise :class:`ChecksumMismatch` unless content, size and count match the metadata;
        returns the per-field digests it computed (a writer needs them too)."""
        digests = {name: field_digest(value) for name, value in self.fields.items()}
        actual = checksum_of_digests(digests)
        where = f"bundle {self.chain}/{self.function} v{self.version}"
        if actual != self.meta.checksum:
            raise ChecksumMismatch(f"{where}: checksum {actual} does not match {self.meta.checksum}")
        if size_of(self.fields) != self.meta.size or len(self.fields) != self.meta.field_count:
            raise ChecksumMismatch(f"{where}: size or field count does not match its metadata")
        return digests


@dataclass(frozen=True)
class Delta(_Described):
    """The fields one write changed, and the bundle they make on top of ``base_version``.

    ``meta`` describes the whole new bundle (version, size, checksum, field count); ``fields``
    holds only the changed ones. A node holding ``base_version`` rebuilds the bundle from its
    copy and these bytes and checks the result against ``meta`` (``StateStore.apply_delta``).
    """

    meta: BundleMeta
    base_version: int
    fields: dict[str, bytes] = field(repr=False)

    def __post_init__(self) -> None:
        _check_int64("Delta", "base_version", self.base_version)
        if not 1 <= self.base_version < self.meta.version:
            raise ValueError(f"Delta.base_version must lie in [1, {self.meta.version}), not {self.base_version}")


@dataclass(frozen=True)
class Tombstone:
    """A delete made on ``node``: the state of (chain, function) ended at ``version``.

    Propagated like a bundle, so a neighbour's copy goes too and a late copy of an older version
    is rejected there as stale (the version outlives the content, as on the origin).
    """

    chain: str
    function: str
    version: int
    node: str
    updated_ms: int

    def __post_init__(self) -> None:
        _check_int64("Tombstone", "version", self.version)
        _check_int64("Tombstone", "updated_ms", self.updated_ms)

    def to_dict(self) -> dict:
        return {"chain": self.chain, "function": self.function, "version": self.version,
                "node": self.node, "updated_ms": self.updated_ms}


@dataclass(frozen=True)
class Placement:
    """Where the origin's handlers pushed ``version`` of a bundle: the nodes they published it to.

    The handlers and a reader each decide where a bundle goes from their own cached copy of the
    topology; when the topology changes (the thesis's cloud link moves every minute) the two can
    disagree for a while, and a reader waiting for a copy on a node it was never sent to would
    wait in vain. The reader checks this record at the origin and stops waiting when it names
    other nodes. Stored as one short string, ``"<version> <node>,<node>"``.
    """

    version: int
    nodes: tuple[str, ...]

    def __post_init__(self) -> None:
        _check_int64("Placement", "version", self.version)
        for node in self.nodes:  # names hold no ',' or ' ': the encoding is unambiguous
            validate_name("node name", node)

    def encode(self) -> bytes:
        return f"{self.version} {','.join(self.nodes)}".encode()

    @classmethod
    def decode(cls, raw: bytes | str | None) -> "Placement | None":
        """The record, or None when there is none or it is not one (never written by us)."""
        if raw is None:
            return None
        text = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else raw
        version, _, nodes = text.partition(" ")
        if not (version.isascii() and version.isdigit()):
            return None
        try:
            return cls(int(version), tuple(n for n in nodes.split(",") if n))
        except ValueError:
            return None


def make_bundle(chain: str, function: str, fields: Mapping[str, bytes], *, version: int,
                node: str, updated_ms: int) -> Bundle:
    """Build a bundle whose metadata is computed from ``fields`` (for tests and tools)."""
    validate_name("chain id", chain)
    validate_name("function name", function)
    clean = validate_fields(fields)
    meta = BundleMeta(chain, function, version, node, updated_ms, size_of(clean), checksum_of(clean), len(clean))
    return Bundle(meta, clean)


class ApplyOutcome(str, enum.Enum):
    APPLIED = "applied"      # incoming version was newer: it replaced the local copy
    DUPLICATE = "duplicate"  # same version and checksum already here: no-op
    STALE = "stale"          # incoming version older than the local one: rejected
    CONFLICT = "conflict"    # same version, other content (concurrent writers): local kept
    SEEN = "seen"            # the delivery's idempotency key was used already: nothing done
    NO_BASE = "no_base"      # a delta whose base version is not here (or does not match): nothing done


@dataclass(frozen=True)
class ApplyResult:
    outcome: ApplyOutcome
    local_version: int
    incoming_version: int

    @property
    def changed(self) -> bool:
        return self.outcome is ApplyOutcome.APPLIED
