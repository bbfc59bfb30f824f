"""Workflow declarations: the format, its validation (errors name the line and the field), the
queries the rest of Skylark asks of a workflow, and the example files shipped."""

from __future__ import annotations

import json
import textwrap

import pytest

from ex_workflows import EXAMPLES, example_path
from neighbors_service.sources.file import load_topology_file
from neighbors_service.topologies import example_path as topology_path
from skylark.workflow import ANY_NODE, API_VERSION, Workflow, WorkflowError, load_workflow, parse_workflow, workflow_from_env

SCORING = textwrap.dedent("""\
    apiVersion: skylark.io/v1alpha1
    kind: Workflow
    metadata:
      name: scoring
    spec:
      policy: random
      slo: {max_latency_ms: 250, min_bandwidth_mbps: 0}
      functions:
        - name: enrich
          entry: acme.fns:Enrich
          accepts: [io.acme.order.placed, io.acme.order.amended]
          emits: [io.acme.order.enriched]
          node: edge-1
          config: {window: 30, strict: true, regions: [eu, us], rate: 0.5}
        - name: score
          entry: acme.fns:make_scorer
          accepts: io.acme.order.enriched
          emits: [io.acme.order.scored]
          reads: [enrich]
        - name: notify
          entry: acme.fns:Notify
          accepts: [io.acme.order.scored]
          reads: [enrich, score]
          node: edge-2
    """)


def test_a_declaration_becomes_a_workflow():
    wf = parse_workflow(SCORING, "scoring.yaml")
    assert (wf.name, wf.policy, wf.slo.max_latency_ms, wf.slo.min_bandwidth_mbps) == ("scoring", "random", 250, 0)
    assert wf.names == ("enrich", "score", "notify")
    enrich, score, notify = wf.functions
    assert enrich.accepts == ("io.acme.order.placed", "io.acme.order.amended") and enrich.node == "edge-1"
    # config values are strings, as the environment's overrides are
    assert enrich.config == {"window": "30", "strict": "true", "regions": "eu,us", "rate": "0.5"}
    assert score.accepts == ("io.acme.order.enriched",) and score.node is None and not score.pinned
    assert score.runs_on("anywhere") and not notify.runs_on("edge-1")
    assert [f.name for f in wf.readers_of("enrich")] == ["score", "notify"]
    assert [f.name for f in wf.consumers_of("io.acme.order.enriched")] == ["score"]
    assert wf.entry_types() == ("io.acme.order.placed", "io.acme.order.amended")
    assert wf.terminal_types() == ()  # notify emits nothing
    assert [f.name for f in wf.placed_on("edge-2")] == ["score", "notify"]
    assert wf.pinned_nodes() == ("edge-1", "edge-2")


def test_the_document_round_trips_through_json():
    wf = parse_workflow(SCORING)
    again = Workflow.from_document(json.loads(json.dumps(wf.to_document())))
    assert again == wf
    assert wf.to_document()["apiVersion"] == API_VERSION
    assert wf.to_document()["spec"]["functions"][1]["node"] == ANY_NODE
    assert wf.with_policy("skylark").policy == "skylark" and wf.policy == "random"


@pytest.mark.parametrize(("old", "new", "line", "where", "message"), [
    ("apiVersion: skylark.io/v1alpha1", "apiVersion: skylark.io/v9", 1, "apiVersion", "not supported"),
    ("kind: Workflow", "kind: Pipeline", 2, "kind", "must be Workflow"),
    ("  policy: random", "  policy: fastest", 6, "spec.policy", "must be one of"),
    ("max_latency_ms: 250", "max_latency_ms: -1", 7, "spec.slo.max_latency_ms", "must be > 0"),
    ("max_latency_ms: 250", "max_latency_ms: .nan", 7, "spec.slo.max_latency_ms", "finite number"),
    ("      entry: acme.fns:make_scorer", "      entry: acme.fns", 16, "spec.functions[1].entry", "MODULE:FACTORY"),
    ("      accepts: io.acme.order.enriched", "      accepts: []", 17, "spec.functions[1].accepts",
     "at least one event type"),
    ("      accepts: io.acme.order.enriched", "      accepts: [has space]", 17, "spec.functions[1].accepts[0]",
     "no spaces"),
    ("      reads: [enrich]", "      reads: [enrich, nope]", 19, "spec.functions[1].reads[1]",
     "not a function of this workflow"),
    ("      reads: [enrich]", "      reads: [score]", 19, "spec.functions[1].reads[0]", "its own state"),
    ("      reads: [enrich]", "      reads: [enrich, enrich]", 19, "spec.functions[1].reads", "appears twice"),
    ("    - name: notify", "    - name: score", 20, "spec.functions[2].name", "already the name"),
    ("    - name: notify", "    - name: En_Rich", 20, "spec.functions[2].name", "same Kubernetes name"),
    ("      node: edge-2", "      node: edge 2", 24, "spec.functions[2].node", "must match"),
    ("      node: edge-2", "      nodes: edge-2", 24, "spec.functions[2].nodes", "unknown key"),
    ("config: {window: 30,", "config: {window: {deep: 1},", 14, "spec.functions[0].config.window",
     "string, number, boolean or list"),
])
def test_errors_name_the_line_and_the_field(old, new, line, where, message):
    assert old in SCORING
    if new.endswith("name: En_Rich"):  # a name that differs, but not as a Kubernetes name
        text = SCORING.replace(old, new).replace("name: enrich", "name: en-rich").replace("[enrich", "[en-rich")
        text = text.replace("reads: [en-rich, score]", "reads: [en-rich]")
    else:
        text = SCORING.replace(old, new)
    with pytest.raises(WorkflowError) as info:
        parse_workflow(text, "scoring.yaml")
    error = info.value
    assert (error.line, error.path) == (line, where), str(error)
    assert message in str(error) and str(error).startswith(f"scoring.yaml:{line}: {where}: ")


