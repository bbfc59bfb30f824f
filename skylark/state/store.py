"""State of functions in one node's Redis: *single* and *bundled*, versioned, with a change stream.

Every write is one round trip, atomic: one ``MULTI``/``EXEC`` holding a check step of the
store's script (``write.lua``: versions, compare-and-set, size limit, key types, the metadata and
the change-stream entry), the values, staged into a key of their own, and the script's settle
step, which renames the staged values over the data when the check accepted and drops them when
it refused. The script is given names, digests and lengths only, never a value: Redis copies
each script argument into a Lua string (1-2 ms per MB on this machine, more than the HSET
itself), while values in the transaction go straight from the query buffer into the hash.
Scripts run one at a time, so versions strictly increase under concurrent writers without
retries; a refused write leaves nothing; and a reader (one ``MULTI``: HGETALL data + HGETALL
meta) never sees half a bundle.

Alternatives measured in one run (1 MB in 1-5 fields, p50 / raw HSET of the same bytes):
``WATCH`` + a check + ``MULTI``/``EXEC`` (three round trips, this store before) 1.9-2.6×; one
script taking the values as arguments 3.1-5.2×; the values staged, then one script that checks
and renames, 1.2-1.7× (but a merge into some of the stored fields would have to copy values
through Lua); check step, values, settle step (kept) 1.2-1.7×, copying nothing in any case.

Keys of a write in flight (inside one EXEC, so no other client ever sees them): the staging
hash ``<bundle key>:staged``, staged single fields ``<single key>:staged`` and the commit marker
``<meta key>:commit``.

The metadata hash holds, besides version/node/updated_ms/size/checksum/fields/mechanism/deleted,
``d:<field>`` (digest) and ``l:<field>`` (value length) per field, so a merge can compute the new
size and checksum without reading the other fields' values.
"""

from __future__ import annotations

import hashlib
import os
import socket
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cache
from importlib.resources import files

import redis
from redis._parsers.socket import SocketBuffer
from redis.exceptions import ExecAbortError, NoScriptError, ResponseError

from skylark.state import keys
from skylark.state.bundle import (
    ApplyOutcome,
    ApplyResult,
    Bundle,
    BundleMeta,
    Delta,
    Mechanism,
    Placement,
    Tombstone,
    field_digest,
    size_of,
    validate_fields,
)
from skylark.state.changes import traceparent_or_none
from skylark.state.errors import (
    BundleNotFound,
    BundleTooLarge,
    StoreUnavailable,
    VersionConflict,
    VersionsExhausted,
)
from skylark.state.names import validate_name
from skylark.state.redis_client import connect
from skylark.state.settings import Settings

# A step of a transaction that runs the store's script, and the suffix of staged keys.
SCRIPT = object()
STAGED = ":staged"

_OUTCOMES = {o.value: o for o in ApplyOutcome} | {"mismatch": ApplyOutcome.NO_BASE}


@cache
def _write_script() -> tuple[str, str]:
    """``write.lua`` and its SHA1 (what EVALSHA names it by)."""
    text = files("skylark.state").joinpath("write.lua").read_text()
    return text, hashlib.sha1(text.encode()).hexdigest()


def _flat(fields: Mapping[str, bytes]) -> list[object]:
    return [part for item in fields.items() for part in item]


def transaction(client: redis.Redis, commands: Sequence[tuple]) -> list:
    """``MULTI``, ``commands``, ``EXEC`` in one round trip on one of ``client``'s pooled
    connections; the raw replies, a command's error as an exception object among them.

    What redis-py's transactional pipeline does, without its per-command bookkeeping (response
    callbacks, observability hooks) and with a leaner encoder: together ~250 µs of CPU per write
    on this machine, as much as half of a raw 1 MB HSET. Connection errors are retried as the
    client's other commands are.
    """
    pool = client.connection_pool
    conn = pool.get_connection()
    packed = _pack([("MULTI",), *commands, ("EXEC",)])

    def attempt() -> list:
        conn.send_packed_command(packed)
        replies = _SocketReplies.of(conn)
        refused = []
        for _ in range(len(commands) + 1):  # +OK, then +QUEUED or a refusal for each command
            try:
                reply = replies.read() if replies else conn.read_response()
            except ResponseError as exc:
                reply = exc
            if isinstance(reply, ResponseError):
                refused.append(reply)
        try:
            reply = replies.read() if replies else conn.read_response()
        except ExecAbortError as exc:
            reply = exc
        if isinstance(reply, ExecAbortError):
            raise refused[0] if refused else reply
        if isinstance(reply, ResponseError):
            raise reply
        return reply

    try:
        return conn.retry.call_with_retry(attempt, lambda error: conn.disconnect())
    except BaseException:
        conn.disconnect()  # replies may be left unread on it
        raise
    finally:
        pool.release(conn)


