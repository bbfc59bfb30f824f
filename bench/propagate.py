"""``skylark bench propagate``: stream events/s through the handlers, CPU per event, lag, bytes.

Three nodes on 127.0.0.1, each with its own redis-server: node A's handlers under gunicorn (the
shared config, ``--workers`` × ``--threads``) propagate to B and C; B and C each run their
handlers and a local broker (``eventing.broker``) under gunicorn, fed the per-node
``bundle-propagated`` Trigger; targets come from a neighbors service (in this process).

1. Throughput: this process POSTs RedisStreamSource events for distinct pre-written 1 KiB
   bundles to A as fast as ``--concurrency`` connections allow, for ``--duration`` seconds. Each
   event is a rebuild on A plus two publishes (B's and C's brokers). Reported: events/s A
   accepted (202), and events/s until B and C both hold every bundle (end to end), and the CPU
   every process group used per event. Floor: a bare Flask app under the same gunicorn config,
   same bodies, same client.
2. CPU per process for 64 KiB bundles (inline, binary): the same load with 64 KiB bundles; the
   CPU of A's handlers per event (the origin: the inbound change, one read, two publishes) and
   of B's and C's handlers per copy received (the receiver: one event, one apply), each against
   one request to the bare Flask app (the stream event for the origin, a 64 KiB body for the
   receiver).
3. Lag: a local stream source feeds A's change stream to A's handlers; for each size, one write
   at a time on A, timed from the moment the write returned to the moment B's Redis holds that
   version (polled every 0.2 ms). 1 KiB and 64 KiB go inline, 1 MiB and 5 MiB as claim checks
   (inline limit 256 KiB). Floor: a raw redis-py copy of the same bytes, HGETALL on A + HSET on
   B, in the same run.
4. Field deltas: a 1 MB bundle of five 200 KB fields written on A, then one field rewritten: the
   bytes that reach each neighbour (event bodies A sent, bytes B and C pulled from A's Redis,
   from the handlers' metrics) for the whole bundle and for the one-field update, and the lag.
5. Compression on a slow link: two more origins, X (``SKYLARK_COMPRESSION=auto``) and Y
   (``off``), each linked to node D at ``--slow-mbps`` (30 Mbit/s) through a relay that shapes
   the bytes both ways (D's broker ingress and, for D's pulls, X's and Y's Redis). The same 1 MiB
   states — JSON detections, an integer ramp, float noise, random bytes (an image) — written on
   X and Y in turn: lag to D with and without compression, and the CPU zstd spends on it here
   (compressing) and there (decompressing).

Everything shares the machine's cores with this process (the client and the pollers).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import random
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from pathlib import Path

import redis
import urllib3
import yaml
import zstandard
from flask import Flask
from werkzeug.serving import make_server

from bench.common import Ratio, Report, add_json_option, ratio, summarize
from eventing import catalogue
from eventing.redisstream import encode_stream_event, to_go_binary
from eventing.source import StreamSource
from skylark.state.changes import ChangeRecord
from skylark.runtime.embedded import EmbeddedRedis, free_port
from skylark.state.redis_client import connect
from skylark.state.settings import Settings
from skylark.state.store import StateStore

REPO = Path(__file__).resolve().parents[1]
SIZES = (("1 KiB", 1024), ("64 KiB", 64 * 1024), ("1 MiB", 1024 * 1024), ("5 MiB", 5 * 1024 * 1024))
TARGET_EVENTS_PER_S = 1500
TARGET_P50_MS, TARGET_P99_MS = 10.0, 50.0
TARGET_ORIGIN_CPU, TARGET_RECEIVER_CPU = 2.0, 1.5   # × one bare-Flask request, 64 KiB bundles
TARGET_LAG_RATIO = {"1 MiB": 3.0, "5 MiB": 2.0}     # lag p50 / raw copy p50
TARGET_DELTA_SHARE = 0.25                           # one field of five, bytes on the wire / bundle


def cpu_seconds(pid: int, *, children: bool = False) -> float:
    """User + system CPU of ``pid`` (and its live children) from /proc; 0.0 where there is none."""
    tick = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
    pids = [pid]
    if children:
        try:
            pids += [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
        except OSError:
            pass
    total = 0
    for p in pids:
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime, stime (after pid and comm)
    return total / tick


def bare_app() -> Flask:
    """The floor of the throughput run: Flask under the same gunicorn config, doing nothing."""
    app = Flask("bare")

    @app.post("/")
    def ingress():
        from flask import request  # noqa: PLC0415 - keeps this factory self-contained

        request.get_data()
        return {"outcome": "ok"}, 202

    @app.get("/readyz")
    def readyz():
        return {"status": "ready"}

    return app


class Gunicorn:
    """One gunicorn master with the shared config, on a free port of 127.0.0.1."""

    def __init__(self, app: str, env: dict[str, str], log_dir: Path, name: str,
                 port: int | None = None) -> None:
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_dir / f"{name}.log"
        self._log = open(self.log_path, "wb")  # noqa: SIM115 - closed in stop()
        full_env = {**os.environ, "PORT": str(self.port), "SKYLARK_BIND_HOST": "127.0.0.1",
                    "SKYLARK_LOG_LEVEL": "WARNING", **env}
        self.process = subprocess.Popen(
            [sys.executable, "-m", "gunicorn", "-c", str(REPO / "skylark" / "serving" / "gunicorn_conf.py"), app],
            cwd=REPO, env=full_env, stdout=subprocess.DEVNULL, stderr=self._log)

    def cpu_seconds(self) -> float:
        """CPU used so far by the master and its workers."""
        return cpu_seconds(self.process.pid, children=True)

    def wait_ready(self, timeout_s: float = 30.0) -> None:
        http = urllib3.PoolManager()
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.log_path.name} exited: {self.log_path.read_text()[-1500:]}")
            try:
                if http.request("GET", self.url + "/readyz", timeout=1.0, retries=False).status == 200:
                    return
            except urllib3.exceptions.HTTPError:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"{self.log_path.name} did not become ready")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
        self._log.close()


def _bundle_trigger(node: str) -> dict:
    return {"apiVersion": "eventing.knative.dev/v1", "kind": "Trigger",
            "metadata": {"name": f"bundle-propagated-{node}", "namespace": "default"},
            "spec": {"broker": "skylark",
                     "filter": {"attributes": {"type": catalogue.BUNDLE_PROPAGATED, "skylarktarget": node}},
                     "subscriber": {"ref": {"apiVersion": "serving.knative.dev/v1", "kind": "Service",
                                            "name": "handlers"}, "uri": "/"},
                     "delivery": {"retry": 5, "backoffPolicy": "exponential", "backoffDelay": "PT0.2S"}}}


def _start_neighbors(topology: dict):
    from neighbors_service.app import create_app  # noqa: PLC0415
    from neighbors_service.config import NeighborsSettings  # noqa: PLC0415
    from neighbors_service.policies import SLO  # noqa: PLC0415
    from neighbors_service.sources.file import FileTopologySource  # noqa: PLC0415

    settings = NeighborsSettings(core=Settings(node="node-a", log_level="WARNING"), topology_file="bench",
                                 slo=SLO(max_latency_ms=1000, min_bandwidth_mbps=0))
    server = make_server("127.0.0.1", 0, create_app(settings, FileTopologySource.from_dict(topology)),
                         threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()

    def stop() -> None:
        server.shutdown()
        server.server_close()

    return f"http://127.0.0.1:{server.server_port}", stop


def _stream_events(store: StateStore, address: str, prefix: str, count: int,
                   frame: Callable[[], bytes]) -> tuple[list[tuple[dict, bytes]], list[str]]:
    """Write ``count`` bundles ``{"frame": frame()}`` (chains ``<prefix><i>``) and build the
    RedisStreamSource event announcing each write: what the handlers of the writer's node get."""
    bodies, chains = [], []
    for i in range(count):
        result = store.put(f"{prefix}{i}", "preprocess", {"frame": frame()})
        chains.append(f"{prefix}{i}")
        m = result.meta
        change = ChangeRecord(m.chain, m.function, "put", m.mechanism.value, ("frame",), m.version,
                              m.node, m.size, m.checksum, m.updated_ms)
        bodies.append(to_go_binary(encode_stream_event(address, "skylark:changes", result.entry_id,
                                                       change.to_stream_fields())))
    return bodies, chains


