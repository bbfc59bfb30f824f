"""``skylark bench functions``: the example chain (preprocess → detect → alarm) on sample images.

1. Per function and image: p50/p95 of the three stages each invocation records — state fetch
   (local; and for detect also from another node's Redis over loopback), compute, state store —
   taken from the function objects themselves (``handle``), next to the raw floor measured in the
   same loop: the same pixel work with Pillow / OpenCV alone (full decode, resize, equalise, PNG,
   the same tiles; the same detectors on the same views, without our guards, mapping and NMS),
   and plain redis-py HSET / HGETALL (XADD for alarm) of the same bytes.
2. End-to-end chain time on one node, from submitting the image to the alarm outcome: the three
   apps over real HTTP posting each result to the next, and through the local broker (K_SINK),
   against the sum of the raw floors.

Sample images: skimage.data photographs (astronaut: a face; chelsea: a cat; coffee) and a blank
frame; ``large`` is the astronaut scaled to 2048² (tiled by preprocess).
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field

import cv2
import numpy as np
import requests
from flask import Flask, request
from PIL import Image, ImageOps
from rich.console import Console
from werkzeug.serving import make_server

from bench.common import Summary, print_table, ratio, summarize
from eventing import catalogue
from eventing.broker.local import LocalBroker
from eventing.http import new_event, parse, to_binary
from ex_alarm.app import create_app as alarm_app
from ex_alarm.config import AlarmSettings
from ex_alarm.function import AlarmFunction
from ex_detect.app import create_app as detect_app
from ex_detect.config import DetectSettings
from ex_detect.detector import HAAR_MODELS
from ex_detect.function import DetectFunction
from ex_preprocess.app import create_app as preprocess_app
from ex_preprocess.config import PreprocessSettings
from ex_preprocess.function import PreprocessFunction
from ex_preprocess.imaging import PNG_COMPRESS_LEVEL
from skylark.state import keys
from skylark.runtime.embedded import EmbeddedRedis, free_port
from skylark.state.peers import StaticPeers
from skylark.state.settings import Settings

IMAGES = ("astronaut", "chelsea", "coffee", "blank", "large")
STAGES = ("fetch", "compute", "store")


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


def submitted(chain: str, image: bytes):
    return new_event(catalogue.IMAGE_SUBMITTED, "/bench",
                     {"chain": chain, "image_base64": base64.b64encode(image).decode()})


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
    import time  # noqa: PLC0415

    start = time.perf_counter()
    fn()
    return (time.perf_counter() - start) * 1000


# -- per-function stages -------------------------------------------------------------------------


@dataclass
class Samples:
    stages: dict[str, dict[str, list[float]]] = field(default_factory=dict)  # row → stage → ms

    def add(self, row: str, stage: str, ms: float) -> None:
        self.stages.setdefault(row, {}).setdefault(stage, []).append(ms)

    def summary(self, row: str, stage: str) -> Summary:
        return summarize(self.stages[row][stage])


def measure_functions(node_a: EmbeddedRedis, node_b: EmbeddedRedis, images: list[str], repeat: int,
                      console: Console) -> Samples:
    core_a = Settings(node="bench-a", redis_url=node_a.url)
    core_b = Settings(node="bench-b", redis_url=node_b.url)
    pre = PreprocessFunction(PreprocessSettings(core=core_a))
    det = DetectFunction(DetectSettings(core=core_a))
    det_remote = DetectFunction(DetectSettings(core=core_b),
                                peers=StaticPeers.from_mapping({"bench-a": {"redis_url": node_a.url}}))
    alarm = AlarmFunction(AlarmSettings(core=core_a, stream="bench:alarms"))
    for fn in (pre, det, det_remote, alarm):
        fn.start()
    client = node_a.client()
    raw = RawFloor(client)
    samples = Samples()
    try:
        for name in images:
            image = sample_image(name)
            for i in range(repeat + 1):  # the first round warms up (not recorded)
                chain = f"bench-{name}-{i}"
                record = i > 0
                p = pre.handle(submitted(chain, image))
                d = det.handle(p.event)
                r = det_remote.handle(p.event)  # bench-b reads bench-a's bundle across "the link"
                a = alarm.handle(d.event)
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
                              "store": _ms(lambda: client.xadd("raw:alarms", {"chain": chain, "d": det_fields[b"detections"]},
                                                               maxlen=1000))},
                }
                if not record:
                    continue
                for fn_name, handled in (("preprocess", p), ("detect", d), ("detect (remote)", r), ("alarm", a)):
                    t = handled.timings
                    row = f"{fn_name}|{name}"
                    for stage, ms in (("fetch", t.fetch_ms), ("compute", t.compute_ms), ("store", t.store_ms)):
                        samples.add(row, stage, ms)
                    for stage, ms in floor.get(fn_name.split(" ")[0], {}).items():
                        samples.add(row, f"raw_{stage}", ms)
            console.log(f"functions: {name} done")
            client.flushall()
            node_b.client().flushall()
    finally:
        for fn in (pre, det, det_remote, alarm):
            fn.stop()
        client.close()
    return samples


# -- end to end ----------------------------------------------------------------------------------


class _Served:
    def __init__(self, app, port: int = 0) -> None:
        self.server = make_server("127.0.0.1", port, app, threaded=True)
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        self.app = app
        threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.app.extensions["skylark.function"].stop()


def _post(session: requests.Session, url: str, event) -> requests.Response:
    headers, body = to_binary(event)
    response = session.post(url, data=body, headers=headers, timeout=60)
    if response.status_code >= 300:
        raise RuntimeError(f"{url} answered {response.status_code}: {response.text[:200]}")
    return response


def measure_chains(redis: EmbeddedRedis, images: list[str], repeat: int, console: Console) -> dict[str, dict[str, list[float]]]:
    from eventing.wiring import broker_from_values, load_chart_values, triggers_from_values  # noqa: PLC0415

    out: dict[str, dict[str, list[float]]] = {}
    values = load_chart_values()
    chain_types = (catalogue.IMAGE_SUBMITTED, catalogue.PREPROCESS_COMPLETED, catalogue.DETECT_COMPLETED)
    triggers = [t for t in triggers_from_values(values) if t["spec"]["filter"]["attributes"].get("type") in chain_types]
    port = free_port()
    sink = f"http://127.0.0.1:{port}/default/{broker_from_values(values)}"
    reply_core = Settings(node="bench-a", redis_url=redis.url)
    sink_core = reply_core.with_(broker_url=sink)
    direct = [_Served(preprocess_app(PreprocessSettings(core=reply_core))),
              _Served(detect_app(DetectSettings(core=reply_core))),
              _Served(alarm_app(AlarmSettings(core=reply_core)))]
    sinked = {"preprocess": _Served(preprocess_app(PreprocessSettings(core=sink_core))),
              "detect": _Served(detect_app(DetectSettings(core=sink_core))),
              "alarm": _Served(alarm_app(AlarmSettings(core=sink_core)))}
    dead_letters: list[bytes] = []
    dead_app = Flask("dead-letter")

    @dead_app.post("/")
    def dead_letter():
        dead_letters.append(request.get_data())
        return "", 202

    dead = make_server("127.0.0.1", 0, dead_app, threaded=True)
    threading.Thread(target=dead.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    services = {**{k: v.url for k, v in sinked.items()}, "dead-letter": f"http://127.0.0.1:{dead.server_port}"}
    broker = LocalBroker(triggers, services, port=port).start()
    client = redis.client()
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
                        if response.status_code == 204:
                            return  # alarm: no alarm (recorded in the stream)
                        event = parse(dict(response.headers), response.content)

                def run_broker() -> None:
                    chain = f"e2e-broker-{name}-{i}-{uuid.uuid4().hex[:6]}"
                    last = client.xrevrange(keys.DEFAULT_ALARM_STREAM, count=1)
                    since = last[0][0] if last else b"0-0"
                    _post(session, broker.url, submitted(chain, image))
                    while True:  # until the alarm function has recorded this chain's outcome
                        reply = client.xread({keys.DEFAULT_ALARM_STREAM: since}, block=30_000, count=10)
                        if not reply:
                            raise RuntimeError(f"chain {chain} did not finish within 30 s")
                        for entry_id, fields in reply[0][1]:
                            since = entry_id
                            if fields[b"chain"].decode() == chain:
                                return

                d, b = _ms(run_direct), _ms(run_broker)
                if i > 0:
                    rows["direct"].append(d)
                    rows["broker"].append(b)
            console.log(f"chains: {name} done")
        if dead_letters:
            raise RuntimeError(f"{len(dead_letters)} event(s) were dead-lettered during the run")
    finally:
        session.close()
        broker.stop()
        dead.shutdown()
        dead.server_close()
        for served in (*direct, *sinked.values()):
            served.stop()
        client.close()
    return out


# -- report --------------------------------------------------------------------------------------


def report(samples: Samples, chains: dict[str, dict[str, list[float]]], images: list[str], console: Console) -> None:
    rows = []
    for row in samples.stages:
        fn_name, image = row.split("|")
        cells = [fn_name, image]
        for stage in STAGES:
            s = samples.summary(row, stage)
            cells += [s.p50, s.p95]
        rows.append(cells)
    print_table("Per-function stages (ms; fetch of detect (remote) crosses to another Redis over loopback)",
                ["function", "image", "fetch p50", "fetch p95", "compute p50", "compute p95", "store p50", "store p95"],
                rows, console)

    rows = []
    for row, stages in samples.stages.items():
        fn_name, image = row.split("|")
        cells: list[object] = [fn_name, image]
        for stage, floor in (("fetch", "raw_fetch"), ("compute", "raw_compute"), ("store", "raw_store")):
            if floor in stages:
                ours, raw = samples.summary(row, stage).p50, samples.summary(row, floor).p50
                cells += [ours, raw, ratio(ours, raw)]
            else:
                cells += ["–", "–", "–"]
        rows.append(cells)
    print_table("Stages vs the raw floor, p50 ms (Pillow / OpenCV alone; redis-py HGETALL, HSET or XADD of the same bytes)",
                ["function", "image", "fetch", "HGETALL", "×", "compute", "raw", "×", "store", "HSET/XADD", "×"],
                rows, console)

    rows = []
    for image in images:
        floor = 0.0
        for fn_name in ("preprocess", "detect", "alarm"):
            stages = samples.stages[f"{fn_name}|{image}"]
            floor += sum(summarize(stages[k]).p50 for k in ("raw_fetch", "raw_compute", "raw_store") if k in stages)
        direct, broker = summarize(chains[image]["direct"]), summarize(chains[image]["broker"])
        rows.append([image, direct.p50, direct.p95, ratio(direct.p50, floor), broker.p50, broker.p95,
                     ratio(broker.p50, floor), floor])
    print_table("End-to-end chain on one node, submit → alarm outcome (ms)",
                ["image", "HTTP p50", "HTTP p95", "× floor", "broker p50", "broker p95", "× floor", "raw floor p50"],
                rows, console,
                caption="raw floor = sum of the p50 raw stages (no HTTP, no events, no Skylark)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="skylark bench functions", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", default="astronaut,chelsea,blank",
                        help=f"comma-separated, from {', '.join(IMAGES)} (default astronaut,chelsea,blank)")
    parser.add_argument("--repeat", type=int, default=6, help="timed runs per image (default 6)")
    parser.add_argument("--json", action="store_true", help="also print the raw samples as JSON")
    args = parser.parse_args(argv)
    images = [i.strip() for i in args.images.split(",") if i.strip()]
    unknown = sorted(set(images) - set(IMAGES))
    if unknown or args.repeat < 1:
        parser.error(f"unknown image(s) {', '.join(unknown)}" if unknown else "--repeat must be >= 1")
    console = Console()
    with EmbeddedRedis() as node_a, EmbeddedRedis() as node_b:
        samples = measure_functions(node_a, node_b, images, args.repeat, console)
        node_a.client().flushall()
        chains = measure_chains(node_a, images, args.repeat, console)
    report(samples, chains, images, console)
    if args.json:
        console.print_json(json.dumps({"stages": samples.stages, "chains": chains}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
