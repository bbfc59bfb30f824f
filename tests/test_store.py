"""The state library against a real redis-server: both mechanisms, versions, atomicity, errors."""

from __future__ import annotations

import os
import random
import threading

import pytest
import redis

from skylark.state import keys
from skylark.state.bundle import ApplyOutcome, Tombstone, checksum_of, make_bundle, size_of
from skylark.state.changes import ChangeRecord
from skylark.runtime.embedded import free_port
from skylark.state.errors import (
    BundleNotFound,
    BundleTooLarge,
    ChecksumMismatch,
    InvalidName,
    StoreUnavailable,
    VersionConflict,
)
from skylark.state.redis_client import connect
from skylark.state.store import StateStore


@pytest.fixture()
def store(redis_server, redis_client) -> StateStore:
    return StateStore(redis_server.client(), node="node-a", max_bundle_bytes=1024 * 1024)


def entries(client, stream=keys.DEFAULT_CHANGE_STREAM):
    return [(eid.decode(), {k.decode(): v.decode() for k, v in f.items()}) for eid, f in client.xrange(stream)]


def command_calls(client, name: str) -> int:
    stats = client.info("commandstats")
    return int(stats.get(f"cmdstat_{name}", {}).get("calls", 0))


def test_bundled_round_trip_with_metadata(store, redis_client):
    fields = {"image": b"\x00\x01" * 500, "info": b'{"w": 10}'}
    result = store.put("chain-1", "preprocess", fields)
    bundle = store.get_bundle("chain-1", "preprocess")
    assert bundle.fields == fields
    meta = bundle.meta
    assert meta.version == 1 == result.meta.version
    assert meta.node == "node-a"
    assert meta.size == len("image") + 1000 + len("info") + 9 == size_of(fields)
    assert meta.checksum == checksum_of(fields) == result.meta.checksum
    assert meta.field_count == 2
    bundle.verify()


def test_merge_replace_and_sizes(store):
    store.put("c", "f", {"a": b"1234", "b": b"xy"})
    second = store.put("c", "f", {"a": b"1"})
    assert second.meta.version == 2
    bundle = store.get_bundle("c", "f")
    assert bundle.fields == {"a": b"1", "b": b"xy"}
    assert bundle.meta.size == size_of(bundle.fields) == 5
    assert bundle.meta.checksum == checksum_of(bundle.fields)
    third = store.put("c", "f", {"z": b""}, replace=True)
    assert third.meta.version == 3
    assert store.get_bundle("c", "f").fields == {"z": b""}
    assert store.get_bundle("c", "f").meta.size == 1


def test_single_round_trip_costs_one_get_per_field(store, redis_client):
    fields = {f"p{i}": bytes([i]) * 100 for i in range(5)}
    store.put_single("c", "f", fields)
    before = command_calls(redis_client, "get")
    assert store.get_single("c", "f", list(fields)) == fields
    assert command_calls(redis_client, "get") - before == 5
    meta = store.get_meta("c", "f")
    assert meta.mechanism.value == "single" and meta.size == size_of(fields)
    assert meta.checksum == checksum_of(fields)
    with pytest.raises(BundleNotFound):
        store.get_single("c", "f", ["p0", "missing"])
    with pytest.raises(BundleNotFound):
        store.get_bundle("c", "f")  # single state is not a bundle


def test_bundle_read_is_one_transaction(store, redis_client):
    store.put("c", "f", {f"p{i}": b"x" * 1000 for i in range(5)})
    before = command_calls(redis_client, "exec"), command_calls(redis_client, "get")
    store.get_bundle("c", "f")
    assert command_calls(redis_client, "exec") - before[0] == 1
    assert command_calls(redis_client, "get") - before[1] == 0


