"""The Kubernetes topology source against a real HTTP server speaking the Kubernetes API's JSON
(NodeList, PodList, watch event streams): listing, watching, 410 relists, outages."""

from __future__ import annotations

import json

import pytest

from neighbors_service.app import create_app
from neighbors_service.config import NeighborsSettings
from neighbors_service.sources import TopologyUnavailable
from neighbors_service.sources.kubernetes import KubernetesTopologySource, build_topology
from skylark.runtime.embedded import free_port
from skylark.state.settings import Settings
from neighbors_fixtures import (  # noqa: F401 - fixtures
    fake_kube,
    k8s_node,
    k8s_redis_pod,
    serve,
    wait_for,
)

NS = "skylark"


def cluster(api) -> None:
    """pi-a (satellite) –12 ms/90– pi-b (satellite) –40 ms/30– cloud (cloud), each with its Redis."""
    api.put_node(k8s_node("pi-a", links=[{"to": "pi-b", "latency_ms": 12, "bandwidth_mbps": 90}]))
    api.put_node(k8s_node("pi-b", links=[{"to": "cloud", "latency_ms": 40, "bandwidth_mbps": 30}]))
    api.put_node(k8s_node("cloud", node_type="cloud"))
    for node, ip in (("pi-a", "10.1.0.11"), ("pi-b", "10.1.1.12"), ("cloud", "10.1.2.13")):
        api.put_pod(k8s_redis_pod(node, ip, namespace=NS))
    # Noise the source must ignore: another app's pod, and a Redis pod in another namespace.
    other = k8s_redis_pod("pi-a", "10.1.0.99", namespace=NS, name="web-1")
    other["metadata"]["labels"] = {"app": "web"}
    api.put_pod(other)
    api.put_pod(k8s_redis_pod("pi-b", "10.9.9.9", namespace="elsewhere"))


@pytest.fixture()
def source_factory(fake_kube):
    api, served = fake_kube
    made: list[KubernetesTopologySource] = []

    def make(**kwargs) -> KubernetesTopologySource:
        options = dict(namespace=NS, redis_selector="app=redis", host=served.url,
                       interval_s=1.0, request_timeout_s=2.0, retry_backoff_s=0.05, max_backoff_s=0.2)
        options.update(kwargs)
        source = KubernetesTopologySource(**options)
        made.append(source)
        return source

    yield make
    for source in made:
        source.stop()


# -- pure translation ------------------------------------------------------------------------


def test_build_topology_from_api_objects():
    nodes = [
        k8s_node("b", links=[{"to": "a", "latency_ms": 15, "bandwidth_mbps": 80}]),
        k8s_node("a", links=[{"to": "b", "latency_ms": 10, "bandwidth_mbps": 90},
                             {"to": "ghost", "latency_ms": 1, "bandwidth_mbps": 1}]),
        k8s_node("c", node_type="cloud", ready=False),
        k8s_node("d", node_type=None, links="not json"),
        k8s_node("e", node_type="fog"),
    ]
    pods = [
        k8s_redis_pod("a", "10.1.0.5", namespace="ns"),
        k8s_redis_pod("b", None, phase="Pending", namespace="ns"),      # no IP yet: not usable
        k8s_redis_pod("c", "10.1.2.5", namespace="ns"),
        k8s_redis_pod("d", "fd00::7", namespace="ns"),
        k8s_redis_pod("e", "10.1.4.5", namespace="ns", ready=False, name="redis-e-old"),
        k8s_redis_pod("e", "10.1.4.6", namespace="ns", ready=True, name="redis-e-new"),
    ]
    result = build_topology(nodes, pods, namespace="ns", broker="skylark",
                            broker_url_template="http://ingress/{namespace}/{broker}?for={node}")
    t = result.topology
    assert [n.name for n in t.nodes] == ["a", "b", "c", "d", "e"]
    a = t.node("a")
    assert (a.type, a.redis_url, a.ready) == ("satellite", "redis://10.1.0.5:6379/0", True)
    assert a.broker_url == "http://ingress/ns/skylark?for=a"
    assert a.labels["kubernetes.io/hostname"] == "a"
    assert t.node("b").ready is False and t.node("b").redis_url == ""   # Ready, but no Redis
    assert t.node("c").ready is False and t.node("c").type == "cloud"   # Redis, but NotReady
    assert t.node("d").redis_url == "redis://[fd00::7]:6379/0" and t.node("d").type == "edge"
    assert t.node("e").redis_url == "redis://10.1.4.6:6379/0"           # the ready pod wins
    # Declared on both ends with different figures: the conservative ones.
    assert (t.link("a", "b").latency_ms, t.link("a", "b").bandwidth_mbps) == (15, 80)
    assert len(t.links) == 1
    text = "\n".join(result.warnings)
    assert "ghost" in text and "not json" not in text and "skylark.io/links ignored" in text
    assert "'fog' unknown" in text and "no running Redis pod" in text


