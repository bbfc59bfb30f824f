"""The HTTP API over a real server, used through NeighborsClient and CachedTopology."""

from __future__ import annotations

import threading

import pytest
import requests

from neighbors_service.app import create_app
from neighbors_service.client import (
    CachedTopology,
    NeighborsClient,
    NeighborsRequestError,
    NeighborsUnavailable,
)
from neighbors_service.config import NeighborsSettings
from neighbors_service.policies import SLO
from neighbors_service.sources.file import FileTopologySource, load_topology_file
from neighbors_service.topologies import example_path
from neighbors_service.topology import UnknownNode
from skylark.runtime.embedded import free_port
from skylark.state.errors import ConfigError, SkylarkError
from skylark.state.settings import Settings
from neighbors_fixtures import serve  # noqa: F401 - fixture

# Snapshot 3 of the thesis topology: the cloud pi5u1 hangs off pi4u5 (38 ms, 30 Mbps).
SNAPSHOT_3_T = 3 * 60 + 1


def thesis_source() -> FileTopologySource:
    return load_topology_file(example_path("thesis"), clock=lambda: SNAPSHOT_3_T)


def settings(**kwargs) -> NeighborsSettings:
    return NeighborsSettings(core=Settings(node="pi5u2"), topology_file="thesis", **kwargs)


@pytest.fixture()
def service(serve):
    served = serve(create_app(settings(elect_seed=3), source=thesis_source()))
    client = NeighborsClient(served.url, timeout_s=2.0, backoff_s=0.01)
    yield served, client
    client.close()


def test_topology_nodes_and_neighbors(service):
    _, client = service
    topology = client.topology()
    assert topology == thesis_source().current()
    assert client.next_topology() == thesis_source().snapshot(4)
    assert client.node("pi5u1").type == "cloud"
    assert [n.name for n in client.neighbors("pi4u5")] == ["pi5u4", "pi4u6", "pi5u1"]
    pods = client.redis_pods()
    assert pods["pi5u2"] == "redis://pi5u2.invalid:6379/0" and len(pods) == 8


def test_raw_endpoints(service):
    served, _ = service
    r = requests.get(f"{served.url}/neighbors", params={"node": "pi4u5"}, timeout=2)
    cloud = next(n for n in r.json()["neighbors"] if n["name"] == "pi5u1")
    assert cloud["link"] == {"latency_ms": 38.0, "bandwidth_mbps": 30.0}
    # Without node=, the service's own node (SKYLARK_NODE) is meant.
    assert requests.get(f"{served.url}/neighbors", timeout=2).json()["node"] == "pi5u2"
    r = requests.get(f"{served.url}/topology", params={"snapshot": 6}, timeout=2)
    assert any(l["a"] == "pi5u1" and l["b"] == "pi4p1" for l in r.json()["links"])
    assert r.json()["source"]["snapshot"] == 3 and r.json()["source"]["snapshots"] == 7
    for path, status in (("/readyz", 200), ("/healthz", 200), ("/metrics", 200)):
        assert requests.get(served.url + path, timeout=2).status_code == status


def test_elect_through_the_client(service):
    _, client = service
    # Worked out in test_neighbors_topology: 166 + 266.667 ms to the cloud at 500 ms.
    e = client.elect("pi5u2", "pi5u1", 1_000_000, "skylark")
    assert e.node == "pi5u1" and e.migration_ms == pytest.approx(432.6667, abs=1e-3)
    assert e.path == ("pi5u2", "pi5u3", "pi5u4", "pi4u5", "pi5u1")
    assert client.elect("pi5u2", "pi5u1", 1_000_000, "stateless").node == "pi5u1"
    assert client.elect("pi5u1", "pi5u1", 5, "skylark").migration_ms == 0.0


def test_slo_round_trip_changes_elections(service):
    _, client = service
    assert client.slo() == SLO(500, 10)
    assert client.set_slo(max_latency_ms=400) == SLO(400, 10)
    assert client.elect("pi5u2", "pi5u1", 1_000_000).node == "pi4u5"   # 178.889 ms fits, 432.667 not
    assert client.set_slo(min_bandwidth_mbps=31) == SLO(400, 31)
    # The only cloud link is 30 Mbps < 31: the cloud is unreachable, the state stays.
    e = client.elect("pi5u2", "pi5u1", 1_000_000)
    assert e.node == "pi5u2" and "unreachable" in e.reason
    with pytest.raises(ValueError):
        client.set_slo()


def test_propagation_targets_through_the_client(service):
    _, client = service
    # pi4u5's neighbours, 1 MB = 8 Mbit: pi5u4 (20 ms, 90): 40 + 88.889 = 128.889
    # pi4u6 (10 ms, 90): 20 + 88.889 = 108.889; pi5u1 (38 ms, 30): 76 + 266.667 = 342.667.
    assert [n.name for n in client.propagation_targets("pi4u5", 1_000_000, "skylark")] == \
        ["pi4u6", "pi5u4", "pi5u1"]
    client.set_slo(max_latency_ms=300)
    assert [n.name for n in client.propagation_targets("pi4u5", 1_000_000)] == ["pi4u6", "pi5u4"]
    assert client.propagation_targets("pi4u5", 1_000_000, "stateless") == []
    (one,) = client.propagation_targets("pi4u5", 1_000_000, "random")
    assert one.name in {"pi5u4", "pi4u6", "pi5u1"}


