"""Network emulation for the local cluster: one network namespace per node, veth links shaped
like the topology's links (``skylark up --emulate-network``, root and iproute2 required).

Layout (node i = 1, 2, …; link k = 1, 2, …):

- namespace ``<tag>-<i>``; the node's address ``10.78.0.i/32`` on its loopback;
- one veth pair per topology link, ``10.77.k.1/30`` ↔ ``10.77.k.2/30``, shaped on both ends;
- routes to every other node's address along the minimum-latency path (forwarding on in every
  namespace, source address = the node's own), so traffic between non-adjacent nodes crosses
  the links in between like on the testbed;
- a management veth to the root namespace (a /30 of ``10.79.0.0/16``: ``.1`` in the root
  namespace ↔ ``.2`` in the node's), not shaped, used only by the supervisor and the demo driver
  to reach the node's services. These are the only addresses in the root namespace, so each
  emulation takes a block of them that no other one on the machine uses (chosen under a file
  lock): two clusters emulated at once do not reach each other's services.

Shaping: ``tc qdisc … netem delay <latency> rate <bandwidth>`` where the kernel has
``sch_netem``; where it does not (some VM kernels), bandwidth is shaped with ``htb`` and the
one-way latency is added by :mod:`skylark.runtime.linkrelay` at the receiving node instead. A link's
``latency_ms`` is one way: a request/response over it costs at least two of them.

Moving topologies (the thesis's testbed: the cloud node's one link moves to another satellite
every minute): every link of every snapshot gets its veth pair at set-up; :meth:`activate`
switches the routes (``ip route replace``) and the shaping of links whose numbers change to
another snapshot, and :class:`SnapshotMover` does so at the instants the topology file's clock
says (``floor((t - epoch_s) / snapshot_interval_s) mod N``, the neighbors service's rule), so the
emulated links move when the placement's view of them does. Connections stay open across a
switch (addresses are per node, not per link); the relays are told the new path latencies.
"""

from __future__ import annotations

import fcntl
import ipaddress
import math
import os
import secrets
import shutil
import subprocess
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from skylark.state.errors import ConfigError

NODE_NET = "10.78.0"
LINK_NET = "10.77"
MGMT_NET = "10.79"
MGMT_BLOCK = 1024  # management addresses per emulation: a /30 per node, 250 nodes at most
LOCK_FILE = "/run/lock/skylark-netem.lock"


@dataclass(frozen=True)
class LinkSpec:
    a: str
    b: str
    latency_ms: float
    bandwidth_mbps: float


@dataclass(frozen=True)
class NodeNet:
    name: str
    netns: str
    node_addr: str   # what other nodes use to reach it (over the shaped links)
    mgmt_addr: str   # what the supervisor uses to reach it (unshaped)
    host_addr: str   # the root namespace's end of the management link


def _run(*args: str, netns: str | None = None, check: bool = True) -> subprocess.CompletedProcess:
    argv = ["ip", "netns", "exec", netns, *args] if netns else list(args)
    result = subprocess.run(argv, capture_output=True, text=True)
    if check and result.returncode != 0:
        raise ConfigError(f"network emulation: {' '.join(argv)} failed: {result.stderr.strip()}")
    return result


def _netem_supported() -> bool:
    probe = f"skn{secrets.token_hex(3)}"
    _run("ip", "netns", "add", probe)
    try:
        return _run("tc", "qdisc", "add", "dev", "lo", "root", "netem", "delay", "1ms",
                    netns=probe, check=False).returncode == 0
    finally:
        _run("ip", "netns", "del", probe, check=False)


def check_available() -> None:
    """Raise :class:`ConfigError` saying why emulation cannot run here."""
    if os.geteuid() != 0:
        raise ConfigError("--emulate-network needs root (network namespaces, tc)")
    for tool in ("ip", "tc"):
        if shutil.which(tool) is None:
            raise ConfigError(f"--emulate-network needs '{tool}' (Debian package iproute2)")


class _lock:
    """An exclusive lock between the emulations of this machine (a file lock)."""

    def __enter__(self) -> "_lock":
        os.makedirs(os.path.dirname(LOCK_FILE), exist_ok=True)
        self._fd = os.open(LOCK_FILE, os.O_CREAT | os.O_RDWR, 0o600)
        fcntl.flock(self._fd, fcntl.LOCK_EX)
        return self

    def __exit__(self, *exc: object) -> None:
        fcntl.flock(self._fd, fcntl.LOCK_UN)
        os.close(self._fd)