def test_every_write_appends_one_change_entry(store, redis_client):
    first = store.put("c1", "fn", {"a": b"1", "b": b"2"})
    store.put_single("c1", "other", {"x": b"9"})
    version = store.delete("c1", "fn")
    got = entries(redis_client)
    assert [eid for eid, _ in got][0] == first.entry_id
    assert len(got) == 3
    changes = [ChangeRecord.from_stream_fields(f) for _, f in got]
    assert (changes[0].op, changes[0].mechanism, changes[0].fields, changes[0].version) == ("put", "bundled", ("a", "b"), 1)
    assert changes[0].size == first.meta.size and changes[0].checksum == first.meta.checksum
    assert (changes[1].mechanism, changes[1].fields) == ("single", ("x",))
    assert (changes[2].op, changes[2].version) == ("delete", version)
    # every value is a plain string, as a RedisStreamSource's flat array requires
    assert list(got[0][1]) == ["chain", "function", "op", "mechanism", "fields", "version", "node", "size", "checksum", "ts"]


def test_change_stream_is_bounded(redis_server, redis_client):
    store = StateStore(redis_server.client(), node="n", change_stream_maxlen=100)
    for i in range(1000):
        store.put("c", "f", {"v": str(i)})
    assert redis_client.xlen(keys.DEFAULT_CHANGE_STREAM) < 400  # MAXLEN ~ trims by whole nodes


def test_too_large_writes_nothing(store, redis_client):
    with pytest.raises(BundleTooLarge) as err:
        store.put("c", "f", {"big": b"x" * (1024 * 1024)})
    assert err.value.limit == 1024 * 1024
    assert redis_client.keys("*") == []
    store.put("c", "f", {"a": b"x" * 1000})
    with pytest.raises(BundleTooLarge):
        store.put("c", "f", {"b": b"x" * (1024 * 1024 - 1000)})  # merged total is over the limit
    assert store.get_bundle("c", "f").fields == {"a": b"x" * 1000}
    assert len(entries(redis_client)) == 1


def test_compare_and_set(store, redis_client):
    store.put("c", "f", {"a": b"1"})
    store.put("c", "f", {"a": b"2"}, expected_version=1)
    with pytest.raises(VersionConflict) as err:
        store.put("c", "f", {"a": b"3"}, expected_version=1)
    assert (err.value.expected, err.value.actual) == (1, 2)
    assert store.get_bundle("c", "f").fields == {"a": b"2"}
    assert len(entries(redis_client)) == 2


@pytest.mark.parametrize("chain,function,field", [
    ("bad chain", "f", "a"), ("c", "f/x", "a"), ("c", "f", "a,b"), ("x" * 129, "f", "a"), ("", "f", "a"),
])
def test_invalid_names_write_nothing(store, redis_client, chain, function, field):
    with pytest.raises(InvalidName):
        store.put(chain, function, {field: b"1"})
    assert redis_client.keys("*") == []


def test_ttl_applies_to_data_and_meta(store, redis_client):
    store.put("c", "f", {"a": b"1"}, ttl_s=100)
    assert 0 < redis_client.ttl(keys.bundle_key("c", "f")) <= 100
    assert 0 < redis_client.ttl(keys.meta_key("c", "f")) <= 100
    store.put("c", "f", {"a": b"2"})  # a write without TTL makes the state persistent again
    assert redis_client.ttl(keys.bundle_key("c", "f")) == -1
    assert store.get_bundle("c", "f").meta.ttl_ms is None


def test_a_copy_expires_with_its_original(store, redis_client, redis_factory):
    store.put("c", "f", {"a": b"1"}, ttl_s=100)
    original = store.get_bundle("c", "f")
    assert 90_000 < original.meta.ttl_ms <= 100_000      # the time it has left, read with the bundle
    neighbour = StateStore(redis_factory().client(), node="node-b")
    assert neighbour.apply(original).outcome is ApplyOutcome.APPLIED
    for key in (keys.bundle_key("c", "f"), keys.meta_key("c", "f")):
        assert 0 < neighbour.client.pttl(key) <= original.meta.ttl_ms
    copy = neighbour.get_bundle("c", "f")
    assert copy.fields == {"a": b"1"} and 0 < copy.meta.ttl_ms <= original.meta.ttl_ms
    # a newer version without expiry makes the copy persistent, as on the origin
    store.put("c", "f", {"a": b"2"})
    assert neighbour.apply(store.get_bundle("c", "f")).outcome is ApplyOutcome.APPLIED
    assert neighbour.client.pttl(keys.bundle_key("c", "f")) == -1