def _load(url: str, bodies: Sequence[tuple[dict, bytes]], concurrency: int, duration_s: float,
          expect: bytes | None = b'"outcome":"propagated"') -> tuple[int, float, int]:
    """POST ``bodies`` in order from ``concurrency`` threads until done or ``duration_s``.

    Only a 202 whose body contains ``expect`` counts as accepted (a ``no_targets`` answer would
    be a 202 without any publishing). Returns (accepted, elapsed_s, failed).
    """
    pool = urllib3.HTTPConnectionPool("127.0.0.1", int(url.rsplit(":", 1)[1]), maxsize=concurrency,
                                      block=True, retries=False, timeout=30.0)
    lock = threading.Lock()
    state = {"next": 0, "ok": 0, "failed": 0}
    deadline = time.perf_counter() + duration_s

    def worker() -> None:
        while time.perf_counter() < deadline:
            with lock:
                i = state["next"]
                if i >= len(bodies):
                    return
                state["next"] = i + 1
            headers, body = bodies[i]
            response = pool.urlopen("POST", "/", body=body, headers=headers)
            with lock:
                good = response.status == 202 and (expect is None or expect in response.data)
                state["ok" if good else "failed"] += 1

    start = time.perf_counter()
    threads = [threading.Thread(target=worker) for _ in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - start
    pool.close()
    return state["ok"], elapsed, state["failed"]


def _wait_all(client: redis.Redis, keys: Sequence[str], timeout_s: float) -> float | None:
    """Seconds until every key exists in ``client`` (None on timeout)."""
    start = time.perf_counter()
    pending = list(keys)
    while pending and time.perf_counter() - start < timeout_s:
        pipe = client.pipeline(transaction=False)
        for key in pending:
            pipe.exists(key)
        pending = [k for k, found in zip(pending, pipe.execute()) if not found]
        if pending:
            time.sleep(0.02)
    return None if pending else time.perf_counter() - start


class _Bucket:
    """The pipe of one direction of a link: ``take(n)`` returns when n more bytes have passed
    at its rate (shared by every connection over the link, as one pipe is)."""

    def __init__(self, mbps: float) -> None:
        self.bytes_per_s = mbps * 1e6 / 8
        self._lock = threading.Lock()
        self._free_at = time.monotonic()

    def take(self, nbytes: int) -> None:
        with self._lock:
            now = time.monotonic()
            self._free_at = max(now, self._free_at) + nbytes / self.bytes_per_s
            wait = self._free_at - now
        if wait > 0:
            time.sleep(wait)


class ShapedLink:
    """A TCP relay on 127.0.0.1 to ``target`` whose bytes travel at ``mbps`` each way: what a slow
    link does to the pushes and pulls that cross it (no root needed, unlike ``--emulate-network``)."""

    CHUNK = 16 * 1024

    def __init__(self, target: tuple[str, int], mbps: float) -> None:
        self.target = target
        self.up, self.down = _Bucket(mbps), _Bucket(mbps)
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
                server = socket.create_connection(self.target)
            except OSError:
                return
            for sock in (client, server):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            threading.Thread(target=self._pump, args=(client, server, self.up), daemon=True).start()
            threading.Thread(target=self._pump, args=(server, client, self.down), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, pipe: _Bucket) -> None:
        try:
            while data := src.recv(self.CHUNK):
                pipe.take(len(data))
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (src, dst):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
                sock.close()

    def close(self) -> None:
        self.listener.close()


def metric_sum(url: str, name: str) -> float:
    """The sum of every sample of metric ``name`` a service's /metrics shows (all label values)."""
    text = urllib3.PoolManager().request("GET", url + "/metrics", timeout=10.0).data.decode()
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name) and line[len(name):len(name) + 1] in (" ", "{"):
            total += float(line.rsplit(" ", 1)[1])
    return total