# -- against the API server ---------------------------------------------------------------------


def test_refresh_lists_nodes_and_redis_pods(fake_kube, source_factory):
    api, _ = fake_kube
    cluster(api)
    source = source_factory(refresh="interval")
    with pytest.raises(TopologyUnavailable):
        source.current()            # nothing is fetched before refresh()/start()
    assert source.status()["ready"] is False
    assert source.refresh() is True
    t = source.current()
    assert [n.name for n in t.nodes] == ["cloud", "pi-a", "pi-b"]
    assert t.node("pi-b").redis_url == "redis://10.1.1.12:6379/0"     # not the other namespace's
    assert t.node("pi-a").redis_url == "redis://10.1.0.11:6379/0"     # not the web pod
    assert t.node("cloud").broker_url == (
        "http://broker-ingress.knative-eventing.svc.cluster.local/skylark/default")
    assert t.link("pi-a", "pi-b").latency_ms == 12 and t.link("cloud", "pi-b").bandwidth_mbps == 30
    assert api.selectors and set(api.selectors) == {"app=redis"}
    status = source.status()
    assert status["ready"] is True and status["degraded"] is False and status["nodes"] == 3


def test_watch_follows_changes(fake_kube, source_factory):
    api, _ = fake_kube
    cluster(api)
    source = source_factory(refresh="watch")
    source.start()
    wait_for(lambda: source.status()["ready"])
    wait_for(lambda: api.watchers("nodes") and api.watchers("pods"))
    lists_before = dict(api.list_calls)

    # A link's latency changes (node annotation MODIFIED).
    api.put_node(k8s_node("pi-a", links=[{"to": "pi-b", "latency_ms": 19, "bandwidth_mbps": 90}]))
    wait_for(lambda: source.current().link("pi-a", "pi-b").latency_ms == 19)
    # A node turns NotReady.
    api.put_node(k8s_node("pi-b", ready=False, links=[{"to": "cloud", "latency_ms": 40, "bandwidth_mbps": 30}]))
    wait_for(lambda: source.current().node("pi-b").ready is False)
    # A new node joins with its Redis.
    api.put_node(k8s_node("pi-c", links=[{"to": "pi-a", "latency_ms": 11, "bandwidth_mbps": 90}]))
    api.put_pod(k8s_redis_pod("pi-c", "10.1.3.14", namespace=NS))
    wait_for(lambda: "pi-c" in source.current() and source.current().node("pi-c").ready)
    # Its Redis pod goes away: the node cannot take state any more.
    api.delete_pod(NS, "redis-pi-c")
    wait_for(lambda: source.current().node("pi-c").redis_url == "")
    # A node is deleted.
    api.delete_node("pi-c")
    wait_for(lambda: "pi-c" not in source.current())
    assert api.list_calls == lists_before   # all of it came through the watches, no relist


def test_expired_watch_relists(fake_kube, source_factory):
    api, _ = fake_kube
    cluster(api)
    source = source_factory(refresh="watch")
    source.start()
    wait_for(lambda: source.status()["ready"] and api.watchers("nodes"))
    lists_before = api.list_calls["nodes"]
    # A change the watch never sees (as if the server had compacted it away)...
    api.put_node(k8s_node("cloud", node_type="cloud", ready=False), notify=False)
    # ...then the server tells the watch its version is too old (410): the source lists again.
    api.expire_watches()
    wait_for(lambda: api.list_calls["nodes"] > lists_before)
    wait_for(lambda: source.current().node("cloud").ready is False)
    assert source.status()["degraded"] is False


