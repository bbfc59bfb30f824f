"""Durable dead letters: what a broker gave up on is kept on its node's Redis with the reason, the
subscriber and the time, and replayed once per event; what a stream source gave up on is replayed
by the source itself once the sink answers again; ``skylark deadletter`` lists and replays both."""

from __future__ import annotations

import argparse
import json
import os

import pytest

from eventing.broker.local import LocalBroker
from eventing.http import new_event, to_binary
from eventing.publisher import Publisher
from eventing.source import StreamSource
from functions_fixtures import Recorder, serve  # noqa: F401 - serve is a fixture
from skylark.runtime.deadletter import create_app as deadletter_app
from skylark.runtime.deadletter_cmd import main_deadletter
from skylark.runtime.deadletters import DeadLetters
from skylark.state.redis_client import connect
from skylark.state.store import StateStore


def trigger(subscriber: str, dead_letter: str) -> dict:
    return {"apiVersion": "eventing.knative.dev/v1", "kind": "Trigger", "metadata": {"name": "orders"},
            "spec": {"broker": "skylark", "filter": {"attributes": {"type": "io.test.order"}},
                     "subscriber": {"uri": subscriber},
                     "delivery": {"retry": 1, "backoffPolicy": "linear", "backoffDelay": "PT0.01S",
                                  "deadLetterSink": {"uri": dead_letter}}}}


@pytest.fixture()
def node_store(redis_server, redis_client, monkeypatch, serve):
    """The dead-letter sink with node-a's store, served; yields (sink URL, DeadLetters)."""
    monkeypatch.setenv("SKYLARK_DEADLETTER_STORES", json.dumps({"node-a": redis_server.url}))
    sink = serve(deadletter_app())
    return sink.url, DeadLetters(redis_client, "node-a")


def test_a_broker_dead_letter_is_kept_with_its_reason_and_replayed_once(node_store, serve):
    sink_url, letters = node_store
    subscriber = Recorder(status=503)
    subscriber_url = serve(subscriber.app()).url
    with LocalBroker([trigger(subscriber_url, f"{sink_url}/nodes/node-a")], {}) as broker:
        event = new_event("io.test.order", "/shop", {"order": 7}, id_="order-7")
        headers, body = to_binary(event)
        assert Publisher().post(broker.url, headers, body).ok
        assert broker.drain(10)
        [letter] = letters.list()
        assert (letter.kind, letter.node, letter.event_id, letter.event_type) == ("broker", "node-a", "order-7",
                                                                                 "io.test.order")
        assert letter.detail["dest"] == subscriber_url and letter.detail["code"] == "503"
        assert letter.failed_ms > 0 and letter.detail["replayed"] is False
        assert json.loads(letter.body) == {"order": 7}
        # the subscriber is back: replayed through the broker, without Knative's failure extensions
        subscriber.status = 202
        before = len(subscriber.events)
        outcome = letters.replay(letter, broker.url, Publisher())
        assert outcome is not None and outcome.ok
        assert broker.drain(10)
        replayed = subscriber.wait_for(before + 1)[-1]
        assert replayed.get_id() == "order-7" and replayed.get_data() == {"order": 7}
        assert replayed.get_extension("knativeerrorcode") is None
        assert letters.replay(letters.list()[0], broker.url, Publisher()) is None  # once per event
        assert letters.list()[0].detail["replayed"] is True
    # a node the sink keeps nothing for: 404, and a sink without stores only logs
    unknown = Publisher().post(f"{sink_url}/nodes/node-z", *to_binary(new_event("t", "/s", {})))
    assert unknown.status_code == 404


