"""The handlers under gunicorn with the shared config, configured only from the environment:
targets from a real neighbors service over HTTP, propagation to a neighbour, graceful SIGTERM."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import requests

from eventing.source import StreamSource
from neighbors_service.app import create_app as create_neighbors_app
from neighbors_service.config import NeighborsSettings
from neighbors_service.policies import SLO
from neighbors_service.sources.file import FileTopologySource
from skylark.runtime.embedded import free_port
from skylark.state.redis_client import connect
from skylark.state.settings import Settings
from skylark.state.store import StateStore

from handlers_fixtures import ServerThread, cluster_factory  # noqa: F401 - pytest fixture

REPO = Path(__file__).resolve().parents[1]


def _wait_ready(url: str, process: subprocess.Popen, timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        assert process.poll() is None, process.stderr.read().decode()[-2000:]
        try:
            if requests.get(url + "/readyz", timeout=1).status_code == 200:
                return
        except requests.ConnectionError:
            pass
        time.sleep(0.1)
    raise AssertionError("gunicorn did not become ready")


def test_gunicorn_serves_propagates_and_stops_on_sigterm(cluster_factory, redis_factory):
    cluster = cluster_factory(["node-b"], [], stream_sources=False)
    b = cluster["node-b"]
    redis_a = redis_factory()
    topology = {
        "nodes": [{"name": "node-a", "redis_url": redis_a.url, "broker_url": "http://127.0.0.1:9/unused"},
                  {"name": "node-b", "redis_url": b.redis.url, "broker_url": b.broker.url}],
        "links": [{"a": "node-a", "b": "node-b", "latency_ms": 1, "bandwidth_mbps": 1000}],
    }
    neighbors_settings = NeighborsSettings(core=Settings(node="node-a"), topology_file="inline",
                                           slo=SLO(max_latency_ms=1000, min_bandwidth_mbps=0))
    neighbors = ServerThread(create_neighbors_app(neighbors_settings, FileTopologySource.from_dict(topology)))
    port = free_port()
    env = {**os.environ, "PORT": str(port), "SKYLARK_BIND_HOST": "127.0.0.1", "SKYLARK_NODE": "node-a",
           "SKYLARK_REDIS_URL": redis_a.url, "SKYLARK_NEIGHBORS_URL": neighbors.url,
           "SKYLARK_WORKERS": "2", "SKYLARK_THREADS": "4", "SKYLARK_GRACEFUL_TIMEOUT": "5",
           "SKYLARK_LOG_LEVEL": "INFO"}
    process = subprocess.Popen(
        [sys.executable, "-m", "gunicorn", "-c", str(REPO / "skylark" / "serving" / "gunicorn_conf.py"),
         "handlers.app:create_app()"],
        cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    url = f"http://127.0.0.1:{port}"
    source = None
    try:
        _wait_ready(url, process)
        assert requests.get(url + "/healthz", timeout=5).json() == {"status": "ok"}
        client = connect(redis_a.url)
        source = StreamSource(client, "skylark:changes", "skylark-handlers", "a-0", url,
                              address=f"redis://127.0.0.1:{redis_a.port}", block_ms=100).start()
        store_a = StateStore.from_settings(Settings(node="node-a", redis_url=redis_a.url), client)
        versions = [store_a.put("c1", "preprocess", {"frame": os.urandom(2048), "i": str(i)}).meta.version
                    for i in range(5)]
        meta = b.wait_for_version("c1", "preprocess", versions[-1])
        assert meta.checksum == store_a.get_meta("c1", "preprocess").checksum
        assert "skylark_handler_events_total" in requests.get(url + "/metrics", timeout=5).text
        source.stop()
        source = None
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=15) == 0
        log = process.stderr.read().decode()
        assert '"msg": "propagated"' in log and '"chain": "c1"' in log and '"event_id"' in log
        assert "Traceback" not in log
    finally:
        if source is not None:
            source.stop()
        if process.poll() is None:
            process.kill()
            process.wait(5)
        process.stderr.close()
        neighbors.stop()
