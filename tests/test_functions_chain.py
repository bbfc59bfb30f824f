"""preprocess → detect → alarm chained through the local broker, wired by the chart's values and the
example workflow (``eventing.wiring.triggers_from_values``), real Redis and real HTTP: first with
in-process servers, then as gunicorn processes (``skylark serve function``)."""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import pytest
import requests
import yaml

from eventing.broker.local import LocalBroker
from eventing.wiring import (
    TRIGGER_API_VERSION,
    broker_from_values,
    function_service,
    load_chart_values,
    triggers_from_values,
)
from ex_alarm.function import ALARM_CLEAR, ALARM_RAISED, DEFAULT_ALARM_STREAM
from ex_workflows import example_path
from functions_fixtures import (  # noqa: F401 - serve is a fixture
    Recorder,
    astronaut,
    blank,
    encode,
    envelope,
    function_app,
    post_event,
    serve,
    submitted,
)
from skylark.runtime.embedded import free_port
from skylark.sdk import load_function
from skylark.serving.serve import gunicorn_argv
from skylark.state.settings import Settings
from skylark.workflow import Workflow, load_workflow

# Where each function of the example workflow runs here: one node, pinned there or anywhere.
PLACEMENT = {"preprocess": "node-a", "detect": "any", "alarm": "any"}


def one_node_workflow() -> Workflow:
    """The example workflow (ex_workflows/image-alarm.yaml), every function on node-a or any node."""
    document = load_workflow(example_path("image-alarm")).to_document()
    for fn in document["spec"]["functions"]:
        fn["node"] = PLACEMENT[fn["name"]]
    return Workflow.from_document(document, source="one-node image-alarm")


def observer_triggers(values: dict, workflow: Workflow, url: str) -> list[dict]:
    """Extra Triggers (not in the chart) that let the test see the events that end the workflow."""
    assert workflow.terminal_types() == (ALARM_RAISED, ALARM_CLEAR)
    return [{"apiVersion": TRIGGER_API_VERSION, "kind": "Trigger", "metadata": {"name": f"observer-{i}"},
             "spec": {"broker": broker_from_values(values), "filter": {"attributes": {"type": event_type}},
                      "subscriber": {"uri": url}}}
            for i, event_type in enumerate(workflow.terminal_types())]


def chain_triggers(values: dict, workflow: Workflow, observer_url: str) -> list[dict]:
    """The Triggers the chart renders for the workflow's functions (not the per-node propagation
    ones), + the observers."""
    services = {function_service(name) for name in workflow.names}
    chart = [t for t in triggers_from_values(values, workflow=workflow)
             if t["spec"]["subscriber"].get("ref", {}).get("name") in services]
    assert [(t["metadata"]["name"], t["spec"]["filter"]["attributes"]["type"]) for t in chart] == [
        (fn.name, fn.accepts[0]) for fn in workflow.functions]
    return [*chart, *observer_triggers(values, workflow, observer_url)]


def alarm_records(client) -> dict[str, dict[str, str]]:
    out = {}
    for _, fields in client.xrange(DEFAULT_ALARM_STREAM):
        record = {k.decode(): v.decode() for k, v in fields.items()}
        out[record["chain"]] = record
    return out


def function_services(serve, core: Settings, workflow: Workflow) -> dict[str, str]:
    return {function_service(fn.name): serve(function_app(load_function(fn.entry), core, workflow=workflow)).url
            for fn in workflow.functions}


def check_chain(broker: LocalBroker, client, observed: Recorder, dead: Recorder) -> None:
    """Submit the astronaut and a blank image to the broker; both chains run to the end."""
    for chain, image in (("chain-astro", encode(astronaut())), ("chain-blank", encode(blank()))):
        response = post_event(broker.url, submitted(chain, image))
        assert response.status_code == 202, response.text
    assert broker.drain(60)
    records = alarm_records(client)
    assert set(records) == {"chain-astro", "chain-blank"}
    astro, empty = records["chain-astro"], records["chain-blank"]
    assert astro["outcome"] == "alarm" and empty["outcome"] == "no_alarm"
    assert "trace" not in astro and "timings" not in astro  # the trace travels in the events
    # each chain ended with its terminal event: alarm.raised for the astronaut, alarm.clear for the blank
    ended = {e.get_extension("skylarkchain"): e for e in observed.wait_for(2)}
    assert len(observed.events) == 2
    raised, clear = ended["chain-astro"], ended["chain-blank"]
    assert raised.get_type() == ALARM_RAISED and clear.get_type() == ALARM_CLEAR
    assert [d["class"] for d in raised.get_data()["detections"]] == ["face"]
    assert clear.get_data()["outcome"] == "no_alarm" and clear.get_data()["detections"] == []
    for event, record in ((raised, astro), (clear, empty)):
        trace = envelope(event)["trace"]
        assert [(t["function"], t["node"], t["version"]) for t in trace] == [
            ("preprocess", "node-a", 1), ("detect", "node-a", 1), ("alarm", "node-a", None)]
        assert [t["fetch_location"] for t in trace] == ["inline", "local", "local"]
        state = envelope(event)["state"]
        assert {fn: (s["node"], s["version"]) for fn, s in state.items()} == {
            "preprocess": ("node-a", 1), "detect": ("node-a", 1)}
        assert event.get_data()["stream_id"] == record_id(client, record["chain"])
        assert "route" not in event.get_data()
    assert dead.events == []
    assert broker.stats.delivered == 8  # 2 × (preprocess, detect, alarm) + 2 × the observer


