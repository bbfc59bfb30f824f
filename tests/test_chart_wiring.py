"""eventing.wiring builds the same Triggers, PingSource and stream as the chart renders (no drift),
and rejects the values the chart rejects; the chart's default workflow is the example's file."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from chart_fixtures import (
    CHART,
    NAMESPACE,
    RELEASE,
    REPO,
    USER_VALUES,
    VALUES_CASES,
    case_id,
    helm_template,
    merged_values,
    of_kind,
    rendered,
)
from eventing import catalogue
from eventing.wiring import (
    SERVICE_KEYS,
    default_values_path,
    function_service,
    load_chart_values,
    merge_values,
    object_name,
    handlers_service,
    pingsources_from_values,
    stream_from_values,
    triggers_from_values,
    warmup_data,
    workflow_from_values,
)
from skylark.state import keys
from skylark.state.errors import ConfigError
from skylark.workflow import load_workflow

PREFIX = f"{RELEASE}-"


def _comparable(obj: dict) -> dict:
    """What both renderings must agree on: identity and spec (the chart adds labels)."""
    return {
        "apiVersion": obj["apiVersion"],
        "kind": obj["kind"],
        "metadata": {"name": obj["metadata"]["name"], "namespace": obj["metadata"]["namespace"]},
        "spec": obj["spec"],
    }


@pytest.mark.parametrize("values_file", VALUES_CASES, ids=case_id)
def test_rendered_triggers_equal_triggers_from_values(values_file):
    values = merged_values(values_file)
    rendered_triggers = [_comparable(t) for t in of_kind(rendered(values_file), "Trigger")]
    assert rendered_triggers == triggers_from_values(values, NAMESPACE, prefix=PREFIX)


@pytest.mark.parametrize("values_file", VALUES_CASES, ids=case_id)
def test_unprefixed_triggers_name_the_service_keys(values_file):
    """The local broker's view: names modulo the release prefix, refs = keys of its service map."""
    values = merged_values(values_file)
    local = triggers_from_values(values, NAMESPACE)
    chart = [_comparable(t) for t in of_kind(rendered(values_file), "Trigger")]
    assert [t["metadata"]["name"] for t in local] == [t["metadata"]["name"].removeprefix(PREFIX) for t in chart]
    for mine, theirs in zip(local, chart):
        assert mine["spec"]["filter"] == theirs["spec"]["filter"]
        ref_name = mine["spec"]["subscriber"]["ref"]["name"]
        functions = {function_service(name) for name in workflow_from_values(values).names}
        assert ref_name in SERVICE_KEYS or ref_name in functions or ref_name in {
            handlers_service(n["name"]) for n in values["nodes"]}
        assert PREFIX + mine["spec"]["subscriber"]["ref"]["name"] == theirs["spec"]["subscriber"]["ref"]["name"]
        assert mine["spec"]["subscriber"].get("uri") == theirs["spec"]["subscriber"].get("uri")
        assert (mine["spec"].get("delivery", {}).get("retry"), mine["spec"].get("delivery", {}).get("backoffDelay")) == (
            theirs["spec"].get("delivery", {}).get("retry"), theirs["spec"].get("delivery", {}).get("backoffDelay"))


@pytest.mark.parametrize("values_file", VALUES_CASES, ids=case_id)
def test_rendered_pingsource_equals_pingsource_from_values(values_file):
    values = merged_values(values_file)
    pings = [_comparable(p) for p in of_kind(rendered(values_file), "PingSource")]
    assert pings == pingsources_from_values(values, NAMESPACE, prefix=PREFIX)


@pytest.mark.parametrize("values_file", VALUES_CASES, ids=case_id)
def test_rendered_ping_data_is_warmup_data_byte_for_byte(values_file):
    """Without ping.data both derive it from the workflow: Helm's toJson of the sorted, unique reads
    is exactly eventing.wiring.warmup_data (compact JSON), not merely the same JSON value."""
    values = merged_values(values_file)
    pings = of_kind(rendered(values_file), "PingSource")
    if not values["ping"]["enabled"] or values["ping"]["data"]:
        return
    expected = warmup_data(workflow_from_values(values))
    assert pings and {p["spec"]["data"] for p in pings} == {expected}
    assert expected == '{"functions":[' + ",".join(
        f'"{name}"' for name in sorted({r for fn in workflow_from_values(values).functions for r in fn.reads})) + "]}"


@pytest.mark.parametrize("values_file", VALUES_CASES, ids=case_id)
def test_rendered_sources_read_stream_from_values(values_file):
    key, group = stream_from_values(merged_values(values_file))
    sources = of_kind(rendered(values_file), "RedisStreamSource")
    assert sources and all((s["spec"]["stream"], s["spec"]["group"]) == (key, group) for s in sources)


