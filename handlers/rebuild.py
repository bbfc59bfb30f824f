"""Rebuild the bundle of (chain, function) from a node's Redis, whatever mechanism wrote it.

*Bundled* state is already kept as one versioned bundle by the state library (written atomically,
in one MULTI/EXEC), so the rebuild is one read: ``StateStore.get_bundle`` (MULTI: data + meta).

What a push sends needs not be all of it (:func:`read_for_push`): the metadata alone for a
claim check, the changed fields alone for a delta, read with the metadata in one MULTI.

*Single* state keeps one STRING per field; the rebuild gathers all of them into one versioned
bundle, which is what the successor needs in one round trip. It is a consistent snapshot: the
field names come from the metadata's per-field digests, then one MULTI reads the metadata again
together with every field, and the snapshot is accepted only if that metadata still names the
same fields (else a write raced us, and the read is repeated). The bundle keeps the version and
checksum the library computed for the single state (same checksum definition for both
mechanisms), so the receiver can verify it and apply it as a bundle.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from skylark.state import keys
from skylark.state.bundle import Bundle, BundleMeta, Mechanism
from skylark.state.errors import BundleNotFound, StoreUnavailable
from skylark.state.store import StateStore, as_dict, parse_meta, redis_errors, transaction

_SNAPSHOT_ATTEMPTS = 5


def current_bundle(store: StateStore, chain: str, function: str, mechanism: str | None = None) -> Bundle:
    """The current state of (chain, function) in ``store`` as one bundle.

    ``mechanism`` (from a change record) says which read to try first; the other one is tried
    when the state was rewritten with the other mechanism since. :class:`BundleNotFound` when
    there is no live state (never written, or deleted).
    """
    if mechanism == Mechanism.SINGLE.value:
        found = _single_snapshot(store, chain, function)
        return found if found is not None else store.get_bundle(chain, function)
    try:
        return store.get_bundle(chain, function)
    except BundleNotFound:
        found = _single_snapshot(store, chain, function)
        if found is None:
            raise
        return found


@dataclass(frozen=True)
class Snapshot:
    """What a push needs of the current state: its metadata, every field's length, and the
    values of all its fields (``whole``), of some (changed ones), or of none."""

    meta: BundleMeta
    fields: dict[str, bytes] = field(repr=False)
    whole: bool
    lengths: dict[str, int] = field(default_factory=dict)


def _lengths(raw_meta: Mapping[bytes, bytes]) -> dict[str, int]:
    return {k[2:].decode(): int(v) for k, v in raw_meta.items() if k.startswith(b"l:")}


def _read(store: StateStore, commands: list[tuple]) -> list:
    with redis_errors("rebuild"):
        replies = transaction(store.client, commands)
    error = next((r for r in replies if isinstance(r, Exception)), None)
    if error is not None:
        raise StoreUnavailable(f"Redis refused the rebuild: {error}")
    return replies


def read_for_push(store: StateStore, chain: str, function: str, mechanism: str, *, size: int, whole_up_to: int,
                  wanted: Callable[[BundleMeta, dict[str, int]], Sequence[str]] | None = None) -> Snapshot:
    """What a push needs. Bundled state whose ``size`` (the change record's) is at most
    ``whole_up_to``: the metadata and every value, in one round trip. Larger: the metadata
    first, then — only if ``wanted(meta, lengths)`` names fields (a delta small enough to go
    inline) — those values, read with the metadata again in one MULTI; no value at all for a
    claim check. Single state is read whole (:func:`current_bundle`). :class:`BundleNotFound`
    when there is no live state."""
    if mechanism == Mechanism.BUNDLED.value:
        data_key, meta_key = keys.bundle_key(chain, function), keys.meta_key(chain, function)
        head = [("HGETALL", meta_key), ("PTTL", meta_key)]
        whole = size <= whole_up_to
        replies = _read(store, head + [("HGETALL", data_key)] if whole else head)
        raw_meta = as_dict(replies[0])
        meta = parse_meta(chain, function, raw_meta, replies[1])
        if meta is not None and meta.mechanism is Mechanism.BUNDLED:
            lengths = _lengths(raw_meta)
            if whole:
                values = {name.decode(): value for name, value in as_dict(replies[2]).items()}
                return Snapshot(meta, values, True, lengths)
            names = list(wanted(meta, lengths)) if wanted else []
            if names:
                raw_meta, pttl, values = _read(store, head + [("HMGET", data_key, *names)])
                again = parse_meta(chain, function, as_dict(raw_meta), pttl)
                same = again is not None and (again.version, again.checksum) == (meta.version, meta.checksum)
                if same and all(v is not None for v in values):
                    return Snapshot(meta, dict(zip(names, values)), False, lengths)
                # Written again in between: the newer version goes as a claim check.
                if again is not None and again.mechanism is Mechanism.BUNDLED:
                    return Snapshot(again, {}, False, _lengths(as_dict(raw_meta)))
            else:
                return Snapshot(meta, {}, False, lengths)
    bundle = current_bundle(store, chain, function, mechanism)
    return Snapshot(bundle.meta, bundle.fields, True, {n: len(v) for n, v in bundle.fields.items()})


def changed_fields(store: StateStore, chain: str, function: str, names: Sequence[str]) -> Snapshot | None:
    """The metadata and the named fields of (chain, function) in ``store``, in one MULTI (a
    receiver pulling a delta from the origin); None when there is no live bundled state or a
    named field is not in it."""
    data_key, meta_key = keys.bundle_key(chain, function), keys.meta_key(chain, function)
    with redis_errors("pull of changed fields"):
        replies = transaction(store.client, [("HGETALL", meta_key), ("PTTL", meta_key),
                                             ("HMGET", data_key, *names)])
    error = next((r for r in replies if isinstance(r, Exception)), None)
    if error is not None:
        raise StoreUnavailable(f"Redis refused the pull of changed fields: {error}")
    raw_meta, pttl, values = replies
    meta = parse_meta(chain, function, as_dict(raw_meta), pttl)
    if meta is None or meta.mechanism is not Mechanism.BUNDLED or any(v is None for v in values):
        return None
    return Snapshot(meta, dict(zip(names, values)), False)


def _digest_names(raw_meta: Mapping[bytes, bytes]) -> list[str]:
    return sorted(k[2:].decode() for k in raw_meta if k.startswith(b"d:"))


def _single_snapshot(store: StateStore, chain: str, function: str) -> Bundle | None:
    meta_key = keys.meta_key(chain, function)
    client = store.client
    with redis_errors("single-state snapshot"):
        names = _digest_names(client.hgetall(meta_key))
        for _ in range(_SNAPSHOT_ATTEMPTS):
            pipe = client.pipeline(transaction=True)
            pipe.hgetall(meta_key)
            pipe.pttl(meta_key)  # put_single's ttl_s expires the meta with the fields
            for name in names:
                pipe.get(keys.single_key(chain, function, name))
            raw_meta, pttl, *values = pipe.execute()
            if not raw_meta or raw_meta.get(b"deleted") == b"1" or raw_meta.get(b"mechanism") != b"single":
                return None
            current = _digest_names(raw_meta)
            if current == names:
                if any(v is None for v in values):
                    return None  # fields expired (put_single with a TTL): no live state
                meta = BundleMeta(
                    chain=chain, function=function, version=int(raw_meta[b"version"]),
                    node=raw_meta[b"node"].decode(), updated_ms=int(raw_meta[b"updated_ms"]),
                    size=int(raw_meta[b"size"]), checksum=raw_meta[b"checksum"].decode(),
                    field_count=int(raw_meta[b"fields"]), mechanism=Mechanism.SINGLE,
                    ttl_ms=pttl if pttl > 0 else None,
                )
                return Bundle(meta, dict(zip(names, values)))
            names = current  # a write raced the read: take the new names and read again
    raise StoreUnavailable(f"single state of {chain}/{function} kept changing during {_SNAPSHOT_ATTEMPTS} reads")
