"""The chart lints, renders with every values file, and every object validates strictly."""

from __future__ import annotations

import copy
import re
from pathlib import Path

import pytest

from chart_fixtures import (
    CHART,
    CI_VALUES,
    VALUES_CASES,
    case_id,
    core_errors,
    crd_errors,
    find_helm,
    helm_template,
    is_crd_kind,
    label,
    rendered,
    run_helm,
    values_args,
)

DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
TRIGGER_SPEC_KEYS = {"broker", "filter", "subscriber", "delivery"}
DELIVERY_KEYS = {"retry", "backoffPolicy", "backoffDelay", "deadLetterSink"}
DESTINATION_KEYS = {"ref", "uri"}
KNATIVE_REVISION_FIELDS = ("containerConcurrency", "timeoutSeconds", "responseStartTimeoutSeconds", "idleTimeoutSeconds")
REF_KEYS = {"apiVersion", "kind", "name", "namespace"}


@pytest.fixture(scope="module", params=VALUES_CASES, ids=case_id)
def case(request) -> tuple[Path | None, tuple[dict, ...]]:
    return request.param, rendered(request.param)


def test_helm_is_installed():
    result = run_helm("version", "--short")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("v3."), f"{find_helm()} is not Helm 3: {result.stdout}"


def test_there_are_at_least_two_ci_values_files():
    assert len(CI_VALUES) >= 2, [p.name for p in CI_VALUES]


@pytest.mark.parametrize("values_file", VALUES_CASES, ids=case_id)
def test_helm_lint_strict(values_file):
    result = run_helm("lint", "--strict", str(CHART), *values_args([values_file]))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 chart(s) failed" in result.stdout


def test_every_object_validates_strictly(case):
    _, objects = case
    errors: list[str] = []
    for obj in objects:
        errors += crd_errors(obj) if is_crd_kind(obj) else core_errors(obj)
    assert not errors, "\n".join(errors)


def test_knative_pod_specs_are_valid_core_pod_specs(case):
    """The preserve-unknown subtrees of a Knative pod spec (affinity, tolerations, nodeSelector,
    fieldRef ...) are checked against the core PodSpec, after Knative's own defaulting of the probe
    port (Knative probes the one serving port when none is given)."""
    _, objects = case
    errors: list[str] = []
    for ksvc in (o for o in objects if o["apiVersion"] == "serving.knative.dev/v1"):
        spec = copy.deepcopy(ksvc["spec"]["template"]["spec"])
        for knative_only in KNATIVE_REVISION_FIELDS:
            spec.pop(knative_only, None)
        for container in spec["containers"]:
            port = container["ports"][0]["containerPort"]
            for probe in ("readinessProbe", "livenessProbe"):
                if "httpGet" in container.get(probe, {}):
                    container[probe]["httpGet"].setdefault("port", port)
        pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "x"}, "spec": spec}
        errors += core_errors(pod, what=f"{label(ksvc)} pod spec")
    assert not errors, "\n".join(errors)


def test_trigger_and_broker_fields_are_known(case):
    """The Trigger CRD keeps unknown spec keys (x-kubernetes-preserve-unknown-fields), so a typo
    there would be accepted by the API server and silently ignored: check the fields explicitly."""
    _, objects = case
    for obj in objects:
        if obj["kind"] == "Trigger":
            spec = obj["spec"]
            assert set(spec) <= TRIGGER_SPEC_KEYS, (label(obj), set(spec) - TRIGGER_SPEC_KEYS)
            assert set(spec) >= {"broker", "filter", "subscriber"}, label(obj)
            assert set(spec["filter"]) == {"attributes"}, label(obj)
            assert spec["filter"]["attributes"], f"{label(obj)}: an empty filter matches every event"
            assert all(isinstance(k, str) and isinstance(v, str) for k, v in spec["filter"]["attributes"].items())
            _check_destination(spec["subscriber"], label(obj))
        if obj["kind"] in ("Trigger", "Broker") and "delivery" in obj.get("spec", {}):
            delivery = obj["spec"]["delivery"]
            assert set(delivery) <= DELIVERY_KEYS, (label(obj), set(delivery) - DELIVERY_KEYS)
            assert isinstance(delivery.get("retry", 0), int)
            assert delivery.get("backoffPolicy", "linear") in ("linear", "exponential")
            assert re.fullmatch(r"P(T(\d+(\.\d+)?[HMS])+|\d+D)", delivery.get("backoffDelay", "PT1S"))
            if "deadLetterSink" in delivery:
                _check_destination(delivery["deadLetterSink"], f"{label(obj)} deadLetterSink")


