"""The local cluster's observer of workflow ends: events kept per chain, once per (source, id),
waited for; bad input answered with the JSON error shape."""

from __future__ import annotations

import threading
import time

import requests

from eventing.http import new_event
from functions_fixtures import post_event, serve  # noqa: F401 - serve is a fixture
from skylark.runtime.observer import create_app
from skylark.runtime.waitable import WaitableLists


def test_events_are_kept_per_chain_once_and_waited_for(serve):
    observer = serve(create_app())
    done = new_event("io.test.done", "/fn", {"ok": True}, id_="d1", skylarkchain="c1")
    assert post_event(observer.url, done).status_code == 202
    assert post_event(observer.url, done).status_code == 202  # a redelivery: kept once
    threading.Timer(0.2, lambda: post_event(observer.url, new_event("io.test.other", "/fn", b"\x00raw",
                                                                    id_="d2", skylarkchain="c1",
                                                                    datacontenttype="application/octet-stream"))).start()
    start = time.monotonic()
    events = requests.get(f"{observer.url}/chains/c1", params={"count": 2, "wait_ms": 5000}).json()["events"]
    assert 0.15 < time.monotonic() - start < 5
    assert [(e["type"], e["id"]) for e in events] == [("io.test.done", "d1"), ("io.test.other", "d2")]
    assert events[0]["data"] == {"ok": True} and events[1]["data"] == {"data_base64": "AHJhdw=="}
    nothing = requests.get(f"{observer.url}/chains/c2", params={"wait_ms": 10}).json()
    assert nothing == {"chain": "c2", "events": []}
    for url, code in ((f"{observer.url}/chains/c1?count=0", "invalid_query"),
                      (f"{observer.url}/chains/c1?wait_ms=١٠", "invalid_query")):
        answer = requests.get(url)
        assert answer.status_code == 400 and answer.json()["error"] == code
    no_chain = post_event(observer.url, new_event("io.test.done", "/fn", {}, id_="x"))
    assert no_chain.status_code == 400 and no_chain.json()["error"] == "missing_chain"


def test_the_lists_stay_bounded():
    lists = WaitableLists(max_keys=2, max_items=3)
    lists.add("a", range(5))
    assert lists.wait("a", 1, 0) == [0, 1, 2]
    lists.add("b", [1])
    dropped = lists.add("c", [1])  # "a" was added to least recently: forgotten
    assert dropped == [[0, 1, 2]] and lists.wait("a", 1, 0) == []