@pytest.mark.parametrize("mode", ["watch", "interval"])
def test_api_outage_keeps_the_last_good_topology(serve, mode):
    from neighbors_fixtures import FakeKubeApi

    api = FakeKubeApi()
    cluster(api)
    served = serve(api)
    source = KubernetesTopologySource(namespace=NS, host=served.url, refresh=mode, interval_s=1.0,
                                      request_timeout_s=1.0, retry_backoff_s=0.05, max_backoff_s=0.2)
    app = create_app(NeighborsSettings(core=Settings(node="pi-a"), topology_source="kubernetes"),
                     source=source)
    http = app.test_client()
    try:
        source.start()
        wait_for(lambda: source.status()["ready"])
        good = source.current()

        # 1. The API answers 503 (etcd down).
        api.fail_status = 503
        if mode == "watch":
            api.expire_watches()    # end the open watches so the next request meets the failure
        wait_for(lambda: source.status()["degraded"])
        assert source.current() == good
        assert "503" in json.dumps(source.status()["errors"])

        # 2. The API server is gone (connection refused).
        api.closed.set()
        served.stop()
        wait_for(lambda: "refused" in json.dumps(source.status()["errors"]).lower()
                 or "connection" in json.dumps(source.status()["errors"]).lower())
        assert source.current() == good
        r = http.get("/topology")
        assert r.status_code == 200 and Topology_names(r.json) == ["cloud", "pi-a", "pi-b"]
        assert r.json["source"]["serving"] == "last good topology"
        ready = http.get("/readyz")
        assert ready.status_code == 200                 # still serving: stay in the Service
        assert ready.json["topology"]["degraded"] is True
        assert http.get("/elect?from=pi-a&to=cloud&size=1000").status_code == 200

        # 3. It comes back on the same address, with a change: the source recovers by itself.
        api.closed.clear()
        api.fail_status = None
        api.put_node(k8s_node("cloud", node_type="cloud", ready=False), notify=False)
        serve(api, port=served.port)
        wait_for(lambda: not source.status()["degraded"], timeout_s=15)
        wait_for(lambda: source.current().node("cloud").ready is False, timeout_s=15)
    finally:
        source.stop()
        api.closed.set()


def Topology_names(payload: dict) -> list[str]:  # noqa: N802 - reads like the type it parses
    return [n["name"] for n in payload["nodes"]]


def test_api_never_reachable_is_not_ready_and_answers_503():
    port = free_port()   # nothing listens there
    source = KubernetesTopologySource(namespace=NS, host=f"http://127.0.0.1:{port}", refresh="watch",
                                      request_timeout_s=0.5, retry_backoff_s=0.05, max_backoff_s=0.1)
    app = create_app(NeighborsSettings(core=Settings(node="pi-a"), topology_source="kubernetes"),
                     source=source)
    source.start()
    try:
        wait_for(lambda: source.status()["degraded"])
        http = app.test_client()
        r = http.get("/topology")
        assert r.status_code == 503 and r.json["error"] == "topology_unavailable"
        assert http.get("/readyz").status_code == 503
        assert http.get("/healthz").status_code == 200
        assert http.get("/elect?to=x&size=1").status_code == 503
    finally:
        source.stop()


def test_kubeconfig_file(fake_kube, source_factory, tmp_path):
    api, served = fake_kube
    cluster(api)
    kubeconfig = tmp_path / "config"
    kubeconfig.write_text(json.dumps({
        "apiVersion": "v1", "kind": "Config", "current-context": "test",
        "clusters": [{"name": "test", "cluster": {"server": served.url}}],
        "users": [{"name": "test", "user": {"token": "secret-token"}}],
        "contexts": [{"name": "test", "context": {"cluster": "test", "user": "test"}}],
    }))
    source = source_factory(host=None, kubeconfig=str(kubeconfig), refresh="interval")
    assert source.refresh() is True
    assert len(source.current().nodes) == 3


def test_bad_kubeconfig_is_reported_not_raised(tmp_path, source_factory):
    source = source_factory(host=None, kubeconfig=str(tmp_path / "missing"), refresh="interval")
    assert source.refresh() is False
    status = source.status()
    assert status["ready"] is False and status["degraded"] is True
