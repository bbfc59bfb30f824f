"""preprocess → detect → alarm chained through the local broker (the chart's Triggers), real
Redis and real HTTP: first with in-process servers, then as gunicorn processes (``skylark serve``)."""

from __future__ import annotations

import json
import os
import subprocess
import time

import pytest
import requests

from eventing import catalogue
from eventing.broker.local import LocalBroker
from eventing.wiring import broker_from_values, load_chart_values, triggers_from_values
from ex_alarm.app import create_app as alarm_app
from ex_alarm.config import AlarmSettings
from ex_detect.app import create_app as detect_app
from ex_detect.config import DetectSettings
from ex_preprocess.app import create_app as preprocess_app
from ex_preprocess.config import PreprocessSettings
from functions_fixtures import (  # noqa: F401 - serve is a fixture
    Recorder,
    astronaut,
    blank,
    encode,
    post_event,
    serve,
    submitted,
)
from skylark.state import keys
from skylark.runtime.embedded import free_port
from skylark.runtime.serve import gunicorn_argv
from skylark.state.settings import Settings


def observer_trigger(url: str) -> dict:
    """An extra Trigger (not in the chart) that lets the test see the alarms raised."""
    return {"apiVersion": "eventing.knative.dev/v1", "kind": "Trigger", "metadata": {"name": "observer"},
            "spec": {"broker": "skylark", "filter": {"attributes": {"type": catalogue.ALARM_RAISED}},
                     "subscriber": {"uri": url}}}


def alarm_records(client) -> dict[str, dict[str, str]]:
    out = {}
    for _, fields in client.xrange(keys.DEFAULT_ALARM_STREAM):
        record = {k.decode(): v.decode() for k, v in fields.items()}
        out[record["chain"]] = record
    return out


CHAIN_TYPES = (catalogue.IMAGE_SUBMITTED, catalogue.PREPROCESS_COMPLETED, catalogue.DETECT_COMPLETED)


def chain_triggers(values: dict, observer_url: str) -> list[dict]:
    """The chart's Triggers of the example chain (not the per-node propagation ones), + an observer."""
    chart = [t for t in triggers_from_values(values)
             if t["spec"]["filter"]["attributes"].get("type") in CHAIN_TYPES]
    assert len(chart) == 3
    return [*chart, observer_trigger(observer_url)]


def function_services(serve, core: Settings) -> dict[str, str]:
    return {
        "preprocess": serve(preprocess_app(PreprocessSettings(core=core))).url,
        "detect": serve(detect_app(DetectSettings(core=core))).url,
        "alarm": serve(alarm_app(AlarmSettings(core=core))).url,
    }


def check_chain(broker: LocalBroker, client, observed: Recorder, dead: Recorder) -> None:
    """Submit the astronaut and a blank image to the broker; both chains run to the end."""
    for chain, image in (("chain-astro", encode(astronaut())), ("chain-blank", encode(blank()))):
        response = post_event(broker.url, submitted(chain, image, route=["node-a", "node-a"]))
        assert response.status_code == 202, response.text
    assert broker.drain(60)
    records = alarm_records(client)
    assert set(records) == {"chain-astro", "chain-blank"}
    astro, empty = records["chain-astro"], records["chain-blank"]
    assert astro["outcome"] == "alarm" and empty["outcome"] == "no_alarm"
    trace = json.loads(astro["trace"])
    assert [(t["function"], t["node"]) for t in trace] == [("preprocess", "node-a"), ("detect", "node-a"),
                                                          ("alarm", "node-a")]
    assert [t["fetch_location"] for t in trace] == ["inline", "local", "local"]
    # only the astronaut raised an alarm event; nothing went to the dead-letter sink
    [raised] = observed.wait_for(1)
    assert raised.get_type() == catalogue.ALARM_RAISED and raised.get_extension("skylarkchain") == "chain-astro"
    # the route named the nodes of detect and alarm: used up by the time the alarm is raised
    assert raised.get_data()["route"] == []
    assert [d["class"] for d in raised.get_data()["detections"]] == ["face"]
    assert dead.events == []
    assert broker.stats.delivered == 7  # 2 × (preprocess, detect, alarm) + the observer


@pytest.mark.parametrize("mode", ["k_sink", "reply"])
def test_chain_through_the_local_broker(mode, redis_server, redis_client, serve):
    """``k_sink``: each function publishes its result to the broker (K_SINK) and answers 202;
    ``reply``: no K_SINK, each answers with its result event and the broker publishes it."""
    observed, dead = Recorder(), Recorder()
    observer, dead_letter = serve(observed.app()), serve(dead.app())
    values = load_chart_values()
    triggers = chain_triggers(values, observer.url)
    port = free_port()
    sink = f"http://127.0.0.1:{port}/default/{broker_from_values(values)}" if mode == "k_sink" else None
    services = function_services(serve, Settings(node="node-a", redis_url=redis_server.url, broker_url=sink))
    services["dead-letter"] = dead_letter.url
    with LocalBroker(triggers, services, port=port, workers=4) as broker:
        assert sink is None or broker.url == sink
        check_chain(broker, redis_client, observed, dead)
        assert broker.stats.replies == (0 if mode == "k_sink" else 5)


def wait_ready(url: str, process: subprocess.Popen, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"{url}: gunicorn exited with {process.returncode}")
        try:
            if requests.get(f"{url}/readyz", timeout=1).status_code == 200:
                return
        except requests.ConnectionError:
            pass
        time.sleep(0.1)
    raise AssertionError(f"{url} not ready after {timeout} s")


def test_chain_with_the_functions_under_gunicorn(redis_server, redis_client, serve, tmp_path):
    """The deployment form: ``skylark serve NAME`` (gunicorn, the app factory, env config)."""
    observed, dead = Recorder(), Recorder()
    observer, dead_letter = serve(observed.app()), serve(dead.app())
    values = load_chart_values()
    port = free_port()
    env = {**os.environ, "SKYLARK_NODE": "node-a", "SKYLARK_REDIS_URL": redis_server.url,
           "K_SINK": f"http://127.0.0.1:{port}/default/{broker_from_values(values)}",
           "SKYLARK_WORKERS": "1", "SKYLARK_THREADS": "4", "SKYLARK_BIND_HOST": "127.0.0.1",
           "SKYLARK_GRACEFUL_TIMEOUT": "5"}
    env.pop("SKYLARK_NEIGHBORS_URL", None)
    processes: dict[str, subprocess.Popen] = {}
    services = {"dead-letter": dead_letter.url}
    try:
        for name in ("preprocess", "detect", "alarm"):
            fn_port = free_port()
            log = open(tmp_path / f"{name}.log", "wb")  # noqa: SIM115 - closed with the process
            processes[name] = subprocess.Popen(gunicorn_argv(name), env={**env, "PORT": str(fn_port)},
                                               stdout=log, stderr=subprocess.STDOUT)
            services[name] = f"http://127.0.0.1:{fn_port}"
        for name, process in processes.items():
            wait_ready(services[name], process)
        triggers = chain_triggers(values, observer.url)
        with LocalBroker(triggers, services, port=port, workers=4) as broker:
            check_chain(broker, redis_client, observed, dead)
    finally:
        for process in processes.values():
            process.terminate()  # SIGTERM: gunicorn's graceful stop
        for name, process in processes.items():
            assert process.wait(15) == 0, (tmp_path / f"{name}.log").read_text()[-2000:]
