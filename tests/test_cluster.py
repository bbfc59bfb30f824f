"""`skylark up` and `skylark demo`: the whole pipeline on one machine, as a user runs it."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time

import psutil
import pytest

from skylark.runtime.embedded import free_port_block

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def skylark(*args: str, env: dict | None = None, timeout: float = 240) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "skylark.cli", *args], capture_output=True, text=True,
                          timeout=timeout, cwd=REPO, env={**os.environ, "COLUMNS": "160", **(env or {})})


def stage(chain: dict, name: str) -> dict:
    return next(entry for entry in chain["trace"] if entry["function"] == name)


def run_demo(tmp_path, *extra: str) -> dict:
    report = tmp_path / "report.json"
    result = skylark("demo", "--images", "5", "--report", str(report), *extra)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "10/10 chains completed" in result.stdout
    return json.loads(report.read_text())


def test_demo_completes_both_modes_with_alarms_and_local_reads_only_with_propagation(tmp_path):
    report = run_demo(tmp_path)
    assert report["completed"] == report["total"] == 10
    chains = report["chains"]
    a, b, c = report["route"]
    for chain in chains:
        assert [(e["function"], e["node"]) for e in chain["trace"]] == [("preprocess", a), ("detect", b), ("alarm", c)]
        assert chain["e2e_ms"] > 0
        # the astronaut (a face) raises an alarm; the cat, the coffee and the rocket do not
        expected = "alarm" if chain["image"] == "astronaut" else "no_alarm"
        if chain["image"] in ("astronaut", "chelsea", "coffee", "rocket"):
            assert chain["outcome"] == expected, chain
    alarms = [ch for ch in chains if ch["outcome"] == "alarm"]
    assert alarms and all(d["class"] == "face" for ch in alarms for d in ch["matched"])
    for chain in chains:
        detect, alarm = stage(chain, "detect"), stage(chain, "alarm")
        if chain["mode"] == "skylark":
            # the bundles were pushed to B and C: both successors read their state locally
            assert (detect["fetch_location"], alarm["fetch_location"]) == ("local", "local"), chain
        else:
            # the baseline: state stays where it was written and is read across the link
            assert (detect["fetch_location"], detect["fetch_node"]) == ("remote", a), chain
            assert (alarm["fetch_location"], alarm["fetch_node"]) == ("remote", b), chain


def _children(pid: int) -> list[psutil.Process]:
    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []


def test_up_starts_prints_endpoints_and_stops_cleanly():
    ports = 3 * 6 + 2  # per node: redis + 5 gunicorn services; then the neighbors service, dead letter
    base = free_port_block(ports)
    proc = subprocess.Popen([sys.executable, "-m", "skylark.cli", "up", "--base-port", str(base)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=REPO,
                            env={**os.environ, "COLUMNS": "200"})
    output = []
    deadline = time.time() + 120
    while time.time() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        output.append(line)
        if "Ctrl-C stops everything" in line:
            break
    text = "".join(output)
    assert "Ctrl-C stops everything" in text, text
    assert f"redis://127.0.0.1:{base}/0" in text and "broker ingress" in text and "links are not emulated" in text
    children = _children(proc.pid)
    assert len(children) >= 3 * 6  # per node: redis, 5 gunicorn masters (+ workers), agent
    ports = [base + i for i in range(ports)]
    for port in ports[:3]:
        with socket.create_connection(("127.0.0.1", port), timeout=2):
            pass
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=60) == 0
    rest = proc.stdout.read()
    assert "no process left behind" in rest
    alive = [p for p in children if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
    assert alive == [], alive
    for port in ports:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", port))  # every port is free again


def test_up_refuses_a_taken_port_and_a_missing_binary():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = skylark("up", "--base-port", str(port), timeout=60)
    assert result.returncode == 2 and f"port {port}" in result.stderr and "already in use" in result.stderr
    missing = skylark("up", env={"SKYLARK_REDIS_SERVER": "/nonexistent/redis-server"}, timeout=60)
    assert missing.returncode == 2 and "SKYLARK_REDIS_SERVER" in missing.stderr


def test_up_refuses_a_broken_topology(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("nodes: [{name: a}]\nlinks: [{a: a, b: zz, latency_ms: 1, bandwidth_mbps: 1}]\n")
    result = skylark("up", "--topology", str(bad), timeout=60)
    assert result.returncode == 2 and "error" in result.stderr


@pytest.mark.skipif(os.geteuid() != 0, reason="network namespaces need root")
def test_emulated_links_make_remote_reads_cost_the_link_latency(tmp_path):
    report = run_demo(tmp_path, "--emulate-network")
    assert report["emulated"] is True
    import yaml

    from skylark.runtime.cluster import default_topology_path

    links = {frozenset((l["a"], l["b"])): l for l in yaml.safe_load(default_topology_path().read_text())["links"]}
    a, b, c = report["route"]
    for chain in report["chains"]:
        if chain["mode"] != "stateless":
            continue
        for name, reader, origin in (("detect", b, a), ("alarm", c, b)):
            entry = stage(chain, name)
            latency = links[frozenset((reader, origin))]["latency_ms"]
            assert entry["fetch_location"] == "remote"
            # a read is a request and a response over the link: at least its one-way latency twice
            assert entry["fetch_ms"] >= 2 * latency, (name, entry)
    # and nothing of the emulation is left
    leftover = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert "sk" not in " ".join(line.split()[0] for line in leftover.splitlines() if line.strip().startswith("sk"))
