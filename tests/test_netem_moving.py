"""The moving topology of the network emulation: snapshot clock, relay delays that change while
connections stay open, and routes that follow the active snapshot."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time

import pytest

from skylark.runtime.embedded import free_port
from skylark.runtime.netem import LinkSpec, NetworkEmulation, SnapshotClock


def test_snapshot_clock_follows_the_topology_files_rule():
    clock = SnapshotClock(7, 60.0, 0.0, clock=lambda: 125.0)
    assert clock.current() == 2 and clock.index_at(59.9) == 0 and clock.index_at(7 * 60) == 0
    assert clock.next_change_at() == 180.0
    shifted = SnapshotClock(3, 10.0, 5.0)
    assert shifted.index_at(4.0) == 2 and shifted.index_at(5.0) == 0 and shifted.next_change_at(14.0) == 15.0


def _echo_server() -> tuple[int, threading.Event]:
    stop = threading.Event()
    server = socket.create_server(("127.0.0.1", 0))
    server.settimeout(0.2)
    port = server.getsockname()[1]

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except TimeoutError:
                continue
            with conn:
                while data := conn.recv(1024):
                    conn.sendall(data)
        server.close()

    threading.Thread(target=serve, daemon=True).start()
    return port, stop


def _round_trip_ms(sock: socket.socket) -> float:
    start = time.perf_counter()
    sock.sendall(b"ping")
    assert sock.recv(16) == b"ping"
    return (time.perf_counter() - start) * 1000


def test_relay_takes_new_delays_on_sighup_without_dropping_connections(tmp_path):
    target, stop = _echo_server()
    listen = free_port()
    delays = tmp_path / "delays.json"
    delays.write_text(json.dumps({"peers": {"127.0.0.1": 60}}))
    relay = subprocess.Popen([sys.executable, "-m", "skylark.runtime.linkrelay", "--delays-file", str(delays),
                              "--route", f"127.0.0.1:{listen}=127.0.0.1:{target}"],
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        assert relay.stdout.readline().strip() == "relay ready"
        with socket.create_connection(("127.0.0.1", listen), timeout=5) as sock:
            slow = min(_round_trip_ms(sock) for _ in range(3))
            assert slow >= 120  # 60 ms each way
            delays.write_text(json.dumps({"peers": {"127.0.0.1": 5}}))
            relay.send_signal(signal.SIGHUP)
            time.sleep(0.3)
            fast = min(_round_trip_ms(sock) for _ in range(3))  # the same connection
            assert 10 <= fast < 60, (slow, fast)
    finally:
        relay.terminate()
        out, _ = relay.communicate(timeout=10)
        stop.set()
    assert relay.returncode == 0 and "Traceback" not in out, out


def _route_dev(netns: str, address: str) -> str:
    out = subprocess.run(["ip", "-n", netns, "route", "get", address], capture_output=True, text=True,
                         check=True).stdout.split()
    return out[out.index("dev") + 1]


def test_routes_and_relay_delays_follow_the_active_snapshot():
    if os.geteuid() != 0:
        pytest.fail("network emulation needs root (namespaces, tc); CI runs the suite as root")
    snapshots = [
        [LinkSpec("a", "b", 10, 90), LinkSpec("b", "c", 10, 90)],                 # c behind b
        [LinkSpec("a", "b", 10, 90), LinkSpec("b", "c", 10, 90), LinkSpec("a", "c", 5, 30)],  # a direct link
    ]
    emulation = NetworkEmulation(["a", "b", "c"], snapshots=snapshots).setup(0)
    try:
        a, c = emulation.nodes["a"], emulation.nodes["c"]
        via_b = _route_dev(a.netns, c.node_addr)
        assert emulation.relay_delays("c")[a.node_addr] == 20
        assert emulation.activate(1) is True
        direct = _route_dev(a.netns, c.node_addr)
        assert direct != via_b
        assert emulation.relay_delays("c")[a.node_addr] == 5
        assert emulation.activate(1) is False  # already there: nothing to change
        emulation.activate(0)
        assert _route_dev(a.netns, c.node_addr) == via_b
        # traffic from a to c crosses the links: a TCP exchange over the routed path
        server = subprocess.Popen(["ip", "netns", "exec", c.netns, sys.executable, "-c",
                                   "import socket; s = socket.create_server(('0.0.0.0', 7777)); print('up', flush=True);"
                                   " conn, _ = s.accept(); conn.sendall(b'ok'); conn.close()"],
                                  stdout=subprocess.PIPE, text=True)
        try:
            assert server.stdout.readline().strip() == "up"
            client = subprocess.run(["ip", "netns", "exec", a.netns, sys.executable, "-c",
                                     f"import socket; print(socket.create_connection(('{c.node_addr}', 7777), "
                                     "timeout=5).recv(2).decode())"], capture_output=True, text=True, timeout=20)
            assert client.stdout.strip() == "ok", client.stderr
        finally:
            server.kill()
            server.wait(timeout=5)
        names = {ns.netns for ns in emulation.nodes.values()}
    finally:
        emulation.teardown()
    left = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert not names & {line.split()[0] for line in left.splitlines() if line.strip()}


def test_two_emulations_at_once_use_distinct_management_addresses():
    """The management addresses are the only ones in the root namespace: a second emulation on
    the machine (another cluster, a test running beside a benchmark) must not take the first's,
    or the supervisor would reach the other cluster's services."""
    if os.geteuid() != 0:
        pytest.fail("network emulation needs root (namespaces, tc); CI runs the suite as root")
    links = [LinkSpec("a", "b", 1, 100)]
    first = NetworkEmulation(["a", "b"], links).setup()
    try:
        second = NetworkEmulation(["a", "b"], links).setup()
        try:
            mine = {n.mgmt_addr for n in first.nodes.values()} | {n.host_addr for n in first.nodes.values()}
            theirs = {n.mgmt_addr for n in second.nodes.values()} | {n.host_addr for n in second.nodes.values()}
            assert not mine & theirs
            for emulation in (first, second):  # each node answers on its own management address
                for net in emulation.nodes.values():
                    got = subprocess.run(["ip", "-n", net.netns, "-4", "-o", "addr", "show", "dev", "mgmt0"],
                                         capture_output=True, text=True, check=True).stdout
                    assert f"{net.mgmt_addr}/30" in got
                    route = subprocess.run(["ip", "-4", "route", "get", net.mgmt_addr], capture_output=True,
                                           text=True, check=True).stdout
                    assert f"src {net.host_addr}" in route, route
        finally:
            second.teardown()
    finally:
        first.teardown()