def test_a_release_name_changes_only_the_prefix():
    result = helm_template(None, release="edge", namespace="other")
    assert result.returncode == 0, result.stderr
    triggers = [_comparable(o) for o in yaml.safe_load_all(result.stdout) if o and o["kind"] == "Trigger"]
    assert triggers == triggers_from_values(load_chart_values(), "other", prefix="edge-")


def test_defaults_load_from_the_chart_in_the_repository():
    assert default_values_path() == CHART / "values.yaml"
    values = load_chart_values()
    assert stream_from_values(values) == (keys.DEFAULT_CHANGE_STREAM, "skylark-handlers")
    routes = {t["spec"]["filter"]["attributes"]["type"]: t["spec"]["subscriber"] for t in triggers_from_values(values)}
    assert routes[catalogue.BUNDLE_PROPAGATED] == {
        "ref": {"apiVersion": "serving.knative.dev/v1", "kind": "Service", "name": "handlers-node-c"}, "uri": "/"}
    assert routes["io.skylark.image.submitted"]["ref"]["name"] == "preprocess"
    assert routes["io.skylark.preprocess.completed"]["ref"]["name"] == "detect"
    assert routes["io.skylark.detect.completed"]["ref"]["name"] == "alarm"
    [first, *_] = triggers_from_values(values, "ns")
    assert first["apiVersion"] == "eventing.knative.dev/v1" and first["kind"] == "Trigger"
    assert first["metadata"] == {"name": "bundle-propagated-node-a", "namespace": "ns"}
    assert first["spec"]["filter"]["attributes"] == {"type": catalogue.BUNDLE_PROPAGATED, "skylarktarget": "node-a"}
    assert first["spec"]["broker"] == "skylark"
    assert first["spec"]["delivery"] == {
        "retry": 5, "backoffPolicy": "exponential", "backoffDelay": "PT0.2S",
        "deadLetterSink": {"ref": {"apiVersion": "serving.knative.dev/v1", "kind": "Service", "name": "dead-letter"}},
    }


def test_per_node_triggers_for_callers_own_nodes():
    """The local cluster passes its simulated nodes; a per-node local broker passes just its own."""
    values = load_chart_values()
    triggers = triggers_from_values(values, nodes=["node-a", "Node_B.x"])
    propagation = [t for t in triggers if t["spec"]["filter"]["attributes"]["type"] == catalogue.BUNDLE_PROPAGATED]
    assert [t["metadata"]["name"] for t in propagation] == ["bundle-propagated-node-a", "bundle-propagated-node-b-x"]
    assert [t["spec"]["filter"]["attributes"]["skylarktarget"] for t in propagation] == ["node-a", "Node_B.x"]
    assert [t["spec"]["subscriber"]["ref"]["name"] for t in propagation] == ["handlers-node-a", "handlers-node-b-x"]
    # Only the functions placed on those nodes get Triggers: preprocess is pinned to node-a, detect
    # and alarm to node-b and node-c.
    assert [t["metadata"]["name"] for t in triggers if t not in propagation] == ["preprocess"]
    [only] = [t for t in triggers_from_values(values, nodes=["node-a"]) if t["spec"]["subscriber"]["ref"]["name"].startswith("handlers")]
    assert only["spec"]["filter"]["attributes"]["skylarktarget"] == "node-a"
    pings = pingsources_from_values(values, nodes=["node-a", "node-b"])
    assert [p["spec"]["sink"]["ref"]["name"] for p in pings] == ["handlers-node-a", "handlers-node-b"]
    assert [p["metadata"]["name"] for p in pings] == ["warmup-node-a", "warmup-node-b"]


def test_trigger_types_are_skylarks_or_the_workflows():
    """A Trigger filters on Skylark's own propagation type or on a type a function of the workflow
    accepts (the workflow's events are its own, not a fixed catalogue)."""
    for values_file in VALUES_CASES:
        values = merged_values(values_file)
        accepted = {t for fn in workflow_from_values(values).functions for t in fn.accepts}
        for trigger in triggers_from_values(values):
            assert trigger["spec"]["filter"]["attributes"]["type"] in {catalogue.BUNDLE_PROPAGATED, *accepted}


def test_the_default_workflow_is_the_example_workflow_file():
    """values.yaml's `workflow` and ex_workflows/image-alarm.yaml declare the same workflow (what
    `skylark demo` runs locally is what the chart installs)."""
    example = load_workflow(REPO / "ex_workflows" / "image-alarm.yaml")
    assert workflow_from_values(load_chart_values()) == example


def test_the_example_images_run_in_the_generic_function_image_unless_they_need_more():
    """alarm needs nothing beyond the generic image; preprocess and detect have their own
    (Pillow; OpenCV), built FROM it."""
    images = {fn.name: fn.deploy.get("image") for fn in workflow_from_values(load_chart_values()).functions}
    assert images == {"preprocess": "skylark-preprocess", "detect": "skylark-detect", "alarm": "skylark-function"}
    assert load_chart_values()["functionDefaults"]["image"] == "skylark-function"


