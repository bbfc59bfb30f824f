"""``/metrics`` under gunicorn with several workers: with ``PROMETHEUS_MULTIPROC_DIR`` every scrape
shows the sum over all workers (prometheus-client multiprocess mode), whichever worker answers."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import requests

from eventing.redisstream import encode_stream_event, to_go_binary
from neighbors_service.app import create_app as create_neighbors_app
from neighbors_service.config import NeighborsSettings
from neighbors_service.policies import SLO
from neighbors_service.sources.file import FileTopologySource
from skylark.state.changes import ChangeRecord
from skylark.runtime.embedded import free_port
from skylark.state.redis_client import connect
from skylark.state.settings import Settings
from skylark.state.store import StateStore

from handlers_fixtures import ServerThread

REPO = Path(__file__).resolve().parents[1]
EVENTS = 24
SAMPLE = re.compile(r'^skylark_handler_events_total\{outcome="no_targets",type="dev\.knative\.sources\.redisstream"\} (\S+)$',
                    re.MULTILINE)


def _events_counted(url: str) -> float:
    # A new connection per scrape (no session): gunicorn hands connections to any worker.
    match = SAMPLE.search(requests.get(url + "/metrics", timeout=5).text)
    return float(match.group(1)) if match else 0.0


def test_metrics_of_all_workers_with_prometheus_multiproc_dir(redis_factory, tmp_path):
    redis_a = redis_factory()
    # node-a without neighbours: every change is answered "no_targets" (202) without publishing.
    topology = {"nodes": [{"name": "node-a", "redis_url": redis_a.url, "broker_url": "http://127.0.0.1:9/x"}],
                "links": []}
    neighbors = ServerThread(create_neighbors_app(
        NeighborsSettings(core=Settings(node="node-a"), topology_file="inline", slo=SLO()),
        FileTopologySource.from_dict(topology)))
    metrics_dir = tmp_path / "prometheus"
    metrics_dir.mkdir()
    port = free_port()
    env = {**os.environ, "PORT": str(port), "SKYLARK_BIND_HOST": "127.0.0.1", "SKYLARK_NODE": "node-a",
           "SKYLARK_REDIS_URL": redis_a.url, "SKYLARK_NEIGHBORS_URL": neighbors.url,
           "SKYLARK_WORKERS": "3", "SKYLARK_THREADS": "2", "SKYLARK_GRACEFUL_TIMEOUT": "5",
           "SKYLARK_LOG_LEVEL": "WARNING", "PROMETHEUS_MULTIPROC_DIR": str(metrics_dir)}
    process = subprocess.Popen(
        [sys.executable, "-m", "gunicorn", "-c", str(REPO / "skylark" / "serving" / "gunicorn_conf.py"),
         "handlers.app:create_app()"],
        cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 20
        while True:
            assert process.poll() is None, process.stderr.read().decode()[-2000:]
            try:
                if requests.get(url + "/readyz", timeout=1).status_code == 200:
                    break
            except requests.ConnectionError:
                pass
            assert time.monotonic() < deadline, "gunicorn did not become ready"
            time.sleep(0.1)
        client = connect(redis_a.url)
        store = StateStore.from_settings(Settings(node="node-a", redis_url=redis_a.url), client)
        address = f"redis://127.0.0.1:{redis_a.port}"
        for i in range(EVENTS):
            m = store.put(f"m{i}", "preprocess", {"frame": b"x" * 64}).meta
            change = ChangeRecord(m.chain, m.function, "put", m.mechanism.value, ("frame",), m.version,
                                  m.node, m.size, m.checksum, m.updated_ms)
            headers, body = to_go_binary(encode_stream_event(address, "skylark:changes", f"{i + 1}-0",
                                                             change.to_stream_fields()))
            answer = requests.post(url + "/", data=body, headers=headers, timeout=10)
            assert answer.status_code == 202 and answer.json()["outcome"] == "no_targets"
        # Several scrapes, probably answered by different workers: each one sees all the events.
        assert [_events_counted(url) for _ in range(6)] == [float(EVENTS)] * 6
        assert len({p.name.rsplit("_", 1)[-1] for p in metrics_dir.glob("counter_*.db")}) >= 1
    finally:
        if process.poll() is None:
            process.terminate()
            process.wait(15)
        process.stderr.close()
        neighbors.stop()