def record_id(client, chain: str) -> str:
    [entry_id] = [i.decode() for i, fields in client.xrange(DEFAULT_ALARM_STREAM) if fields[b"chain"].decode() == chain]
    return entry_id


@pytest.mark.parametrize("mode", ["k_sink", "reply"])
def test_chain_through_the_local_broker(mode, redis_server, redis_client, serve):
    """``k_sink``: each function publishes its result to the broker (K_SINK) and answers 202;
    ``reply``: no K_SINK, each answers with its result event and the broker publishes it."""
    observed, dead = Recorder(), Recorder()
    observer, dead_letter = serve(observed.app()), serve(dead.app())
    values = load_chart_values()
    workflow = one_node_workflow()
    triggers = chain_triggers(values, workflow, observer.url)
    port = free_port()
    sink = f"http://127.0.0.1:{port}/default/{broker_from_values(values)}" if mode == "k_sink" else None
    services = function_services(serve, Settings(node="node-a", redis_url=redis_server.url, broker_url=sink),
                                 workflow)
    services["dead-letter"] = dead_letter.url
    with LocalBroker(triggers, services, port=port, workers=4) as broker:
        assert sink is None or broker.url == sink
        check_chain(broker, redis_client, observed, dead)
        assert broker.stats.replies == (0 if mode == "k_sink" else 6)


def wait_ready(url: str, process: subprocess.Popen, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"{url}: gunicorn exited with {process.returncode}")
        try:
            if requests.get(f"{url}/readyz", timeout=1).status_code == 200:
                return
        except (requests.ConnectionError, requests.Timeout):  # not listening yet, or still starting (a loaded machine)
            pass
        time.sleep(0.1)
    raise AssertionError(f"{url} not ready after {timeout} s")


def test_chain_with_the_functions_under_gunicorn(redis_server, redis_client, serve, tmp_path: Path):
    """The deployment form: ``skylark serve function ENTRY`` (gunicorn, the SDK's app factory,
    everything from the environment: the entry, the name, the workflow file, K_SINK)."""
    observed, dead = Recorder(), Recorder()
    observer, dead_letter = serve(observed.app()), serve(dead.app())
    values = load_chart_values()
    workflow = one_node_workflow()
    workflow_file = tmp_path / "workflow.yaml"
    workflow_file.write_text(yaml.safe_dump(workflow.to_document(), sort_keys=False))
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SKYLARK_", "K_SINK", "PORT"))}
    env.update({"SKYLARK_NODE": "node-a", "SKYLARK_REDIS_URL": redis_server.url,
                "SKYLARK_WORKFLOW": str(workflow_file),
                "K_SINK": f"http://127.0.0.1:{port}/default/{broker_from_values(values)}",
                "SKYLARK_WORKERS": "1", "SKYLARK_THREADS": "4", "SKYLARK_BIND_HOST": "127.0.0.1",
                "SKYLARK_GRACEFUL_TIMEOUT": "5"})
    processes: dict[str, subprocess.Popen] = {}
    services = {"dead-letter": dead_letter.url}
    try:
        for fn in workflow.functions:
            fn_port = free_port()
            log = open(tmp_path / f"{fn.name}.log", "wb")  # noqa: SIM115 - closed with the process
            processes[fn.name] = subprocess.Popen(
                gunicorn_argv("function"),
                env={**env, "SKYLARK_FUNCTION": fn.entry, "SKYLARK_FUNCTION_NAME": fn.name, "PORT": str(fn_port)},
                stdout=log, stderr=subprocess.STDOUT)
            services[function_service(fn.name)] = f"http://127.0.0.1:{fn_port}"
        for name, process in processes.items():
            wait_ready(services[function_service(name)], process)
            assert requests.get(f"{services[function_service(name)]}/readyz").json()["function"] == name
        triggers = chain_triggers(values, workflow, observer.url)
        with LocalBroker(triggers, services, port=port, workers=4) as broker:
            check_chain(broker, redis_client, observed, dead)
            assert broker.stats.replies == 0
    finally:
        for process in processes.values():
            process.terminate()  # SIGTERM: gunicorn's graceful stop
        for name, process in processes.items():
            assert process.wait(15) == 0, (tmp_path / f"{name}.log").read_text()[-2000:]
    # the logs are JSON lines, one per event handled, with the stage timings
    logs = [json.loads(line) for line in (tmp_path / "detect.log").read_text().splitlines() if line.startswith("{")]
    handled = [entry for entry in logs if entry.get("function") == "detect" and "fetch_location" in entry]
    assert {entry["chain"] for entry in handled} == {"chain-astro", "chain-blank"}