def test_two_writers_versions_strictly_increase_without_torn_reads(redis_server, redis_client):
    store = StateStore(redis_server.client(), node="node-a")
    seen: dict[str, list[int]] = {"w0": [], "w1": []}
    torn: list[str] = []
    done = threading.Event()

    def writer(name: str) -> None:
        for i in range(1000):
            # two fields that must always change together
            value = f"{name}-{i}".encode()
            seen[name].append(store.put("c", "f", {"left": value, "right": value}).meta.version)

    def reader() -> None:
        last = 0
        while not done.is_set():
            try:
                bundle = store.get_bundle("c", "f")
            except BundleNotFound:
                continue
            if bundle.fields["left"] != bundle.fields["right"] or bundle.meta.version < last:
                torn.append(repr(bundle.meta))
            bundle.verify()
            last = bundle.meta.version

    threads = [threading.Thread(target=writer, args=(n,)) for n in seen]
    watcher = threading.Thread(target=reader)
    watcher.start()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    done.set()
    watcher.join()
    for versions in seen.values():
        assert versions == sorted(versions) and len(set(versions)) == 1000
    assert sorted(seen["w0"] + seen["w1"]) == list(range(1, 2001))
    assert torn == []
    assert store.get_meta("c", "f").version == 2000
    assert redis_client.xlen(keys.DEFAULT_CHANGE_STREAM) == 2000


def test_apply_newer_duplicate_stale_conflict(store, redis_client):
    v3 = make_bundle("c", "f", {"a": b"three"}, version=3, node="node-b", updated_ms=30)
    assert store.apply(v3).outcome is ApplyOutcome.APPLIED
    assert store.apply(v3).outcome is ApplyOutcome.DUPLICATE
    v2 = make_bundle("c", "f", {"a": b"two"}, version=2, node="node-b", updated_ms=20)
    stale = store.apply(v2)
    assert (stale.outcome, stale.local_version, stale.incoming_version) == (ApplyOutcome.STALE, 3, 2)
    other3 = make_bundle("c", "f", {"a": b"other"}, version=3, node="node-c", updated_ms=31)
    assert store.apply(other3).outcome is ApplyOutcome.CONFLICT
    bundle = store.get_bundle("c", "f")
    assert bundle.fields == {"a": b"three"} and bundle.meta.node == "node-b" and bundle.meta.version == 3
    # applied bundles are not changes of this node: nothing to propagate again
    assert entries(redis_client) == []
    # a local write continues the version sequence
    assert store.put("c", "f", {"b": b"1"}).meta.version == 4


def test_apply_rejects_corrupt_content_and_writes_nothing(store, redis_client):
    good = make_bundle("c", "f", {"a": b"1"}, version=1, node="node-b", updated_ms=1)
    from skylark.state.bundle import Bundle

    corrupt = Bundle(good.meta, {"a": b"2"})
    with pytest.raises(ChecksumMismatch):
        store.apply(corrupt)
    truncated = Bundle(good.meta, {})
    with pytest.raises(ChecksumMismatch):
        store.apply(truncated)
    big = make_bundle("c", "f", {"a": b"x" * (1024 * 1024 + 1)}, version=1, node="node-b", updated_ms=1)
    with pytest.raises(BundleTooLarge):
        store.apply(big)
    assert redis_client.keys("*") == []


