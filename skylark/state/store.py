"""State of functions in one node's Redis: *single* and *bundled*, versioned, with a change stream.

Every write is an optimistic transaction: ``WATCH`` the metadata hash, read what the write must
check (versions, sizes, key types) in one round trip, then queue the fields, the new metadata and
the change-stream entry in one ``MULTI``/``EXEC``. A concurrent write to the same bundle makes the
EXEC fail and the write is retried on fresh metadata, so versions strictly increase; a refused
write (too large, version conflict, wrong key type) queues nothing, so nothing is half-written;
and a reader (one ``MULTI``: HGETALL data + HGETALL meta) never sees half a bundle.

Why not one Lua script: Redis copies every script argument into a Lua string, which costs
~1.3 ms per MB on this machine — more than the HSET itself — while MULTI/EXEC passes values
straight through (see ``skylark bench storage``).

The metadata hash holds, besides version/node/updated_ms/size/checksum/fields/mechanism/deleted,
``d:<field>`` (digest) and ``l:<field>`` (value length) per field, so a merge can compute the new
size and checksum without reading the other fields' values.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cache
from importlib.resources import files

import redis
from redis.exceptions import WatchError

from skylark.state import keys
from skylark.state.bundle import (
    ApplyOutcome,
    ApplyResult,
    Bundle,
    BundleMeta,
    Mechanism,
    Tombstone,
    checksum_of_digests,
    field_digest,
    validate_fields,
)
from skylark.state.errors import (
    BundleNotFound,
    BundleTooLarge,
    StoreUnavailable,
    VersionConflict,
    VersionsExhausted,
)
from skylark.state.numbers import INT64_MAX
from skylark.state.names import validate_name
from skylark.state.redis_client import connect
from skylark.state.settings import Settings

# How often a write is retried when another writer changed the same bundle in between.
MAX_ATTEMPTS = 100


@cache
def _inspect_script() -> str:
    return files("skylark.state").joinpath("inspect.lua").read_text()


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


@contextmanager
def redis_errors(what: str) -> Iterator[None]:
    """Turn redis-py failures into :class:`StoreUnavailable` (callers answer 503): for code
    that talks to a node's Redis directly, next to the store."""
    try:
        yield
    except (redis.ConnectionError, redis.TimeoutError) as exc:
        raise StoreUnavailable(f"Redis unavailable during {what}: {exc}") from exc
    except redis.ResponseError as exc:
        # OOM, READONLY replica, wrong key types... are the server's state, not the caller's input.
        raise StoreUnavailable(f"Redis refused {what}: {exc}") from exc


def _parse_meta(chain: str, function: str, raw: Mapping[bytes, bytes], pttl: int = -1) -> BundleMeta | None:
    """``pttl``: Redis' PTTL of the state (-1: no expiry, -2: gone)."""
    if not raw or raw.get(b"deleted") == b"1" or b"version" not in raw:
        return None
    return BundleMeta(
        chain=chain,
        function=function,
        version=int(raw[b"version"]),
        node=raw[b"node"].decode(),
        updated_ms=int(raw[b"updated_ms"]),
        size=int(raw[b"size"]),
        checksum=raw[b"checksum"].decode(),
        field_count=int(raw[b"fields"]),
        mechanism=Mechanism(raw[b"mechanism"].decode()),
        ttl_ms=pttl if pttl > 0 else None,
    )


@dataclass(frozen=True)
class _Current:
    """What a write found under WATCH."""

    version: int
    deleted: bool
    mechanism: str | None
    size: int
    digests: dict[str, str]
    lengths: dict[str, int]
    checksum: str

    @classmethod
    def from_flat(cls, flat: list[bytes]) -> "_Current":
        raw = dict(zip(flat[::2], flat[1::2]))
        digests, lengths = {}, {}
        for key, value in raw.items():
            if key.startswith(b"d:"):
                digests[key[2:].decode()] = value.decode()
            elif key.startswith(b"l:"):
                lengths[key[2:].decode()] = int(value)
        mechanism = raw.get(b"mechanism")
        return cls(
            version=int(raw.get(b"version", 0)),
            deleted=raw.get(b"deleted") == b"1",
            mechanism=mechanism.decode() if mechanism else None,
            size=int(raw.get(b"size", 0)),
            digests=digests,
            lengths=lengths,
            checksum=raw.get(b"checksum", b"").decode(),
        )