def test_missing_keys_point_at_their_mapping():
    with pytest.raises(WorkflowError) as info:
        parse_workflow(SCORING.replace("      entry: acme.fns:make_scorer\n", ""), "w.yaml")
    assert info.value.path == "spec.functions[1]" and info.value.line == 15 and "missing entry" in str(info.value)
    for text, message in (("", "must be a mapping"), ("[1, 2]", "must be a mapping"),
                          ("apiVersion: skylark.io/v1alpha1\nkind: Workflow\n", "missing spec"),
                          ("a: [", "not valid YAML"), ("a: *nope", "not valid YAML")):
        with pytest.raises(WorkflowError, match=message):
            parse_workflow(text, "w.yaml")


def test_files_and_the_environment(tmp_path):
    path = tmp_path / "wf.yaml"
    path.write_text(SCORING)
    assert load_workflow(path).name == "scoring"
    assert workflow_from_env({"SKYLARK_WORKFLOW": str(path)}).name == "scoring"
    as_json = json.dumps(parse_workflow(SCORING).to_document())
    assert workflow_from_env({"SKYLARK_WORKFLOW": as_json}) == parse_workflow(SCORING)
    assert workflow_from_env({}) is None and workflow_from_env({"SKYLARK_WORKFLOW": " "}) is None
    # SKYLARK_POLICY overrides the declared policy (the chart's config.policy, skylark up --policy)
    assert workflow_from_env({"SKYLARK_WORKFLOW": str(path), "SKYLARK_POLICY": "pull"}).policy == "pull"
    with pytest.raises(WorkflowError, match="must be one of"):
        workflow_from_env({"SKYLARK_WORKFLOW": str(path), "SKYLARK_POLICY": "fastest"})
    with pytest.raises(WorkflowError, match="cannot read"):
        load_workflow(tmp_path / "missing.yaml")
    (tmp_path / "latin1.yaml").write_bytes("name: caf\xe9".encode("latin-1"))
    with pytest.raises(WorkflowError, match="not UTF-8"):
        load_workflow(tmp_path / "latin1.yaml")
    with pytest.raises(WorkflowError, match="larger than"):
        parse_workflow("a: '" + "x" * (1024 * 1024) + "'")


def test_nodes_are_checked_against_a_topology():
    wf = parse_workflow(SCORING)
    wf.check_nodes(["edge-1", "edge-2", "cloud"])
    with pytest.raises(WorkflowError, match="'edge-2' is not in the topology") as info:
        wf.check_nodes(["edge-1"], "scoring.yaml")
    assert info.value.path == "spec.functions[2].node"


@pytest.mark.parametrize("name", EXAMPLES)
def test_the_shipped_examples_are_valid_and_fit_their_topologies(name):
    wf = load_workflow(example_path(name))
    topology = {"image-alarm": "demo3", "thesis": "thesis"}[name]
    nodes = [n.name for n in load_topology_file(topology_path(topology)).current().nodes]
    wf.check_nodes(nodes)
    assert wf.entry_types() and wf.terminal_types()
    for fn in wf.functions:
        module, _, factory = fn.entry.partition(":")
        assert getattr(__import__(module, fromlist=[factory]), factory)


def test_the_example_workflow_runs_one_function_per_demo_node():
    wf = load_workflow(example_path("image-alarm"))
    assert [(f.name, f.node) for f in wf.functions] == [("preprocess", "node-a"), ("detect", "node-b"),
                                                         ("alarm", "node-c")]
    assert [f.reads for f in wf.functions] == [(), ("preprocess",), ("detect",)]
    assert wf.terminal_types() == ("io.skylark.alarm.raised", "io.skylark.alarm.clear")