def test_concurrent_applies_keep_the_newest(store):
    bundles = [make_bundle("c", "f", {"v": str(v).encode()}, version=v, node="node-b", updated_ms=v)
               for v in range(1, 201)]
    random.Random(7).shuffle(bundles)
    halves = [bundles[::2], bundles[1::2]]
    outcomes: list[ApplyOutcome] = []

    def apply_all(items):
        for b in items:
            outcomes.append(store.apply(b).outcome)

    threads = [threading.Thread(target=apply_all, args=(h,)) for h in halves]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    final = store.get_bundle("c", "f")
    assert final.meta.version == 200 and final.fields == {"v": b"200"}
    assert set(outcomes) <= {ApplyOutcome.APPLIED, ApplyOutcome.STALE}
    assert outcomes.count(ApplyOutcome.APPLIED) >= 1


def test_apply_once_key_marks_with_the_outcome_and_a_second_delivery_is_seen(store, redis_client):
    v2 = make_bundle("c", "f", {"a": b"two"}, version=2, node="node-b", updated_ms=2)
    first = store.apply(v2, once_key="once:e1", once_ttl_s=60)
    assert first.outcome is ApplyOutcome.APPLIED
    assert redis_client.get("once:e1") == b"1" and 0 < redis_client.ttl("once:e1") <= 60
    # the same delivery again: recognised by its key, nothing compared or written
    again = store.apply(v2, once_key="once:e1", once_ttl_s=60)
    assert (again.outcome, again.local_version) == (ApplyOutcome.SEEN, 2)
    # a refused apply is marked too: its redelivery is not counted as stale a second time
    v1 = make_bundle("c", "f", {"a": b"one"}, version=1, node="node-b", updated_ms=1)
    assert store.apply(v1, once_key="once:e0").outcome is ApplyOutcome.STALE
    assert store.apply(v1, once_key="once:e0").outcome is ApplyOutcome.SEEN
    # content that fails verification leaves no mark: the delivery may be retried
    from skylark.state.bundle import Bundle

    with pytest.raises(ChecksumMismatch):
        store.apply(Bundle(v2.meta, {"a": b"forged"}), once_key="once:bad")
    assert not redis_client.exists("once:bad")
    assert store.get_bundle("c", "f").fields == {"a": b"two"}