class _SocketReplies:
    """Replies read straight off a connection's socket, RESP2 or RESP3: a large value is received
    into one buffer of its size. redis-py's own (pure-Python) parser copies it through a growing
    BytesIO several times: ~1.9 ms of CPU per MB read here, against ~0.3 ms this way.

    Used only where redis-py's parser holds no bytes read ahead (its buffer is empty between
    commands); anything else (hiredis, a parser of another version) reads through redis-py.
    Bytes are taken off the socket only as far as the replies asked for go, so the parser finds
    the socket as it left it.
    """

    CHUNK = 64 * 1024

    def __init__(self, sock, parse_error) -> None:  # noqa: ANN001 - a socket and a parser's method
        self.sock = sock
        self.parse_error = parse_error
        self.buf = bytearray()
        self.pos = 0

    @classmethod
    def of(cls, conn) -> "_SocketReplies | None":  # noqa: ANN001 - a redis-py Connection
        buffer = getattr(getattr(conn, "_parser", None), "_buffer", None)
        sock = getattr(conn, "_sock", None)
        if type(buffer) is not SocketBuffer or sock is None or buffer.unread_bytes():
            return None
        return cls(sock, conn._parser.parse_error)

    def _recv(self, view=None) -> int:  # noqa: ANN001
        try:
            got = self.sock.recv_into(view) if view is not None else len(chunk := self.sock.recv(self.CHUNK))
        except (socket.timeout, TimeoutError) as exc:
            raise redis.TimeoutError("Timeout reading from socket") from exc
        except OSError as exc:
            raise redis.ConnectionError(f"Error while reading from socket: {exc}") from exc
        if not got:
            raise redis.ConnectionError("Connection closed by server.")
        if view is None:
            self.buf += chunk
        return got

    def _line(self) -> bytes:
        while (end := self.buf.find(b"\r\n", self.pos)) < 0:
            self._recv()
        line = bytes(self.buf[self.pos:end])
        self.pos = end + 2
        return line

    def _bulk(self, n: int) -> bytes:
        have = len(self.buf) - self.pos
        if have >= n + 2:
            value = bytes(self.buf[self.pos:self.pos + n])
            self.pos += n + 2
            return value
        out = bytearray(n + 2)
        view = memoryview(out)
        view[:have] = memoryview(self.buf)[self.pos:]
        del self.buf[:]
        self.pos = 0
        while have < n + 2:  # never past this value: what follows stays in the socket
            have += self._recv(view[have:])
        view.release()
        del out[n:]
        return bytes(out)

    def read(self):  # noqa: ANN201 - any reply
        line = self._line()
        kind, rest = line[:1], line[1:]
        if kind == b"+":
            return rest
        if kind == b"-":
            return self.parse_error(rest.decode("utf-8", "replace"))
        if kind in (b":", b"("):
            return int(rest)
        if kind in (b"$", b"=", b"!"):
            n = int(rest)
            if n < 0:
                return None
            value = self._bulk(n)
            return self.parse_error(value.decode("utf-8", "replace")) if kind == b"!" else value
        if kind in (b"*", b"~"):
            n = int(rest)
            return None if n < 0 else [self.read() for _ in range(n)]
        if kind == b"%":
            return {self.read(): self.read() for _ in range(int(rest))}
        if kind == b"_":
            return None
        if kind == b",":
            return float(rest)
        if kind == b"#":
            return rest == b"t"
        if kind == b">":  # an out-of-band push (RESP3): not a reply to ours
            for _ in range(int(rest)):
                self.read()
            return self.read()
        raise redis.ConnectionError(f"protocol error: unexpected reply type {kind!r}")


# Values above this are sent as they are, not copied into the buffer of the commands around them.
_BIG = 16 * 1024


def _pack(commands: Sequence[tuple]) -> list[bytes | memoryview]:
    """Commands in the Redis protocol, as buffers to send one after the other. Arguments are
    str, int or bytes-like; redis-py's own encoder costs ~4 µs per argument here, a write has
    ~40 of them."""
    out: list[bytes | memoryview] = []
    pieces: list[bytes] = []
    for command in commands:
        pieces.append(b"*%d\r\n" % len(command))
        for arg in command:
            if isinstance(arg, str):
                arg = arg.encode()
            elif isinstance(arg, int):
                arg = b"%d" % arg
            if len(arg) > _BIG:
                pieces.append(b"$%d\r\n" % len(arg))
                out.append(b"".join(pieces))
                out.append(arg)
                pieces = [b"\r\n"]
            else:
                pieces.append(b"$%d\r\n%s\r\n" % (len(arg), arg))
    out.append(b"".join(pieces))
    return out


