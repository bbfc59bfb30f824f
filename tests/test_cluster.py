"""`skylark up`, `skylark run` and `skylark demo`: the whole pipeline on one machine, as a user
runs it, for the example workflow and for a workflow of the user's own."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time

import psutil
import pytest
import requests

from eventing.http import new_event, to_binary
from skylark.runtime.embedded import free_port_block

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def skylark(*args: str, env: dict | None = None, timeout: float = 240) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "skylark.cli", *args], capture_output=True, text=True,
                          timeout=timeout, cwd=REPO, env={**os.environ, "COLUMNS": "160", **(env or {})})


def stage(chain: dict, name: str) -> dict:
    return next(entry for entry in chain["trace"] if entry["function"] == name)


def run_demo(tmp_path, *extra: str) -> dict:
    report = tmp_path / "report.json"
    result = skylark("demo", "--images", "5", "--report", str(report), *extra)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "10/10 chains completed" in result.stdout
    return json.loads(report.read_text())


def test_demo_completes_both_modes_with_alarms_and_local_reads_only_with_propagation(tmp_path):
    report = run_demo(tmp_path)
    assert report["completed"] == report["total"] == 10
    chains = report["chains"]
    placement = report["placement"]
    a, b, c = placement["preprocess"], placement["detect"], placement["alarm"]
    for chain in chains:
        assert [(e["function"], e["node"]) for e in chain["trace"]] == [("preprocess", a), ("detect", b), ("alarm", c)]
        assert chain["e2e_ms"] > 0
        # the astronaut (a face) raises an alarm; the cat, the coffee and the rocket do not
        expected = "alarm" if chain["image"] == "astronaut" else "no_alarm"
        if chain["image"] in ("astronaut", "chelsea", "coffee", "rocket"):
            assert chain["data"]["outcome"] == expected, chain
            assert chain["outcome"] == ("io.skylark.alarm.raised" if expected == "alarm" else "io.skylark.alarm.clear")
    alarms = [ch for ch in chains if ch["data"]["outcome"] == "alarm"]
    assert alarms and all(d["class"] == "face" for ch in alarms for d in ch["data"]["detections"])
    for chain in chains:
        detect, alarm = stage(chain, "detect"), stage(chain, "alarm")
        if chain["mode"] == "skylark":
            # the bundles were pushed to B and C: both successors read their state locally
            assert (detect["fetch_location"], alarm["fetch_location"]) == ("local", "local"), chain
        else:
            # the baseline: state stays where it was written and is read across the link
            assert (detect["fetch_location"], detect["fetch_node"]) == ("remote", a), chain
            assert (alarm["fetch_location"], alarm["fetch_node"]) == ("remote", b), chain


def _children(pid: int) -> list[psutil.Process]:
    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []


def test_up_starts_prints_endpoints_and_stops_cleanly():
    ports = 3 * 4 + 3  # per node: redis, handlers, broker, its function; then neighbors, dead letter, observer
    base = free_port_block(ports)
    proc, text = start_up(["--base-port", str(base)], {})
    assert "Ctrl-C stops everything" in text, text
    assert f"redis://127.0.0.1:{base}/0" in text and "broker ingress" in text and "links are not emulated" in text
    children = _children(proc.pid)
    assert len(children) >= 3 * 5  # per node: redis, 3 gunicorn masters (+ workers), agent
    ports = [base + i for i in range(ports)]
    for port in ports[:3]:
        with socket.create_connection(("127.0.0.1", port), timeout=2):
            pass
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=60) == 0
    rest = proc.stdout.read()
    assert "no process left behind" in rest
    alive = [p for p in children if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
    assert alive == [], alive
    for port in ports:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", port))  # every port is free again


def test_up_refuses_a_taken_port_and_a_missing_binary():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = skylark("up", "--base-port", str(port), timeout=60)
    assert result.returncode == 2 and f"port {port}" in result.stderr and "already in use" in result.stderr
    missing = skylark("up", env={"SKYLARK_REDIS_SERVER": "/nonexistent/redis-server"}, timeout=60)
    assert missing.returncode == 2 and "SKYLARK_REDIS_SERVER" in missing.stderr


def test_up_refuses_a_broken_topology(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("nodes: [{name: a}]\nlinks: [{a: a, b: zz, latency_ms: 1, bandwidth_mbps: 1}]\n")
    result = skylark("up", "--topology", str(bad), timeout=60)
    assert result.returncode == 2 and "error" in result.stderr


@pytest.mark.skipif(os.geteuid() != 0, reason="network namespaces need root")
def _namespaces() -> set[str]:
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    return {line.split()[0] for line in listed.splitlines() if line.strip()}


def test_emulated_links_make_remote_reads_cost_the_link_latency(tmp_path):
    report = run_demo(tmp_path, "--emulate-network")
    assert report["emulated"] is True
    import yaml

    from skylark.runtime.cluster import default_topology_path

    links = {frozenset((l["a"], l["b"])): l for l in yaml.safe_load(default_topology_path().read_text())["links"]}
    placement = report["placement"]
    a, b, c = placement["preprocess"], placement["detect"], placement["alarm"]
    for chain in report["chains"]:
        if chain["mode"] != "pull":
            continue
        for name, reader, origin in (("detect", b, a), ("alarm", c, b)):
            entry = stage(chain, name)
            latency = links[frozenset((reader, origin))]["latency_ms"]
            assert entry["fetch_location"] == "remote"
            # a read is a request and a response over the link: at least its one-way latency twice
            assert entry["fetch_ms"] >= 2 * latency, (name, entry)
    # and nothing of the emulation is left
    assert len(report["namespaces"]) == 3 and not set(report["namespaces"]) & _namespaces()


USER_FUNCTIONS = '''
"""A user's own functions, in a package of their own: nothing of Skylark's names them."""
import json
from collections import Counter

from skylark.sdk import Function, InputError


class Tokenize(Function):
    name = "tokenize"

    def handle(self, ctx):
        text = ctx.json().get("text")
        if not isinstance(text, str):
            raise InputError("missing_text", "data.text must be a string")
        ctx.state.put({"words": json.dumps(text.lower().split())})
        return ctx.emit("io.acme.tokenized", {"chars": len(text)})


class Count(Function):
    def start(self, config):
        self.top = config.int("top", 2, minimum=1)

    def handle(self, ctx):
        words = json.loads(ctx.input.fields["words"])
        ctx.state.put({"counts": json.dumps(Counter(words).most_common(self.top))})
        return ctx.emit("io.acme.counted", {"distinct": len(set(words))})


class Report(Function):
    def handle(self, ctx):
        counts = json.loads(ctx.read("count").fields["counts"])
        words = json.loads(ctx.read("tokenize").fields["words"])
        return ctx.emit("io.acme.reported", {"top": counts, "words": len(words)})


def make_count():
    return Count()
'''

USER_WORKFLOW = '''
apiVersion: skylark.io/v1alpha1
kind: Workflow
metadata: {name: words}
spec:
  policy: skylark
  slo: {max_latency_ms: 500, min_bandwidth_mbps: 10}
  functions:
    - {name: tokenize, entry: "acme_words.fns:Tokenize", accepts: [io.acme.text.submitted], emits: [io.acme.tokenized], node: node-a}
    - {name: count, entry: "acme_words.fns:make_count", accepts: [io.acme.tokenized], emits: [io.acme.counted], reads: [tokenize], node: node-b, config: {top: 1}}
    - {name: report, entry: "acme_words.fns:Report", accepts: [io.acme.counted], emits: [io.acme.reported], reads: [count, tokenize], node: node-c}
'''


def start_up(args: list[str], env: dict) -> tuple[subprocess.Popen, str]:
    proc = subprocess.Popen([sys.executable, "-m", "skylark.cli", "up", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, cwd=REPO, env={**os.environ, "COLUMNS": "200", **env})
    output = []
    deadline = time.time() + 120
    while time.time() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        output.append(line)
        if "Ctrl-C stops everything" in line:
            break
    return proc, "".join(output)


def test_a_users_own_workflow_runs_end_to_end_with_no_file_of_skylarks_changed(tmp_path):
    repo_before = subprocess.run(["git", "status", "--porcelain"], capture_output=True, text=True, cwd=REPO).stdout
    package = tmp_path / "acme_words"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "fns.py").write_text(USER_FUNCTIONS)
    workflow = tmp_path / "words.yaml"
    workflow.write_text(USER_WORKFLOW)
    env = {"PYTHONPATH": str(tmp_path), "SKYLARK_CLUSTER_FILE": str(tmp_path / "cluster.json")}
    check = skylark("workflow", "check", str(workflow), env=env, timeout=60)
    assert check.returncode == 0 and "workflow words is valid" in check.stdout, check.stderr

    base = free_port_block(3 * 4 + 3)
    proc, text = start_up(["--workflow", str(workflow), "--base-port", str(base),
                           "--env", "SKYLARK_PROPAGATION_WAIT_MS=5000"], env)  # a loaded machine: see below
    try:
        assert "Ctrl-C stops everything" in text, text
        # propagation is signed with a key of this cluster: an unsigned push to node-a's handlers
        # (ports: redis, handlers, broker, its function) is refused
        unsigned = new_event("io.skylark.bundle.propagated", "/skylark/nodes/node-b/handlers",
                             {"tombstone": {"chain": "c", "function": "f", "version": 9, "node": "node-b",
                                            "updated_ms": 1}}, skylarktarget="node-a")
        headers, body = to_binary(unsigned)
        refused = requests.post(f"http://127.0.0.1:{base + 1}/", data=body, headers=headers, timeout=10)
        assert refused.status_code == 401 and refused.json()["error"] == "missing_signature", refused.text
        assert "function tokenize" in text and "function report" in text and "policy skylark" in text
        result = skylark("run", "--data", json.dumps({"text": "the cat saw the other cat and the dog"}),
                         "--chain", "words-1", "--json", env=env, timeout=120)
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
        run = json.loads(result.stdout)
        assert run["completed"] and run["outcome"] == "io.acme.reported"
        assert run["data"] == {"top": [["the", 3]], "words": 9}
        stages = {e["function"]: e for e in run["trace"]}
        assert [(e["function"], e["node"]) for e in run["trace"]] == [
            ("tokenize", "node-a"), ("count", "node-b"), ("report", "node-c")]
        assert stages["tokenize"]["fetch_location"] == "inline"
        assert stages["count"]["fetch_location"] == "local"  # pushed from node-a to its neighbour
        # bad input to the user's function: the invocation does not end, and nothing half-happens
        bad = skylark("run", "--data", json.dumps({"words": 1}), "--timeout", "3", "--json", env=env, timeout=60)
        assert bad.returncode == 1 and not json.loads(bad.stdout)["completed"]
    finally:
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=60) == 0
    assert not (tmp_path / "cluster.json").exists()
    # the user's package and workflow live outside the repository, which the run left as it was
    assert subprocess.run(["git", "status", "--porcelain"], capture_output=True, text=True,
                          cwd=REPO).stdout == repo_before


def test_workflow_check_names_the_line_of_a_mistake(tmp_path):
    workflow = tmp_path / "words.yaml"
    workflow.write_text(USER_WORKFLOW.replace("reads: [tokenize]", "reads: [tokenise]"))
    result = skylark("workflow", "check", str(workflow), timeout=60)
    assert result.returncode == 2
    assert f"{workflow}:10: spec.functions[1].reads[0]: 'tokenise' is not a function of this workflow" in result.stderr
    result = skylark("up", "--workflow", str(tmp_path / "missing.yaml"), timeout=60)
    assert result.returncode == 2 and "cannot read the workflow file" in result.stderr
    misplaced = tmp_path / "misplaced.yaml"
    misplaced.write_text(USER_WORKFLOW.replace("node: node-c", "node: node-z"))
    result = skylark("up", "--workflow", str(misplaced), timeout=60)
    assert result.returncode == 2 and "'node-z' is not in the topology" in result.stderr


def test_on_the_thesis_testbed_each_bundle_goes_to_the_elected_node_and_is_read_there(tmp_path):
    """The thesis's workflow, four stages pinned across its 8-node testbed (snapshot 0): for each
    hop, the bundle is pushed to the node ``elect`` chooses toward the reader's node — the
    reader's own node, one on the way, or none — and the reader reads it exactly there."""
    from ex_workflows import example_path
    from neighbors_service.policies import SLO, elect
    from neighbors_service.sources.file import load_topology_file
    from neighbors_service.topologies import example_path as topology_path
    from skylark.workflow import load_workflow

    workflow_file = tmp_path / "thesis.yaml"
    workflow_file.write_text(example_path("thesis").read_text().replace("max_latency_ms: 500", "max_latency_ms: 120"))
    workflow = load_workflow(workflow_file)
    topology = load_topology_file(topology_path("thesis")).snapshot(0)
    slo = SLO(workflow.slo.max_latency_ms, workflow.slo.min_bandwidth_mbps)
    env = {"SKYLARK_CLUSTER_FILE": str(tmp_path / "cluster.json")}
    # a generous wait for the pushed copy: on a loaded machine a push may take longer than the
    # default 200 ms, and this test is about where the copy goes, not how fast
    proc, text = start_up(["--workflow", str(workflow_file), "--topology", str(topology_path("thesis")),
                           "--snapshot", "0", "--env", "SKYLARK_PROPAGATION_WAIT_MS=5000"], env)
    try:
        assert "Ctrl-C stops everything" in text, text
        kinds = set()
        for size in (100_000, 1_000_000):
            result = skylark("run", "--data", json.dumps({"state_bytes": size}), "--json", env=env, timeout=120)
            assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
            run = json.loads(result.stdout)
            stages = {e["function"]: e for e in run["trace"]}
            for fn in workflow.functions[1:]:
                [source] = fn.reads
                origin = stages[source]["node"]
                elected = elect(topology, origin, fn.node, size + 2, slo).node  # + the field name "f0"
                entry = stages[fn.name]
                assert entry["node"] == fn.node
                assert entry["fetch_node"] == elected, (size, fn.name, entry)
                assert entry["fetch_location"] == ("local" if elected == fn.node else "remote"), (size, fn.name, entry)
                kinds.add("local" if elected == fn.node else "origin" if elected == origin else "on the way")
        # the sizes were chosen so that every kind of decision happens at least once
        assert kinds == {"local", "origin", "on the way"}, kinds
    finally:
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=60) == 0


