"""What the rendered objects mean: references resolve, the streams are the library's, ports, probes,
settings and RBAC are what the services and the cluster need."""

from __future__ import annotations

import base64
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from chart_fixtures import (
    NAMESPACE,
    RELEASE,
    VALUES_CASES,
    case_id,
    knative_services,
    label,
    merged_values,
    of_kind,
    rendered,
)
from eventing.catalogue import PING
from eventing.http import new_event
from eventing.wiring import handlers_service
from skylark.state import keys
from skylark.state.settings import Settings

FUNCTIONS = ("preprocess", "detect", "alarm")
ALLOWED_VERBS = {"get", "list", "watch"}
ALLOWED_RESOURCES = {"nodes", "pods"}


@pytest.fixture(scope="module", params=VALUES_CASES, ids=case_id)
def case(request) -> tuple[dict, tuple[dict, ...]]:
    return merged_values(request.param), rendered(request.param)


def _destinations(objects):
    """(what, destination) for every place that points at a Knative Service."""
    for obj in objects:
        spec = obj.get("spec", {})
        if obj["kind"] == "Trigger":
            yield label(obj), spec["subscriber"]
        if obj["kind"] in ("RedisStreamSource", "PingSource"):
            yield label(obj), spec["sink"]
        if obj["kind"] in ("Trigger", "Broker") and "deadLetterSink" in spec.get("delivery", {}):
            yield f"{label(obj)} deadLetterSink", spec["delivery"]["deadLetterSink"]


def test_every_subscriber_and_sink_names_a_rendered_knative_service(case):
    _, objects = case
    ksvc_names = {o["metadata"]["name"] for o in knative_services(objects)}
    pointers = list(_destinations(objects))
    assert pointers
    for what, dest in pointers:
        if "ref" in dest:
            ref = dest["ref"]
            assert (ref["apiVersion"], ref["kind"]) == ("serving.knative.dev/v1", "Service"), what
            assert ref["name"] in ksvc_names, f"{what} points at {ref['name']}, not one of {sorted(ksvc_names)}"
            assert ref.get("namespace", NAMESPACE) == NAMESPACE, what
        if "uri" in dest and "ref" in dest:
            assert dest["uri"].startswith("/"), f"{what}: a path relative to the service, got {dest['uri']!r}"


def test_triggers_use_the_rendered_broker(case):
    values, objects = case
    brokers = of_kind(objects, "Broker")
    assert [b["metadata"]["name"] for b in brokers] == [values["eventing"]["brokerName"]]
    assert brokers[0]["metadata"]["annotations"]["eventing.knative.dev/broker.class"] == "MTChannelBasedBroker"
    for trigger in of_kind(objects, "Trigger"):
        assert trigger["spec"]["broker"] == brokers[0]["metadata"]["name"], label(trigger)


def _handlers_name(node: str) -> str:
    return f"{RELEASE}-{handlers_service(node)}"


def test_the_workflow_is_wired(case):
    """The required routes exist: propagation to each node's own handlers (by skylarktarget) and
    preprocess -> detect -> alarm."""
    values, objects = case
    triggers = of_kind(objects, "Trigger")
    propagation = {
        t["spec"]["filter"]["attributes"].get("skylarktarget"): t["spec"]["subscriber"]
        for t in triggers if t["spec"]["filter"]["attributes"]["type"] == "io.skylark.bundle.propagated"
    }
    assert set(propagation) == {n["name"] for n in values["nodes"]}, "one propagation Trigger per node"
    for node, subscriber in propagation.items():
        assert subscriber["ref"]["name"] == _handlers_name(node)
    routes = {
        t["spec"]["filter"]["attributes"]["type"]: t["spec"]["subscriber"]["ref"]["name"]
        for t in triggers if t["spec"]["filter"]["attributes"]["type"] != "io.skylark.bundle.propagated"
    }
    assert routes["io.skylark.image.submitted"] == f"{RELEASE}-preprocess"
    assert routes["io.skylark.preprocess.completed"] == f"{RELEASE}-detect"
    assert routes["io.skylark.detect.completed"] == f"{RELEASE}-alarm"


