"""The Redis ACL the chart writes, run for real: the rendered start-up script generates the ACL file
and a real redis-server loads it.

eventing-redis v1.16's adapter sends no AUTH without TLS, so with auth on the password-less
``default`` user must be able to consume the change stream through the consumer group — and do
nothing else; the Skylark services authenticate as the chart's user with the Secret's password.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
import redis

from chart_fixtures import RELEASE, of_kind, rendered
from skylark.state import keys

PASSWORD = "s3cret-Passw0rd"


def _redis_configmap() -> dict[str, str]:
    objects = rendered(None)
    return next(c for c in of_kind(objects, "ConfigMap") if c["metadata"]["name"] == f"{RELEASE}-redis")["data"]


@pytest.fixture()
def acl_redis(redis_factory, tmp_path: Path):
    script = tmp_path / "write-acl.sh"
    script.write_text(_redis_configmap()["write-acl.sh"])
    acl_file = tmp_path / "users.acl"
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "REDIS_PASSWORD": PASSWORD, "REDIS_ACL_FILE": str(acl_file)}
    subprocess.run(["sh", str(script)], env=env, check=True, timeout=10)
    assert PASSWORD not in acl_file.read_text(), "only the password's hash is written"
    return redis_factory(extra_args=("--aclfile", str(acl_file)))


def test_the_script_needs_the_password(tmp_path: Path):
    script = tmp_path / "write-acl.sh"
    script.write_text(_redis_configmap()["write-acl.sh"])
    result = subprocess.run(["sh", str(script)], env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"),
                                                        "REDIS_ACL_FILE": str(tmp_path / "acl")},
                            capture_output=True, text=True, timeout=10)
    assert result.returncode != 0 and "REDIS_PASSWORD" in result.stderr


def test_default_user_can_consume_the_change_stream_like_the_adapter(acl_redis):
    admin = redis.Redis(host=acl_redis.host, port=acl_redis.port, username="skylark", password=PASSWORD)
    anonymous = redis.Redis(host=acl_redis.host, port=acl_redis.port, protocol=2)
    stream, group = keys.DEFAULT_CHANGE_STREAM, "skylark-handlers"
    # What the eventing-redis adapter does (pkg/source/adapter/adapter.go): XINFO GROUPS, XGROUP
    # CREATE ... $ MKSTREAM, XREADGROUP, XACK, and on shutdown XGROUP DELCONSUMER / DESTROY.
    assert anonymous.ping()
    with pytest.raises(redis.ResponseError):
        anonymous.xinfo_groups(stream)  # no such key yet: the adapter then creates it
    assert anonymous.xgroup_create(stream, group, id="$", mkstream=True)
    entry_id = admin.xadd(stream, {"chain": "c1", "function": "preprocess", "op": "put"})
    [[_, [(read_id, fields)]]] = anonymous.xreadgroup(group, f"{group}-0", {stream: ">"}, count=1, block=1000)
    assert read_id == entry_id and fields[b"chain"] == b"c1"
    assert anonymous.xack(stream, group, read_id) == 1
    assert [g["name"] for g in anonymous.xinfo_groups(stream)] == [group.encode()]
    anonymous.xgroup_delconsumer(stream, group, f"{group}-0")
    assert anonymous.xgroup_destroy(stream, group) == 1
    admin.close()
    anonymous.close()


@pytest.mark.parametrize(
    "command",
    [
        ("HGETALL", "skylark:bundle:c1:preprocess"),
        ("GET", "skylark:single:c1:preprocess:f"),
        ("XADD", keys.DEFAULT_CHANGE_STREAM, "*", "forged", "entry"),
        ("XRANGE", keys.DEFAULT_CHANGE_STREAM, "-", "+"),
        ("DEL", keys.DEFAULT_CHANGE_STREAM),
        ("XREADGROUP", "GROUP", "g", "c", "STREAMS", "skylark:alarms", ">"),
        ("KEYS", "*"),
        ("FLUSHALL",),
        ("CONFIG", "GET", "*"),
        ("ACL", "LIST"),
    ],
)
def test_default_user_can_do_nothing_else(acl_redis, command):
    anonymous = redis.Redis(host=acl_redis.host, port=acl_redis.port)
    with pytest.raises(redis.exceptions.NoPermissionError):
        anonymous.execute_command(*command)
    anonymous.close()


def test_the_skylark_user_needs_the_password_and_then_may_do_everything(acl_redis):
    with pytest.raises(redis.AuthenticationError):
        redis.Redis(host=acl_redis.host, port=acl_redis.port, username="skylark", password="wrong").ping()
    admin = redis.Redis.from_url(f"redis://skylark@{acl_redis.host}:{acl_redis.port}/0", password=PASSWORD)
    admin.hset("skylark:bundle:c1:preprocess", mapping={"f": b"v"})
    assert admin.hgetall("skylark:bundle:c1:preprocess") == {b"f": b"v"}
    admin.xadd(keys.DEFAULT_CHANGE_STREAM, {"chain": "c1"})
    assert admin.xlen(keys.DEFAULT_CHANGE_STREAM) == 1
    admin.close()
