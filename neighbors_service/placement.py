"""The thesis's election in the data path: where a new bundle goes, and where its reader finds it (pure).

For a change of function F's state on node N, the workflow says who reads F (``reads:``) and
where each reader runs; the policy says where the bundle goes for each of them:

==============  ==========================================  ======================================
policy          reader pinned to node D                     reader on any node
==============  ==========================================  ======================================
``skylark``     elected on the min-latency path N → D: the  N's ready neighbours whose link fits
                first node from D backwards whose migration the SLO (``propagation_targets``)
                time fits the SLO (D itself when it does;
                N when nothing does)
``random``      one node drawn among those reachable from N, the same for every reader
``stateless``   the workflow's store node (``stateless_node``; default the topology's cloud node)
``pull``        nowhere: readers fetch it from N
==============  ==========================================  ======================================

The handlers push to those nodes (:meth:`Placer.targets`); a reader computes the same answer for
itself (:meth:`Placer.location`): its own node (read locally, waiting briefly for the push), the
node the bundle went to on the way (the nearest copy), or N. ``random`` draws with a seed made of
(chain, function, version), so the writer's handlers and the reader draw the same node without
telling each other.

Cost per decision: no call to the neighbors service and no Dijkstra. A shortest-path tree per
(source, bandwidth floor) is built once per topology snapshot (:class:`TreeCache`), and each
decision walks one path of it (``policies.fit_on_path``): O(path length).
"""

from __future__ import annotations

import random
import threading
from collections import OrderedDict
from collections.abc import Iterable

import xxhash

from neighbors_service.paths import ShortestPathTree
from neighbors_service.policies import SLO, fit_on_path, propagation_targets
from neighbors_service.topology import Topology
from skylark.state.errors import ConfigError
from skylark.state.settings import POLICIES
from skylark.workflow import FunctionSpec, Workflow

__all__ = ["Placer", "TreeCache", "seeded_rng"]


def seeded_rng(chain: str, function: str, version: int) -> random.Random:
    """The ``random`` policy's generator for one bundle version: the same everywhere."""
    return random.Random(xxhash.xxh3_64_intdigest(f"{chain}\n{function}\n{version}".encode()))


class TreeCache:
    """Shortest-path trees by (source, bandwidth floor) for the current topology snapshot.

    A new snapshot (another :class:`Topology` object) that equals the last one keeps the trees;
    one that differs drops them. Thread-safe; at most ``size`` trees are kept (least recently
    used dropped first).
    """

    def __init__(self, size: int = 256) -> None:
        self._size = size
        self._lock = threading.Lock()
        self._topology: Topology | None = None
        self._trees: OrderedDict[tuple[str, float], ShortestPathTree] = OrderedDict()
        self.builds = 0  # trees computed so far (the benchmark and the tests read it)

    def tree(self, topology: Topology, source: str, min_bandwidth_mbps: float) -> ShortestPathTree:
        key = (source, float(min_bandwidth_mbps))
        with self._lock:
            if topology is not self._topology:
                if self._topology is None or topology != self._topology:
                    self._trees.clear()
                self._topology = topology
            tree = self._trees.get(key)
            if tree is not None:
                self._trees.move_to_end(key)
                return tree
        adj = topology.adjacency(min_bandwidth_mbps)
        tree = ShortestPathTree(adj, adj.index[source])
        with self._lock:
            if topology is self._topology:
                self._trees[key] = tree
                self.builds += 1
                while len(self._trees) > self._size:
                    self._trees.popitem(last=False)
        return tree


def _unique(nodes: Iterable[str]) -> list[str]:
    return list(dict.fromkeys(nodes))