def test_one_stream_source_per_node_reading_that_nodes_redis(case):
    values, objects = case
    sources = of_kind(objects, "RedisStreamSource", "sources.knative.dev/v1alpha1")
    nodes = values["nodes"]
    assert len(sources) == len(nodes)
    by_node = {s["metadata"]["annotations"]["skylark.io/node"]: s for s in sources}
    assert set(by_node) == {n["name"] for n in nodes}
    for node in nodes:
        spec = by_node[node["name"]]["spec"]
        address = urlsplit(spec["address"])
        # eventing-redis's adapter panics on anything go-redis ParseURL rejects.
        assert address.scheme == "redis", spec["address"]
        assert (address.hostname, address.port) == (node["address"], values["redis"]["hostPort"])
        assert spec["stream"] == keys.DEFAULT_CHANGE_STREAM, "the stream the state library writes"
        assert spec["group"] == values["stream"]["group"] != ""
        assert spec["consumers"] >= 1
        assert spec["sink"]["ref"]["name"] == _handlers_name(node["name"]), "that node's own handlers"


def test_the_stream_matches_the_services_setting(case):
    _, objects = case
    config = _configmap(objects)
    streams = {s["spec"]["stream"] for s in of_kind(objects, "RedisStreamSource")}
    assert streams == {config["SKYLARK_CHANGE_STREAM"]} == {keys.DEFAULT_CHANGE_STREAM}


