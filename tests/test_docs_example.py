"""docs/functions.md's example, run as it is printed: its files are extracted from the page,
its workflow validated, and its two functions served and chained over real HTTP and Redis."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest

from eventing.http import new_event
from functions_fixtures import Recorder, post_event, reply_event, serve  # noqa: F401 - serve is a fixture
from skylark.sdk import FunctionSettings, create_app
from skylark.state.peers import StaticPeers
from skylark.state.settings import Settings
from skylark.workflow import load_workflow

PAGE = Path(__file__).resolve().parent.parent / "docs" / "functions.md"


def extract(tmp_path: Path) -> dict[str, Path]:
    files = {}
    for name, body in re.findall(r"<!-- file: (\S+) -->\n```\w+\n(.*?)```", PAGE.read_text(), re.S):
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(body)
        files[name] = path
    return files


@pytest.fixture()
def example(tmp_path, monkeypatch):
    files = extract(tmp_path)
    assert set(files) == {"sensors/fns.py", "sensors.yaml"}
    (tmp_path / "sensors" / "__init__.py").write_text("")
    monkeypatch.syspath_prepend(str(tmp_path))
    yield files
    sys.modules.pop("sensors.fns", None)
    sys.modules.pop("sensors", None)


def test_the_documented_workflow_runs(example, redis_factory, serve):
    workflow = load_workflow(example["sensors.yaml"])
    node_a, node_c = redis_factory(), redis_factory()
    broker_c = Recorder()  # node-c's broker: where collect sends its events, since alert runs there
    peers = StaticPeers.from_mapping({"node-a": {"redis_url": node_a.url},
                                      "node-c": {"broker_url": serve(broker_c.app()).url}})

    def app(name: str, server, node: str):
        settings = FunctionSettings(core=Settings(node=node, redis_url=server.url), workflow=workflow, name=name)
        return serve(create_app(workflow.function(name).entry, settings=settings, peers=peers))

    collect, alert = app("collect", node_a, "node-a"), app("alert", node_c, "node-c")
    outcomes = []
    for i, celsius in enumerate((20, 40, 45, 50)):
        taken = new_event("io.example.reading.taken", "/sensor/7", {"celsius": celsius}, id_=f"r{i}",
                          skylarkchain="sensor-7")
        assert post_event(collect.url, taken).status_code == 202
        collected = broker_c.wait_for(i + 1)[i]
        outcomes.append(reply_event(post_event(alert.url, collected)))
    # window 3 (from the workflow's config): 20 → 30 → 35 → 45; limit 30
    assert [(e.get_type().rsplit(".", 1)[1], e.get_data()["mean"]) for e in outcomes] == [
        ("clear", 20.0), ("clear", 30.0), ("raised", 35.0), ("raised", 45.0)]
    assert outcomes[-1].get_data()["readings"] == 3
    trace = outcomes[-1].get_data()["skylark"]["trace"]
    assert [(t["function"], t["fetch_location"], t["fetch_node"]) for t in trace] == [
        ("collect", "inline", "node-a"), ("alert", "remote", "node-a")]
    bad = new_event("io.example.reading.taken", "/sensor/7", {"celsius": "hot"}, id_="bad", skylarkchain="sensor-7")
    response = post_event(collect.url, bad)
    assert response.status_code == 400 and response.json()["error"] == "invalid_reading"
