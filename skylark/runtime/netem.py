"""Network emulation for the local cluster: one network namespace per node, veth links shaped
like the topology's links (``skylark up --emulate-network``, root and iproute2 required).

Layout (node i = 1, 2, …; link k = 1, 2, …):

- namespace ``<tag>-<i>``; the node's address ``10.78.0.i/32`` on its loopback;
- one veth pair per topology link, ``10.77.k.1/30`` ↔ ``10.77.k.2/30``, shaped on both ends;
- routes to every other node's address along the minimum-latency path (forwarding on in every
  namespace, source address = the node's own), so traffic between non-adjacent nodes crosses
  the links in between like on the testbed;
- a management veth to the root namespace (``10.79.i.1`` ↔ ``10.79.i.2``), not shaped, used
  only by the supervisor and the demo driver to reach the node's services.

Shaping: ``tc qdisc … netem delay <latency> rate <bandwidth>`` where the kernel has
``sch_netem``; where it does not (some VM kernels), bandwidth is shaped with ``htb`` and the
one-way latency is added by :mod:`skylark.runtime.linkrelay` at the receiving node instead. A link's
``latency_ms`` is one way: a request/response over it costs at least two of them.
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass

from skylark.state.errors import ConfigError

NODE_NET = "10.78.0"
LINK_NET = "10.77"
MGMT_NET = "10.79"


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


class NetworkEmulation:
    """Creates the namespaces and links; :meth:`teardown` removes all of them."""

    def __init__(self, nodes: Sequence[str], links: Sequence[LinkSpec]) -> None:
        check_available()
        if len(nodes) > 250:
            raise ConfigError("network emulation supports at most 250 nodes")
        self.tag = f"sk{secrets.token_hex(2)}"
        self.links = list(links)
        self.nodes = {
            name: NodeNet(name, f"{self.tag}-{i}", f"{NODE_NET}.{i}", f"{MGMT_NET}.{i}.2", f"{MGMT_NET}.{i}.1")
            for i, name in enumerate(nodes, start=1)
        }
        self.netem = False
        self._created_ns: list[str] = []
        self._created_root_links: list[str] = []

    # -- set-up ---------------------------------------------------------------------------

    def setup(self) -> "NetworkEmulation":
        try:
            self.netem = _netem_supported()
            for i, net in enumerate(self.nodes.values(), start=1):
                self._add_node(i, net)
            for k, link in enumerate(self.links, start=1):
                self._add_link(k, link)
            self._add_routes()
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

    def _add_link(self, k: int, link: LinkSpec) -> None:
        a, b = self.nodes[link.a], self.nodes[link.b]
        if_a, if_b = f"{self.tag}l{k}a", f"{self.tag}l{k}b"
        _run("ip", "link", "add", if_a, "netns", a.netns, "type", "veth", "peer", "name", if_b, "netns", b.netns)
        for net, ifname, addr in ((a, if_a, f"{LINK_NET}.{k}.1"), (b, if_b, f"{LINK_NET}.{k}.2")):
            _run("ip", "addr", "add", f"{addr}/30", "dev", ifname, netns=net.netns)
            _run("ip", "link", "set", ifname, "up", netns=net.netns)
            self._shape(net.netns, ifname, link)

    def _shape(self, netns: str, ifname: str, link: LinkSpec) -> None:
        rate = f"{link.bandwidth_mbps:g}mbit"
        if self.netem:
            _run("tc", "qdisc", "add", "dev", ifname, "root", "netem", "delay", f"{link.latency_ms:g}ms",
                 "rate", rate, "limit", "100000", netns=netns)
            return
        _run("tc", "qdisc", "add", "dev", ifname, "root", "handle", "1:", "htb", "default", "10", netns=netns)
        _run("tc", "class", "add", "dev", ifname, "parent", "1:", "classid", "1:10", "htb",
             "rate", rate, "ceil", rate, "burst", "64k", netns=netns)

    def _add_routes(self) -> None:
        from neighbors_service.paths import ShortestPathTree

        adj = self.topology().adjacency()
        link_index = {frozenset((l.a, l.b)): k for k, l in enumerate(self.links, start=1)}
        for name, net in self.nodes.items():
            tree = ShortestPathTree(adj, adj.index[name])
            for other, other_net in self.nodes.items():
                if other == name:
                    continue
                path = tree.path_to(adj.index[other])
                if path is None:
                    continue  # disconnected in the topology: unreachable here too
                hop = adj.names[path.nodes[1]]
                k = link_index[frozenset((name, hop))]
                first = self.links[k - 1].a == name
                dev = f"{self.tag}l{k}{'a' if first else 'b'}"
                via = f"{LINK_NET}.{k}.{2 if first else 1}"
                _run("ip", "route", "add", f"{other_net.node_addr}/32", "via", via, "dev", dev,
                     "src", net.node_addr, netns=net.netns)

    def topology(self):
        from neighbors_service.topology import Topology

        return Topology.from_dict({
            "nodes": [{"name": n, "type": "edge", "redis_url": f"redis://{net.node_addr}:6379/0",
                       "broker_url": f"http://{net.node_addr}/"} for n, net in self.nodes.items()],
            "links": [{"a": l.a, "b": l.b, "latency_ms": l.latency_ms, "bandwidth_mbps": l.bandwidth_mbps}
                      for l in self.links],
        })

    def path_latency_ms(self, src: str, dst: str) -> float:
        """One-way latency of the minimum-latency path between two nodes."""
        from neighbors_service.paths import ShortestPathTree

        adj = self.topology().adjacency()
        return ShortestPathTree(adj, adj.index[src]).dist[adj.index[dst]]

    # -- tear-down ------------------------------------------------------------------------

    def teardown(self) -> None:
        # Deleting a namespace deletes the veths inside it (and so their peers).
        for netns in reversed(self._created_ns):
            _run("ip", "netns", "del", netns, check=False)
        for ifname in self._created_root_links:
            _run("ip", "link", "del", ifname, check=False)
        self._created_ns.clear()
        self._created_root_links.clear()
