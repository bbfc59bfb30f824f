"""``skylark bench eventing``: change stream → local stream source → local broker → a trivial sink.

Measured in one run, on one real redis-server and HTTP servers on 127.0.0.1:

- floors: a raw ``XADD`` → ``XREADGROUP`` loop (redis-py, a blocked reader thread) and a bare HTTP
  POST loop (``requests.Session`` to the same trivial sink);
- throughput: N entries written at once, time until the sink has them all — through the source
  straight to the sink, and through source + broker (one Trigger on the stream event type);
- latency per hop, one entry at a time: *stream hop* = XADD until the broker stamps
  ``knativearrivaltime`` (XREADGROUP + POST to ingress), *broker hop* = that stamp until the sink
  has the event (match, queue, worker, POST), and the end-to-end sum.
"""

from __future__ import annotations

import argparse
import datetime as dt
import threading
import time

import redis
import requests

from bench.common import Report, add_json_option, ratio, summarize
from eventing import catalogue
from eventing.broker import LocalBroker
from eventing.publisher import Publisher
from eventing.redisstream import encode_stream_event, to_go_binary
from skylark.serving.threaded_server import ThreadedServer
from eventing.source import StreamSource
from skylark.runtime.embedded import EmbeddedRedis

STREAM = "bench:changes"
GROUP = "bench"


def _fields(i: int) -> dict[str, str]:
    return {"chain": "bench", "function": "preprocess", "op": "put", "mechanism": "bundled",
            "fields": "img", "version": str(i + 1), "node": "edge-1", "size": "1024",
            "checksum": f"xxh3:{i:08x}", "ts": str(int(time.time() * 1000))}


class TrivialSink:
    """Answers 200 to everything; remembers when each event id arrived (and its broker stamp)."""

    def __init__(self) -> None:
        self.arrivals: dict[str, tuple[float, str | None]] = {}
        self._lock = threading.Condition()
        self._server = ThreadedServer(self._app, name="trivial-sink").start()
        self.url = self._server.url + "/"

    def _app(self, environ, start_response):
        length = int(environ.get("CONTENT_LENGTH") or 0)
        environ["wsgi.input"].read(length)
        now = time.time()
        with self._lock:
            self.arrivals[environ.get("HTTP_CE_ID", "")] = (now, environ.get("HTTP_CE_KNATIVEARRIVALTIME"))
            self._lock.notify_all()
        start_response("200 OK", [("Content-Length", "0")])
        return [b""]

    def wait(self, count: int, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        with self._lock:
            while len(self.arrivals) < count:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._lock.wait(left)
        return True

    def wait_id(self, entry_id: str, timeout: float = 5.0) -> tuple[float, str | None]:
        deadline = time.monotonic() + timeout
        with self._lock:
            while entry_id not in self.arrivals:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"event {entry_id} never reached the sink")
                self._lock.wait(left)
            return self.arrivals[entry_id]

    def reset(self) -> None:
        with self._lock:
            self.arrivals.clear()

    def stop(self) -> None:
        self._server.stop()


def raw_stream_floor(client: redis.Redis, n: int) -> tuple[list[float], float]:
    """Latency XADD → XREADGROUP (paced, ms) and entries/s of a burst read with XREADGROUP + XACK."""
    stream = "bench:raw"
    client.delete(stream)
    client.xgroup_create(stream, "raw", id="0", mkstream=True)
    got: dict[str, float] = {}
    ready = threading.Condition()
    stop = threading.Event()

    def reader() -> None:
        r = redis.Redis(connection_pool=client.connection_pool)
        while not stop.is_set():
            reply = r.xreadgroup("raw", "r", {stream: ">"}, count=64, block=100)
            now = time.perf_counter()
            ids = [i for _s, items in reply or [] for i, _f in items]
            if ids:
                r.xack(stream, "raw", *ids)
                with ready:
                    for i in ids:
                        got[i.decode()] = now
                    ready.notify_all()

    thread = threading.Thread(target=reader, daemon=True)
    thread.start()
    latencies = []
    for i in range(n):
        start = time.perf_counter()
        entry = client.xadd(stream, _fields(i)).decode()
        with ready:
            while entry not in got:
                ready.wait(1)
        latencies.append((got[entry] - start) * 1000)
    got.clear()
    start = time.perf_counter()
    pipe = client.pipeline(transaction=False)
    for i in range(n):
        pipe.xadd(stream, _fields(i))
    pipe.execute()
    with ready:
        while len(got) < n:
            ready.wait(1)
    rate = n / (time.perf_counter() - start)
    stop.set()
    thread.join(2)
    return latencies, rate


def raw_post_floor(sink: TrivialSink, n: int) -> tuple[list[float], float]:
    """Latency (ms) and posts/s of a bare HTTP POST loop of the same event to the same sink."""
    session = requests.Session()
    headers, body = to_go_binary(encode_stream_event("redis://127.0.0.1:1", STREAM, "0-1", _fields(0)))
    latencies = []
    start_all = time.perf_counter()
    for _ in range(n):
        start = time.perf_counter()
        session.post(sink.url, data=body, headers=headers, timeout=5).raise_for_status()
        latencies.append((time.perf_counter() - start) * 1000)
    rate = n / (time.perf_counter() - start_all)
    session.close()
    sink.reset()
    return latencies, rate