def test_a_trigger_to_a_function_is_wired_alike(tmp_path):
    """eventing.triggers may name a workflow function's service key: both renderings agree."""
    values = merged_values(USER_VALUES)
    extra = {"eventing": {"triggers": [
        *values["eventing"]["triggers"],
        {"name": "urgent", "filter": {"attributes": {"type": "com.acme.score.computed", "acmeurgency": "high"}},
         "subscriber": {"service": "notify", "path": "/urgent"},
         "delivery": {"retry": 9, "deadLetterSink": {"service": "dead-letter"}}},
    ]}}
    file = tmp_path / "extra-values.yaml"
    file.write_text(yaml.safe_dump(extra))
    result = helm_template(USER_VALUES, file)
    assert result.returncode == 0, result.stderr
    chart = [_comparable(o) for o in yaml.safe_load_all(result.stdout) if o and o["kind"] == "Trigger"]
    assert chart == triggers_from_values(merge_values(values, extra), NAMESPACE, prefix=PREFIX)
    assert any(t["metadata"]["name"] == f"{PREFIX}urgent" for t in chart)


def test_merge_values_behaves_like_helm():
    base = {"a": {"b": 1, "c": [1, 2], "d": {"e": 1}}, "f": 1}
    merged = merge_values(base, {"a": {"c": [3], "d": None, "g": 2}, "f": None, "h": "x"})
    assert merged == {"a": {"b": 1, "c": [3], "g": 2}, "h": "x"}
    assert base == {"a": {"b": 1, "c": [1, 2], "d": {"e": 1}}, "f": 1}, "pure: the base is not changed"


def test_object_names_are_truncated_like_helm():
    assert object_name("handlers", "skylark-") == "skylark-handlers"
    assert object_name("x" * 70) == "x" * 63
    assert object_name("b" * 10, "a" * 52 + "-") == "a" * 52 + "-" + "b" * 10
    assert object_name("b", "a" * 62 + "-") == "a" * 62


def _with_trigger(**trigger) -> dict:
    values = load_chart_values()
    values["eventing"]["triggers"] = [trigger]
    return values


@pytest.mark.parametrize(
    ("values", "message"),
    [
        (_with_trigger(name="x", filter={"attributes": {"type": "t"}}, subscriber={"service": "nope"}), "unknown service"),
        (_with_trigger(name="x", subscriber={"service": "handlers"}), "needs filter.attributes"),
        (_with_trigger(filter={"attributes": {"type": "t"}}, subscriber={"service": "handlers"}), "needs a name"),
        (_with_trigger(name="x", filter={"attributes": {"type": "t"}}, subscriber={}), "needs either service or uri"),
        (_with_trigger(name="x", filter={"attributes": {"type": "t"}}, subscriber={"service": "handlers"}),
         "needs perNode"),
        (merge_values(load_chart_values(), {"nodes": []}), "set nodes"),
        (_with_trigger(name="x", filter={"attributes": {"type": "t"}}, subscriber={"service": "alarm"},
                       delivery={"backoffPolicy": "sometimes"}), "linear or exponential"),
        (_with_trigger(name="x", filter={"attributes": {"type": "t"}}, subscriber={"service": "alarm"},
                       delivery={"retry": "many"}), "must be an integer"),
        (merge_values(load_chart_values(), {"deadLetter": {"enabled": False}}), "deadLetter.enabled is false"),
        (merge_values(load_chart_values(), {"eventing": {"triggers": "all"}}), "must be a list"),
        (merge_values(load_chart_values(), {"eventing": {"brokerName": ""}}), "brokerName"),
    ],
)
def test_bad_wiring_is_rejected(values, message):
    with pytest.raises(ConfigError, match=message):
        triggers_from_values(values)


def test_bad_stream_and_ping_are_rejected():
    with pytest.raises(ConfigError, match="stream.group"):
        stream_from_values({"stream": {"key": "skylark:changes"}})
    with pytest.raises(ConfigError, match="ping.schedule"):
        pingsources_from_values({"ping": {"enabled": True, "name": "w", "sink": {"service": "handlers"}}})
    assert pingsources_from_values({"ping": {"enabled": False}}) == []


def test_load_chart_values_errors_are_clear(tmp_path: Path):
    with pytest.raises(ConfigError, match="not found"):
        load_chart_values(tmp_path / "missing.yaml")
    (tmp_path / "list.yaml").write_text("- 1\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_chart_values(tmp_path / "list.yaml")
    (tmp_path / "bad.yaml").write_text("a: [\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_chart_values(tmp_path / "bad.yaml")