def test_redis_is_a_daemonset_with_host_port_headless_and_local_services(case):
    values, objects = case
    redis_name = f"{RELEASE}-redis"
    [daemonset] = of_kind(objects, "DaemonSet")
    container = daemonset["spec"]["template"]["spec"]["containers"][0]
    [port] = container["ports"]
    assert port["hostPort"] == values["redis"]["hostPort"] and port["containerPort"] == values["redis"]["port"]
    services = {s["metadata"]["name"]: s["spec"] for s in of_kind(objects, "Service", "v1")}
    assert services[redis_name]["clusterIP"] == "None"
    assert services[f"{redis_name}-local"]["internalTrafficPolicy"] == "Local"
    pod_labels = daemonset["spec"]["template"]["metadata"]["labels"]
    for name in (redis_name, f"{redis_name}-local"):
        assert services[name]["selector"].items() <= pod_labels.items(), name
    assert daemonset["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    assert container["resources"]["limits"] and container["resources"]["requests"]
    assert container["readinessProbe"] and container["livenessProbe"]
    assert daemonset["spec"]["template"]["spec"]["securityContext"]["runAsNonRoot"] is True
    data = next(v for v in daemonset["spec"]["template"]["spec"]["volumes"] if v["name"] == "data")
    assert ("hostPath" in data) == bool(values["redis"]["persistence"]["enabled"])


def test_redis_password_comes_from_the_secret_when_auth_is_on(case):
    values, objects = case
    [daemonset] = of_kind(objects, "DaemonSet")
    container = daemonset["spec"]["template"]["spec"]["containers"][0]
    env = {e["name"]: e for e in container.get("env", [])}
    secret_name = values["auth"]["existingSecret"] or f"{RELEASE}-secrets"
    if values["auth"]["enabled"]:
        assert env["REDIS_PASSWORD"]["valueFrom"]["secretKeyRef"] == {"name": secret_name, "key": "redis-password"}
        config = of_kind(objects, "ConfigMap")
        redis_conf = next(c for c in config if c["metadata"]["name"] == f"{RELEASE}-redis")["data"]["redis.conf"]
        assert "aclfile /run/redis/users.acl" in redis_conf
        for source in of_kind(objects, "RedisStreamSource"):
            password = source["spec"]["dialOptions"]["password"]
            assert (password["kind"], password["name"]) == ("Secret", secret_name)
    else:
        assert "REDIS_PASSWORD" not in env
        assert all("dialOptions" not in s["spec"] for s in of_kind(objects, "RedisStreamSource"))


def test_secret_holds_the_keys_the_services_read(case):
    values, objects = case
    secrets = of_kind(objects, "Secret")
    if values["auth"]["existingSecret"]:
        assert secrets == [], "an existing Secret is used, not rendered"
        return
    [secret] = secrets
    expected = {"propagation-signing-key"} | ({"redis-password"} if values["auth"]["enabled"] else set())
    assert set(secret["data"]) == expected
    for value in secret["data"].values():
        assert len(base64.b64decode(value)) >= 32


def test_every_knative_service_exposes_one_port_and_the_knative_contract(case):
    values, objects = case
    ksvcs = {o["metadata"]["name"]: o for o in knative_services(objects)}
    expected = {f"{RELEASE}-{key}" for key in FUNCTIONS} | {_handlers_name(n["name"]) for n in values["nodes"]}
    assert expected <= set(ksvcs)
    for name, ksvc in ksvcs.items():
        [container] = ksvc["spec"]["template"]["spec"]["containers"]
        assert len(container["ports"]) == 1, f"{name}: Knative allows exactly one port"
        assert container["ports"][0]["containerPort"] == 8080
        assert "PORT" not in {e["name"] for e in container.get("env", [])}, f"{name}: Knative sets $PORT itself"
        annotations = ksvc["spec"]["template"]["metadata"]["annotations"]
        assert int(annotations["autoscaling.knative.dev/min-scale"]) >= 0
        assert int(annotations["autoscaling.knative.dev/max-scale"]) >= int(annotations["autoscaling.knative.dev/min-scale"])
        assert container["resources"]["requests"] and container["resources"]["limits"]
        assert container["securityContext"]["runAsNonRoot"] is True


def test_skylark_services_probe_health_and_get_settings(case):
    values, objects = case
    ksvcs = {o["metadata"]["name"]: o for o in knative_services(objects)}
    broker_url = (
        f"http://broker-ingress.knative-eventing.svc.cluster.local/{NAMESPACE}/{values['eventing']['brokerName']}"
    )
    services = [(key, f"{RELEASE}-{key}", None) for key in FUNCTIONS]
    services += [("handlers", _handlers_name(n["name"]), n) for n in values["nodes"]]
    for key, name, node in services:
        svc_values = values["services"][key]
        ksvc = ksvcs[name]
        template = ksvc["spec"]["template"]
        [container] = template["spec"]["containers"]
        assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
        assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
        assert "port" not in container["readinessProbe"]["httpGet"], "Knative probes the serving port"
        assert container["envFrom"] == [{"configMapRef": {"name": f"{RELEASE}-config"}}]
        env = {e["name"]: e for e in container["env"]}
        assert env["K_SINK"]["value"] == broker_url
        if node is not None:
            assert env["SKYLARK_NODE"] == {"name": "SKYLARK_NODE", "value": node["name"]}
        elif values["knative"]["nodeNameFromDownwardAPI"]:
            assert env["SKYLARK_NODE"]["valueFrom"] == {"fieldRef": {"fieldPath": "spec.nodeName"}}
        else:
            assert "SKYLARK_NODE" not in env
        assert ("SKYLARK_REDIS_PASSWORD" in env) == bool(values["auth"]["enabled"])
        assert env["SKYLARK_SIGNING_KEY"]["valueFrom"]["secretKeyRef"]["key"] == "propagation-signing-key"
        annotations = template["metadata"]["annotations"]
        assert annotations["autoscaling.knative.dev/min-scale"] == str(svc_values["minScale"])
        assert annotations["autoscaling.knative.dev/max-scale"] == str(svc_values["maxScale"])
        image = container["image"]
        assert image.startswith(values["image"]["registry"] + "/") and image.rsplit(":", 1)[1]
        for placement in ("affinity", "tolerations"):
            assert template["spec"].get(placement) == (svc_values[placement] or None), (key, placement)
        node_selector = dict(svc_values["nodeSelector"])
        if node is not None:
            # Pinned to its node (the handlers own that node's Redis).
            node_selector["kubernetes.io/hostname"] = node.get("hostname", node["name"])
        assert template["spec"].get("nodeSelector") == (node_selector or None), (name, "nodeSelector")
        visibility = ksvc["metadata"]["labels"].get("networking.knative.dev/visibility")
        assert visibility == (values["knative"]["visibility"] or None)


def test_the_configmap_is_what_core_settings_accept(case):
    values, objects = case
    config = _configmap(objects)
    assert all(key.startswith("SKYLARK_") for key in config)
    env = dict(config, SKYLARK_NODE="pi5u2", K_SINK="http://broker")
    if values["auth"]["enabled"]:
        env["SKYLARK_REDIS_PASSWORD"] = "secret"
    settings = Settings.from_env(env)
    redis_url = urlsplit(settings.redis_url)
    assert redis_url.hostname == f"{RELEASE}-redis-local.{NAMESPACE}.svc.cluster.local"
    assert redis_url.port == values["redis"]["port"]
    assert redis_url.username == (values["auth"]["username"] if values["auth"]["enabled"] else None)
    assert redis_url.password is None, "the password comes from the Secret, never the ConfigMap"
    assert settings.change_stream == keys.DEFAULT_CHANGE_STREAM
    assert settings.policy == values["config"]["policy"]
    assert settings.neighbors_url == f"http://{RELEASE}-neighbors.{NAMESPACE}.svc.cluster.local"
    for key, value in values["config"]["extra"].items():
        assert config[key] == str(value)


def test_rbac_grants_only_get_list_watch_on_nodes_and_pods(case):
    _, objects = case
    roles = of_kind(objects, "ClusterRole") + of_kind(objects, "Role")
    assert [r["metadata"]["name"] for r in roles] == [f"{RELEASE}-neighbors"]
    for role in roles:
        assert role["rules"]
        for rule in role["rules"]:
            assert set(rule) <= {"apiGroups", "resources", "verbs"}, f"{label(role)}: {rule}"
            assert rule["apiGroups"] == [""]
            assert set(rule["resources"]) <= ALLOWED_RESOURCES, rule
            assert set(rule["verbs"]) <= ALLOWED_VERBS, rule
    bindings = of_kind(objects, "ClusterRoleBinding") + of_kind(objects, "RoleBinding")
    assert len(bindings) == 1
    [binding] = bindings
    assert binding["roleRef"]["name"] == f"{RELEASE}-neighbors"
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": f"{RELEASE}-neighbors", "namespace": NAMESPACE}]


def test_only_the_neighbors_service_talks_to_the_api(case):
    _, objects = case
    for obj in objects:
        if obj["kind"] in ("Deployment", "DaemonSet"):
            pod = obj["spec"]["template"]["spec"]
        elif obj["apiVersion"] == "serving.knative.dev/v1":
            pod = obj["spec"]["template"]["spec"]
        else:
            continue
        if obj["metadata"]["name"] == f"{RELEASE}-neighbors":
            assert pod["serviceAccountName"] == f"{RELEASE}-neighbors"
        else:
            assert pod.get("automountServiceAccountToken") is False, label(obj)


def test_neighbors_deployment(case):
    _, objects = case
    [deployment] = of_kind(objects, "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    [container] = pod["containers"]
    env = {e["name"]: e for e in container["env"]}
    assert env["SKYLARK_TOPOLOGY_SOURCE"]["value"] == "kubernetes"
    assert env["PORT"]["value"] == "8080"
    assert [p["containerPort"] for p in container["ports"]] == [8080]
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    [service] = [s for s in of_kind(objects, "Service", "v1") if s["metadata"]["name"] == f"{RELEASE}-neighbors"]
    assert service["spec"]["selector"].items() <= deployment["spec"]["template"]["metadata"]["labels"].items()
    assert service["spec"]["ports"][0]["targetPort"] == container["ports"][0]["name"]


def test_pingsource_warms_up_the_handlers(case):
    values, objects = case
    pings = of_kind(objects, "PingSource", "sources.knative.dev/v1")
    if not values["ping"]["enabled"]:
        assert pings == []
        return
    assert len(pings) == len(values["nodes"]), "one warm-up per node's handlers"
    sinks = {p["metadata"]["annotations"]["skylark.io/node"]: p["spec"]["sink"]["ref"]["name"] for p in pings}
    assert sinks == {n["name"]: _handlers_name(n["name"]) for n in values["nodes"]}
    for ping in pings:
        assert ping["spec"]["schedule"] == values["ping"]["schedule"]
        assert ping["spec"]["data"] == values["ping"]["data"]


def _configmap(objects) -> dict[str, str]:
    return next(c for c in of_kind(objects, "ConfigMap") if c["metadata"]["name"] == f"{RELEASE}-config")["data"]


def test_ci_values_cover_one_and_many_nodes_and_both_auth_modes():
    cases = [merged_values(p) for p in VALUES_CASES if isinstance(p, Path)]
    assert {len(v["nodes"]) for v in cases} >= {1, 8}
    assert {bool(v["auth"]["enabled"]) for v in cases} == {True, False}


def test_ping_data_is_a_warmup_the_handlers_accept(case):
    """The PingSource's data goes to the handlers' warm-up parser unchanged (bytes, as Knative
    sends it): it must be a request they accept, not a 400 every minute."""
    from handlers.warmup import parse_warmup

    values, objects = case
    for ping in of_kind(objects, "PingSource"):
        event = new_event(PING, ping["metadata"]["name"], ping["spec"]["data"].encode())
        request = parse_warmup(event)
        assert request.chains or request.functions
