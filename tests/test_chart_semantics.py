"""What the rendered objects mean: references resolve, the streams are the library's, ports, probes,
settings and RBAC are what the services and the cluster need, and the workflow's functions get the
Knative Services and Triggers their declaration asks for."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from chart_fixtures import (
    NAMESPACE,
    RELEASE,
    USER_VALUES,
    VALUES_CASES,
    case_id,
    expected_functions,
    expected_image,
    knative_services,
    label,
    merged_values,
    of_kind,
    rendered,
)
from eventing.catalogue import BUNDLE_PROPAGATED, PING
from eventing.http import new_event
from eventing.wiring import handlers_service, warmup_data, workflow_from_values
from skylark.state import keys
from skylark.state.settings import Settings
from skylark.workflow import Workflow, parse_workflow, workflow_from_env
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
    """The required routes exist: propagation to each node's own handlers (by skylarktarget), and
    every event type a function accepts to that function, through exactly one Trigger each, named
    <slug>, <slug>-2, ... in the order of its accepts."""
    values, objects = case
    triggers = of_kind(objects, "Trigger")
    propagation = {
        t["spec"]["filter"]["attributes"].get("skylarktarget"): t["spec"]["subscriber"]
        for t in triggers if t["spec"]["filter"]["attributes"]["type"] == BUNDLE_PROPAGATED
    }
    assert set(propagation) == {n["name"] for n in values["nodes"]}, "one propagation Trigger per node"
    for node, subscriber in propagation.items():
        assert subscriber["ref"]["name"] == _handlers_name(node)
    by_name = {t["metadata"]["name"]: t for t in triggers}
    function_triggers = [t for t in triggers if t["metadata"]["labels"].get("skylark.io/function")]
    functions = expected_functions(values)
    assert len(function_triggers) == sum(len(fn["spec"].accepts) for fn in functions)
    for fn in functions:
        for k, event_type in enumerate(fn["spec"].accepts):
            name = fn["service"] if k == 0 else f"{fn['service']}-{k + 1}"
            trigger = by_name[name]
            assert trigger["spec"]["filter"] == {"attributes": {"type": event_type}}, name
            assert trigger["spec"]["subscriber"] == {
                "ref": {"apiVersion": "serving.knative.dev/v1", "kind": "Service", "name": fn["service"]}}, name
            assert trigger["metadata"]["labels"]["skylark.io/function"] == fn["key"]
        consumers = [t for t in function_triggers if t["spec"]["subscriber"]["ref"]["name"] == fn["service"]]
        assert len(consumers) == len(fn["spec"].accepts), f"{fn['service']}: one Trigger per accepted type"


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


def test_the_knative_services_are_the_handlers_the_functions_and_the_dead_letter_sink(case):
    values, objects = case
    ksvcs = {o["metadata"]["name"] for o in knative_services(objects)}
    expected = {fn["service"] for fn in expected_functions(values)} | {_handlers_name(n["name"]) for n in values["nodes"]}
    if values["deadLetter"]["enabled"]:
        expected.add(f"{RELEASE}-dead-letter")
    assert ksvcs == expected


def test_every_knative_service_exposes_one_port_and_the_knative_contract(case):
    values, objects = case
    ksvcs = {o["metadata"]["name"]: o for o in knative_services(objects)}
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
    services = [(fn["key"], fn["service"], fn["node"], fn["settings"]) for fn in expected_functions(values)]
    services += [("handlers", _handlers_name(n["name"]), n, values["services"]["handlers"]) for n in values["nodes"]]
    for key, name, node, svc_values in services:
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
        assert image == expected_image(values, svc_values["image"], svc_values.get("tag"))
        assert image.rsplit(":", 1)[1], "always a tag"
        if "/" not in svc_values["image"]:
            assert image.startswith(values["image"]["registry"] + "/"), "Skylark's images come from image.registry"
        for placement in ("affinity", "tolerations"):
            assert template["spec"].get(placement) == (svc_values[placement] or None), (key, placement)
        node_selector = dict(svc_values["nodeSelector"])
        if node is not None:
            # Pinned to its node (the handlers own that node's Redis; a function named it).
            node_selector["kubernetes.io/hostname"] = node.get("hostname", node["name"])
            assert ksvc["metadata"]["annotations"]["skylark.io/node"] == node["name"]
        else:
            assert "skylark.io/node" not in ksvc["metadata"].get("annotations", {})
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
    # config.policy overrides the workflow's own policy.
    assert settings.policy == (values["config"]["policy"] or values["workflow"]["spec"].get("policy", "skylark"))
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
        # Empty ping.data: the state some function reads (eventing.wiring.warmup_data).
        assert ping["spec"]["data"] == (values["ping"]["data"] or warmup_data(workflow_from_values(values)))


def _configmap(objects) -> dict[str, str]:
    return next(c for c in of_kind(objects, "ConfigMap") if c["metadata"]["name"] == f"{RELEASE}-config")["data"]


def test_ci_values_cover_one_and_many_nodes_and_both_auth_modes():
    cases = [merged_values(p) for p in VALUES_CASES if isinstance(p, Path)]
    assert {len(v["nodes"]) for v in cases} >= {1, 8}
    assert {bool(v["auth"]["enabled"]) for v in cases} == {True, False}


def test_ci_values_cover_a_users_own_workflow():
    """Besides the example (in several placements), a workflow that is not it: its own functions
    and images, pinned and unpinned functions, one accepting several event types."""
    assert USER_VALUES in VALUES_CASES
    example = {fn["spec"].entry for fn in expected_functions(merged_values(None))}
    functions = expected_functions(merged_values(USER_VALUES))
    assert not example & {fn["spec"].entry for fn in functions}
    assert any(fn["node"] is None for fn in functions) and any(fn["node"] for fn in functions)
    assert any(len(fn["spec"].accepts) > 1 for fn in functions)
    assert any("/" in fn["settings"]["image"] for fn in functions), "an image outside image.registry"
    placements = [fn["node"] is None for p in VALUES_CASES for fn in expected_functions(merged_values(p))]
    assert True in placements and False in placements


def test_ping_data_is_a_warmup_the_handlers_accept(case):
    """The PingSource's data goes to the handlers' warm-up parser unchanged (bytes, as Knative
    sends it): it must be a request they accept, not a 400 every minute."""
    from handlers.warmup import parse_warmup

    values, objects = case
    for ping in of_kind(objects, "PingSource"):
        event = new_event(PING, ping["metadata"]["name"], ping["spec"]["data"].encode())
        request = parse_warmup(event)
        assert request.chains or request.functions


# -- the workflow's functions ----------------------------------------------------------------------------

def test_function_services_follow_the_declaration(case):
    """Each function's Knative Service: its image, entry point and name, node, and the Knative
    settings of functionDefaults with its deploy laid over them."""
    values, objects = case
    ksvcs = {o["metadata"]["name"]: o for o in knative_services(objects)}
    for fn in expected_functions(values):
        spec, settings, node = fn["spec"], fn["settings"], fn["node"]
        ksvc = ksvcs[fn["service"]]
        assert ksvc["metadata"]["labels"]["app.kubernetes.io/component"] == "function"
        assert ksvc["metadata"]["labels"]["skylark.io/function"] == fn["key"]
        assert ksvc["metadata"]["annotations"]["skylark.io/function"] == spec.name
        template = ksvc["spec"]["template"]
        assert template["metadata"]["labels"]["skylark.io/function"] == fn["key"]
        pod = template["spec"]
        [container] = pod["containers"]
        assert container["name"] == fn["key"]
        assert container["image"] == expected_image(values, settings["image"], settings.get("tag"))
        env = {e["name"]: e for e in container["env"]}
        assert env["SKYLARK_FUNCTION"]["value"] == spec.entry
        assert env["SKYLARK_FUNCTION_NAME"]["value"] == spec.name
        for key, value in (settings.get("env") or {}).items():
            assert env[key]["value"] == str(value), (fn["service"], key)
        if node is not None:
            assert env["SKYLARK_NODE"] == {"name": "SKYLARK_NODE", "value": node["name"]}
            assert pod["nodeSelector"]["kubernetes.io/hostname"] == node.get("hostname", node["name"])
        else:
            assert "kubernetes.io/hostname" not in (pod.get("nodeSelector") or {}), "any node"
        annotations = template["metadata"]["annotations"]
        assert annotations["autoscaling.knative.dev/min-scale"] == str(settings["minScale"])
        assert annotations["autoscaling.knative.dev/max-scale"] == str(settings["maxScale"])
        assert annotations.get("autoscaling.knative.dev/target") == (str(settings["target"]) if settings["target"] else None)
        retention = annotations.get("autoscaling.knative.dev/scale-to-zero-pod-retention-period")
        assert retention == (settings["scaleToZeroRetention"] or None)
        assert pod["containerConcurrency"] == settings["containerConcurrency"]
        assert pod["timeoutSeconds"] == settings["timeoutSeconds"]
        assert container["resources"] == settings["resources"]


def test_the_configmap_carries_the_workflow(case):
    """SKYLARK_WORKFLOW is the values' declaration as compact JSON: what every Skylark process
    reads (skylark.workflow.workflow_from_env) is the workflow the chart deployed."""
    values, objects = case
    raw = _configmap(objects)["SKYLARK_WORKFLOW"]
    assert raw.startswith("{") and "\n" not in raw
    declared = Workflow.from_document(values["workflow"])
    assert parse_workflow(raw, "$SKYLARK_WORKFLOW") == declared
    assert workflow_from_env({"SKYLARK_WORKFLOW": raw}) == declared
    assert json.loads(raw) == json.loads(json.dumps(values["workflow"])), "the declaration itself, not a digest"


def test_the_functions_are_those_of_the_declaration_and_nothing_else(case):
    values, objects = case
    functions = {fn["service"] for fn in expected_functions(values)}
    rendered_functions = {o["metadata"]["name"] for o in knative_services(objects)
                          if o["metadata"]["labels"]["app.kubernetes.io/component"] == "function"}
    assert rendered_functions == functions
    subscribers = {t["spec"]["subscriber"]["ref"]["name"] for t in of_kind(objects, "Trigger")
                   if t["metadata"]["labels"].get("skylark.io/function")}
    assert subscribers == functions, "every function is reachable, and only through its own Triggers"


def test_the_users_workflow_renders_as_declared():
    """The user's workflow (ci/user-workflow-values.yaml), spelled out: no example function is left,
    images come from the user's registry, ingest takes two event types."""
    objects = rendered(USER_VALUES)
    ksvcs = {o["metadata"]["name"]: o for o in knative_services(objects)}
    assert not {f"{RELEASE}-preprocess", f"{RELEASE}-detect", f"{RELEASE}-alarm"} & set(ksvcs)

    def container(name):
        return ksvcs[name]["spec"]["template"]["spec"]["containers"][0]

    def env(name):
        return {e["name"]: e.get("value", e.get("valueFrom")) for e in container(name)["env"]}

    assert container("skylark-ingest")["image"] == "registry.example/acme/ingest:1.4.2"
    assert container("skylark-score-v2")["image"] == "registry.example/acme/scorer:2.0.1"
    assert container("skylark-notify")["image"] == "docker.io/skylark/skylark-function:0.1.0"
    assert env("skylark-score-v2")["SKYLARK_FUNCTION"] == "acme_scoring.score:make_scorer"
    assert env("skylark-score-v2")["SKYLARK_FUNCTION_NAME"] == "Score_v2"
    assert env("skylark-score-v2")["SKYLARK_NODE"] == {"fieldRef": {"fieldPath": "spec.nodeName"}}
    assert env("skylark-score-v2")["OMP_NUM_THREADS"] == "2"
    assert env("skylark-ingest")["SKYLARK_NODE"] == "pi5u2"
    assert env("skylark-ingest")["ACME_LOG_FORMAT"] == "json"
    pods = {name: ksvc["spec"]["template"]["spec"] for name, ksvc in ksvcs.items()}
    assert pods["skylark-ingest"]["nodeSelector"] == {"kubernetes.io/hostname": "pi5u2"}
    assert pods["skylark-ingest"]["containerConcurrency"] == 20
    assert pods["skylark-score-v2"]["nodeSelector"] == {"skylark.io/node-type": "satellite"}
    assert pods["skylark-score-v2"]["tolerations"] == [{"key": "skylark.io/edge", "operator": "Exists", "effect": "NoSchedule"}]
    assert pods["skylark-score-v2"]["timeoutSeconds"] == 60
    assert pods["skylark-notify"]["nodeSelector"] == {"kubernetes.io/hostname": "pi5u1"}
    assert pods["skylark-handlers-pi4u6"]["nodeSelector"] == {"kubernetes.io/hostname": "pi4u6.testbed.local"}
    # deploy.resources laid over functionDefaults.resources key by key.
    assert container("skylark-score-v2")["resources"] == {
        "requests": {"cpu": "250m", "memory": "384Mi"}, "limits": {"cpu": "1", "memory": "1Gi"}}
    annotations = ksvcs["skylark-score-v2"]["spec"]["template"]["metadata"]["annotations"]
    assert annotations["autoscaling.knative.dev/target"] == "10"
    assert "autoscaling.knative.dev/scale-to-zero-pod-retention-period" not in annotations, "deploy set it empty"
    routes = {t["metadata"]["name"]: (t["spec"]["filter"]["attributes"], t["spec"]["subscriber"]["ref"]["name"])
              for t in of_kind(objects, "Trigger") if "skylarktarget" not in t["spec"]["filter"]["attributes"]}
    assert routes == {
        "skylark-ingest": ({"type": "com.acme.reading.submitted"}, "skylark-ingest"),
        "skylark-ingest-2": ({"type": "com.acme.reading.batch"}, "skylark-ingest"),
        "skylark-score-v2": ({"type": "com.acme.reading.ingested"}, "skylark-score-v2"),
        "skylark-notify": ({"type": "com.acme.score.computed"}, "skylark-notify"),
    }
    config = _configmap(objects)
    assert config["SKYLARK_POLICY"] == "random", "the workflow's policy"
    assert parse_workflow(config["SKYLARK_WORKFLOW"]).function("Score_v2").config == {
        "model": "gbt-2024-11", "threshold": "0.8"}
    assert {p["spec"]["data"] for p in of_kind(objects, "PingSource")} == {'{"functions":["Score_v2","ingest"]}'}