def test_concurrent_deliveries_of_one_event_apply_it_once(store):
    bundle = make_bundle("c", "f", {"a": b"x" * 4096}, version=1, node="node-b", updated_ms=1)
    outcomes: list[ApplyOutcome] = []
    barrier = threading.Barrier(8)

    def deliver():
        barrier.wait()
        outcomes.append(store.apply(bundle, once_key="once:same").outcome)

    threads = [threading.Thread(target=deliver) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    # the script runs one delivery at a time: the first applies and marks, the others see the mark
    assert sorted(outcomes) == sorted([ApplyOutcome.APPLIED] + [ApplyOutcome.SEEN] * 7)


def test_delete_leaves_a_tombstone(store, redis_client):
    store.put("c", "f", {"a": b"1"})
    store.put("c", "f", {"a": b"2"})
    assert store.delete("c", "f") == 3
    with pytest.raises(BundleNotFound):
        store.get_bundle("c", "f")
    assert store.get_meta("c", "f") is None
    assert store.local_version("c", "f") == 3
    late = make_bundle("c", "f", {"a": b"2"}, version=2, node="node-b", updated_ms=1)
    assert store.apply(late).outcome is ApplyOutcome.STALE
    with pytest.raises(BundleNotFound):
        store.delete("c", "f")
    assert store.put("c", "f", {"b": b"new"}).meta.version == 4
    assert store.get_bundle("c", "f").fields == {"b": b"new"}


def test_delete_single_state_removes_its_keys(store, redis_client):
    store.put_single("c", "f", {"a": b"1", "b": b"2"})
    store.delete("c", "f")
    assert redis_client.exists(keys.single_key("c", "f", "a"), keys.single_key("c", "f", "b")) == 0


def test_unreachable_redis_raises_store_unavailable():
    client = connect(f"redis://127.0.0.1:{free_port()}/0", timeout_s=0.2)
    store = StateStore(client, node="n")
    with pytest.raises(StoreUnavailable):
        store.put("c", "f", {"a": b"1"})
    with pytest.raises(StoreUnavailable):
        store.get_bundle("c", "f")
    assert store.ping() is False


def test_redis_stopping_mid_way(redis_factory):
    server = redis_factory()
    store = StateStore(connect(server.url, timeout_s=0.3), node="n")
    store.put("c", "f", {"a": b"1"})
    server.stop()
    with pytest.raises(StoreUnavailable):
        store.get_bundle("c", "f")


def test_auth_password_in_url(redis_factory):
    server = redis_factory(password="s3cret")
    store = StateStore(connect(server.url), node="n")
    store.put("c", "f", {"a": b"1"})
    assert store.get_bundle("c", "f").fields == {"a": b"1"}
    wrong = StateStore(connect(server.url.replace("s3cret", "nope"), retries=0), node="n")
    with pytest.raises(StoreUnavailable):
        wrong.get_bundle("c", "f")
    no_auth = f"redis://127.0.0.1:{server.port}/0"
    with pytest.raises(StoreUnavailable):
        StateStore(connect(no_auth, retries=0), node="n").put("c", "f", {"a": b"2"})
    assert store.get_bundle("c", "f").fields == {"a": b"1"}


def test_put_requires_bytes(store, redis_client):
    with pytest.raises(TypeError):
        store.put("c", "f", {"a": 1})
    with pytest.raises(ValueError):
        store.put("c", "f", {})
    assert redis_client.keys("*") == []


def test_redis_py_errors_do_not_leak(store):
    # A server-side refusal (here: the change stream key holds the wrong type) is reported as
    # the store being unusable, and the script wrote nothing before failing.
    store.client.set(keys.DEFAULT_CHANGE_STREAM, "not a stream")
    with pytest.raises(StoreUnavailable):
        store.put("c", "f", {"a": b"1"})
    assert store.client.exists(keys.bundle_key("c", "f"), keys.meta_key("c", "f")) == 0
    store.client.delete(keys.DEFAULT_CHANGE_STREAM)
    store.client.set(keys.meta_key("c", "f"), "wrong type")
    with pytest.raises(StoreUnavailable):
        store.put("c", "f", {"a": b"1"})
    assert store.client.exists(keys.bundle_key("c", "f"), keys.DEFAULT_CHANGE_STREAM) == 0


def test_apply_tombstone_newer_duplicate_conflict_stale(store, redis_client):
    store.put_single("c", "f", {"a": b"1", "b": b"2"})           # v1, single mechanism here
    assert store.apply_tombstone(Tombstone("c", "f", 1, "node-b", 5)).outcome is ApplyOutcome.CONFLICT
    applied = store.apply_tombstone(Tombstone("c", "f", 2, "node-b", 6), once_key="once:t", once_ttl_s=60)
    assert (applied.outcome, applied.local_version) == (ApplyOutcome.APPLIED, 2)
    with pytest.raises(BundleNotFound):
        store.get_single("c", "f", ["a"])
    assert store.local_version("c", "f") == 2
    assert redis_client.keys("skylark:single:*") == [] and redis_client.exists("once:t")
    assert 0 < redis_client.ttl(keys.meta_key("c", "f")) <= store.tombstone_ttl_s
    assert store.apply_tombstone(Tombstone("c", "f", 2, "node-b", 6)).outcome is ApplyOutcome.DUPLICATE
    assert store.apply_tombstone(Tombstone("c", "f", 2, "node-b", 6), once_key="once:t").outcome is ApplyOutcome.SEEN
    assert store.apply_tombstone(Tombstone("c", "f", 1, "node-b", 4)).outcome is ApplyOutcome.STALE
    # a copy of the deleted version that arrives after the tombstone does not bring it back
    late = make_bundle("c", "f", {"a": b"1"}, version=1, node="node-b", updated_ms=1)
    assert store.apply(late).outcome is ApplyOutcome.STALE
    # remote deletes are not changes of this node
    assert [fields["op"] for _, fields in entries(redis_client)] == ["put"]


def test_a_tombstone_for_state_never_held_here_still_guards_the_version(store):
    assert store.apply_tombstone(Tombstone("c", "f", 4, "node-b", 9)).outcome is ApplyOutcome.APPLIED
    assert store.local_version("c", "f") == 4 and store.get_meta("c", "f") is None
    copy = make_bundle("c", "f", {"a": b"x"}, version=3, node="node-b", updated_ms=3)
    assert store.apply(copy).outcome is ApplyOutcome.STALE
    newer = make_bundle("c", "f", {"a": b"y"}, version=5, node="node-b", updated_ms=10)
    assert store.apply(newer).outcome is ApplyOutcome.APPLIED
    assert store.get_bundle("c", "f").fields == {"a": b"y"}


def test_a_copy_at_the_int64_ceiling_refuses_the_next_write_cleanly(store, redis_client):
    from skylark.state.bundle import make_bundle
    from skylark.state.errors import VersionConflict, VersionsExhausted
    from skylark.state.numbers import INT64_MAX

    store.apply(make_bundle("c-max", "f", {"x": b"1"}, version=INT64_MAX, node="elsewhere", updated_ms=1))
    before = {k: redis_client.dump(k) for k in redis_client.keys("*")}
    for write in (lambda: store.put("c-max", "f", {"x": b"2"}), lambda: store.delete("c-max", "f")):
        with pytest.raises(VersionsExhausted, match="largest an int64 holds") as info:
            write()
        assert isinstance(info.value, VersionConflict) and info.value.code == "versions_exhausted"
    assert {k: redis_client.dump(k) for k in redis_client.keys("*")} == before  # nothing half-written


def test_every_write_is_one_round_trip_without_watch(store, redis_client):
    calls = ("exec", "watch", "evalsha", "multi")

    def counted(write):
        before = {name: command_calls(redis_client, name) for name in calls}
        write()
        return {name: command_calls(redis_client, name) - before[name] for name in calls}

    one_exec = {"exec": 1, "watch": 0, "evalsha": 2, "multi": 1}  # check step, values, settle step
    assert counted(lambda: store.put("c", "f", {"a": b"1", "b": b"2"})) == one_exec
    assert counted(lambda: store.put("c", "f", {"a": b"3"}, expected_version=1)) == one_exec
    assert counted(lambda: store.put_single("c", "s", {"a": b"1"})) == one_exec
    copy = make_bundle("c", "g", {"a": b"x"}, version=5, node="node-b", updated_ms=1)
    assert counted(lambda: store.apply(copy, once_key="once:1")) == one_exec
    script_alone = {"exec": 0, "watch": 0, "evalsha": 1, "multi": 0}
    assert counted(lambda: store.delete("c", "g")) == script_alone
    assert counted(lambda: store.apply_tombstone(Tombstone("c", "t", 3, "node-b", 1))) == script_alone
    # nothing of a write in flight is left behind: no staged values, no commit marker
    assert [k for k in redis_client.keys("*") if k.endswith((b":staged", b":commit"))] == []


def test_a_merge_keeps_the_other_fields_and_their_ttl_rules(store, redis_client):
    store.put("c", "f", {"a": b"1" * 100, "b": b"2" * 100}, ttl_s=100)
    store.put("c", "f", {"b": b"3"}, ttl_s=50)
    bundle = store.get_bundle("c", "f")
    assert bundle.fields == {"a": b"1" * 100, "b": b"3"} and bundle.meta.field_count == 2
    bundle.verify()
    assert 0 < redis_client.ttl(keys.bundle_key("c", "f")) <= 50
    store.put_single("c", "s", {"a": b"1", "b": b"2"})
    store.put_single("c", "s", {"b": b"3"}, ttl_s=50)
    assert store.get_single("c", "s", ["a", "b"]) == {"a": b"1", "b": b"3"}
    assert redis_client.ttl(keys.single_key("c", "s", "a")) == -1
    assert 0 < redis_client.ttl(keys.single_key("c", "s", "b")) <= 50
    # a bundle replacing single state (and back) drops the other mechanism's keys
    store.put("c", "s", {"z": b"9"})
    assert redis_client.keys("skylark:single:*") == [] and store.get_bundle("c", "s").fields == {"z": b"9"}


def test_a_write_after_redis_lost_its_scripts_reloads_and_leaves_nothing_staged(store, redis_client):
    store.put("c", "f", {"a": b"1"})
    redis_client.script_flush()
    assert store.put("c", "f", {"b": b"2"}).meta.version == 2
    redis_client.script_flush()
    assert store.apply(make_bundle("c", "g", {"a": b"x"}, version=1, node="node-b", updated_ms=1)).changed
    redis_client.script_flush()
    assert store.delete("c", "g") == 2
    assert store.get_bundle("c", "f").fields == {"a": b"1", "b": b"2"}
    assert [k for k in redis_client.keys("*") if k.endswith((b":staged", b":commit"))] == []


def test_versions_past_what_a_lua_number_holds_stay_exact(store):
    # Lua numbers are doubles: 2**60 + 1 would round to 2**60 there.
    big = 2**60 + 1
    store.apply(make_bundle("c", "f", {"a": b"1"}, version=big, node="node-b", updated_ms=1))
    assert store.put("c", "f", {"a": b"2"}).meta.version == big + 1
    assert store.local_version("c", "f") == big + 1
    stale = make_bundle("c", "f", {"a": b"0"}, version=big, node="node-b", updated_ms=1)
    assert store.apply(stale).outcome is ApplyOutcome.STALE
    assert store.delete("c", "f") == big + 2
    for nines in (9, 99, 999_999):
        store.apply(make_bundle("n", str(nines), {"a": b"1"}, version=nines, node="node-b", updated_ms=1))
        assert store.put("n", str(nines), {"a": b"2"}).meta.version == nines + 1


def _delta(origin, chain, function, base_version, changed):
    from skylark.state.bundle import Delta

    full = origin.get_bundle(chain, function)
    return Delta(full.meta, base_version, {name: full.fields[name] for name in changed})


def test_apply_delta_on_its_base_and_refusals_that_ask_for_the_whole(store, redis_factory, redis_client):
    origin = StateStore(redis_factory().client(), node="node-b")
    origin.put("c", "f", {f"p{i}": bytes([i]) * 1000 for i in range(5)}, ttl_s=100)
    store.apply(origin.get_bundle("c", "f"))
    origin.put("c", "f", {"p2": b"new"}, ttl_s=100)
    delta = _delta(origin, "c", "f", 1, ["p2"])
    # not held here at the base version: nothing written, nothing marked
    elsewhere = StateStore(redis_factory().client(), node="node-c")
    result = elsewhere.apply_delta(delta, once_key="once:d")
    assert (result.outcome, result.local_version) == (ApplyOutcome.NO_BASE, 0)
    assert elsewhere.client.keys("*") == []
    # applied on the base: the result is the origin's bundle, checksum verified here
    result = store.apply_delta(delta, once_key="once:d")
    assert (result.outcome, result.local_version) == (ApplyOutcome.APPLIED, 2)
    copy = store.get_bundle("c", "f")
    assert copy.fields == origin.get_bundle("c", "f").fields and copy.meta.checksum == delta.meta.checksum
    copy.verify()
    assert copy.meta.node == "node-b" and 0 < copy.meta.ttl_ms <= 100_000  # ttl_ms of the origin's copy
    assert store.apply_delta(delta, once_key="once:d").outcome is ApplyOutcome.SEEN
    assert store.apply_delta(delta).outcome is ApplyOutcome.DUPLICATE
    # a base with other content (a conflicting copy) does not make the announced bundle
    origin.put("c", "f", {"p3": b"v3"})
    store.client.hset(keys.bundle_key("c", "f"), "p0", b"tampered")
    store.client.hset(keys.meta_key("c", "f"), "d:p0", "0" * 32)
    mismatch = store.apply_delta(_delta(origin, "c", "f", 2, ["p3"]), once_key="once:m")
    assert mismatch.outcome is ApplyOutcome.NO_BASE and not redis_client.exists("once:m")
    assert store.local_version("c", "f") == 2
    # a delta on a base this node has not reached yet: the whole bundle is needed
    origin.put("c", "f", {"p4": b"v4"})
    assert store.apply_delta(_delta(origin, "c", "f", 3, ["p4"])).outcome is ApplyOutcome.NO_BASE
    assert store.apply(origin.get_bundle("c", "f")).changed
    assert store.get_bundle("c", "f").fields == origin.get_bundle("c", "f").fields
    # older than what is here: stale, and marked like any refused apply
    assert store.apply_delta(delta, once_key="once:s").outcome is ApplyOutcome.STALE
    assert redis_client.exists("once:s")
    assert [k for k in redis_client.keys("*") if k.endswith((b":staged", b":commit"))] == []


def test_leftovers_of_a_write_that_never_settled_cannot_leak_into_the_next(store, redis_client):
    # What a transaction whose settle step never ran would leave (it cannot happen within one
    # EXEC; this checks that even then a later write takes nothing of it).
    store.put("c", "f", {"a": b"1"})
    redis_client.set(keys.meta_key("c", "f") + ":commit", "not this transaction's nonce")
    redis_client.hset(keys.bundle_key("c", "f") + ":staged", "junk", b"left over")
    with pytest.raises(VersionConflict):
        store.put("c", "f", {"a": b"2"}, expected_version=7)
    assert store.get_bundle("c", "f").fields == {"a": b"1"}
    redis_client.hset(keys.bundle_key("c", "f") + ":staged", "junk", b"left over")
    store.put("c", "f", {"b": b"2"}, replace=True)
    store.put("c", "g", {"b": b"2"})
    redis_client.hset(keys.bundle_key("c", "h") + ":staged", "junk", b"left over")
    store.put("c", "h", {"b": b"2"})  # first write: merges into nothing
    for function in "fgh":
        assert store.get_bundle("c", function).fields == {"b": b"2"}
    assert [k for k in redis_client.keys("*") if k.endswith((b":staged", b":commit"))] == []


@pytest.mark.parametrize("protocol", [2, 3])
def test_large_values_read_back_exactly_over_resp2_and_resp3(redis_server, redis_client, redis_factory, protocol):
    # Replies are read straight off the socket (store._SocketReplies), values larger than one
    # read of it into a buffer of their own: what follows them must stay readable by redis-py.
    client = redis.Redis(host=redis_server.host, port=redis_server.port, protocol=protocol)
    store = StateStore(client, node="node-a")
    fields = {"big": os.urandom(3 * 1024 * 1024 + 7), "small": b"x", "empty": b"", "crlf": b"\r\n" * 40_000}
    store.put("c", "f", fields, ttl_s=100)
    bundle = store.get_bundle("c", "f")
    assert bundle.fields == fields and 0 < bundle.meta.ttl_ms <= 100_000
    bundle.verify()
    assert client.ping() and client.get("nothing") is None  # the connection is in step with its parser
    other = redis_factory()
    copy = StateStore(redis.Redis(host=other.host, port=other.port, protocol=protocol), node="node-b")
    assert copy.apply(bundle).changed and copy.get_bundle("c", "f").fields == fields
    with pytest.raises(VersionConflict):
        store.put("c", "f", {"small": b"y"}, expected_version=7)
    assert store.get_bundle("c", "f").fields == fields
