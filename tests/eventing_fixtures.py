"""Fixtures of the eventing tests: real HTTP sinks on 127.0.0.1 and events shaped like the real sources'.

Import the fixture functions into a test module (``from eventing_fixtures import sink_factory``).
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import pytest
from werkzeug.wrappers import Request, Response

from skylark.runtime.embedded import free_port
from skylark.serving.threaded_server import ThreadedServer

# --- What knative-extensions/eventing-redis's adapter POSTs for one entry (binary mode) ------------
# XADD skylark:changes * chain c1 function preprocess op put mechanism bundled fields "img,meta<1>"
#   version 3 node edge-1 size 2048 checksum xxh3:00ff ts 1700000000000
REAL_ENTRY_ID = "1519073278252-0"
REAL_SOURCE = "redis://10.0.0.5:6379/skylark:changes"
REAL_FIELDS = {
    "chain": "c1", "function": "preprocess", "op": "put", "mechanism": "bundled",
    "fields": "img,meta", "version": "3", "node": "edge-1", "size": "2048",
    "checksum": "xxh3:00ff&<>", "ts": "1700000000000",
}
# Go's encoding/json: compact, and <, >, & as \u003c, \u003e, \u0026.
REAL_BODY = (
    b'["chain","c1","function","preprocess","op","put","mechanism","bundled","fields","img,meta",'
    b'"version","3","node","edge-1","size","2048","checksum","xxh3:00ff\\u0026\\u003c\\u003e",'
    b'"ts","1700000000000"]'
)
REAL_BINARY_HEADERS = {
    "Ce-Specversion": "1.0",
    "Ce-Id": REAL_ENTRY_ID,
    "Ce-Source": REAL_SOURCE,
    "Ce-Type": "dev.knative.sources.redisstream",
    "Ce-Time": "2020-08-18T18:36:54.719802342Z",  # Go's RFC 3339 with nanoseconds
    "Content-Type": "application/json",
    "Kn-Namespace": "default",
    "Traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
}


def real_structured_body() -> bytes:
    """The same event in structured mode (as a Knative channel or a kn CLI user might send it)."""
    return json.dumps({
        "specversion": "1.0", "id": REAL_ENTRY_ID, "source": REAL_SOURCE,
        "type": "dev.knative.sources.redisstream", "time": "2020-08-18T18:36:54.719802342Z",
        "datacontenttype": "application/json", "data": json.loads(REAL_BODY),
    }).encode()


# --- A real HTTP sink ------------------------------------------------------------------------------

@dataclass
class Received:
    headers: dict[str, str]
    body: bytes
    path: str
    at: float  # time.time() on arrival


Responder = Callable[[Received, int], tuple[int, dict[str, str], bytes]]


def ok_responder(_received: Received, _n: int) -> tuple[int, dict[str, str], bytes]:
    return 200, {}, b""


@dataclass
class Sink:
    """An HTTP server recording every request; ``respond(received, n)`` chooses each answer."""

    port: int = 0
    respond: Responder = ok_responder
    received: list[Received] = field(default_factory=list)
    _server: object = None
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _arrived: threading.Condition = field(init=False)

    def __post_init__(self) -> None:
        self._arrived = threading.Condition(self._lock)
        if not self.port:
            self.port = free_port()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/"

    def _app(self, environ, start_response):
        request = Request(environ)
        got = Received({k.lower(): v for k, v in request.headers.items()}, request.get_data(),
                       request.path, time.time())
        with self._lock:
            self.received.append(got)
            n = len(self.received)
            self._arrived.notify_all()
        status, headers, body = self.respond(got, n)
        return Response(body, status=status, headers=headers)(environ, start_response)

    def start(self) -> "Sink":
        self._server = ThreadedServer(self._app, port=self.port, name="sink").start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.stop()
            self._server = None

    def wait_for(self, count: int, timeout: float = 10.0) -> bool:
        deadline = time.monotonic() + timeout
        with self._lock:
            while len(self.received) < count:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._arrived.wait(left)
            return True

    def ids(self) -> list[str]:
        with self._lock:
            return [r.headers.get("ce-id", "") for r in self.received]


@pytest.fixture()
def sink_factory() -> Iterator[Callable[..., Sink]]:
    """Start sinks (``sink_factory(respond=...)``); all stopped at the end of the test."""
    sinks: list[Sink] = []

    def start(**kwargs) -> Sink:
        sink = Sink(**kwargs).start()
        sinks.append(sink)
        return sink

    yield start
    for sink in sinks:
        sink.stop()


def change_fields(i: int, *, chain: str = "c1", node: str = "edge-1") -> dict[str, str]:
    """The fields of a valid change-stream entry number ``i``."""
    return {
        "chain": chain, "function": "preprocess", "op": "put", "mechanism": "bundled",
        "fields": "img", "version": str(i + 1), "node": node, "size": "10",
        "checksum": f"xxh3:{i:04x}", "ts": str(1_700_000_000_000 + i),
    }