def test_a_stream_source_replays_its_own_dead_letters_once_the_sink_is_back(redis_server, redis_client, serve):
    store = StateStore(connect(redis_server.url), node="node-a")
    sink = Recorder(status=503)
    url = serve(sink.app()).url
    source = StreamSource(redis_client, "skylark:changes", "g", "node-a-source", url + "/",
                          address=f"redis://127.0.0.1:{redis_server.port}", max_attempts=2, claim_idle_ms=10,
                          block_ms=10, replay_interval_s=3600)
    store.put("c1", "f", {"x": b"1"})
    for _ in range(40):
        source.run_once()
        if source.stats.dead_lettered:
            break
    assert source.stats.dead_lettered == 1
    [letter] = DeadLetters(redis_client, "node-a").list()
    assert (letter.kind, letter.detail["chain"], letter.detail["function"], letter.detail["version"]) == (
        "change", "c1", "f", "1")
    assert "failed 2 times" in letter.reason
    assert source.replay_dead_letters() == 1 and DeadLetters(redis_client, "node-a").list() != []  # still down
    sink.status = 202
    assert source.replay_dead_letters() == 1
    assert DeadLetters(redis_client, "node-a").list() == [] and source.stats.replayed == 1
    assert sink.events[-1].get_id() == letter.event_id  # the same event id: receivers dedupe a repeat
    # one the sink refuses for good stays, marked, and is not sent again
    store.put("c2", "f", {"x": b"2"})
    sink.status = 400
    for _ in range(10):
        source.run_once()
    [refused] = DeadLetters(redis_client, "node-a").list()
    sent = len(sink.events)
    assert source.replay_dead_letters() == 0 and len(sink.events) == sent


def test_the_command_lists_and_replays_both_kinds(redis_server, redis_client, serve, tmp_path, monkeypatch,
                                                   capsys):
    monkeypatch.setenv("SKYLARK_DEADLETTER_STORES", json.dumps({"node-a": redis_server.url}))
    sink_url = serve(deadletter_app()).url
    subscriber = Recorder(status=503)
    handlers = Recorder(status=503)
    with LocalBroker([trigger(serve(subscriber.app()).url, f"{sink_url}/nodes/node-a")], {}) as broker:
        headers, body = to_binary(new_event("io.test.order", "/shop", {"order": 8}, id_="order-8"))
        assert Publisher().post(broker.url, headers, body).ok and broker.drain(10)
        handlers_url = serve(handlers.app()).url
        source = StreamSource(redis_client, "skylark:changes", "skylark-handlers", "node-a-source", handlers_url + "/",
                              address=f"redis://127.0.0.1:{redis_server.port}", max_attempts=1, claim_idle_ms=10,
                              block_ms=10, replay_interval_s=3600)
        StateStore(connect(redis_server.url), node="node-a").put("c9", "f", {"x": b"9"})
        for _ in range(10):
            source.run_once()
        state = {"pid": os.getpid(), "nodes": {"node-a": {"redis_url": redis_server.url, "broker_ingress": broker.url,
                                                          "handlers_url": handlers_url}}}
        (tmp_path / "cluster.json").write_text(json.dumps(state))
        monkeypatch.setenv("SKYLARK_CLUSTER_FILE", str(tmp_path / "cluster.json"))

        def command(action: str, *entries: str, **flags) -> int:
            return main_deadletter(argparse.Namespace(action=action, entries=list(entries), all=flags.get("all", False),
                                                      node=None, json=flags.get("json", False)))

        assert command("list", json=True) == 0
        listed = json.loads(capsys.readouterr().out)
        assert sorted(x["kind"] for x in listed) == ["broker", "change"]
        assert command("show", listed[0]["entry_id"]) == 0 and "body_base64" in capsys.readouterr().out
        # the broker takes the replay, its subscriber still fails: a new dead letter (which clears the
        # replayed mark); the change is refused by the handlers: still listed, and the command says so
        assert command("replay", all=True) == 1
        assert broker.drain(10)
        assert [x.kind for x in DeadLetters(redis_client, "node-a").list()] == ["broker", "change", "broker"]
        subscriber.status = handlers.status = 202
        capsys.readouterr()
        assert command("replay", all=True) == 0
        assert "replayed 2, already replayed before 1" in capsys.readouterr().out  # one per event
        assert broker.drain(10)
        assert subscriber.events[-1].get_id() == "order-8" and handlers.events
        kept = DeadLetters(redis_client, "node-a").list()  # the broker's stay listed, marked replayed
        assert [(x.kind, x.detail["replayed"]) for x in kept] == [("broker", True), ("broker", True)]