def test_seeded_random_policy_is_reproducible(serve):
    def picks() -> list[str]:
        served = serve(create_app(settings(elect_seed=99), source=thesis_source()))
        with NeighborsClient(served.url) as client:
            return [client.elect("pi5u2", "pi5u1", 10, "random").node for _ in range(8)]

    first = picks()
    assert first == picks() and len(set(first)) > 1


@pytest.mark.parametrize(
    ("path", "status", "code"),
    [
        ("/elect?to=pi5u1&size=abc", 400, "invalid_parameter"),
        ("/elect?to=pi5u1&size=-5", 400, "invalid_parameter"),
        ("/elect?to=pi5u1", 400, "missing_parameter"),
        ("/elect?size=10", 400, "missing_parameter"),
        ("/elect?to=pi5u1&size=10&policy=greedy", 400, "invalid_parameter"),
        ("/elect?from=mars&to=pi5u1&size=10", 404, "unknown_node"),
        ("/propagation-targets?node=pi5u2", 400, "missing_parameter"),
        ("/propagation-targets?node=nope&size=1", 404, "unknown_node"),
        ("/nodes/nope", 404, "unknown_node"),
        ("/neighbors?node=nope", 404, "unknown_node"),
        ("/topology?snapshot=x", 400, "invalid_parameter"),
        # str.isdigit() passed "²" (then int() raised: a 500) and int() read "١٢" as 12
        ("/elect?to=pi5u1&size=%C2%B2", 400, "invalid_parameter"),
        ("/elect?to=pi5u1&size=%D9%A1%D9%A2", 400, "invalid_parameter"),
        ("/elect?to=pi5u1&size=1_000", 400, "invalid_parameter"),
        ("/elect?to=pi5u1&size=%2012", 400, "invalid_parameter"),
        ("/elect?to=pi5u1&size=1000000000000000000000000000000", 400, "invalid_parameter"),
        ("/propagation-targets?node=pi5u2&size=9223372036854775808", 400, "invalid_parameter"),
        ("/topology?snapshot=%C2%B2", 400, "invalid_parameter"),
        ("/topology?snapshot=7", 404, "unknown_snapshot"),
        ("/no-such-route", 404, "not_found"),
    ],
)
def test_bad_requests_get_json_errors(service, path, status, code):
    served, _ = service
    r = requests.get(served.url + path, timeout=2)
    assert r.status_code == status
    assert r.json()["error"] == code and r.json()["detail"]


@pytest.mark.parametrize(
    "body",
    [None, "not json", [], {}, {"max_latency": 0}, {"max_latency": -3}, {"max_latency": "fast"},
     {"max_latency": True}, {"min_bandwidth": -1}, {"max_latency_ms": 100}, "{\"max_latency\": 1e999}",
     "{\"max_latency\": NaN}", "{\"max_latency\": Infinity}", {"max_latency": 10**400},
     "[" * 10_000 + "]" * 10_000, "{\"max_latency\": 1, \"min_bandwidth\": [[[[[]]]]]}"],
)
def test_put_slo_validation(service, body):
    served, client = service
    if isinstance(body, str) or body is None:
        r = requests.put(f"{served.url}/slo", data=body or b"", timeout=2,
                         headers={"Content-Type": "application/json"})
    else:
        r = requests.put(f"{served.url}/slo", json=body, timeout=2)
    assert r.status_code == 400 and r.json()["error"] == "invalid_slo"
    assert client.slo() == SLO(500, 10)   # unchanged


def test_put_slo_wants_json_and_a_small_body(service):
    served, client = service
    r = requests.put(f"{served.url}/slo", data=b'{"max_latency": 100}', headers={"Content-Type": "text/plain"},
                     timeout=2)
    assert r.status_code == 415 and r.json()["error"] == "unsupported_media_type"
    big = b'{"max_latency": 100' + b" " * (64 * 1024) + b"}"
    r = requests.put(f"{served.url}/slo", data=big, headers={"Content-Type": "application/json"}, timeout=2)
    assert r.status_code == 413 and r.json()["error"] == "request_entity_too_large"
    assert client.slo() == SLO(500, 10)


def test_concurrent_slo_updates_leave_a_consistent_value(service):
    _, client = service
    values = [100 + i for i in range(20)]
    threads = [threading.Thread(target=client.set_slo, kwargs={"max_latency_ms": v}) for v in values]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert client.slo().max_latency_ms in values and client.slo().min_bandwidth_mbps == 10


