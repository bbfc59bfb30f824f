"""``skylark bench functions``: the example chain (preprocess → detect → alarm) on sample images.

1. Per function and image: p50/p95 of the three stages the SDK records for each invocation
   (the last entry of the ``trace`` in the result event's envelope) — state fetch (local; for
   ``detect (remote)`` from another node's Redis over loopback), compute, state store — next to
   the raw floor measured in the same loop: the same pixel work with Pillow / OpenCV alone (full
   decode, resize, equalise, PNG, the same tiles; the same detectors on the same views, without
   our guards, mapping and NMS), and plain redis-py HSET / HGETALL (XADD for alarm) of the same
   bytes. The functions run in this process, through their SDK apps (Flask test client, reply
   mode), so the stage timings are the SDK's own.
2. End-to-end chain time on one node, from submitting the image to the workflow's terminal event
   (``io.skylark.alarm.raised`` or ``.clear``): the three apps over real HTTP, each reply posted
   to the next; and through a local broker wired with the workflow's Triggers (as ``skylark up``
   wires it; the functions publish to it through K_SINK), the terminal event reaching an
   observer Trigger — against the sum of the raw floors.

Sample images: skimage.data photographs (astronaut: a face; chelsea: a cat; coffee) and a blank
frame; ``large`` is the astronaut scaled to 2048² (tiled by preprocess).
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import threading
import time
import uuid
from collections.abc import Callable

import cv2
import numpy as np
import requests
from cloudevents.core.base import BaseCloudEvent
from flask import Flask, Response, request
from PIL import Image, ImageOps
from rich.console import Console

from bench.common import Report, add_json_option, ratio, summarize
from eventing.broker.local import LocalBroker
from eventing.http import new_event, parse, to_binary
from eventing.wiring import (
    TRIGGER_API_VERSION,
    broker_from_values,
    function_service,
    load_chart_values,
    triggers_from_values,
)
from ex_detect.detector import HAAR_MODELS
from ex_preprocess.function import IMAGE_SUBMITTED
from ex_preprocess.imaging import PNG_COMPRESS_LEVEL
from ex_workflows import example_path
from skylark.runtime.embedded import EmbeddedRedis, free_port
from skylark.sdk import FunctionSettings, create_app, load_function
from skylark.sdk.envelope import ENVELOPE_KEY
from skylark.serving.threaded_server import ThreadedServer
from skylark.state import keys
from skylark.state.peers import StaticPeers
from skylark.state.settings import Settings
from skylark.workflow import ANY_NODE, Workflow, load_workflow

IMAGES = ("astronaut", "chelsea", "coffee", "blank", "large")
STAGES = ("fetch", "compute", "store")
NODE, OTHER_NODE = "bench-a", "bench-b"
ALARM_STREAM = "bench:alarms"
LOG_LEVEL = "WARNING"  # the functions log a JSON line per event at INFO: not in the bench's output


def sample_image(name: str) -> bytes:
    from skimage import data  # noqa: PLC0415 - a test/bench dependency, not a runtime one

    arrays: dict[str, Callable[[], np.ndarray]] = {
        "astronaut": data.astronaut, "chelsea": data.chelsea, "coffee": data.coffee,
        "blank": lambda: np.full((512, 512), 128, np.uint8),
        "large": lambda: np.asarray(Image.fromarray(data.astronaut()).resize((2048, 2048), Image.Resampling.BICUBIC)),
    }
    buffer = io.BytesIO()
    Image.fromarray(arrays[name]()).save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


def submitted(chain: str, image: bytes) -> BaseCloudEvent:
    return new_event(IMAGE_SUBMITTED, "/bench", {"chain": chain, "image_base64": base64.b64encode(image).decode()})


def one_node_workflow() -> Workflow:
    """The example workflow (ex_workflows/image-alarm.yaml) with every function on any node."""
    document = load_workflow(example_path("image-alarm")).to_document()
    for fn in document["spec"]["functions"]:
        fn["node"] = ANY_NODE
    return Workflow.from_document(document, source="image-alarm, one node")


def make_app(workflow: Workflow, name: str, core: Settings, peers: StaticPeers | None = None) -> Flask:
    """The SDK's app of the workflow's function ``name`` (as ``skylark serve function`` builds it)."""
    spec = workflow.function(name)
    config = {"stream": ALARM_STREAM} if name == "alarm" else {}
    return create_app(load_function(spec.entry), peers=peers,
                      settings=FunctionSettings(core=core, name=name, workflow=workflow, config=config))


def stop_app(app: Flask) -> None:
    app.extensions["skylark.function"].stop()


# -- the raw floor: the same work without Skylark ------------------------------------------------


class RawFloor:
    """Pillow + OpenCV + redis-py doing what the functions do, without any of our code."""

    def __init__(self, client, size: int = 512) -> None:
        self.client = client
        self.size = size
        folder = cv2.data.haarcascades
        self.cascades = [cv2.CascadeClassifier(folder + f) for f in HAAR_MODELS.values()]
        self.hog = cv2.HOGDescriptor()
        self.hog.setSVMDetector(cv2.HOGDescriptor_getDefaultPeopleDetector())

    def _normalised(self, gray: Image.Image, longest: int) -> Image.Image:
        factor = longest / max(gray.size)
        return ImageOps.equalize(gray.resize((round(gray.width * factor), round(gray.height * factor))))

    def _png(self, image: Image.Image) -> bytes:
        out = io.BytesIO()
        image.save(out, "PNG", compress_level=PNG_COMPRESS_LEVEL)
        return out.getvalue()

    def preprocess(self, data: bytes, tiles: list[dict], working_longest: int) -> list[bytes]:
        """Full decode, the overview and (when preprocess tiled) the same tiles, as PNG."""
        image = Image.open(io.BytesIO(data))
        image.load()
        gray = image.convert("L")
        out = [self._png(self._normalised(gray, self.size))]
        if tiles:
            working = self._normalised(gray, working_longest)
            out += [self._png(working.crop((t["x"], t["y"], t["x"] + t["width"], t["y"] + t["height"])))
                    for t in tiles]
        return out

    def detect(self, pngs: list[bytes]) -> int:
        found = 0
        for png in pngs:
            gray = cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_GRAYSCALE)
            for cascade in self.cascades:
                found += len(cascade.detectMultiScale2(gray, scaleFactor=1.1, minNeighbors=4)[0])
            found += len(self.hog.detectMultiScale(gray, winStride=(8, 8), padding=(8, 8), scale=1.05)[0])
        return found

    def hset(self, key: str, fields: dict[str, bytes]) -> None:
        self.client.hset(key, mapping=fields)

    def hgetall(self, key: str) -> dict:
        return self.client.hgetall(key)


def _ms(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return (time.perf_counter() - start) * 1000


# -- per-function stages -------------------------------------------------------------------------


class Samples:
    def __init__(self) -> None:
        self.stages: dict[str, dict[str, list[float]]] = {}  # "function|image" → stage → ms

    def add(self, row: str, stage: str, ms: float) -> None:
        self.stages.setdefault(row, {}).setdefault(stage, []).append(ms)

    def p50(self, row: str, stage: str) -> float:
        return summarize(self.stages[row][stage]).p50


def invoke(app: Flask, event: BaseCloudEvent) -> BaseCloudEvent:
    """POST ``event`` to a function app in this process; its result event (reply mode)."""
    headers, body = to_binary(event)
    response = app.test_client().post("/", data=body, headers=headers)
    if response.status_code != 200:
        raise RuntimeError(f"{app.name} answered {response.status_code}: {response.get_data(as_text=True)[:200]}")
    return parse(dict(response.headers), response.get_data())


def stage_ms(event: BaseCloudEvent) -> dict[str, float]:
    """The stage timings of the invocation that emitted ``event`` (its trace entry)."""
    entry = event.get_data()[ENVELOPE_KEY]["trace"][-1]
    return {stage: entry[f"{stage}_ms"] for stage in STAGES}


def measure_functions(node_a: EmbeddedRedis, node_b: EmbeddedRedis, images: list[str], repeat: int,
                      console: Console) -> Samples:
    workflow = one_node_workflow()
    core_a = Settings(node=NODE, redis_url=node_a.url, log_level=LOG_LEVEL)
    core_b = Settings(node=OTHER_NODE, redis_url=node_b.url, log_level=LOG_LEVEL)
    pre = make_app(workflow, "preprocess", core_a)
    det = make_app(workflow, "detect", core_a)
    # bench-b reads bench-a's bundle across "the link" (loopback to another redis-server)
    det_remote = make_app(workflow, "detect", core_b, StaticPeers.from_mapping({NODE: {"redis_url": node_a.url}}))
    alarm = make_app(workflow, "alarm", core_a)
    client = node_a.client()
    raw = RawFloor(client)
    samples = Samples()
    try:
        for name in images:
            image = sample_image(name)
            for i in range(repeat + 1):  # the first round warms up (not recorded)
                chain = f"bench-{name}-{i}"
                p = invoke(pre, submitted(chain, image))
                d = invoke(det, p)
                r = invoke(det_remote, p)
                a = invoke(alarm, d)
                # raw floor, same bytes, interleaved with the functions' runs
                pre_fields = client.hgetall(keys.bundle_key(chain, "preprocess"))
                det_fields = client.hgetall(keys.bundle_key(chain, "detect"))
                tiles = json.loads(pre_fields.get(b"tiles", b"[]"))
                info = json.loads(pre_fields[b"info"])
                working = round(max(info["original"]["width"], info["original"]["height"]) * (info["tile_scale"] or 0))
                pngs = [pre_fields[b"image"], *(pre_fields[t["field"].encode()] for t in tiles)]
                floor = {
                    "preprocess": {"compute": _ms(lambda: raw.preprocess(image, tiles, working)),
                                   "store": _ms(lambda: raw.hset(f"raw:{chain}:p", pre_fields))},
                    "detect": {"fetch": _ms(lambda: raw.hgetall(f"raw:{chain}:p")),
                               "compute": _ms(lambda: raw.detect(pngs)),
                               "store": _ms(lambda: raw.hset(f"raw:{chain}:d", det_fields))},
                    "alarm": {"fetch": _ms(lambda: raw.hgetall(f"raw:{chain}:d")),
                              "store": _ms(lambda: client.xadd(
                                  "raw:alarms", {"chain": chain, "d": det_fields[b"detections"]}, maxlen=1000))},
                }
                if i == 0:
                    continue
                for fn_name, event in (("preprocess", p), ("detect", d), ("detect (remote)", r), ("alarm", a)):
                    row = f"{fn_name}|{name}"
                    for stage, ms in stage_ms(event).items():
                        samples.add(row, stage, ms)
                    for stage, ms in floor.get(fn_name.split(" ")[0], {}).items():
                        samples.add(row, f"raw_{stage}", ms)
            console.log(f"functions: {name} done")
            client.flushall()
            node_b.client().flushall()
    finally:
        for app in (pre, det, det_remote, alarm):
            stop_app(app)
        client.close()
    return samples


# -- end to end ----------------------------------------------------------------------------------


class Observer:
    """Where the workflow's terminal events go (an observer Trigger's subscriber): by chain."""

    def __init__(self) -> None:
        self.events: dict[str, BaseCloudEvent] = {}
        self._arrived = threading.Condition()
        app = Flask("bench-observer")

        @app.post("/")
        def receive() -> Response:
            event = parse(request.headers, request.get_data())
            with self._arrived:
                self.events[str(event.get_extension("skylarkchain"))] = event
                self._arrived.notify_all()
            return Response(status=202)

        self.server = ThreadedServer(app, name="bench-observer").start()

    def wait(self, chain: str, timeout: float = 30.0) -> BaseCloudEvent:
        with self._arrived:
            if not self._arrived.wait_for(lambda: chain in self.events, timeout):
                raise RuntimeError(f"chain {chain} did not end within {timeout:.0f} s")
            return self.events.pop(chain)

    def triggers(self, workflow: Workflow, broker: str) -> list[dict]:
        return [{"apiVersion": TRIGGER_API_VERSION, "kind": "Trigger", "metadata": {"name": f"observer-{i}"},
                 "spec": {"broker": broker, "filter": {"attributes": {"type": t}},
                          "subscriber": {"uri": f"{self.server.url}/"}}}
                for i, t in enumerate(workflow.terminal_types())]


class DeadLetters:
    def __init__(self) -> None:
        self.bodies: list[bytes] = []
        app = Flask("bench-dead-letter")

        @app.post("/")
        def receive() -> Response:
            self.bodies.append(request.get_data())
            return Response(status=202)

        self.server = ThreadedServer(app, name="bench-dead-letter").start()


def _post(session: requests.Session, url: str, event: BaseCloudEvent) -> requests.Response:
    headers, body = to_binary(event)
    response = session.post(url, data=body, headers=headers, timeout=60)
    if response.status_code >= 300:
        raise RuntimeError(f"{url} answered {response.status_code}: {response.text[:200]}")
    return response


def measure_chains(redis: EmbeddedRedis, images: list[str], repeat: int,
                   console: Console) -> dict[str, dict[str, list[float]]]:
    out: dict[str, dict[str, list[float]]] = {}
    values = load_chart_values()
    workflow = one_node_workflow()
    broker_name = broker_from_values(values)
    services = {function_service(name) for name in workflow.names}
    # The workflow's Triggers as the chart renders them (not the handlers' per-node ones)...
    triggers = [t for t in triggers_from_values(values, workflow=workflow, nodes=[NODE])
                if t["spec"]["subscriber"].get("ref", {}).get("name") in services]
    observer, dead = Observer(), DeadLetters()
    triggers += observer.triggers(workflow, broker_name)  # ...and one per terminal event type
    port = free_port()
    reply_core = Settings(node=NODE, redis_url=redis.url, log_level=LOG_LEVEL)
    sink_core = reply_core.with_(broker_url=f"http://127.0.0.1:{port}/default/{broker_name}")
    direct = [ThreadedServer(make_app(workflow, name, reply_core), name=name).start() for name in workflow.names]
    sinked = {function_service(name): ThreadedServer(make_app(workflow, name, sink_core), name=name).start()
              for name in workflow.names}
    broker = LocalBroker(triggers, {**{k: v.url for k, v in sinked.items()}, "dead-letter": dead.server.url},
                         port=port).start()
    terminal = set(workflow.terminal_types())
    session = requests.Session()
    try:
        for name in images:
            image = sample_image(name)
            rows = out.setdefault(name, {"direct": [], "broker": []})
            for i in range(repeat + 1):
                def run_direct() -> None:
                    event = submitted(f"e2e-direct-{name}-{i}", image)
                    for served in direct:
                        response = _post(session, served.url, event)
                        event = parse(dict(response.headers), response.content)
                    if event.get_type() not in terminal:
                        raise RuntimeError(f"the chain ended on {event.get_type()}")

                def run_broker() -> None:
                    chain = f"e2e-broker-{name}-{i}-{uuid.uuid4().hex[:6]}"
                    _post(session, broker.url, submitted(chain, image))
                    observer.wait(chain)  # the alarm's raised / clear event

                d, b = _ms(run_direct), _ms(run_broker)
                if i > 0:
                    rows["direct"].append(d)
                    rows["broker"].append(b)
            console.log(f"chains: {name} done")
        if dead.bodies:
            raise RuntimeError(f"{len(dead.bodies)} event(s) were dead-lettered during the run")
    finally:
        session.close()
        broker.stop()
        for served in (*direct, *sinked.values()):
            served.stop()
            stop_app(served.app)
        observer.server.stop()
        dead.server.stop()
    return out


# -- report (every table fits in 80 columns) -----------------------------------------------------


def report(samples: Samples, chains: dict[str, dict[str, list[float]]], images: list[str], out: Report) -> None:
    rows = []
    for row, stages in samples.stages.items():
        fn_name, image = row.split("|")
        cells: list[object] = [fn_name, image]
        for stage in STAGES:
            s = summarize(stages[stage])
            cells += [s.p50, s.p95]
        rows.append(cells)
    out.table("Per-function stages (ms)",
              ["function", "image", "fetch\np50", "fetch\np95", "compute\np50", "compute\np95", "store\np50",
               "store\np95"], rows,
              caption="detect (remote): fetches from another node's Redis over loopback")

    rows = []
    for row, stages in samples.stages.items():
        fn_name, image = row.split("|")
        for stage in STAGES:
            if f"raw_{stage}" in stages:
                ours, raw = samples.p50(row, stage), samples.p50(row, f"raw_{stage}")
                rows.append([fn_name, image, stage, ours, raw, ratio(ours, raw)])
    out.table("Stages vs the raw floor (p50 ms)", ["function", "image", "stage", "Skylark", "raw", "×"], rows,
              caption="raw: Pillow / OpenCV alone; redis-py HGETALL (fetch), HSET (store) or XADD "
                      "(alarm's store) of the same bytes")

    rows = []
    for image in images:
        floor = 0.0
        for fn_name in ("preprocess", "detect", "alarm"):
            stages = samples.stages[f"{fn_name}|{image}"]
            floor += sum(summarize(stages[k]).p50 for k in ("raw_fetch", "raw_compute", "raw_store") if k in stages)
        direct, broker = summarize(chains[image]["direct"]), summarize(chains[image]["broker"])
        rows.append([image, direct.p50, direct.p95, ratio(direct.p50, floor), broker.p50, broker.p95,
                     ratio(broker.p50, floor), floor])
    out.table("End-to-end chain on one node, submit → terminal event (ms)",
              ["image", "HTTP\np50", "HTTP\np95", "×\nfloor", "broker\np50", "broker\np95", "×\nfloor",
               "raw floor\np50"], rows,
              caption="HTTP: each reply posted to the next function; broker: through a local broker "
                      "(K_SINK, the workflow's Triggers) to an observer Trigger. raw floor: the sum of "
                      "the p50 raw stages (no HTTP, no events, no Skylark)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="skylark bench functions", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", default="astronaut,chelsea,blank",
                        help=f"comma-separated, from {', '.join(IMAGES)} (default astronaut,chelsea,blank)")
    parser.add_argument("--repeat", type=int, default=6, help="timed runs per image (default 6)")
    add_json_option(parser)
    args = parser.parse_args(argv)
    images = [i.strip() for i in args.images.split(",") if i.strip()]
    unknown = sorted(set(images) - set(IMAGES))
    if unknown or args.repeat < 1:
        parser.error(f"unknown image(s) {', '.join(unknown)}" if unknown else "--repeat must be >= 1")
    out = Report("functions")
    with EmbeddedRedis() as node_a, EmbeddedRedis() as node_b:
        samples = measure_functions(node_a, node_b, images, args.repeat, out.console)
        node_a.client().flushall()
        chains = measure_chains(node_a, images, args.repeat, out.console)
    report(samples, chains, images, out)
    out.results.update(stages=samples.stages, chains=chains)
    out.load()
    out.write_json(args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
