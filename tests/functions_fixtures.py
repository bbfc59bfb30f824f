"""Fixtures and helpers of the example-function tests: sample images, real HTTP servers, events,
and the function apps as the SDK builds them (``skylark.sdk.create_app``).

Images: real photographs shipped in scikit-image's wheel (``skimage.data``: astronaut has a
face, chelsea is a cat) and synthetic ones (flat gray, noise), encoded with Pillow.
"""

from __future__ import annotations

import base64
import io
import logging
import struct
import threading
import zlib
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np
import pytest
import requests
from cloudevents.core.base import BaseCloudEvent
from flask import Flask, Response, request
from PIL import Image
from skimage import data as skdata

from eventing.http import new_event, parse, to_binary
from ex_preprocess.function import IMAGE_SUBMITTED
from skylark.sdk import Config, Context, Function, FunctionSettings, create_app
from skylark.sdk.envelope import ENVELOPE_KEY, chain_of, located_states, trace_of
from skylark.sdk.node import NodeState
from skylark.serving.threaded_server import ThreadedServer
from skylark.state.peers import PeerDirectory
from skylark.state.settings import Settings

# Where the astronaut's (Eileen Collins') face is in skimage.data.astronaut() (512×512), checked
# by eye on the image: the detections must overlap this box.
ASTRONAUT_FACE = (175, 55, 100, 110)  # x, y, w, h


def encode(array: np.ndarray, fmt: str = "JPEG", **options) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, fmt, **options)
    return buffer.getvalue()


def astronaut() -> np.ndarray:
    return skdata.astronaut()


def chelsea() -> np.ndarray:
    return skdata.chelsea()


def blank(width: int = 512, height: int = 512) -> np.ndarray:
    return np.full((height, width), 128, np.uint8)


def noise(width: int = 512, height: int = 512, seed: int = 7) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width), dtype=np.uint8)


def header_only_png(width: int, height: int) -> bytes:
    """A valid PNG signature + IHDR for a huge image, with a tiny IDAT: a decompression bomb."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def submitted(chain: str, image: bytes, **data) -> BaseCloudEvent:
    """An ``io.skylark.image.submitted`` event with the image inline (base64)."""
    return new_event(IMAGE_SUBMITTED, "/tests/client",
                     {"chain": chain, "image_base64": base64.b64encode(image).decode(), **data})


def announcing(type_: str, chain: str | None, function: str, node: str, version: int = 1,
               data: object = None) -> BaseCloudEvent:
    """An event that announces ``function``'s state of ``chain`` (version ``version``, written on
    ``node``) in the Skylark extensions, as a function's result event does."""
    return new_event(type_, "/tests/client", {} if data is None else data, skylarkchain=chain,
                     skylarkfunction=function, skylarknode=node, skylarkversion=version)


def envelope(event: BaseCloudEvent) -> dict:
    """Skylark's envelope of a result event (``data["skylark"]``: trace and state map)."""
    return event.get_data()[ENVELOPE_KEY]


def last_stage(event: BaseCloudEvent) -> dict:
    """The trace entry of the stage that emitted ``event``."""
    return envelope(event)["trace"][-1]


def core(server, node: str = "node-a", **changes) -> Settings:
    """Core settings of ``node`` whose Redis is ``server`` (an EmbeddedRedis)."""
    return Settings(node=node, redis_url=server.url, redis_timeout_s=1.0, **changes)


def function_app(function: Function | str, settings: Settings, *, peers: PeerDirectory | None = None,
                 **function_settings) -> Flask:
    """``create_app`` of ``function`` on a node with ``settings`` (``config={...}``,
    ``workflow=...``, ``max_request_bytes=...``, ``publisher=...`` pass through)."""
    publisher = function_settings.pop("publisher", None)
    return create_app(function, settings=FunctionSettings(core=settings, **function_settings), peers=peers,
                      publisher=publisher)