def test_client_errors_are_typed(service):
    _, client = service
    with pytest.raises(UnknownNode) as info:
        client.node("mars")
    assert isinstance(info.value, LookupError) and info.value.name == "mars"
    with pytest.raises(UnknownNode):
        client.neighbors("mars")
    with pytest.raises(NeighborsRequestError) as bad:
        client.elect("pi5u2", "pi5u1", -1)
    assert bad.value.status == 400 and isinstance(bad.value, ValueError)


def test_unreachable_service_raises_neighbors_unavailable():
    client = NeighborsClient(f"http://127.0.0.1:{free_port()}", timeout_s=0.5, backoff_s=0.01)
    with pytest.raises(NeighborsUnavailable) as info:
        client.topology()
    assert isinstance(info.value, SkylarkError) and info.value.code == "neighbors_unavailable"


class _NoTopologyYet:
    """A source whose topology never arrives (as a Kubernetes source before the API answers)."""

    def current(self):
        from neighbors_service.sources import TopologyUnavailable

        raise TopologyUnavailable("no topology yet")

    next = current

    def status(self):
        return {"source": "test", "ready": False}

    def start(self):
        pass

    def stop(self):
        pass


def test_503_is_retried_then_reported(serve):
    served = serve(create_app(settings(), source=_NoTopologyYet()))
    client = NeighborsClient(served.url, retries=2, backoff_s=0.01)
    with pytest.raises(NeighborsUnavailable, match="503"):
        client.topology()
    assert served.requests == 3    # the first try and two retries


def test_cached_topology_fetches_at_most_once_per_ttl(serve):
    served = serve(create_app(settings(), source=thesis_source()))
    now = [0.0]
    cache = CachedTopology(NeighborsClient(served.url, backoff_s=0.01), ttl_s=5, clock=lambda: now[0])
    first = cache.get()
    for _ in range(10):
        assert cache() is first
    assert served.requests == 1
    now[0] = 5.0
    cache.get()
    assert served.requests == 2
    # PeerDirectory view of it.
    assert cache.redis_url("pi4u5") == "redis://pi4u5.invalid:6379/0"
    assert cache.broker_url("pi4u5") == "http://pi4u5.invalid/skylark/default"
    assert cache.redis_url("mars") is None

    # The service goes away: the stale topology is served, and re-asked only after another ttl.
    served.stop()
    now[0] = 10.0
    assert cache.get() is not None
    now[0] = 11.0
    assert cache.get() is not None
    strict = CachedTopology(NeighborsClient(served.url, timeout_s=0.3, backoff_s=0.01), ttl_s=5,
                            serve_stale=False)
    with pytest.raises(NeighborsUnavailable):
        strict.get()


def test_settings_from_env(tmp_path):
    env = {"SKYLARK_NODE": "pi5u2", "SKYLARK_TOPOLOGY_FILE": "demo3", "SKYLARK_SLO_MAX_LATENCY_MS": "250",
           "PORT": "8090", "SKYLARK_ELECT_SEED": "4"}
    s = NeighborsSettings.from_env(env)
    assert (s.slo, s.port, s.elect_seed, s.topology_source) == (SLO(250, 10), 8090, 4, "file")
    assert s.redis_selector == "app=redis" and s.k8s_refresh == "watch"
    assert "{namespace}/{broker}" in s.broker_url_template
    for bad in ({"SKYLARK_TOPOLOGY_SOURCE": "consul"}, {"SKYLARK_SLO_MAX_LATENCY_MS": "-1"},
                {"SKYLARK_SLO_MIN_BANDWIDTH_MBPS": "lots"}, {"SKYLARK_K8S_REFRESH": "poll"},
                {"SKYLARK_BROKER_URL_TEMPLATE": "http://{cluster}/x"}):
        with pytest.raises(ConfigError):
            NeighborsSettings.from_env({**env, **bad})
    with pytest.raises(ConfigError, match="SKYLARK_TOPOLOGY_FILE"):
        NeighborsSettings.from_env({"SKYLARK_NODE": "x"})


def test_create_app_from_settings_loads_the_file(tmp_path):
    path = tmp_path / "t.yaml"
    path.write_text("nodes: [{name: x}, {name: y, type: cloud}]\n"
                    "links: [{a: x, b: y, latency_ms: 5, bandwidth_mbps: 50}]\n")
    app = create_app(NeighborsSettings(core=Settings(node="x"), topology_file=str(path)))
    r = app.test_client().get("/elect?to=y&size=0")
    assert r.status_code == 200 and r.json["node"] == "y" and r.json["migration_ms"] == 10.0
    demo = create_app(NeighborsSettings(core=Settings(node="node-a"), topology_file="demo3"))
    assert [n["name"] for n in demo.test_client().get("/neighbors").json["neighbors"]] == ["node-b"]
    with pytest.raises(ConfigError):
        create_app(NeighborsSettings(core=Settings(node="x"), topology_file=str(tmp_path / "none.yaml")))