def _next_version(pipe, chain: str, function: str, current: _Current) -> int:  # noqa: ANN001
    """The version after ``current``; a received copy may sit at the int64 ceiling, after which
    nothing can be written (a clear 409, not an overflow)."""
    if current.version >= INT64_MAX:
        pipe.unwatch()
        raise VersionsExhausted(chain, function, current.version)
    return current.version + 1


@dataclass(frozen=True)
class PutResult:
    """What a write did: the new metadata and the id of its change-stream entry."""

    meta: BundleMeta
    entry_id: str


class StateStore:
    """Single and bundled state of one node. Thread-safe (redis-py pools connections)."""

    def __init__(
        self,
        client: redis.Redis,
        *,
        node: str,
        change_stream: str = keys.DEFAULT_CHANGE_STREAM,
        change_stream_maxlen: int = 100_000,
        max_bundle_bytes: int = 64 * 1024 * 1024,
        tombstone_ttl_s: int = 86_400,
    ) -> None:
        self.client = client
        self.node = validate_name("node name", node)
        self.change_stream = change_stream
        self.change_stream_maxlen = change_stream_maxlen
        self.max_bundle_bytes = max_bundle_bytes
        self.tombstone_ttl_s = tombstone_ttl_s

    @classmethod
    def from_settings(cls, settings: Settings, client: redis.Redis | None = None) -> "StateStore":
        client = client or connect(settings.redis_url, username=settings.redis_user,
                                   password=settings.redis_password, timeout_s=settings.redis_timeout_s,
                                   ca_cert=settings.redis_ca_cert)
        return cls(
            client,
            node=settings.node,
            change_stream=settings.change_stream,
            change_stream_maxlen=settings.change_stream_maxlen,
            max_bundle_bytes=settings.max_bundle_bytes,
        )

    # -- the optimistic transaction shared by every write --------------------------------

    def _transact(self, chain: str, function: str, what: str, plan, once_key: str | None = None) -> object:
        """Run ``plan(pipe, current, seen)`` under WATCH until no concurrent write interferes.

        ``plan`` raises to refuse (nothing queued yet) or calls ``pipe.multi()``, queues the
        commands and returns a function of the EXEC results. ``seen`` says whether ``once_key``
        exists (False without one); the key is watched too, so a concurrent delivery that sets
        it makes this one retry and then see it.
        """
        data_key, meta_key = keys.bundle_key(chain, function), keys.meta_key(chain, function)
        inspected = [data_key, meta_key, self.change_stream] + ([once_key] if once_key else [])
        with redis_errors(what):
            with self.client.pipeline(transaction=True) as pipe:
                for _ in range(MAX_ATTEMPTS):
                    try:
                        pipe.watch(meta_key, *inspected[3:])
                        flat, data_type, stream_type, seen = pipe.eval(
                            _inspect_script(), len(inspected), *inspected)
                        if data_type not in (b"none", b"hash"):
                            raise StoreUnavailable(f"state key {data_key} holds a {data_type.decode()}")
                        if stream_type not in (b"none", b"stream"):
                            raise StoreUnavailable(
                                f"change stream key {self.change_stream} holds a {stream_type.decode()}")
                        finish = plan(pipe, _Current.from_flat(flat), bool(seen))
                        return finish(pipe.execute())
                    except WatchError:
                        continue
        raise StoreUnavailable(f"{what} of {chain}/{function}: gave up after {MAX_ATTEMPTS} concurrent retries")

    def _queue_drop(self, pipe, chain: str, function: str, current: _Current) -> None:
        """Queue the removal of the current content and metadata (either mechanism)."""
        doomed = [keys.bundle_key(chain, function), keys.meta_key(chain, function)]
        if current.mechanism == Mechanism.SINGLE.value:
            doomed += [keys.single_key(chain, function, name) for name in current.digests]
        pipe.delete(*doomed)

    def _queue_change(self, pipe, chain, function, op, mechanism, names, version, size, checksum, now) -> None:
        pipe.xadd(
            self.change_stream,
            {"chain": chain, "function": function, "op": op, "mechanism": mechanism,
             "fields": ",".join(names), "version": version, "node": self.node, "size": size,
             "checksum": checksum, "ts": now},
            maxlen=self.change_stream_maxlen,
            approximate=True,
        )

    # -- writes ---------------------------------------------------------------------------

    def put(
        self,
        chain: str,
        function: str,
        fields: Mapping[str, bytes | str],
        *,
        replace: bool = False,
        expected_version: int | None = None,
        ttl_s: int | None = None,
    ) -> PutResult:
        """Store fields as a *bundle* (one HASH). Merges into the stored bundle unless ``replace``.

        ``expected_version`` makes it a compare-and-set (:class:`VersionConflict` otherwise).
        Raises :class:`BundleTooLarge` if the resulting bundle exceeds the limit.
        """
        return self._write(chain, function, fields, Mechanism.BUNDLED, replace, expected_version, ttl_s)

    def put_single(
        self,
        chain: str,
        function: str,
        fields: Mapping[str, bytes | str],
        *,
        replace: bool = False,
        expected_version: int | None = None,
        ttl_s: int | None = None,
    ) -> PutResult:
        """Store fields as *single* state: one STRING key per field (the thesis's baseline)."""
        return self._write(chain, function, fields, Mechanism.SINGLE, replace, expected_version, ttl_s)

    def _write(self, chain, function, fields, mechanism: Mechanism, replace, expected_version, ttl_s) -> PutResult:
        validate_name("chain id", chain)
        validate_name("function name", function)
        clean = validate_fields(fields)
        if not clean and not replace:
            raise ValueError("put needs at least one field")
        new_digests = {name: field_digest(value) for name, value in clean.items()}
        single = mechanism is Mechanism.SINGLE
        data_key, meta_key = keys.bundle_key(chain, function), keys.meta_key(chain, function)

        def plan(pipe, current: _Current, seen: bool):
            if expected_version is not None and int(expected_version) != current.version:
                raise VersionConflict(int(expected_version), current.version)
            # Start afresh on replace, after a delete (tombstone) or when the mechanism changes.
            fresh = replace or current.deleted or (current.mechanism not in (None, mechanism.value))
            digests = {} if fresh else dict(current.digests)
            lengths = {} if fresh else dict(current.lengths)
            size = 0 if fresh else current.size
            for name, value in clean.items():
                if name in lengths:
                    size -= len(name.encode()) + lengths[name]
                size += len(name.encode()) + len(value)
                digests[name] = new_digests[name]
                lengths[name] = len(value)
            if size > self.max_bundle_bytes:
                raise BundleTooLarge(size, self.max_bundle_bytes)
            checksum = checksum_of_digests(digests)
            version = _next_version(pipe, chain, function, current)
            now = _now_ms()

            pipe.multi()
            if fresh:
                self._queue_drop(pipe, chain, function, current)
            meta_fields: dict[str, object] = {
                "version": version, "node": self.node, "updated_ms": now, "size": size,
                "checksum": checksum, "fields": len(digests), "mechanism": mechanism.value, "deleted": 0,
            }
            for name in clean:
                meta_fields[f"d:{name}"] = new_digests[name]
                meta_fields[f"l:{name}"] = lengths[name]
            pipe.hset(meta_key, mapping=meta_fields)
            self._queue_change(pipe, chain, function, "put", mechanism.value, list(clean), version,
                               size, checksum, now)
            entry_index = len(pipe.command_stack) - 1
            # The values go last: Redis then parses a large value straight out of its query
            # buffer instead of copying it (measurably cheaper for MB-sized fields).
            if single:
                for name, value in clean.items():
                    pipe.set(keys.single_key(chain, function, name), value, ex=ttl_s or None)
            elif clean:
                pipe.hset(data_key, mapping=clean)
            for key in ([meta_key] if single else [meta_key, data_key]):
                if ttl_s:
                    pipe.expire(key, int(ttl_s))
                else:
                    pipe.persist(key)
            meta = BundleMeta(chain, function, version, self.node, now, size, checksum, len(digests), mechanism)
            return lambda results: PutResult(meta, results[entry_index].decode())

        return self._transact(chain, function, "put", plan)

    def apply(self, bundle: Bundle, *, verify: bool = True, once_key: str | None = None,
              once_ttl_s: int = 86_400) -> ApplyResult:
        """Apply a bundle written elsewhere: newer wins, equal is a no-op, older is stale.

        With ``verify`` the content is checked against its checksum, size and field count first
        (:class:`~skylark.state.errors.ChecksumMismatch`). Applied bundles are not appended to the
        change stream: that would propagate them again.

        ``once_key`` makes the apply at most once per delivery: when the key exists the outcome
        is ``SEEN`` and nothing is checked or written; otherwise the key is set (for
        ``once_ttl_s``) in the same transaction as the outcome, whatever it is. A redelivered
        event costs no extra round trip and there is no window between applying and marking.
        """
        meta = bundle.meta
        validate_name("chain id", meta.chain)
        validate_name("function name", meta.function)
        clean = validate_fields(bundle.fields)
        if verify:
            digests = Bundle(meta, clean).verify()
        else:
            digests = {name: field_digest(value) for name, value in clean.items()}
        if meta.size > self.max_bundle_bytes:
            raise BundleTooLarge(meta.size, self.max_bundle_bytes)
        data_key, meta_key = keys.bundle_key(meta.chain, meta.function), keys.meta_key(meta.chain, meta.function)

        mark = _marker(once_key, once_ttl_s)

        def plan(pipe, current: _Current, seen: bool):
            if seen:
                return _refuse(pipe, ApplyResult(ApplyOutcome.SEEN, current.version, meta.version))
            if meta.version < current.version:
                return _refuse(pipe, ApplyResult(ApplyOutcome.STALE, current.version, meta.version), mark)
            if meta.version == current.version:
                outcome = ApplyOutcome.DUPLICATE if current.checksum == meta.checksum else ApplyOutcome.CONFLICT
                return _refuse(pipe, ApplyResult(outcome, current.version, meta.version), mark)
            pipe.multi()
            mark(pipe)
            self._queue_drop(pipe, meta.chain, meta.function, current)
            if clean:
                pipe.hset(data_key, mapping=clean)
            meta_fields: dict[str, object] = {
                "version": meta.version, "node": meta.node, "updated_ms": meta.updated_ms,
                "size": meta.size, "checksum": meta.checksum, "fields": len(clean),
                "mechanism": Mechanism.BUNDLED.value, "deleted": 0,
            }
            for name, value in clean.items():
                meta_fields[f"d:{name}"] = digests[name]
                meta_fields[f"l:{name}"] = len(value)
            pipe.hset(meta_key, mapping=meta_fields)
            if meta.ttl_ms:
                # The copy expires with the original (the keys were just recreated: no TTL yet).
                pipe.pexpire(data_key, meta.ttl_ms)
                pipe.pexpire(meta_key, meta.ttl_ms)
            return lambda results: ApplyResult(ApplyOutcome.APPLIED, meta.version, meta.version)

        return self._transact(meta.chain, meta.function, "apply", plan, once_key)

    def delete(self, chain: str, function: str) -> int:
        """Delete the state (either mechanism), leaving a tombstone that keeps the version so a
        late propagated copy is rejected as stale; returns the tombstone's version.

        Raises :class:`BundleNotFound` when there is nothing to delete.
        """
        validate_name("chain id", chain)
        validate_name("function name", function)

        def plan(pipe, current: _Current, seen: bool):
            if current.version == 0 or current.deleted:
                pipe.unwatch()
                raise BundleNotFound(chain, function)
            version = _next_version(pipe, chain, function, current)
            now = _now_ms()
            pipe.multi()
            self._queue_tombstone(pipe, Tombstone(chain, function, version, self.node, now), current)
            self._queue_change(pipe, chain, function, "delete", current.mechanism or "bundled",
                               sorted(current.digests), version, 0, "", now)
            return lambda results: version

        return self._transact(chain, function, "delete", plan)

    def apply_tombstone(self, tombstone: Tombstone, *, once_key: str | None = None,
                        once_ttl_s: int = 86_400) -> ApplyResult:
        """Apply a delete made elsewhere, by the same rule as :meth:`apply`.

        A newer tombstone drops the local copy (either mechanism) and keeps its version, exactly
        like a local delete, also where nothing was held (so a copy that arrives late is stale);
        an equal version that is a tombstone here already is a ``DUPLICATE``, one that is live
        content is a ``CONFLICT`` (kept); an older one is ``STALE``. ``once_key`` as in
        :meth:`apply`. Not appended to the change stream.
        """
        validate_name("chain id", tombstone.chain)
        validate_name("function name", tombstone.function)

        mark = _marker(once_key, once_ttl_s)

        def plan(pipe, current: _Current, seen: bool):
            def refuse(outcome: ApplyOutcome, queue=mark):
                return _refuse(pipe, ApplyResult(outcome, current.version, tombstone.version), queue)

            if seen:
                return refuse(ApplyOutcome.SEEN, None)
            if tombstone.version < current.version:
                return refuse(ApplyOutcome.STALE)
            if tombstone.version == current.version:
                return refuse(ApplyOutcome.DUPLICATE if current.deleted else ApplyOutcome.CONFLICT)
            pipe.multi()
            mark(pipe)
            self._queue_tombstone(pipe, tombstone, current)
            return lambda results: ApplyResult(ApplyOutcome.APPLIED, tombstone.version, tombstone.version)

        return self._transact(tombstone.chain, tombstone.function, "tombstone", plan, once_key)

    def _queue_tombstone(self, pipe, tombstone: Tombstone, current: _Current) -> None:
        """Queue the drop of the content and the tombstone that keeps its version for a while."""
        meta_key = keys.meta_key(tombstone.chain, tombstone.function)
        self._queue_drop(pipe, tombstone.chain, tombstone.function, current)
        pipe.hset(meta_key, mapping={
            "version": tombstone.version, "node": tombstone.node, "updated_ms": tombstone.updated_ms,
            "size": 0, "checksum": "", "fields": 0,
            "mechanism": current.mechanism or Mechanism.BUNDLED.value, "deleted": 1,
        })
        pipe.expire(meta_key, self.tombstone_ttl_s)

    # -- reads ----------------------------------------------------------------------------

    def get_bundle(self, chain: str, function: str) -> Bundle:
        """The whole bundle in one round trip; :class:`BundleNotFound` if there is none."""
        validate_name("chain id", chain)
        validate_name("function name", function)
        with redis_errors("get_bundle"):
            pipe = self.client.pipeline(transaction=True)
            pipe.hgetall(keys.bundle_key(chain, function))
            pipe.hgetall(keys.meta_key(chain, function))
            pipe.pttl(keys.meta_key(chain, function))  # a write's ttl_s expires data and meta together
            data, raw_meta, pttl = pipe.execute()
        meta = _parse_meta(chain, function, raw_meta, pttl)
        if meta is None or meta.mechanism is not Mechanism.BUNDLED:
            raise BundleNotFound(chain, function)
        return Bundle(meta, {name.decode(): value for name, value in data.items()})

    def get_meta(self, chain: str, function: str) -> BundleMeta | None:
        """Metadata only (version, size, checksum...), or ``None`` when absent or deleted."""
        validate_name("chain id", chain)
        validate_name("function name", function)
        with redis_errors("get_meta"):
            raw = self.client.hmget(keys.meta_key(chain, function),
                                    ["version", "node", "updated_ms", "size", "checksum", "fields",
                                     "mechanism", "deleted"])
        if raw[0] is None:
            return None
        names = [b"version", b"node", b"updated_ms", b"size", b"checksum", b"fields", b"mechanism", b"deleted"]
        return _parse_meta(chain, function, dict(zip(names, raw)))

    def local_version(self, chain: str, function: str) -> int:
        """The stored version, counting tombstones (0 when nothing was ever stored)."""
        with redis_errors("local_version"):
            raw = self.client.hget(keys.meta_key(chain, function), "version")
        return int(raw) if raw is not None else 0

    def get_single(self, chain: str, function: str, names: Sequence[str]) -> dict[str, bytes]:
        """Read single-state fields one GET each: N fields cost N round trips, by design.

        Raises :class:`BundleNotFound` naming the first missing field.
        """
        validate_name("chain id", chain)
        validate_name("function name", function)
        out: dict[str, bytes] = {}
        with redis_errors("get_single"):
            for name in names:
                validate_name("field name", name)
                value = self.client.get(keys.single_key(chain, function, name))
                if value is None:
                    raise BundleNotFound(chain, f"{function}.{name}")
                out[name] = value
        return out

    def ping(self) -> bool:
        """True when Redis answers; never raises (for readiness probes)."""
        try:
            return bool(self.client.ping())
        except redis.RedisError:
            return False


def _marker(once_key: str | None, ttl_s: int):
    """The queued step that records a delivery's idempotency key (a no-op without one)."""
    def mark(pipe) -> None:
        if once_key:
            pipe.set(once_key, b"1", ex=ttl_s)
    return mark


def _refuse(pipe, result, queue=None):
    """End a transaction that leaves the state alone (``queue`` may add e.g. a mark), returning ``result``."""
    pipe.unwatch()
    pipe.multi()
    if queue is not None:
        queue(pipe)
    return lambda results: result