class Placer:
    """Placement decisions for one workflow (or, without one, for state nobody declared)."""

    def __init__(self, workflow: Workflow | None = None, *, policy: str = "skylark", slo: SLO | None = None,
                 trees: TreeCache | None = None) -> None:
        self.workflow = workflow
        self.policy = workflow.policy if workflow is not None else policy
        if self.policy not in POLICIES:
            raise ConfigError(f"policy {self.policy!r} must be one of {', '.join(POLICIES)}")
        self.slo = (SLO(workflow.slo.max_latency_ms, workflow.slo.min_bandwidth_mbps) if workflow is not None
                    else slo or SLO())
        self.trees = trees or TreeCache()

    # -- who reads, and where ---------------------------------------------------------------

    def _readers(self, function: str) -> list[FunctionSpec | None]:
        """The readers of ``function``'s state; ``[None]`` (one reader, anywhere) for state the
        workflow does not declare."""
        if self.workflow is None or function not in self.workflow:
            return [None]
        return list(self.workflow.readers_of(function))

    def store_node(self, topology: Topology) -> str | None:
        """Where ``stateless`` keeps state: the workflow's ``stateless_node``, else the first
        node of type cloud, else None (then nothing moves)."""
        if self.workflow is not None and self.workflow.stateless_node is not None:
            return self.workflow.stateless_node
        return next((n.name for n in topology.nodes if n.type == "cloud"), None)

    # -- the two cases ----------------------------------------------------------------------

    def toward(self, topology: Topology, origin: str, destination: str, size_bytes: int, *,
               chain: str = "", function: str = "", version: int = 0) -> str:
        """Where a bundle goes for a reader pinned to ``destination`` (``origin``: it stays)."""
        if origin not in topology or destination not in topology:
            return origin
        if self.policy == "pull":
            return origin
        if self.policy == "stateless":
            return self.store_node(topology) or origin
        if self.policy == "random":
            return self._drawn(topology, origin, chain, function, version)
        if origin == destination:
            return origin
        path = self.trees.tree(topology, origin, self.slo.min_bandwidth_mbps).path_to(
            topology.adjacency(self.slo.min_bandwidth_mbps).index[destination])
        if path is None:
            return origin
        fit = fit_on_path(path, size_bytes, self.slo)
        return origin if fit is None else topology.adjacency(self.slo.min_bandwidth_mbps).names[path.nodes[fit[0]]]

    def around(self, topology: Topology, origin: str, size_bytes: int, *, chain: str = "", function: str = "",
               version: int = 0) -> list[str]:
        """Where a bundle goes for a reader that may run on any node."""
        if origin not in topology or self.policy == "pull":
            return []
        if self.policy == "stateless":
            store = self.store_node(topology)
            return [store] if store else []
        if self.policy == "random":
            return [self._drawn(topology, origin, chain, function, version)]
        return propagation_targets(topology, origin, size_bytes, self.slo, "skylark")

    def _drawn(self, topology: Topology, origin: str, chain: str, function: str, version: int) -> str:
        tree = self.trees.tree(topology, origin, 0.0)
        names = topology.adjacency(0.0).names
        return names[seeded_rng(chain, function, version).choice(tree.reachable())]

    # -- what the handlers and the readers ask ----------------------------------------------

    def targets(self, topology: Topology, origin: str, function: str, size_bytes: int, *, chain: str = "",
                version: int = 0) -> list[str]:
        """The nodes (other than ``origin``) a new bundle of ``function`` is pushed to."""
        nodes: list[str] = []
        for reader in self._readers(function):
            if reader is not None and reader.node is not None:
                nodes.append(self.toward(topology, origin, reader.node, size_bytes, chain=chain, function=function,
                                         version=version))
            else:
                nodes.extend(self.around(topology, origin, size_bytes, chain=chain, function=function,
                                         version=version))
        return [n for n in _unique(nodes) if n != origin]

    def location(self, topology: Topology, origin: str, reader_node: str, function: str, size_bytes: int, *,
                 chain: str = "", version: int = 0, reader: str | None = None) -> str:
        """Where the reader on ``reader_node`` finds ``function``'s bundle written on ``origin``:
        ``reader_node`` when it is pushed there, the node it is pushed to on the way (the nearest
        copy), or ``origin``."""
        spec = self.workflow.function(reader) if self.workflow is not None and reader else None
        if spec is not None and spec.node is not None or self.policy in ("stateless", "random"):
            return self.toward(topology, origin, reader_node, size_bytes, chain=chain, function=function,
                               version=version)
        around = self.around(topology, origin, size_bytes, chain=chain, function=function, version=version)
        return reader_node if reader_node in around else origin

    def holders(self, topology: Topology, origin: str, function: str) -> list[str]:
        """Every node an earlier copy of ``function``'s state may be on: where a delete's
        tombstone goes. ``skylark``: every node on the paths to pinned readers (a smaller bundle
        went farther) and the neighbours a bundle of no size fits; ``random``: every reachable
        node; ``stateless``: the store node."""
        if origin not in topology or self.policy == "pull":
            return []
        if self.policy == "stateless":
            store = self.store_node(topology)
            return [store] if store and store != origin else []
        if self.policy == "random":
            names = topology.adjacency(0.0).names
            return [names[i] for i in self.trees.tree(topology, origin, 0.0).reachable() if names[i] != origin]
        nodes: list[str] = []
        adj = topology.adjacency(self.slo.min_bandwidth_mbps)
        for reader in self._readers(function):
            if reader is not None and reader.node is not None and reader.node in topology:
                path = self.trees.tree(topology, origin, self.slo.min_bandwidth_mbps).path_to(adj.index[reader.node])
                nodes.extend(adj.names[i] for i in (path.nodes if path else ()))
            else:
                nodes.extend(self.around(topology, origin, 0))
        return [n for n in _unique(nodes) if n != origin]