def overlap(a: tuple[int, int, int, int], b: tuple[int, int, int, int]) -> float:
    """Intersection over the smaller box's area."""
    ax, ay, aw, ah = a
    bx, by, bw, bh = b
    w = max(0, min(ax + aw, bx + bw) - max(ax, bx))
    h = max(0, min(ay + ah, by + bh) - max(ay, by))
    return w * h / min(aw * ah, bw * bh)


def context(event: BaseCloudEvent, function: Function, node_state: NodeState | None = None) -> Context:
    """The :class:`~skylark.sdk.Context` the SDK gives ``function.handle`` for ``event`` (no
    workflow), after reading the chain, the envelope and where the input state is; the 400s of
    that reading are raised here. ``node_state`` is needed only to read state."""
    data = event.get_data()
    trace_of(data)
    return Context(event=event, chain=chain_of(event, data), function=function.name, config=Config(),
                   node_state=node_state, reads=None, emits=tuple(function.emits),
                   located=located_states(event, data), logger=logging.getLogger("tests.functions"))


@contextmanager
def started(function: Function, env: Mapping[str, str]) -> Iterator[Function]:
    """``function`` as the SDK starts it in a process whose environment is ``env`` (its config
    from ``SKYLARK_<NAME>_<KEY>``); stopped at the end. A config the function refuses raises
    :class:`~skylark.state.errors.ConfigError` here."""
    app = create_app(function, settings=FunctionSettings.from_env(env))
    try:
        yield function
    finally:
        app.extensions["skylark.function"].stop()


class Server(ThreadedServer):
    """A function's (or any) app on 127.0.0.1:<free port> in a thread; stopping it stops the function."""

    def __init__(self, app: Flask) -> None:
        super().__init__(app, quiet=False, name="function")
        self.start()

    def stop(self) -> None:
        super().stop()
        function = self.app.extensions.get("skylark.function")
        if function is not None:
            function.stop()


@pytest.fixture()
def serve() -> Iterator[Callable[[Flask], Server]]:
    """``serve(app)`` → a running :class:`Server`; all are stopped at the end of the test."""
    started: list[Server] = []

    def start(app: Flask) -> Server:
        server = Server(app)
        started.append(server)
        return server

    yield start
    for server in reversed(started):
        server.stop()


def post_event(url: str, event: BaseCloudEvent, timeout: float = 30.0) -> requests.Response:
    headers, body = to_binary(event)
    return requests.post(url, data=body, headers=headers, timeout=timeout)


def assert_json_error(response: requests.Response, status: int, code: str) -> None:
    """The answer is ``status`` with the services' JSON error shape, naming ``code``."""
    assert response.status_code == status, response.text
    body = response.json()
    assert body["error"] == code and body["detail"], body


def reply_event(response: requests.Response) -> BaseCloudEvent:
    """The result event a function replied with (no K_SINK: 200, binary mode)."""
    assert response.status_code == 200, response.text
    return parse(dict(response.headers), response.content)


@dataclass
class Recorder:
    """A real HTTP receiver that keeps every CloudEvent posted to it (a sink / dead-letter sink)."""

    events: list[BaseCloudEvent] = field(default_factory=list)
    status: int = 202
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _arrived: threading.Condition | None = None

    def __post_init__(self) -> None:
        self._arrived = threading.Condition(self._lock)

    def app(self) -> Flask:
        app = Flask("recorder")

        @app.post("/", defaults={"path": ""})
        @app.post("/<path:path>")
        def receive(path: str) -> Response:
            event = parse(request.headers, request.get_data())
            with self._arrived:
                self.events.append(event)
                self._arrived.notify_all()
            return Response(status=self.status)

        return app

    def wait_for(self, count: int, timeout: float = 20.0) -> list[BaseCloudEvent]:
        with self._arrived:
            self._arrived.wait_for(lambda: len(self.events) >= count, timeout)
            return list(self.events)
