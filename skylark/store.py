"""State of functions in one node's Redis: *single* and *bundled*, versioned, with a change stream.

Every write is one Lua script (atomic on the server): it checks limits and versions first, then
writes the fields, the metadata and the change-stream entry together, so a refused or failed
write leaves nothing behind and a reader never sees half a bundle. Reads of a bundle are one
round trip (MULTI: HGETALL data + HGETALL meta).
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cache
from importlib.resources import files

import redis

from skylark import keys
from skylark.bundle import (
    ApplyOutcome,
    ApplyResult,
    Bundle,
    BundleMeta,
    Mechanism,
    field_digest,
    validate_fields,
)
from skylark.errors import BundleNotFound, BundleTooLarge, StoreUnavailable, VersionConflict
from skylark.names import validate_name
from skylark.redis_client import connect
from skylark.settings import Settings



@cache
def _script(name: str) -> str:
    return files("skylark").joinpath("lua", f"{name}.lua").read_text()


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


@contextmanager
def _redis_errors(what: str) -> Iterator[None]:
    """Turn connection-level failures into :class:`StoreUnavailable` (callers answer 503)."""
    try:
        yield
    except (redis.ConnectionError, redis.TimeoutError) as exc:
        raise StoreUnavailable(f"Redis unavailable during {what}: {exc}") from exc
    except redis.ResponseError as exc:
        # OOM, READONLY replica, NOSCRIPT races... are the server's state, not the caller's input.
        raise StoreUnavailable(f"Redis refused {what}: {exc}") from exc


def _parse_meta(chain: str, function: str, raw: Mapping[bytes, bytes]) -> BundleMeta | None:
    if not raw or raw.get(b"deleted") == b"1":
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
    )


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
        self._put = client.register_script(_script("put"))
        self._apply = client.register_script(_script("apply"))
        self._delete = client.register_script(_script("delete"))

    @classmethod
    def from_settings(cls, settings: Settings, client: redis.Redis | None = None) -> "StateStore":
        client = client or connect(settings.redis_url, password=settings.redis_password,
                                   timeout_s=settings.redis_timeout_s)
        return cls(
            client,
            node=settings.node,
            change_stream=settings.change_stream,
            change_stream_maxlen=settings.change_stream_maxlen,
            max_bundle_bytes=settings.max_bundle_bytes,
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

    def _write(self, chain, function, fields, mechanism, replace, expected_version, ttl_s) -> PutResult:
        validate_name("chain id", chain)
        validate_name("function name", function)
        clean = validate_fields(fields)
        if not clean and not replace:
            raise ValueError("put needs at least one field")
        names = list(clean)
        single = mechanism is Mechanism.SINGLE
        key_list = [keys.bundle_key(chain, function), keys.meta_key(chain, function), self.change_stream]
        if single:
            key_list += [keys.single_key(chain, function, name) for name in names]
        args: list[object] = [
            self.node, _now_ms(), self.change_stream_maxlen, self.max_bundle_bytes,
            "" if expected_version is None else int(expected_version), "1" if replace else "0",
            int(ttl_s or 0), mechanism.value, chain, function, len(names),
            keys.single_key(chain, function, ""),
        ]
        for name in names:
            args += [name, clean[name], field_digest(clean[name])]
        with _redis_errors("put"):
            reply = self._put(keys=key_list, args=args)
        status = _text(reply[0])
        if status == "conflict":
            raise VersionConflict(int(expected_version), int(reply[1]))
        if status == "too_large":
            raise BundleTooLarge(int(reply[1]), self.max_bundle_bytes)
        _, version, size, checksum, count, entry_id = reply
        meta = BundleMeta(chain, function, int(version), self.node, int(args[1]), int(size),
                          _text(checksum), int(count), mechanism)
        return PutResult(meta, _text(entry_id))

    def apply(self, bundle: Bundle, *, verify: bool = True) -> ApplyResult:
        """Apply a bundle written elsewhere: newer wins, equal is a no-op, older is stale.

        With ``verify`` the content is checked against its checksum first
        (:class:`~skylark.errors.ChecksumMismatch`).
        """
        meta = bundle.meta
        validate_name("chain id", meta.chain)
        validate_name("function name", meta.function)
        if verify:
            bundle.verify()
        if meta.size > self.max_bundle_bytes:
            raise BundleTooLarge(meta.size, self.max_bundle_bytes)
        args: list[object] = [meta.version, meta.node, meta.updated_ms, meta.size, meta.checksum,
                              self.max_bundle_bytes, len(bundle.fields)]
        for name, value in bundle.fields.items():
            args += [name, value, field_digest(value)]
        args.append(keys.single_key(meta.chain, meta.function, ""))
        with _redis_errors("apply"):
            outcome, local = self._apply(
                keys=[keys.bundle_key(meta.chain, meta.function), keys.meta_key(meta.chain, meta.function)],
                args=args,
            )
        outcome = _text(outcome)
        if outcome == "too_large":
            raise BundleTooLarge(meta.size, self.max_bundle_bytes)
        return ApplyResult(ApplyOutcome(outcome), int(local), meta.version)

    def delete(self, chain: str, function: str) -> int:
        """Delete the state (either mechanism); returns the tombstone's version.

        Raises :class:`BundleNotFound` when there is nothing to delete.
        """
        validate_name("chain id", chain)
        validate_name("function name", function)
        with _redis_errors("delete"):
            reply = self._delete(
                keys=[keys.bundle_key(chain, function), keys.meta_key(chain, function), self.change_stream],
                args=[self.node, _now_ms(), self.change_stream_maxlen, chain, function,
                      keys.single_key(chain, function, ""), self.tombstone_ttl_s],
            )
        if _text(reply[0]) == "missing":
            raise BundleNotFound(chain, function)
        return int(reply[1])

    # -- reads ----------------------------------------------------------------------------

    def get_bundle(self, chain: str, function: str) -> Bundle:
        """The whole bundle in one round trip; :class:`BundleNotFound` if there is none."""
        validate_name("chain id", chain)
        validate_name("function name", function)
        with _redis_errors("get_bundle"):
            pipe = self.client.pipeline(transaction=True)
            pipe.hgetall(keys.bundle_key(chain, function))
            pipe.hgetall(keys.meta_key(chain, function))
            data, raw_meta = pipe.execute()
        meta = _parse_meta(chain, function, raw_meta)
        if meta is None or meta.mechanism is not Mechanism.BUNDLED:
            raise BundleNotFound(chain, function)
        return Bundle(meta, {name.decode(): value for name, value in data.items()})

    def get_meta(self, chain: str, function: str) -> BundleMeta | None:
        """Metadata only (version, size, checksum...), or ``None`` when absent or deleted."""
        validate_name("chain id", chain)
        validate_name("function name", function)
        with _redis_errors("get_meta"):
            raw = self.client.hmget(keys.meta_key(chain, function),
                                    ["version", "node", "updated_ms", "size", "checksum", "fields",
                                     "mechanism", "deleted"])
        if raw[0] is None:
            return None
        names = [b"version", b"node", b"updated_ms", b"size", b"checksum", b"fields", b"mechanism", b"deleted"]
        return _parse_meta(chain, function, dict(zip(names, raw)))

    def local_version(self, chain: str, function: str) -> int:
        """The stored version, counting tombstones (0 when nothing was ever stored)."""
        with _redis_errors("local_version"):
            raw = self.client.hget(keys.meta_key(chain, function), "version")
        return int(raw) if raw is not None else 0

    def get_single(self, chain: str, function: str, names: Sequence[str]) -> dict[str, bytes]:
        """Read single-state fields one GET each: N fields cost N round trips, by design.

        Raises :class:`BundleNotFound` naming the first missing field.
        """
        validate_name("chain id", chain)
        validate_name("function name", function)
        out: dict[str, bytes] = {}
        with _redis_errors("get_single"):
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