def _detections(size: int) -> bytes:
    """JSON like a detector's output, ``size`` bytes."""
    rng = random.Random(7)
    items = [{"label": rng.choice(["face", "person", "car", "cat"]), "score": round(rng.random(), 3),
              "box": [rng.randrange(2000) for _ in range(4)], "frame": i} for i in range(size // 40)]
    return json.dumps(items).encode()[:size]


def _ramp(size: int) -> bytes:
    """A numeric array that compresses like sensor counts: int32, slowly rising, a little jitter."""
    return struct.pack(f"<{size // 4}i", *(i // 3 + (i * 7919) % 4 for i in range(size // 4)))


def _noise(size: int) -> bytes:
    """A numeric array that hardly compresses: float32 Gaussian noise."""
    rng = random.Random(3)
    return struct.pack(f"<{size // 4}f", *(rng.gauss(0, 1) for _ in range(size // 4)))


STATES = {"JSON detections": _detections, "int32 ramp": _ramp, "float32 noise": _noise,
          "random (an image)": os.urandom}


def _wait_version(client: redis.Redis, key: str, version: int, what: str, timeout_s: float = 30.0) -> float:
    """Poll ``client`` until the meta ``key`` reaches ``version``; seconds waited."""
    t0 = time.perf_counter()
    while int(client.hget(key, "version") or 0) < version:
        if time.perf_counter() - t0 > timeout_s:
            raise RuntimeError(f"{what}: v{version} did not arrive in {timeout_s:g} s")
        time.sleep(0.0002)
    return time.perf_counter() - t0


def _slow_link(stack: ExitStack, tmpdir: Path, args: argparse.Namespace, report: Report) -> None:
    """Section 5: origins X (compression auto) and Y (off), each pushing to D over a shaped link."""
    from handlers.compression import Compressor  # noqa: PLC0415 - only this section needs it

    names = ("node-x", "node-y", "node-d")
    servers = {n: stack.enter_context(EmbeddedRedis()) for n in names}
    d_port = free_port()
    triggers = tmpdir / "triggers-node-d.yaml"
    triggers.write_text(yaml.safe_dump(_bundle_trigger("node-d")))
    broker = Gunicorn("eventing.broker.app:create_app()", {
        "SKYLARK_WORKERS": "1", "SKYLARK_THREADS": "8", "SKYLARK_BROKER_TRIGGERS": str(triggers),
        "SKYLARK_BROKER_NAME": "skylark", "SKYLARK_BROKER_WORKERS": "8",
        "SKYLARK_BROKER_SERVICES": f'{{"handlers": "http://127.0.0.1:{d_port}"}}'}, tmpdir, "broker-node-d")
    stack.callback(broker.stop)
    # One shaped link per origin: its pushes to D's broker, and D's pulls from its Redis.
    links = {o: (ShapedLink(("127.0.0.1", broker.port), args.slow_mbps),
                 ShapedLink(("127.0.0.1", servers[o].port), args.slow_mbps)) for o in ("node-x", "node-y")}
    for pair in links.values():
        for link in pair:
            stack.callback(link.close)
    # D sees both origins' Redis through the links; each origin sees D's broker through its own.
    per_origin = {}
    for origin in ("node-x", "node-y"):
        nodes = [{"name": origin, "redis_url": f"redis://127.0.0.1:{links[origin][1].port}/0",
                  "broker_url": "http://127.0.0.1:9/x"},
                 {"name": "node-d", "redis_url": servers["node-d"].url,
                  "broker_url": f"http://127.0.0.1:{links[origin][0].port}/default/skylark"}]
        url, stop = _start_neighbors({"nodes": nodes, "links": [
            {"a": origin, "b": "node-d", "latency_ms": 1, "bandwidth_mbps": args.slow_mbps}]})
        stack.callback(stop)
        per_origin[origin] = url
    # D resolves either origin (claim pulls): one topology with both, through the links.
    d_nodes = [{"name": o, "redis_url": f"redis://127.0.0.1:{links[o][1].port}/0", "broker_url": "http://127.0.0.1:9/x"}
               for o in ("node-x", "node-y")] + [{"name": "node-d", "redis_url": servers["node-d"].url,
                                                  "broker_url": f"{broker.url}/default/skylark"}]
    d_url, stop = _start_neighbors({"nodes": d_nodes, "links": [
        {"a": o, "b": "node-d", "latency_ms": 1, "bandwidth_mbps": args.slow_mbps} for o in ("node-x", "node-y")]})
    stack.callback(stop)
    handlers = {}
    for node, compression, neighbors, port in (("node-x", "auto", per_origin["node-x"], None),
                                               ("node-y", "off", per_origin["node-y"], None),
                                               ("node-d", "auto", d_url, d_port)):
        handlers[node] = Gunicorn("handlers.app:create_app()", {
            "SKYLARK_NODE": node, "SKYLARK_REDIS_URL": servers[node].url, "SKYLARK_NEIGHBORS_URL": neighbors,
            "SKYLARK_WORKERS": "1", "SKYLARK_THREADS": "8", "SKYLARK_TARGETS_TTL": "30",
            "SKYLARK_COMPRESSION": compression}, tmpdir, f"handlers-{node}", port=port)
        stack.callback(handlers[node].stop)
    for g in (broker, *handlers.values()):
        g.wait_ready()
    stores, sources = {}, {}
    for origin in ("node-x", "node-y"):
        client = stack.enter_context(connect(servers[origin].url))
        stores[origin] = StateStore.from_settings(Settings(node=origin, redis_url=servers[origin].url), client)
        client.xgroup_create("skylark:changes", "skylark-handlers", id="$", mkstream=True)
        sources[origin] = StreamSource(connect(servers[origin].url), "skylark:changes", "skylark-handlers",
                                       f"{origin}-0", handlers[origin].url,
                                       address=f"redis://127.0.0.1:{servers[origin].port}", block_ms=1000).start()
        stack.callback(sources[origin].stop)
    d_client = stack.enter_context(connect(servers["node-d"].url))
    n = max(2, int(6 * args.samples))
    # Compressed, a state of this size fits the 256 KiB inline limit when it shrinks 2× or more;
    # raw, it is a claim check D pulls over the link.
    size = 512 * 1024
    rows = []
    compressor = Compressor()
    for label, make in STATES.items():
        value = make(size)
        lags = {"node-x": [], "node-y": []}
        for i in range(n + 1):
            for origin in ("node-x", "node-y"):  # interleaved: both see the same machine
                chain = f"slow-{origin}"
                version = stores[origin].put(chain, "detect", {"state": value + bytes([i])}).meta.version
                waited = _wait_version(d_client, f"skylark:meta:{chain}:detect", version, f"{label} via {origin}", 60.0)
                if i:
                    lags[origin].append(waited * 1000)
        # The CPU zstd spends on it, here (compressing) and there (decompressing), same bytes.
        packed = compressor.compress({"state": value})
        frame = packed.frames.get("state")
        t0 = time.perf_counter()
        if frame is not None:
            zstandard.ZstdDecompressor().decompress(frame)
        cpu_ms = packed.seconds * 1000 + (time.perf_counter() - t0) * 1000
        on, off = summarize(lags["node-x"]), summarize(lags["node-y"])
        shrink = len(value) / len(frame) if frame is not None else 1.0
        rows.append([label, Ratio(shrink), off.p50, on.p50, ratio(off.p50, on.p50), cpu_ms])
    report.table(
        f"512 KiB of state over a {args.slow_mbps:g} Mbit/s link: lag p50 without and with compression (ms)",
        ["state", "zstd\nratio", "raw\nlag", "auto\nlag", "lag\nraw/auto", "CPU ms\nzstd"], rows,
        caption=f"{n} writes per state and origin, interleaved; raw: an origin with SKYLARK_COMPRESSION=off "
                f"(a claim check: D pulls 512 KiB from its Redis over the link); auto: zstd where the link time "
                f"saved exceeds the CPU (compressed, the bundle goes inline); CPU: compressing here plus "
                f"decompressing there, the same bytes timed in this process. An ideal transfer of 512 KiB takes "
                f"{size * 8 / (args.slow_mbps * 1e6) * 1000:.0f} ms at this bandwidth",
    )
    report.results["slow_link"] = [dict(zip(["state", "zstd_ratio", "raw_lag_ms", "auto_lag_ms", "speedup",
                                             "zstd_cpu_ms"], (r[0], float(r[1]), r[2], r[3], float(r[4]), r[5])))
                                   for r in rows]


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="skylark bench propagate", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=float, default=8.0, help="seconds of the throughput run (8)")
    parser.add_argument("--events", type=int, default=8000, help="at most this many events (8000)")
    parser.add_argument("--concurrency", type=int, default=16, help="client connections (16)")
    parser.add_argument("--workers", type=int, default=2, help="gunicorn workers of node A (2)")
    parser.add_argument("--threads", type=int, default=8, help="gunicorn threads per worker (8)")
    parser.add_argument("--samples", type=float, default=1.0,
                        help="scale of the sample counts (1.0: lag 100/100/30/15, 64 KiB CPU 400, deltas 10, "
                             "slow link 6 per state and mode)")
    parser.add_argument("--slow-mbps", type=float, default=30.0, help="bandwidth of the slow link (30 Mbit/s)")
    add_json_option(parser)
    args = parser.parse_args(argv)
    report = Report("propagate")
    started = time.perf_counter()
    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # the in-process neighbors services

    with ExitStack() as stack, tempfile.TemporaryDirectory(prefix="skylark-bench-") as tmp:
        tmpdir = Path(tmp)
        redis_nodes = {n: stack.enter_context(EmbeddedRedis()) for n in ("node-a", "node-b", "node-c")}
        # Ports first: the topology names the brokers, the brokers name the handlers.
        handler_ports = {n: free_port() for n in ("node-b", "node-c")}
        brokers: dict[str, Gunicorn] = {}
        for n in ("node-b", "node-c"):
            triggers = tmpdir / f"triggers-{n}.yaml"
            triggers.write_text(yaml.safe_dump(_bundle_trigger(n)))
            brokers[n] = Gunicorn("eventing.broker.app:create_app()", {
                "SKYLARK_WORKERS": "1", "SKYLARK_THREADS": "8", "SKYLARK_BROKER_TRIGGERS": str(triggers),
                "SKYLARK_BROKER_NAME": "skylark", "SKYLARK_BROKER_WORKERS": "8",
                "SKYLARK_BROKER_SERVICES": f'{{"handlers": "http://127.0.0.1:{handler_ports[n]}"}}'},
                tmpdir, f"broker-{n}")
            stack.callback(brokers[n].stop)
        topology = {
            "nodes": [{"name": n, "redis_url": r.url,
                       "broker_url": f"{brokers[n].url}/default/skylark" if n in brokers else "http://127.0.0.1:9/x"}
                      for n, r in redis_nodes.items()],
            "links": [{"a": "node-a", "b": n, "latency_ms": 1, "bandwidth_mbps": 10_000} for n in brokers],
        }
        neighbors_url, stop_neighbors = _start_neighbors(topology)
        stack.callback(stop_neighbors)
        # The same topology with both neighbours' brokers replaced by the bare Flask sink: node A's
        # handlers on their own, without the cost of the brokers and B's and C's handlers.
        bare_port = free_port()
        sink_topology = {"nodes": [{**n, "broker_url": f"http://127.0.0.1:{bare_port}/"} if n["name"] != "node-a" else n
                                   for n in topology["nodes"]], "links": topology["links"]}
        sink_neighbors_url, stop_sink_neighbors = _start_neighbors(sink_topology)
        stack.callback(stop_sink_neighbors)

        def handler_env(node: str, workers: int, neighbors: str = neighbors_url) -> dict[str, str]:
            return {"SKYLARK_NODE": node, "SKYLARK_REDIS_URL": redis_nodes[node].url,
                    "SKYLARK_NEIGHBORS_URL": neighbors, "SKYLARK_WORKERS": str(workers),
                    "SKYLARK_THREADS": str(args.threads), "SKYLARK_TARGETS_TTL": "30"}

        handlers = {"node-a": Gunicorn("handlers.app:create_app()", handler_env("node-a", args.workers),
                                       tmpdir, "handlers-node-a")}
        for n in ("node-b", "node-c"):
            handlers[n] = Gunicorn("handlers.app:create_app()", handler_env(n, 1), tmpdir, f"handlers-{n}",
                                   port=handler_ports[n])
        isolated = Gunicorn("handlers.app:create_app()",
                            handler_env("node-a", args.workers, sink_neighbors_url),
                            tmpdir, "handlers-node-a-isolated")
        bare = Gunicorn("bench.propagate:bare_app()", {"SKYLARK_WORKERS": str(args.workers),
                                                       "SKYLARK_THREADS": str(args.threads)}, tmpdir, "bare",
                        port=bare_port)
        for g in (*handlers.values(), *brokers.values(), isolated, bare):
            stack.callback(g.stop)
        for g in (*handlers.values(), *brokers.values(), isolated, bare):
            g.wait_ready()

        clients = {n: stack.enter_context(connect(r.url)) for n, r in redis_nodes.items()}
        store_a = StateStore.from_settings(Settings(node="node-a", redis_url=redis_nodes["node-a"].url),
                                           clients["node-a"])
        address = f"redis://127.0.0.1:{redis_nodes['node-a'].port}"

        # -- 1. throughput ----------------------------------------------------------------------
        payload = os.urandom(1024)
        bodies, chains = _stream_events(store_a, address, "t", args.events, lambda: payload)
        warm = min(200, len(bodies) // 10)
        _load(handlers["node-a"].url, bodies[:warm], args.concurrency, 30.0)  # connections, caches
        _wait_all(clients["node-c"], [f"skylark:meta:{c}:preprocess" for c in chains[:warm]], 30.0)
        groups = {
            "handlers A": [handlers["node-a"].cpu_seconds],
            "brokers B + C": [g.cpu_seconds for g in brokers.values()],
            "handlers B + C": [handlers[n].cpu_seconds for n in ("node-b", "node-c")],
            "redis-server A, B, C": [lambda r=r: cpu_seconds(r.process.pid) for r in redis_nodes.values()],
            "bench client (load + polling)": [time.process_time],
        }
        cpu_before = {k: sum(f() for f in fs) for k, fs in groups.items()}
        ok, elapsed, failed = _load(handlers["node-a"].url, bodies[warm:], args.concurrency, args.duration)
        sent_chains = chains[warm:warm + ok + failed]
        wait = max(_wait_all(clients[n], [f"skylark:meta:{c}:preprocess" for c in sent_chains], 60.0) or float("inf")
                   for n in ("node-b", "node-c"))
        cpu_used = {k: sum(f() for f in fs) - cpu_before[k] for k, fs in groups.items()}
        end_to_end = ok / (elapsed + wait) if wait != float("inf") else 0.0
        _load(isolated.url, bodies[:warm], args.concurrency, 30.0)
        iso_ok, iso_elapsed, iso_failed = _load(isolated.url, bodies[warm:], args.concurrency, args.duration)
        bare_ok, bare_elapsed, _ = _load(bare.url, bodies[warm:], args.concurrency, args.duration, expect=None)
        accepted_rate = ok / elapsed
        iso_rate = iso_ok / iso_elapsed
        bare_rate = bare_ok / bare_elapsed
        report.table(
            f"Stream events through gunicorn on node A ({args.workers}×{args.threads}), 1 KiB bundles, "
            f"2 neighbours, {args.concurrency} connections",
            ["measure", "events", "seconds", "events/s", "vs bare\nFlask"],
            [["A accepted (202, both brokers took it)", ok, elapsed, accepted_rate, ratio(accepted_rate, bare_rate)],
             ["end to end (on B and C)", ok, elapsed + wait if wait != float("inf") else "timeout",
              end_to_end, ratio(end_to_end, bare_rate)],
             ["A alone: brokers replaced by the bare sink", iso_ok, iso_elapsed, iso_rate,
              ratio(iso_rate, bare_rate)],
             ["bare Flask, same gunicorn config (floor)", bare_ok, bare_elapsed, bare_rate, ratio(1, 1)]],
            caption=f"{failed + iso_failed} answers other than 202 propagated; target ≥ {TARGET_EVENTS_PER_S} events/s; "
                    f"log level WARNING (as every service here)",
        )
        total_cpu = sum(cpu_used.values())
        cores = os.cpu_count() or 1
        report.table(
            "CPU per propagated event, whole pipeline (throughput run until B and C hold every bundle)",
            ["process group", "CPU ms / event", "share"],
            [[k, v * 1000 / max(ok, 1), f"{v / total_cpu:.0%}" if total_cpu else "-"] for k, v in cpu_used.items()]
            + [["total", total_cpu * 1000 / max(ok, 1), "100%"]],
            caption=f"ceiling on {cores} cores at this cost: "
                    f"{cores * ok / total_cpu if total_cpu else 0:.0f} events/s (all cores busy)",
        )

        # -- 2. CPU per process, 64 KiB bundles ---------------------------------------------------
        n64 = max(20, int(400 * args.samples))
        bodies64, chains64 = _stream_events(store_a, address, "k", n64 + warm,
                                            lambda: os.urandom(64 * 1024 - len("frame")))
        concurrency64 = min(args.concurrency, 4)
        _load(handlers["node-a"].url, bodies64[:warm], concurrency64, 60.0)
        _wait_all(clients["node-c"], [f"skylark:meta:{c}:preprocess" for c in chains64[:warm]], 60.0)
        per_process = {"A": [handlers["node-a"].cpu_seconds],
                       "B+C": [handlers[n].cpu_seconds for n in ("node-b", "node-c")],
                       "brokers": [g.cpu_seconds for g in brokers.values()], "bare": [bare.cpu_seconds]}
        before = {k: sum(f() for f in fs) for k, fs in per_process.items()}
        ok64, _, _ = _load(handlers["node-a"].url, bodies64[warm:], concurrency64, 600.0)
        _wait_all(clients["node-b"], [f"skylark:meta:{c}:preprocess" for c in chains64[warm:]], 60.0)
        _wait_all(clients["node-c"], [f"skylark:meta:{c}:preprocess" for c in chains64[warm:]], 60.0)
        used = {k: sum(f() for f in fs) - before[k] for k, fs in per_process.items()}
        # The floors: one bare Flask request with the origin's input (a stream event) and with the
        # receiver's (a 64 KiB body), same gunicorn config, same client.
        floor_bodies = {"stream event": bodies64[warm:],
                        "64 KiB body": [({"content-type": "application/octet-stream"}, os.urandom(64 * 1024))] * n64}
        floor_ms = {}
        for name, floor in floor_bodies.items():
            _load(bare.url, floor[:warm], concurrency64, 60.0, expect=None)
            start_cpu = bare.cpu_seconds()
            done, _, _ = _load(bare.url, floor, concurrency64, 600.0, expect=None)
            floor_ms[name] = (bare.cpu_seconds() - start_cpu) * 1000 / max(done, 1)
        origin_ms = used["A"] * 1000 / max(ok64, 1)
        receiver_ms = used["B+C"] * 1000 / max(2 * ok64, 1)
        broker_ms = used["brokers"] * 1000 / max(2 * ok64, 1)
        report.table(
            f"CPU per propagated 64 KiB event, per process ({ok64} events, 2 neighbours, "
            f"{concurrency64} connections)",
            ["process", "CPU ms", "bare Flask\nCPU ms", "×\nbare", "target"],
            [["handlers A (origin), per event", origin_ms, floor_ms["stream event"],
              ratio(origin_ms, floor_ms["stream event"]), f"≤ {TARGET_ORIGIN_CPU:g}×"],
             ["handlers B, C (receiver), per copy", receiver_ms, floor_ms["64 KiB body"],
              ratio(receiver_ms, floor_ms["64 KiB body"]), f"≤ {TARGET_RECEIVER_CPU:g}×"],
             ["brokers B, C, per copy", broker_ms, floor_ms["64 KiB body"],
              ratio(broker_ms, floor_ms["64 KiB body"]), ""]],
            caption="CPU of each gunicorn (master and workers) from /proc; bare Flask: one request to the bare app "
                    "with the origin's input (the stream event) or the receiver's (a 64 KiB body). The origin "
                    "reads the bundle and publishes it twice (binary, no base64); a receiver applies one copy",
        )
        report.results.update(cpu_64k={"origin_ms": origin_ms, "receiver_ms": receiver_ms, "broker_ms": broker_ms,
                                       "bare_ms": floor_ms, "events": ok64})

        # -- 3. lag ------------------------------------------------------------------------------
        source = StreamSource(connect(redis_nodes["node-a"].url), "skylark:changes", "skylark-handlers", "a-0",
                              handlers["node-a"].url, address=address, block_ms=1000, batch=16)
        # Entries of the throughput run are acked already by nobody: start after them.
        clients["node-a"].xgroup_create("skylark:changes", "skylark-handlers", id="$", mkstream=True)
        source.start()
        stack.callback(source.stop)
        rows, lag_64k = [], None
        counts = {"1 KiB": 100, "64 KiB": 100, "1 MiB": 30, "5 MiB": 15}
        for label, size in SIZES:
            n = max(3, int(counts[label] * args.samples))
            value = os.urandom(size - len("frame"))
            lags, raw = [], []
            chain = f"lag-{size}"
            for i in range(n + 2):
                version = store_a.put(chain, "preprocess", {"frame": value}).meta.version
                t0 = time.perf_counter()
                meta_key = f"skylark:meta:{chain}:preprocess"
                while int(clients["node-b"].hget(meta_key, "version") or 0) < version:
                    if time.perf_counter() - t0 > 30:
                        raise RuntimeError(f"{label}: v{version} did not reach node-b in 30 s")
                    time.sleep(0.0002)
                if i >= 2:  # the first two warm the path
                    lags.append((time.perf_counter() - t0) * 1000)
                r0 = time.perf_counter()
                data = clients["node-a"].hgetall(f"skylark:bundle:{chain}:preprocess")
                clients["node-b"].hset(f"raw:{chain}", mapping=data)
                if i >= 2:
                    raw.append((time.perf_counter() - r0) * 1000)
            s, f = summarize(lags), summarize(raw)
            mode = "inline" if size <= 256 * 1024 else "claim"
            rows.append([label, mode, s.n, s.median, s.p95, s.p99, f.median, ratio(s.median, f.median)])
            if label == "64 KiB":
                lag_64k = s
        report.table("Lag: write on A returned → bundle readable on B (ms)",
                     ["size", "mode", "n", "p50", "p95", "p99", "raw copy\np50", "p50 vs\nraw"], rows,
                     caption="raw copy: redis-py HGETALL on A + HSET on B of the same bytes, same run. "
                             f"Targets: 1 MiB ≤ {TARGET_LAG_RATIO['1 MiB']:g}×, 5 MiB ≤ {TARGET_LAG_RATIO['5 MiB']:g}× "
                             "the raw copy")
        report.results["lag"] = {row[0]: {"p50_ms": row[3], "raw_copy_ms": row[6]} for row in rows}

        # -- 4. field deltas -----------------------------------------------------------------------
        def wire_bytes() -> float:
            """What reached B and C (one worker each: their /metrics is exact): the event bodies
            they received and the bytes they pulled from A's Redis."""
            return sum(metric_sum(handlers[n].url, name) for n in ("node-b", "node-c")
                       for name in ("skylark_handler_bytes_received_total", "skylark_handler_bytes_pulled_total"))

        whole, update, lag_whole, lag_update = [], [], [], []
        for i in range(max(2, int(10 * args.samples))):
            chain = f"delta-{i}"
            key = f"skylark:meta:{chain}:detect"
            before = wire_bytes()
            first = store_a.put(chain, "detect", {f"p{k}": os.urandom(200_000) for k in range(5)})
            lag_whole.append(max(_wait_version(clients[n], key, first.meta.version, "delta") for n in ("node-b", "node-c")))
            middle = wire_bytes()
            second = store_a.put(chain, "detect", {"p2": os.urandom(200_000)})
            lag_update.append(max(_wait_version(clients[n], key, second.meta.version, "delta") for n in ("node-b", "node-c")))
            after = wire_bytes()
            whole.append((middle - before) / 2)
            update.append((after - middle) / 2)
        bundle_bytes = first.meta.size
        w, u = summarize(whole), summarize(update)
        lw, lu = summarize([x * 1000 for x in lag_whole]), summarize([x * 1000 for x in lag_update])
        report.table(
            "A 1 MB bundle of five 200 KB fields to two neighbours: bytes on the wire per neighbour",
            ["push", "bytes", "share of\nthe bundle", "lag p50\nms", "how"],
            [["whole (first write)", w.p50, ratio(w.p50, bundle_bytes), lw.p50, "claim check, pulled whole"],
             ["one field rewritten", u.p50, ratio(u.p50, bundle_bytes), lu.p50, "delta, inline (binary)"]],
            caption=f"event bodies B and C received plus bytes they pulled from A's Redis (their metrics); bundle "
                    f"{bundle_bytes:,} bytes; lag until both neighbours hold the version; target for the "
                    f"update ≤ {TARGET_DELTA_SHARE:.0%} of the bundle",
        )
        report.results["delta"] = {"bundle_bytes": bundle_bytes, "whole_bytes": w.p50, "update_bytes": u.p50,
                                   "lag_whole_ms": lw.p50, "lag_update_ms": lu.p50}
        delta_share = u.p50 / bundle_bytes

        # -- 5. compression on a slow link ----------------------------------------------------------
        _slow_link(stack, tmpdir, args, report)

    met_rate = accepted_rate >= TARGET_EVENTS_PER_S
    met_lag = lag_64k is not None and lag_64k.p50 <= TARGET_P50_MS and lag_64k.p99 <= TARGET_P99_MS
    verdicts = {
        f"origin CPU per 64 KiB event ≤ {TARGET_ORIGIN_CPU:g}× bare Flask": origin_ms / floor_ms["stream event"]
        <= TARGET_ORIGIN_CPU,
        f"receiver CPU per 64 KiB copy ≤ {TARGET_RECEIVER_CPU:g}× bare Flask": receiver_ms / floor_ms["64 KiB body"]
        <= TARGET_RECEIVER_CPU,
        **{f"lag p50 {label} ≤ {limit:g}× raw copy": report.results["lag"][label]["p50_ms"]
           <= limit * report.results["lag"][label]["raw_copy_ms"] for label, limit in TARGET_LAG_RATIO.items()},
        f"one-field update ≤ {TARGET_DELTA_SHARE:.0%} of the bundle's bytes": delta_share <= TARGET_DELTA_SHARE,
    }
    for what, met in verdicts.items():
        report.line(f"target {what}: {'met' if met else 'NOT met'}")
    report.results["targets"] = verdicts
    report.line(f"target ≥ {TARGET_EVENTS_PER_S} events/s: {'met' if met_rate else 'NOT met'} "
                f"({accepted_rate:.0f}/s accepted, {end_to_end:.0f}/s end to end, {iso_rate:.0f}/s for A alone)")
    if lag_64k is not None:
        report.line(f"target 64 KiB p50 ≤ {TARGET_P50_MS:g} ms, p99 ≤ {TARGET_P99_MS:g} ms: "
                    f"{'met' if met_lag else 'NOT met'} (p50 {lag_64k.p50:.2f} ms, p99 {lag_64k.p99:.2f} ms)")
    report.line(f"total {time.perf_counter() - started:.1f} s")
    report.load()
    report.write_json(args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