def _check_destination(dest: dict, what: str) -> None:
    assert dest and set(dest) <= DESTINATION_KEYS, (what, dest)
    if "ref" in dest:
        assert set(dest["ref"]) <= REF_KEYS and {"apiVersion", "kind", "name"} <= set(dest["ref"]), (what, dest)


def test_names_are_dns_labels_and_unique(case):
    _, objects = case
    seen: set[tuple[str, str, str]] = set()
    for obj in objects:
        name = obj["metadata"]["name"]
        assert len(name) <= 63 and DNS_LABEL.match(name), f"{label(obj)}: not a DNS-1123 label"
        if obj["apiVersion"] == "serving.knative.dev/v1":
            assert len(name) <= 57, f"{label(obj)}: its revision names <name>-00001 would pass 63"
        key = (obj["apiVersion"], obj["kind"], name)
        assert key not in seen, f"{label(obj)} rendered twice"
        seen.add(key)


def test_namespaced_objects_carry_the_release_namespace(case):
    _, objects = case
    cluster_scoped = {"ClusterRole", "ClusterRoleBinding"}
    for obj in objects:
        if obj["kind"] in cluster_scoped:
            assert "namespace" not in obj["metadata"], label(obj)
        else:
            assert obj["metadata"]["namespace"] == "skylark-test", label(obj)


# -- the strict validation itself rejects what it should ------------------------------------------------

def _source(objects):
    return next(o for o in objects if o["kind"] == "RedisStreamSource")


def test_strict_crd_validation_rejects_an_unknown_field():
    obj = copy.deepcopy(_source(rendered(None)))
    assert crd_errors(obj) == []
    obj["spec"]["adress"] = obj["spec"].pop("address")
    errors = crd_errors(obj)
    assert any("'adress' was unexpected" in e for e in errors), errors


def test_strict_crd_validation_rejects_a_wrongly_shaped_password_reference():
    obj = copy.deepcopy(_source(rendered(None)))
    obj["spec"]["dialOptions"] = {"password": {"secretKeyRef": {"name": "x", "key": "y"}}}
    assert any("'secretKeyRef' was unexpected" in e for e in crd_errors(obj))


def test_strict_crd_validation_rejects_unknown_metadata_and_container_fields():
    ksvc = copy.deepcopy(next(o for o in rendered(None) if o["apiVersion"] == "serving.knative.dev/v1"))
    ksvc["metadata"]["label"] = {"a": "b"}
    ksvc["spec"]["template"]["spec"]["containers"][0]["port"] = 8080
    errors = crd_errors(ksvc)
    assert any("'port' was unexpected" in e for e in errors), errors
    assert any("metadata" in e and "'label' was unexpected" in e for e in errors), errors


def test_core_validation_is_strict():
    daemonset = copy.deepcopy(next(o for o in rendered(None) if o["kind"] == "DaemonSet"))
    assert core_errors(daemonset) == []
    daemonset["spec"]["template"]["spec"]["containers"][0]["hostport"] = 1
    assert core_errors(daemonset)


# -- bad values fail at render time with a clear message ------------------------------------------------

@pytest.mark.parametrize(
    ("sets", "message"),
    [
        (["nodes=null"], "set .Values.nodes"),
        (["eventing.triggers[0].name=x", "eventing.triggers[0].subscriber.service=nope",
          "eventing.triggers[0].filter.attributes.type=t"], 'unknown service "nope"'),
        (["eventing.triggers[0].name=x", "eventing.triggers[0].subscriber.service=handlers"],
         "needs filter.attributes"),
        (["deadLetter.enabled=false"], "deadLetter.enabled is false"),
        (["eventing.triggers[0].name=x", "eventing.triggers[0].subscriber.service=handlers",
          "eventing.triggers[0].filter.attributes.type=t"], "needs perNode: true"),
        (["eventing.delivery.backoffPolicy=sometimes"], "must be linear or exponential"),
        (["nodes[0].name=a"], "needs name and address"),
    ],
)
def test_bad_values_fail_with_a_message(sets, message):
    result = helm_template(None, set_values=sets)
    assert result.returncode != 0
    assert message in result.stderr, result.stderr


def test_knative_service_names_that_would_break_revisions_are_refused():
    long_node = ["nodes[0].name=" + "n" * 40, "nodes[0].address=10.0.0.1"]
    assert helm_template(None, set_values=long_node).returncode == 0, "57 characters still fit"
    result = helm_template(None, set_values=long_node, release="skylark2")
    assert result.returncode != 0 and "longer than 57 characters" in result.stderr, result.stderr