def test_one_invocation_is_one_trace_across_every_stage_and_the_propagation():
    """skylark run --trace on the example workflow: every span has the run's trace id; each push
    is a child of the write that caused it (its traceparent travels in the change record), each
    delivery by a broker of what was sent to it, each apply of its delivery, each stage of the
    delivery of the event before it, each read of its stage."""
    result = skylark("run", "--standalone", "--trace", "--json", "--input",
                     os.path.join(REPO, "skylark", "runtime", "samples", "astronaut.jpg"), timeout=180)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    run = json.loads(result.stdout)
    spans = run["spans"]
    assert spans and {s["trace_id"] for s in spans} == {run["trace_id"]}
    by_id = {s["span_id"]: s for s in spans}

    def one(name: str) -> dict:
        [span] = [s for s in spans if s["name"] == name]
        return span

    def parent(span: dict) -> str | None:
        found = by_id.get(span["parent_id"])
        return found["name"] if found else None

    assert parent(one("deliver preprocess")) is None  # a child of the run's own (unrecorded) span
    assert parent(one("preprocess")) == "deliver preprocess"
    expected = {"write preprocess": "preprocess", "stream skylark:changes": None,  # checked below
                "propagate preprocess": "stream skylark:changes",
                "deliver bundle-propagated-node-b": "propagate preprocess",
                "apply preprocess": "deliver bundle-propagated-node-b", "deliver detect": "preprocess",
                "detect": "deliver detect", "read preprocess": "detect", "write detect": "detect",
                "deliver bundle-propagated-node-c": "propagate detect",
                "apply detect": "deliver bundle-propagated-node-c", "deliver alarm": "detect",
                "alarm": "deliver alarm", "read detect": "alarm"}
    # the local stream source continues the writer's trace (one span per change: two here)
    streams = [s for s in spans if s["name"] == "stream skylark:changes"]
    assert sorted(parent(s) for s in streams) == ["write detect", "write preprocess"]
    pushes = {s["name"]: parent(s) for s in spans if s["name"].startswith("propagate ")}
    assert pushes == {"propagate preprocess": "stream skylark:changes", "propagate detect": "stream skylark:changes"}
    for push in (s for s in spans if s["name"].startswith("propagate ")):
        source = by_id[push["parent_id"]]
        assert parent(source) == "write " + push["name"].split()[1]  # the push of that very write
    del expected["stream skylark:changes"], expected["propagate preprocess"]
    assert {name: parent(one(name)) for name in expected} == expected
    # where things ran, and what the spans say for SLOs
    assert one("propagate preprocess")["service"] == "handlers@node-a"
    assert one("apply preprocess")["service"] == "handlers@node-b"
    assert one("propagate preprocess")["attributes"]["skylark.targets"] == ["node-b"]
    assert one("read preprocess")["attributes"]["skylark.read.location"] == "local"
    assert one("apply preprocess")["attributes"]["skylark.apply.outcome"] == "applied"