def _mgmt_pair(block: int, i: int) -> tuple[str, str]:
    """(node side, root side) of node ``i``'s management /30 in ``block``."""
    base = ipaddress.IPv4Address(f"{MGMT_NET}.0.0") + block * MGMT_BLOCK + 4 * i
    return str(base + 2), str(base + 1)


def _free_block() -> int:
    """The first block of management addresses no interface of the root namespace uses."""
    out = _run("ip", "-o", "-4", "addr", "show").stdout
    net = ipaddress.IPv4Network(f"{MGMT_NET}.0.0/16")
    used = set()
    for word in out.split():
        try:
            address = ipaddress.IPv4Interface(word).ip
        except ValueError:
            continue
        if address in net:
            used.add((int(address) - int(net.network_address)) // MGMT_BLOCK)
    free = next((b for b in range(net.num_addresses // MGMT_BLOCK) if b not in used), None)
    if free is None:
        raise ConfigError("network emulation: every block of management addresses (10.79.0.0/16) is in use")
    return free


class NetworkEmulation:
    """Creates the namespaces and links; :meth:`teardown` removes all of them.

    ``links`` are the links of a static topology; for a moving one pass ``snapshots`` instead
    (each the complete link list of one snapshot): every distinct pair of nodes linked in any
    snapshot gets one veth pair, and the routes follow the active snapshot (:meth:`activate`).
    """

    def __init__(self, nodes: Sequence[str], links: Sequence[LinkSpec] = (), *,
                 snapshots: Sequence[Sequence[LinkSpec]] | None = None) -> None:
        check_available()
        if len(nodes) > MGMT_BLOCK // 4 - 6:
            raise ConfigError("network emulation supports at most 250 nodes")
        self.tag = f"sk{secrets.token_hex(2)}"
        self.snapshots = [list(s) for s in snapshots] if snapshots else [list(links)]
        # One veth pair per distinct pair of nodes over every snapshot (shaped as first seen,
        # reshaped by activate when a snapshot gives the same pair other numbers).
        pairs: dict[frozenset[str], LinkSpec] = {}
        for snapshot in self.snapshots:
            for link in snapshot:
                pairs.setdefault(frozenset((link.a, link.b)), link)
        self.links = list(pairs.values())
        self._shaped = {frozenset((l.a, l.b)): l for l in self.links}
        self.active = 0
        self.node_names = list(nodes)
        self.nodes: dict[str, NodeNet] = {}  # addresses are allocated by setup()
        self.netem = False
        self._routes: dict[str, dict[str, str]] = {}  # netns -> destination -> "via X dev Y src Z"
        self._lock = threading.Lock()
        self._created_ns: list[str] = []
        self._created_root_links: list[str] = []

    # -- set-up ---------------------------------------------------------------------------

    def setup(self, snapshot: int = 0) -> "NetworkEmulation":
        try:
            self.netem = _netem_supported()
            with _lock():  # choose the management block and take it before anyone else looks
                block = _free_block()
                self.nodes = {name: NodeNet(name, f"{self.tag}-{i}", f"{NODE_NET}.{i}", *_mgmt_pair(block, i))
                              for i, name in enumerate(self.node_names, start=1)}
                for i, net in enumerate(self.nodes.values(), start=1):
                    self._add_node(i, net)
            for k, link in enumerate(self.links, start=1):
                self._add_link(k, link)
            self.activate(snapshot)
        except BaseException:
            self.teardown()
            raise
        return self

    def _add_node(self, i: int, net: NodeNet) -> None:
        _run("ip", "netns", "add", net.netns)
        self._created_ns.append(net.netns)
        _run("ip", "link", "set", "lo", "up", netns=net.netns)
        _run("ip", "addr", "add", f"{net.node_addr}/32", "dev", "lo", netns=net.netns)
        for key in ("net.ipv4.ip_forward=1", "net.ipv4.conf.all.rp_filter=0", "net.ipv4.conf.default.rp_filter=0"):
            _run("sysctl", "-q", "-w", key, netns=net.netns)
        root_if, ns_if = f"{self.tag}m{i}", "mgmt0"
        _run("ip", "link", "add", root_if, "type", "veth", "peer", "name", f"{self.tag}n{i}")
        self._created_root_links.append(root_if)
        _run("ip", "link", "set", f"{self.tag}n{i}", "netns", net.netns)
        _run("ip", "link", "set", f"{self.tag}n{i}", "name", ns_if, netns=net.netns)
        _run("ip", "addr", "add", f"{net.host_addr}/30", "dev", root_if)
        _run("ip", "link", "set", root_if, "up")
        _run("ip", "addr", "add", f"{net.mgmt_addr}/30", "dev", ns_if, netns=net.netns)
        _run("ip", "link", "set", ns_if, "up", netns=net.netns)

    def _ends(self, k: int, link: LinkSpec) -> list[tuple[NodeNet, str, str]]:
        """(node, interface, address) of both ends of link ``k`` (1-based)."""
        return [(self.nodes[link.a], f"{self.tag}l{k}a", f"{LINK_NET}.{k}.1"),
                (self.nodes[link.b], f"{self.tag}l{k}b", f"{LINK_NET}.{k}.2")]

    def _add_link(self, k: int, link: LinkSpec) -> None:
        (a, if_a, _), (b, if_b, _) = self._ends(k, link)
        _run("ip", "link", "add", if_a, "netns", a.netns, "type", "veth", "peer", "name", if_b, "netns", b.netns)
        for net, ifname, addr in self._ends(k, link):
            _run("ip", "addr", "add", f"{addr}/30", "dev", ifname, netns=net.netns)
            _run("ip", "link", "set", ifname, "up", netns=net.netns)
            self._shape(net.netns, ifname, link)

    def _shape(self, netns: str, ifname: str, link: LinkSpec, *, change: bool = False) -> None:
        rate = f"{link.bandwidth_mbps:g}mbit"
        verb = "change" if change else "add"
        if self.netem:
            _run("tc", "qdisc", verb, "dev", ifname, "root", "netem", "delay", f"{link.latency_ms:g}ms",
                 "rate", rate, "limit", "100000", netns=netns)
            return
        if not change:
            _run("tc", "qdisc", "add", "dev", ifname, "root", "handle", "1:", "htb", "default", "10", netns=netns)
        _run("tc", "class", verb, "dev", ifname, "parent", "1:", "classid", "1:10", "htb",
             "rate", rate, "ceil", rate, "burst", "64k", netns=netns)

    # -- snapshots ------------------------------------------------------------------------

    def topology(self, snapshot: int | None = None):
        """The active snapshot (or ``snapshot``) as a topology with the emulated addresses."""
        from neighbors_service.topology import Topology

        links = self.snapshots[self.active if snapshot is None else snapshot]
        return Topology.from_dict({
            "nodes": [{"name": n, "type": "edge", "redis_url": f"redis://{net.node_addr}:6379/0",
                       "broker_url": f"http://{net.node_addr}/"} for n, net in self.nodes.items()],
            "links": [{"a": l.a, "b": l.b, "latency_ms": l.latency_ms, "bandwidth_mbps": l.bandwidth_mbps}
                      for l in links],
        })

    def _routes_of(self, snapshot: int) -> dict[str, dict[str, str]]:
        """Per namespace, the route to every other node's address along the snapshot's
        minimum-latency path (the first hop's veth)."""
        from neighbors_service.paths import ShortestPathTree

        adj = self.topology(snapshot).adjacency()
        index = {frozenset((l.a, l.b)): k for k, l in enumerate(self.links, start=1)}
        routes: dict[str, dict[str, str]] = {}
        for name, net in self.nodes.items():
            tree = ShortestPathTree(adj, adj.index[name])
            table = routes.setdefault(net.netns, {})
            for other, other_net in self.nodes.items():
                if other == name:
                    continue
                path = tree.path_to(adj.index[other])
                if path is None:
                    continue  # disconnected in this snapshot: unreachable here too
                hop = adj.names[path.nodes[1]]
                k = index[frozenset((name, hop))]
                first = self.links[k - 1].a == name
                dev = f"{self.tag}l{k}{'a' if first else 'b'}"
                via = f"{LINK_NET}.{k}.{2 if first else 1}"
                table[f"{other_net.node_addr}/32"] = f"via {via} dev {dev} src {net.node_addr}"
        return routes

    def activate(self, snapshot: int) -> bool:
        """Make ``snapshot`` the emulated one: routes (and the shaping of links whose numbers
        differ) switch to it. Returns whether anything changed."""
        if not 0 <= snapshot < len(self.snapshots):
            raise ConfigError(f"snapshot {snapshot} does not exist (0..{len(self.snapshots) - 1})")
        with self._lock:
            changed = False
            index = {frozenset((l.a, l.b)): k for k, l in enumerate(self.links, start=1)}
            for link in self.snapshots[snapshot]:
                pair = frozenset((link.a, link.b))
                shaped = self._shaped[pair]
                if (shaped.latency_ms, shaped.bandwidth_mbps) != (link.latency_ms, link.bandwidth_mbps):
                    k = index[pair]
                    for net, ifname, _ in self._ends(k, self.links[k - 1]):
                        self._shape(net.netns, ifname, link, change=True)
                    self._shaped[pair] = link
                    changed = True
            routes = self._routes_of(snapshot)
            batches = {}
            for netns, table in routes.items():
                old = self._routes.get(netns, {})
                commands = [f"route replace {dst} {how}" for dst, how in table.items() if old.get(dst) != how]
                commands += [f"route del {dst}" for dst in old if dst not in table]
                if commands:
                    batches[netns] = "\n".join(commands) + "\n"
            # Every namespace at once: the switch takes one `ip` run, not one per node.
            procs = {netns: subprocess.Popen(["ip", "-n", netns, "-batch", "-"], stdin=subprocess.PIPE,
                                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                     for netns in batches}
            errors = {netns: proc.communicate(batches[netns])[1].strip() for netns, proc in procs.items()}
            failed = [f"{netns}: {errors[netns]}" for netns, proc in procs.items() if proc.returncode != 0]
            if failed:
                raise ConfigError(f"network emulation: routes: {'; '.join(failed)}")
            changed = changed or bool(batches)
            self._routes = routes
            self.active = snapshot
            return changed

    def path_latency_ms(self, src: str, dst: str, snapshot: int | None = None) -> float:
        """One-way latency of the minimum-latency path between two nodes (active snapshot)."""
        from neighbors_service.paths import ShortestPathTree

        adj = self.topology(snapshot).adjacency()
        return ShortestPathTree(adj, adj.index[src]).dist[adj.index[dst]]

    def relay_delays(self, node: str, snapshot: int | None = None) -> dict[str, float]:
        """What a relay at ``node`` holds traffic from each other node for: the one-way latency
        of the path from it (by its node address; unreachable nodes are left out)."""
        out = {}
        for other, net in self.nodes.items():
            if other != node:
                latency = self.path_latency_ms(other, node, snapshot)
                if math.isfinite(latency):
                    out[net.node_addr] = latency
        return out

    # -- tear-down ------------------------------------------------------------------------

    def teardown(self) -> None:
        # Deleting a namespace deletes the veths inside it (and so their peers).
        for netns in reversed(self._created_ns):
            _run("ip", "netns", "del", netns, check=False)
        for ifname in self._created_root_links:
            _run("ip", "link", "del", ifname, check=False)
        self._created_ns.clear()
        self._created_root_links.clear()


class SnapshotClock:
    """The snapshot in force at time ``t``: ``floor((t - epoch_s) / interval_s) mod count`` (the
    rule of ``neighbors_service.sources.file``)."""

    def __init__(self, count: int, interval_s: float = 60.0, epoch_s: float = 0.0,
                 clock: Callable[[], float] = time.time) -> None:
        if count < 1 or interval_s <= 0:
            raise ConfigError("a snapshot clock needs at least one snapshot and an interval > 0")
        self.count, self.interval_s, self.epoch_s, self.clock = count, interval_s, epoch_s, clock

    def index_at(self, t: float) -> int:
        return int(math.floor((t - self.epoch_s) / self.interval_s)) % self.count

    def current(self) -> int:
        return self.index_at(self.clock())

    def next_change_at(self, t: float | None = None) -> float:
        """When the snapshot after the one in force at ``t`` (default: now) begins."""
        t = self.clock() if t is None else t
        return self.epoch_s + (math.floor((t - self.epoch_s) / self.interval_s) + 1) * self.interval_s


class SnapshotMover:
    """A thread that switches the emulation to the snapshot in force whenever it changes, then
    calls ``on_change(index)`` (the cluster tells the relays their new delays there). Every
    switch is kept in :attr:`changes` as ``(unix time, index)``."""

    def __init__(self, emulation: NetworkEmulation, clock: SnapshotClock,
                 on_change: Callable[[int], None] = lambda index: None) -> None:
        self.emulation, self.clock, self.on_change = emulation, clock, on_change
        self.changes: list[tuple[float, int]] = []
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="snapshot-mover", daemon=True)

    def start(self) -> "SnapshotMover":
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.is_set():
            index = self.clock.current()
            if index != self.emulation.active:
                try:
                    self.emulation.activate(index)
                    self.on_change(index)
                    self.changes.append((time.time(), index))
                except (ConfigError, OSError) as exc:  # keep moving; the next switch may work
                    self.errors.append(f"snapshot {index}: {exc}")
            self._stop.wait(max(0.0, self.clock.next_change_at() - self.clock.clock()) + 0.001)

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)
