"""The chart lints, renders with every values file, and every object validates strictly against
both Knative release lines (1.12 / eventing-redis 1.16, the seed's; 1.22, the current one)."""

from __future__ import annotations

import copy
import re
import shutil
from pathlib import Path

import pytest
import yaml

from chart_fixtures import (
    CHART,
    CI_VALUES,
    CRD_LINES,
    CRD_FILES,
    RELEASE,
    USER_VALUES,
    VALUES_CASES,
    case_id,
    core_errors,
    crd_errors,
    crds_dir,
    expected_functions,
    find_helm,
    helm_template,
    is_crd_kind,
    label,
    merged_values,
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


@pytest.fixture(scope="module", params=list(CRD_LINES))
def line(request) -> str:
    """A Knative release line: its CRD schemas and the Kubernetes version it runs on."""
    return request.param


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


def test_both_crd_folders_hold_every_schema_the_chart_needs(line):
    folder = crds_dir(line)
    for file in CRD_FILES.values():
        assert (folder / file).is_file(), f"{folder / file} is missing"


def test_every_object_validates_strictly(case, line):
    _, objects = case
    k8s_version = CRD_LINES[line][1]
    errors: list[str] = []
    for obj in objects:
        errors += crd_errors(obj, line) if is_crd_kind(obj) else core_errors(obj, k8s_version=k8s_version)
    assert not errors, "\n".join(errors)


@pytest.mark.parametrize("values_file", VALUES_CASES, ids=case_id)
def test_one_rendering_serves_both_kubernetes_versions(values_file):
    """The chart asks nothing of .Capabilities: what it renders for the 1.12 line's Kubernetes is
    what it renders for the 1.22 line's, so the one rendering validated above is what installs."""
    versions = sorted({k8s for _, k8s in CRD_LINES.values()})
    outputs = []
    for version in versions:
        result = helm_template(values_file, kube_version=version)
        assert result.returncode == 0, result.stderr
        outputs.append([d for d in yaml.safe_load_all(result.stdout) if d and d.get("kind") != "Secret"])
    assert all(out == outputs[0] for out in outputs[1:])


def test_knative_pod_specs_are_valid_core_pod_specs(case, line):
    """The preserve-unknown subtrees of a Knative pod spec (affinity, tolerations, nodeSelector,
    fieldRef ...) are checked against the core PodSpec, after Knative's own defaulting of the probe
    port (Knative probes the one serving port when none is given)."""
    _, objects = case
    k8s_version = CRD_LINES[line][1]
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
        errors += core_errors(pod, what=f"{label(ksvc)} pod spec", k8s_version=k8s_version)
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


def test_strict_crd_validation_rejects_an_unknown_field(line):
    obj = copy.deepcopy(_source(rendered(None)))
    assert crd_errors(obj, line) == []
    obj["spec"]["adress"] = obj["spec"].pop("address")
    errors = crd_errors(obj, line)
    assert any("'adress' was unexpected" in e for e in errors), errors


def test_strict_crd_validation_rejects_a_wrongly_shaped_password_reference(line):
    obj = copy.deepcopy(_source(rendered(None)))
    obj["spec"]["dialOptions"] = {"password": {"secretKeyRef": {"name": "x", "key": "y"}}}
    assert any("'secretKeyRef' was unexpected" in e for e in crd_errors(obj, line))


def test_strict_crd_validation_rejects_unknown_metadata_and_container_fields(line):
    ksvc = copy.deepcopy(next(o for o in rendered(None) if o["apiVersion"] == "serving.knative.dev/v1"))
    ksvc["metadata"]["label"] = {"a": "b"}
    ksvc["spec"]["template"]["spec"]["containers"][0]["port"] = 8080
    errors = crd_errors(ksvc, line)
    assert any("'port' was unexpected" in e for e in errors), errors
    assert any("metadata" in e and "'label' was unexpected" in e for e in errors), errors


def test_the_current_line_is_stricter_where_its_schema_is(line):
    """1.22 types nodeSelector as a map of strings (1.12 kept it open) and dropped
    resources.claims: the strict validation sees each line's own schema."""
    ksvc = copy.deepcopy(next(o for o in rendered(USER_VALUES) if o["metadata"]["name"] == f"{RELEASE}-ingest"))
    assert crd_errors(ksvc, line) == []
    ksvc["spec"]["template"]["spec"]["nodeSelector"]["skylark.io/zone"] = 3
    ksvc["spec"]["template"]["spec"]["containers"][0]["resources"]["claims"] = [{"name": "gpu"}]
    errors = crd_errors(ksvc, line)
    if line == "knative-1.22":
        assert any("nodeSelector" in e and "not of type 'string'" in e for e in errors), errors
        assert any("'claims' was unexpected" in e for e in errors), errors
    else:
        assert errors == [], errors


def test_core_validation_is_strict(line):
    k8s_version = CRD_LINES[line][1]
    daemonset = copy.deepcopy(next(o for o in rendered(None) if o["kind"] == "DaemonSet"))
    assert core_errors(daemonset, k8s_version=k8s_version) == []
    daemonset["spec"]["template"]["spec"]["containers"][0]["hostport"] = 1
    assert core_errors(daemonset, k8s_version=k8s_version)


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
    # One node (its functions run on any node, so the node's name is free).
    one_node = CHART / "ci" / "one-node-values.yaml"
    long_node = ["nodes[0].name=" + "n" * 40, "nodes[0].address=10.0.0.1"]
    assert helm_template(one_node, set_values=long_node).returncode == 0, "57 characters still fit"
    result = helm_template(one_node, set_values=long_node, release="skylark2")
    assert result.returncode != 0 and "longer than 57 characters" in result.stderr, result.stderr


# -- the workflow: bad declarations fail at render time with a clear message -----------------------------

WARM_CHAIN = '{"chains": ["c1"]}'


def _workflow_values(tmp_path: Path, name: str, *functions: dict, ping: dict | None = None, **spec) -> Path:
    """A values file with its own workflow and nodes, as a user writes one (the ping warms chain
    c1 unless ``ping`` says otherwise)."""
    values = {
        "nodes": [{"name": "n1", "address": "10.0.0.1"}, {"name": "n2", "address": "10.0.0.2"}],
        "workflow": {"apiVersion": "skylark.io/v1alpha1", "kind": "Workflow", "metadata": {"name": "w"},
                     "spec": {**spec, "functions": list(functions)}},
        "ping": {"data": WARM_CHAIN} if ping is None else ping,
    }
    file = tmp_path / f"{name}-values.yaml"
    file.write_text(yaml.safe_dump(values))
    return file


def _fn(name: str = "f", **fields) -> dict:
    return {"name": name, "entry": "pkg.mod:F", "accepts": ["com.example.t"], **fields}


@pytest.mark.parametrize(
    ("functions", "spec", "message"),
    [
        ([], {}, "workflow.spec.functions is empty"),
        ([_fn(node="n3")], {}, 'workflow function "f": node "n3" is not in .Values.nodes (nodes: n1, n2)'),
        ([_fn(node="n1"), _fn("g", node="elsewhere")], {}, 'node "elsewhere" is not in .Values.nodes'),
        ([_fn()], {"stateless_node": "cloud"}, 'stateless_node: node "cloud" is not in .Values.nodes'),
        ([_fn("f" * 50)], {}, "longer than 57 characters (its revisions append -00001): use a shorter release or function name"),
        ([_fn("Score.v2"), _fn("score_v2")], {}, 'map to the same Kubernetes name "score-v2"'),
        ([_fn(), _fn()], {}, 'workflow function "f": the name is used twice'),
        ([_fn(entry="")], {}, "needs entry (MODULE:FACTORY"),
        ([_fn(accepts=[])], {}, "needs accepts"),
        ([_fn(name="a b")], {}, "must match [A-Za-z0-9_.-]{1,128}"),
        ([_fn(reads=["ghost"])], {}, 'reads "ghost", which is not a function of this workflow'),
    ],
)
def test_bad_workflows_fail_with_a_message(tmp_path, functions, spec, message):
    result = helm_template(_workflow_values(tmp_path, "bad", *functions, **spec))
    assert result.returncode != 0, "rendered a workflow it should have refused"
    assert message in result.stderr, result.stderr


def test_a_workflow_without_reads_renders_with_its_own_ping_data(tmp_path):
    functions = (_fn(node="n1"), _fn("g", accepts="com.example.u"))
    assert helm_template(_workflow_values(tmp_path, "off", *functions, ping={"enabled": False})).returncode == 0
    result = helm_template(_workflow_values(tmp_path, "noreads", *functions))
    assert result.returncode == 0, result.stderr
    objects = [o for o in yaml.safe_load_all(result.stdout) if o]
    assert {p["spec"]["data"] for p in objects if p["kind"] == "PingSource"} == {WARM_CHAIN}
    triggers = {t["metadata"]["name"]: t["spec"]["filter"]["attributes"] for t in objects if t["kind"] == "Trigger"}
    assert triggers[f"{RELEASE}-g"] == {"type": "com.example.u"}, "a single accepted type may be a string"
    # no ping.data and nothing read: nothing to warm, so no PingSource (as eventing.wiring builds it)
    values = yaml.safe_load(_workflow_values(tmp_path, "nothing", *functions, ping={"data": ""}).read_text())
    result = helm_template(_workflow_values(tmp_path, "nothing", *functions, ping={"data": ""}))
    assert result.returncode == 0, result.stderr
    assert [o for o in yaml.safe_load_all(result.stdout) if o and o["kind"] == "PingSource"] == []
    from chart_fixtures import merged_values  # noqa: PLC0415
    from eventing.wiring import pingsources_from_values  # noqa: PLC0415

    assert values["ping"] == {"data": ""} and pingsources_from_values(merged_values(
        _workflow_values(tmp_path, "nothing", *functions, ping={"data": ""}))) == []


def test_a_function_name_fits_57_characters_with_the_release(tmp_path):
    fits = _workflow_values(tmp_path, "fits", _fn("f" * 49, reads=["g"]), _fn("g"))
    assert helm_template(fits).returncode == 0, "skylark- + 49 = 57 characters still fit"


def test_a_destination_may_name_a_function_but_not_an_unknown_service(tmp_path):
    base = merged_values(USER_VALUES)
    triggers = [*base["eventing"]["triggers"],
                {"name": "urgent", "filter": {"attributes": {"type": "com.acme.score.computed", "acmeurgency": "high"}},
                 "subscriber": {"service": "notify", "path": "/urgent"}}]
    file = tmp_path / "extra-values.yaml"
    file.write_text(yaml.safe_dump({"eventing": {"triggers": triggers}}))
    result = helm_template(USER_VALUES, file)
    assert result.returncode == 0, result.stderr
    urgent = next(o for o in yaml.safe_load_all(result.stdout) if o and o["metadata"]["name"] == f"{RELEASE}-urgent")
    assert urgent["spec"]["subscriber"]["ref"]["name"] == f"{RELEASE}-notify"
    triggers[-1]["subscriber"]["service"] = "preprocess"  # the example's, not this workflow's
    file.write_text(yaml.safe_dump({"eventing": {"triggers": triggers}}))
    result = helm_template(USER_VALUES, file)
    assert result.returncode != 0
    assert 'unknown service "preprocess" (one of: handlers, dead-letter, ingest, score-v2, notify)' in result.stderr


def test_trigger_names_may_not_collide(tmp_path):
    base = merged_values(USER_VALUES)
    triggers = [*base["eventing"]["triggers"],
                {"name": "ingest", "filter": {"attributes": {"type": "x"}}, "subscriber": {"service": "notify"}}]
    file = tmp_path / "dup-values.yaml"
    file.write_text(yaml.safe_dump({"eventing": {"triggers": triggers}}))
    result = helm_template(USER_VALUES, file)
    assert result.returncode != 0 and 'duplicate trigger name "ingest"' in result.stderr, result.stderr


# -- NOTES.txt ------------------------------------------------------------------------------------------

def _notes(tmp_path: Path, values_file: Path | None) -> str:
    """NOTES.txt as `helm install` prints it: rendered with `tpl` from a copy of the chart (helm
    template does not render NOTES, helm install needs a cluster)."""
    chart = tmp_path / "chart"
    shutil.copytree(CHART, chart)
    (chart / "files").mkdir()
    shutil.copy(chart / "templates" / "NOTES.txt", chart / "files" / "notes.txt")
    (chart / "templates" / "zz-notes.yaml").write_text(
        'apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: notes\ndata:\n'
        '  notes: {{ tpl (.Files.Get "files/notes.txt") . | quote }}\n')
    result = helm_template(values_file, chart=chart)
    assert result.returncode == 0, result.stderr
    return next(o for o in yaml.safe_load_all(result.stdout) if o and o["metadata"]["name"] == "notes")["data"]["notes"]


@pytest.mark.parametrize("values_file", VALUES_CASES, ids=case_id)
def test_notes_list_the_workflows_functions(tmp_path, values_file):
    values = merged_values(values_file)
    notes = _notes(tmp_path, values_file)
    assert f'running workflow "{values["workflow"]["metadata"]["name"]}"' in notes
    for fn in expected_functions(values):
        where = f"pinned to {fn['node']['name']}" if fn["node"] else "on any node"
        assert f"  {fn['service']}  (function {fn['spec'].name}: {fn['spec'].entry}, {where};" in notes, notes
    unpinned = any(fn["node"] is None for fn in expected_functions(values))
    needs_fieldref = unpinned and values["knative"]["nodeNameFromDownwardAPI"]
    assert ('"kubernetes.podspec-fieldref":"enabled"' in notes) == needs_fieldref
    assert "preprocess" not in notes or values["workflow"]["metadata"]["name"].startswith("image-alarm")


def test_the_readmes_example_workflow_values_file_installs(tmp_path):
    """charts/skylark/README.md "Your workflow is a values file": its example renders and lints."""
    readme = (CHART / "README.md").read_text()
    match = re.search(r"```yaml\n(# my-workflow\.yaml\n.*?)```", readme, re.S)
    assert match, "the README's example values file"
    file = tmp_path / "my-workflow.yaml"
    file.write_text(match.group(1))
    assert run_helm("lint", "--strict", str(CHART), "-f", str(file)).returncode == 0
    result = helm_template(file)
    assert result.returncode == 0, result.stderr
    names = {o["metadata"]["name"] for o in yaml.safe_load_all(result.stdout) if o}
    assert {f"{RELEASE}-ingest", f"{RELEASE}-ingest-2", f"{RELEASE}-score"} <= names