def _source(client: redis.Redis, server: EmbeddedRedis, sink_url: str, consumer: str) -> StreamSource:
    return StreamSource(client, STREAM, GROUP, consumer, sink_url, address=f"redis://127.0.0.1:{server.port}",
                        batch=64, block_ms=100, publisher=Publisher(retries=0))


def throughput(client: redis.Redis, server: EmbeddedRedis, sink: TrivialSink, sink_url: str, n: int,
               consumer: str, drain: LocalBroker | None = None) -> float:
    client.delete(STREAM)
    sink.reset()
    pipe = client.pipeline(transaction=False)
    for i in range(n):
        pipe.xadd(STREAM, _fields(i))
    pipe.execute()
    source = _source(client, server, sink_url, consumer)
    start = time.perf_counter()
    source.start()
    try:
        if not sink.wait(n, timeout=120):
            raise RuntimeError(f"only {len(sink.arrivals)} of {n} entries arrived")
        elapsed = time.perf_counter() - start
    finally:
        source.stop()
        if drain is not None:
            drain.drain(10)
    return n / elapsed


def hop_latencies(client: redis.Redis, server: EmbeddedRedis, sink: TrivialSink, broker: LocalBroker,
                  n: int) -> tuple[list[float], list[float], list[float]]:
    client.delete(STREAM)
    sink.reset()
    source = _source(client, server, broker.url, "paced").start()
    stream_hop, broker_hop, total = [], [], []
    try:
        time.sleep(0.2)  # the source is blocked in XREADGROUP before the first entry
        for i in range(n):
            t0 = time.time()
            entry = client.xadd(STREAM, _fields(i)).decode()
            at_sink, stamp = sink.wait_id(entry)
            at_broker = dt.datetime.fromisoformat(stamp).timestamp()
            stream_hop.append((at_broker - t0) * 1000)
            broker_hop.append((at_sink - at_broker) * 1000)
            total.append((at_sink - t0) * 1000)
    finally:
        source.stop()
    return stream_hop, broker_hop, total


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="skylark bench eventing", description=__doc__.split("\n")[0])
    parser.add_argument("--entries", type=int, default=2000, help="entries per throughput run (default 2000)")
    parser.add_argument("--paced", type=int, default=300, help="entries sent one by one for latency (default 300)")
    add_json_option(parser)
    args = parser.parse_args(argv)
    if args.entries < 1 or args.paced < 1:
        parser.error("--entries and --paced must be >= 1")
    report = Report("eventing")
    console = report.console
    with EmbeddedRedis() as server:
        client = server.client()
        sink = TrivialSink()
        triggers = [{"apiVersion": "eventing.knative.dev/v1", "kind": "Trigger",
                     "metadata": {"name": "stream", "namespace": "default"},
                     "spec": {"broker": "bench", "filter": {"attributes": {"type": catalogue.REDIS_STREAM}},
                              "subscriber": {"ref": {"kind": "Service", "name": "sink"}}}}]
        broker = LocalBroker(triggers, {"sink": sink.url}, broker="bench", workers=4).start()
        try:
            console.log("floors: XADD→XREADGROUP and bare POST")
            xread_lat, xread_rate = raw_stream_floor(client, args.paced)
            post_lat, post_rate = raw_post_floor(sink, args.entries)
            console.log(f"throughput: {args.entries} entries, source → sink")
            direct_rate = throughput(client, server, sink, sink.url, args.entries, "direct")
            console.log(f"throughput: {args.entries} entries, source → broker → sink")
            brokered_rate = throughput(client, server, sink, broker.url, args.entries, "brokered", broker)
            console.log(f"latency: {args.paced} entries one by one")
            stream_hop, broker_hop, total = hop_latencies(client, server, sink, broker, args.paced)
        finally:
            broker.stop()
            sink.stop()
            client.close()

    xr, po = summarize(xread_lat), summarize(post_lat)
    floor_stream_hop = xr.median + po.median
    rows = [
        ("floor: XADD→XREADGROUP", args.paced, xread_rate, xr.median, xr.p95, xr.p99, ratio(1, 1)),
        ("floor: bare HTTP POST", args.entries, post_rate, po.median, po.p95, po.p99, ratio(1, 1)),
        ("source → sink", args.entries, direct_rate, None, None, None, ratio(post_rate, direct_rate)),
        ("source → broker → sink", args.entries, brokered_rate, None, None, None, ratio(post_rate, brokered_rate)),
    ]
    for name, samples, floor in (("hop: stream → broker", stream_hop, floor_stream_hop),
                                 ("hop: broker → sink", broker_hop, po.median),
                                 ("XADD → sink", total, floor_stream_hop + po.median)):
        s = summarize(samples)
        rows.append((name, s.n, None, s.median, s.p95, s.p99, ratio(s.median, floor)))
    report.table("Eventing: change stream → local source → local broker → sink",
                 ["measurement", "n", "entries/s", "p50 ms", "p95 ms", "p99 ms", "× floor"], rows,
                 caption="floors: redis-py XADD→XREADGROUP, a bare POST with requests. The first four rows "
                         "are throughput (× floor: bare-POST rate ÷ rate), the last three latency (p50 ÷ p50 "
                         "of the floors the hop consists of: stream hop = XREAD + POST, broker hop = POST)")
    report.load()
    report.write_json(args.json)
    return 0


if __name__ == "__main__":
    import sys

    raise SystemExit(main(sys.argv[1:]))