def as_dict(reply) -> dict:  # noqa: ANN001 - a map (RESP3) or a flat list (RESP2)
    """A hash read through :func:`transaction`, whichever protocol the client speaks."""
    return reply if isinstance(reply, dict) else dict(zip(reply[::2], reply[1::2]))


def _nonce() -> str:
    """Names one transaction: its settle step commits only what its own check step accepted."""
    return os.urandom(8).hex()


def _traceparent(value: str | None) -> str:
    return traceparent_or_none(value) or ""  # '' : the change entry gets no traceparent field


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


def parse_meta(chain: str, function: str, raw: Mapping[bytes, bytes], pttl: int = -1) -> BundleMeta | None:
    """The metadata of live state from its meta hash (None when absent or deleted); ``pttl``:
    Redis' PTTL of the state (-1: no expiry, -2: gone)."""
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

    # -- the one round trip every write is ------------------------------------------------

    def _keys(self, chain: str, function: str, once_key: str | None = None) -> list[str]:
        data_key, meta_key = keys.bundle_key(chain, function), keys.meta_key(chain, function)
        return [data_key, meta_key, self.change_stream, data_key + STAGED, meta_key + ":commit",
                *([once_key] if once_key else [])]

    def _run(self, what: str, steps: Sequence[tuple]) -> list:
        """One MULTI/EXEC of ``steps`` (a step ``(SCRIPT, keys, args)`` runs ``write.lua``; a
        script alone is sent as it is); returns the replies. The script is loaded when Redis lacks it (restarted, or another
        version of it): both its steps failed then and the values were staged only, so the
        transaction is simply run again."""
        text, sha = _write_script()
        commands = [("EVALSHA", sha, len(step[1]), *step[1], *step[2]) if step[0] is SCRIPT else step
                    for step in steps]

        def run() -> list:
            if len(commands) > 1:
                return transaction(self.client, commands)
            try:  # a script alone is atomic already
                return [self.client.execute_command(*commands[0])]
            except ResponseError as exc:
                return [exc]

        with redis_errors(what):
            replies = run()
            if isinstance(replies[0], NoScriptError):
                self.client.script_load(text)
                replies = run()
        error = next((r for r in replies if isinstance(r, Exception)), None)
        if error is not None:
            raise StoreUnavailable(f"Redis refused {what}: {error}")
        return replies

    def _check(self, what: str, chain: str, function: str, reply: list) -> list[str]:
        """The check step's answer as text; refusals that are the store's state, not the
        caller's input, raise :class:`StoreUnavailable`."""
        answer = [part.decode() if isinstance(part, bytes) else str(part) for part in reply]
        if answer[0] == "wrongtype":
            raise StoreUnavailable(f"{what} of {chain}/{function}: key {answer[1]} holds a {answer[2]}")
        if answer[0] == "exhausted":
            raise VersionsExhausted(chain, function, int(answer[1]))
        return answer

    @staticmethod
    def _described(fields: Mapping[str, bytes], digests: Mapping[str, str]) -> list[object]:
        """What the script is told of the values: their count, then name, digest, length each."""
        out: list[object] = [len(fields)]
        for name, value in fields.items():
            out += [name, digests[name], len(value)]
        return out

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
        traceparent: str | None = None,
    ) -> PutResult:
        """Store fields as a *bundle* (one HASH). Merges into the stored bundle unless ``replace``.

        ``expected_version`` makes it a compare-and-set (:class:`VersionConflict` otherwise).
        Raises :class:`BundleTooLarge` if the resulting bundle exceeds the limit.
        ``traceparent`` (W3C) goes into the change entry: the push of this write continues its trace.
        """
        return self._write(chain, function, fields, Mechanism.BUNDLED, replace, expected_version, ttl_s, traceparent)

    def put_single(
        self,
        chain: str,
        function: str,
        fields: Mapping[str, bytes | str],
        *,
        replace: bool = False,
        expected_version: int | None = None,
        ttl_s: int | None = None,
        traceparent: str | None = None,
    ) -> PutResult:
        """Store fields as *single* state: one STRING key per field (the thesis's baseline)."""
        return self._write(chain, function, fields, Mechanism.SINGLE, replace, expected_version, ttl_s, traceparent)

    def _write(self, chain, function, fields, mechanism: Mechanism, replace, expected_version, ttl_s,
               traceparent: str | None = None) -> PutResult:
        validate_name("chain id", chain)
        validate_name("function name", function)
        clean = validate_fields(fields)
        if not clean and not replace:
            raise ValueError("put needs at least one field")
        # A merged bundle is at least as large as what is written into it: refuse that here,
        # before sending the bytes.
        if size_of(clean) > self.max_bundle_bytes:
            raise BundleTooLarge(size_of(clean), self.max_bundle_bytes)
        digests = {name: field_digest(value) for name, value in clean.items()}
        single = mechanism is Mechanism.SINGLE
        prefix = keys.single_key(chain, function, "")
        now = _now_ms()
        check = ["put", chain, function, mechanism.value, int(replace),
                 "" if expected_version is None else int(expected_version), self.max_bundle_bytes,
                 self.node, now, self.change_stream_maxlen, prefix, *self._described(clean, digests)]
        script_keys, nonce = self._keys(chain, function), _nonce()
        steps: list[tuple] = [(SCRIPT, script_keys, [*check, _traceparent(traceparent), nonce])]
        # The values go after the check and before the settle step, each staged key in its own
        # command: a large value is then parsed straight out of Redis's query buffer.
        if single:
            steps += [("SET", f"{prefix}{name}{STAGED}", value) for name, value in clean.items()]
        elif clean:
            steps.append(("HSET", script_keys[3], *_flat(clean)))
        expiry = "" if not ttl_s else int(ttl_s) * 1000
        steps.append((SCRIPT, script_keys, ["settle", mechanism.value, expiry, prefix, nonce,
                                            *(clean if single else ())]))
        answer = self._check("put", chain, function, self._run("put", steps)[0])
        if answer[0] == "conflict":
            raise VersionConflict(int(expected_version), int(answer[1]))
        if answer[0] == "too_large":
            raise BundleTooLarge(int(answer[1]), self.max_bundle_bytes)
        _, version, size, checksum, count, entry_id = answer
        meta = BundleMeta(chain, function, int(version), self.node, now, int(size), checksum, int(count),
                          mechanism)
        return PutResult(meta, entry_id)

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
        clean = self._incoming(meta, bundle.fields)
        if verify:
            digests = Bundle(meta, clean).verify()
        else:
            digests = {name: field_digest(value) for name, value in clean.items()}
        return self._apply("apply", meta, clean, digests, once_key, once_ttl_s)

    def apply_delta(self, delta: Delta, *, once_key: str | None = None, once_ttl_s: int = 86_400) -> ApplyResult:
        """Apply the fields a write elsewhere changed, onto the version they were made on.

        Applied only when this node holds exactly ``delta.base_version`` as a live bundle and
        that base with the new fields laid over it is the announced bundle (its checksum and
        size, computed here from the stored digests and the digests of the bytes received);
        otherwise the outcome is ``NO_BASE`` and nothing is written or marked, so the whole
        bundle can be applied next under the same ``once_key``. Newer, equal and older
        versions, and ``once_key``, as in :meth:`apply`.
        """
        meta = delta.meta
        clean = self._incoming(meta, delta.fields)
        digests = {name: field_digest(value) for name, value in clean.items()}
        return self._apply("delta", meta, clean, digests, once_key, once_ttl_s, delta.base_version)

    def _incoming(self, meta: BundleMeta, fields: Mapping[str, bytes]) -> dict[str, bytes]:
        validate_name("chain id", meta.chain)
        validate_name("function name", meta.function)
        clean = validate_fields(fields)
        if meta.size > self.max_bundle_bytes:
            raise BundleTooLarge(meta.size, self.max_bundle_bytes)
        return clean

    def _apply(self, op: str, meta: BundleMeta, clean: dict[str, bytes], digests: Mapping[str, str],
               once_key: str | None, once_ttl_s: int, base_version: int | None = None) -> ApplyResult:
        script_keys, nonce = self._keys(meta.chain, meta.function, once_key), _nonce()
        check = [op, once_ttl_s, meta.version, meta.node, meta.updated_ms, meta.size, meta.checksum,
                 keys.single_key(meta.chain, meta.function, ""), *self._described(clean, digests),
                 *([base_version] if base_version is not None else []), nonce]
        steps: list[tuple] = [(SCRIPT, script_keys, check)]
        if clean:
            steps.append(("HSET", script_keys[3], *_flat(clean)))
        # The copy expires with the original (relative: the nodes need not share a clock).
        steps.append((SCRIPT, script_keys, ["settle", Mechanism.BUNDLED.value, meta.ttl_ms or "", "", nonce]))
        answer = self._check(op, meta.chain, meta.function, self._run(op, steps)[0])
        return ApplyResult(_OUTCOMES[answer[0]], int(answer[1]), meta.version)

    def delete(self, chain: str, function: str, *, traceparent: str | None = None) -> int:
        """Delete the state (either mechanism), leaving a tombstone that keeps the version so a
        late propagated copy is rejected as stale; returns the tombstone's version.

        Raises :class:`BundleNotFound` when there is nothing to delete.
        """
        validate_name("chain id", chain)
        validate_name("function name", function)
        check = ["delete", chain, function, self.node, _now_ms(), self.change_stream_maxlen,
                 self.tombstone_ttl_s, keys.single_key(chain, function, ""), _traceparent(traceparent)]
        answer = self._check("delete", chain, function,
                             self._run("delete", [(SCRIPT, self._keys(chain, function), check)])[0])
        if answer[0] == "not_found":
            raise BundleNotFound(chain, function)
        return int(answer[1])

    def apply_tombstone(self, tombstone: Tombstone, *, once_key: str | None = None,
                        once_ttl_s: int = 86_400) -> ApplyResult:
        """Apply a delete made elsewhere, by the same rule as :meth:`apply`.

        A newer tombstone drops the local copy (either mechanism) and keeps its version, exactly
        like a local delete, also where nothing was held (so a copy that arrives late is stale);
        an equal version that is a tombstone here already is a ``DUPLICATE``, one that is live
        content is a ``CONFLICT`` (kept); an older one is ``STALE``. ``once_key`` as in
        :meth:`apply`. Not appended to the change stream.
        """
        chain, function = tombstone.chain, tombstone.function
        validate_name("chain id", chain)
        validate_name("function name", function)
        check = ["tombstone", once_ttl_s, tombstone.version, tombstone.node, tombstone.updated_ms,
                 self.tombstone_ttl_s, keys.single_key(chain, function, "")]
        steps = [(SCRIPT, self._keys(chain, function, once_key), check)]
        answer = self._check("tombstone", chain, function, self._run("tombstone", steps)[0])
        return ApplyResult(_OUTCOMES[answer[0]], int(answer[1]), tombstone.version)

    # -- where the handlers pushed a bundle -----------------------------------------------------

    def record_placement(self, chain: str, function: str, placement: Placement, *,
                         ttl_ms: int | None = None) -> None:
        """Note where the handlers pushed ``placement.version`` (one SET, kept as long as the
        bundle, or as a tombstone when the bundle does not expire)."""
        validate_name("chain id", chain)
        validate_name("function name", function)
        with redis_errors("record_placement"):
            self.client.set(keys.placement_key(chain, function), placement.encode(),
                            px=ttl_ms if ttl_ms and ttl_ms > 0 else self.tombstone_ttl_s * 1000)

    def placement(self, chain: str, function: str) -> Placement | None:
        """The last placement recorded for (chain, function), or None (not pushed yet, or never)."""
        validate_name("chain id", chain)
        validate_name("function name", function)
        with redis_errors("placement"):
            return Placement.decode(self.client.get(keys.placement_key(chain, function)))

    # -- reads ----------------------------------------------------------------------------

    def get_bundle(self, chain: str, function: str) -> Bundle:
        """The whole bundle in one round trip; :class:`BundleNotFound` if there is none."""
        validate_name("chain id", chain)
        validate_name("function name", function)
        data_key, meta_key = keys.bundle_key(chain, function), keys.meta_key(chain, function)
        with redis_errors("get_bundle"):
            # A write's ttl_s expires data and meta together: the meta's PTTL is the bundle's.
            replies = transaction(self.client, [("HGETALL", data_key), ("HGETALL", meta_key), ("PTTL", meta_key)])
        error = next((r for r in replies if isinstance(r, Exception)), None)
        if error is not None:
            raise StoreUnavailable(f"Redis refused get_bundle: {error}")
        data, raw_meta, pttl = replies
        meta = parse_meta(chain, function, as_dict(raw_meta), pttl)
        if meta is None or meta.mechanism is not Mechanism.BUNDLED:
            raise BundleNotFound(chain, function)
        return Bundle(meta, {name.decode(): value for name, value in as_dict(data).items()})

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
        return parse_meta(chain, function, dict(zip(names, raw)))

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
