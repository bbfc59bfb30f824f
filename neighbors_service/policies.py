"""Election policies: where state should go, and which neighbours a bundle is pushed to (pure).

Units: latency in milliseconds, bandwidth in Mbps (10^6 bit/s), sizes in bytes. The migration
time of ``size_bytes`` along a path is

    T_mig [s]  = 2 × L [s] + size_bytes × 8 / (B [Mbps] × 10^6)
    T_mig [ms] = 2 × L [ms] + size_bytes × 8 / (B [Mbps] × 10^3)

where ``L`` is the sum of the link latencies on the path (a request/answer round trip, hence
2 ×) and ``B`` the path's bottleneck: the smallest link bandwidth on it. A path "fits" the SLO
when ``T_mig <= max_latency_ms`` (just met counts).

:func:`elect` — the node where the state of a successor should be stored:

* ``skylark``: the minimum-latency path from ``from_node`` to ``to_node`` (the successor's
  destination) over links with ``bandwidth >= slo.min_bandwidth_mbps`` and through ready nodes
  only; walking back from the destination, the first node whose ``T_mig`` fits the SLO wins.
  If none fits, or the destination cannot be reached, the state stays on ``from_node``
  (``migration_ms == 0``).
* ``random``: a uniformly random pick among the ready nodes reachable from ``from_node`` (itself
  included), with a caller-supplied (seeded) ``random.Random``. Ignores the SLO.
* ``stateless``: always ``to_node`` (the destination, e.g. the cloud). Ignores the SLO;
  ``migration_ms`` is that of the shortest path, or None if there is none.
* ``pull``: nothing moves: the state stays on ``from_node``, and readers fetch it from there.

:func:`propagation_targets` — the neighbours of ``node`` a freshly written bundle is pushed to
(the potential execution environments of the successor):

* ``skylark``: the ready direct neighbours whose link has ``bandwidth >= min_bandwidth_mbps`` and
  whose single-hop ``T_mig`` for ``size_bytes`` fits ``max_latency_ms``; fastest first (ties by
  name).
* ``random``: one uniformly random ready neighbour (seeded ``rng``); ``[]`` if there is none.
* ``stateless``, ``pull``: ``[]``: no neighbour gets it (``stateless`` sends state to its one
  store node, which is the workflow's business: ``neighbors_service.placement``).

In the data path (the handlers and the functions, per event) the same walk runs on a cached
shortest-path tree instead (:func:`fit_on_path`, ``neighbors_service.placement``).
"""

from __future__ import annotations

import math
import random
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

from neighbors_service.paths import Path, ShortestPathTree, shortest_path
from neighbors_service.topology import Topology
from skylark.state.errors import SkylarkError
from skylark.state.settings import POLICIES  # one list of policy names, from the lowest layer

T = TypeVar("T")


class Chooser(Protocol):
    """What the ``random`` policy needs of its generator: ``random.Random(seed)`` fits."""

    def choice(self, seq: list[T]) -> T: ...


class InvalidElection(SkylarkError, ValueError):
    """An election was asked with a bad size, SLO or policy name."""

    code = "invalid_election"


def _positive(name: str, value: object, allow_zero: bool) -> float:
    # A JSON number, not a string or boolean; float() first, because math.isfinite() raises
    # OverflowError (a 500) on an integer past float range, such as 10**400 in a PUT /slo body.
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        shown = value if isinstance(value, str) and len(value) <= 40 else type(value).__name__
        raise InvalidElection(f"{name} must be a finite number, not {shown!r}")
    try:
        number = float(value)
    except OverflowError:
        raise InvalidElection(f"{name} must be a finite number; this one is out of range") from None
    if not math.isfinite(number):
        raise InvalidElection(f"{name} must be a finite number, not {number!r}")
    if number < 0 or (number == 0 and not allow_zero):
        raise InvalidElection(f"{name} must be {'>= 0' if allow_zero else '> 0'}, not {number!r}")
    return number


@dataclass(frozen=True)
class SLO:
    """Service level objective of a workflow: ``max_latency_ms`` (ms), ``min_bandwidth_mbps`` (Mbps).

    ``min_bandwidth_mbps == 0`` means every link may be used.
    """

    max_latency_ms: float = 500.0
    min_bandwidth_mbps: float = 10.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "max_latency_ms", _positive("max_latency", self.max_latency_ms, False))
        object.__setattr__(
            self, "min_bandwidth_mbps", _positive("min_bandwidth", self.min_bandwidth_mbps, True)
        )

    def to_dict(self) -> dict[str, float]:
        """Wire form, with the original service's key names (``max_latency`` ms, ``min_bandwidth`` Mbps)."""
        return {"max_latency": self.max_latency_ms, "min_bandwidth": self.min_bandwidth_mbps}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], base: "SLO | None" = None) -> "SLO":
        """Parse the wire form; keys missing from ``data`` keep ``base``'s values (if given)."""
        if not isinstance(data, Mapping):
            raise InvalidElection("the SLO must be a JSON object")
        unknown = set(data) - {"max_latency", "min_bandwidth"}
        if unknown:
            raise InvalidElection(
                f"unknown SLO keys {sorted(unknown)}; expected max_latency (ms), min_bandwidth (Mbps)"
            )
        if base is None:
            missing = {"max_latency", "min_bandwidth"} - set(data)
            if missing:
                raise InvalidElection(f"SLO is missing {sorted(missing)}")
            base = cls()
        return cls(
            max_latency_ms=data.get("max_latency", base.max_latency_ms),
            min_bandwidth_mbps=data.get("min_bandwidth", base.min_bandwidth_mbps),
        )


@dataclass(frozen=True)
class Election:
    """The outcome of :func:`elect`.

    ``path`` is the route the state takes from the current node to ``node`` (just the current
    node when it stays). ``migration_ms`` is ``T_mig`` along it (0 when the state stays; None
    for ``stateless`` when the destination is unreachable).
    """

    node: str
    migration_ms: float | None
    path: tuple[str, ...]
    policy: str
    reason: str

    def to_dict(self) -> dict[str, Any]:
        return {"node": self.node, "migration_ms": self.migration_ms, "path": list(self.path),
                "policy": self.policy, "reason": self.reason}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "Election":
        migration = data.get("migration_ms")
        return cls(
            node=str(data["node"]),
            migration_ms=None if migration is None else float(migration),
            path=tuple(str(p) for p in data.get("path", ())),
            policy=str(data["policy"]),
            reason=str(data.get("reason", "")),
        )


@dataclass(frozen=True)
class Target:
    """A propagation target with the single-hop migration time of the bundle to it."""

    node: str
    migration_ms: float


def migration_time_ms(latency_ms: float, bottleneck_mbps: float, size_bytes: int) -> float:
    """``2 × L[ms] + size_bytes × 8 bit / (B[Mbps] × 10^6 bit/s) × 10^3 ms/s``.

    Written as ``size × 8 / (B × 10^3)`` so that round figures stay exact in floating point
    (1,250,000 B over 100 Mbps is exactly 100.0 ms).
    """
    return 2.0 * latency_ms + size_bytes * 8 / (bottleneck_mbps * 1e3)


def _check_size(size_bytes: object) -> int:
    if isinstance(size_bytes, bool) or not isinstance(size_bytes, int) or size_bytes < 0:
        raise InvalidElection(f"size must be a whole number of bytes >= 0, not {size_bytes!r}")
    return size_bytes


def _check_policy(policy: object) -> str:
    if policy not in POLICIES:
        raise InvalidElection(f"policy {policy!r} must be one of {', '.join(POLICIES)}")
    return policy  # type: ignore[return-value]


def _path_migration_ms(path: Path, hops: int, size_bytes: int) -> float:
    """``T_mig`` over the first ``hops`` links of ``path``."""
    if hops == 0:
        return 0.0
    return migration_time_ms(
        sum(path.hop_latency_ms[:hops]), min(path.hop_bandwidth_mbps[:hops]), size_bytes
    )


def _names(topology: Topology, path: Path, hops: int) -> tuple[str, ...]:
    names = topology.adjacency().names
    return tuple(names[i] for i in path.nodes[: hops + 1])


def elect(
    topology: Topology,
    from_node: str,
    to_node: str,
    size_bytes: int,
    slo: SLO,
    policy: str = "skylark",
    rng: Chooser | None = None,
) -> Election:
    """Choose where the state of size ``size_bytes`` should go; see the module docstring."""
    _check_policy(policy)
    _check_size(size_bytes)
    topology.node(from_node)
    topology.node(to_node)
    if policy == "skylark":
        return _elect_skylark(topology, from_node, to_node, size_bytes, slo)
    if policy == "random":
        return _elect_random(topology, from_node, size_bytes, rng or random.Random())
    if policy == "pull":
        return _stay(from_node, "pull", "nothing moves: readers fetch the state from here")
    return _elect_stateless(topology, from_node, to_node, size_bytes)


def _stay(from_node: str, policy: str, reason: str) -> Election:
    return Election(from_node, 0.0, (from_node,), policy, reason)


def _elect_skylark(topology: Topology, from_node: str, to_node: str, size_bytes: int,
                   slo: SLO) -> Election:
    if from_node == to_node:
        return _stay(from_node, "skylark", "the current node is the destination")
    adj = topology.adjacency(slo.min_bandwidth_mbps)
    path = shortest_path(adj, adj.index[from_node], adj.index[to_node])
    if path is None:
        return _stay(from_node, "skylark",
                     f"{to_node} is unreachable over ready nodes and links >= "
                     f"{slo.min_bandwidth_mbps:g} Mbps; state stays on {from_node}")
    fit = fit_on_path(path, size_bytes, slo)
    hops = len(path.nodes) - 1
    if fit is not None:
        k, t_mig = fit
        chosen = adj.names[path.nodes[k]]
        where = "the destination" if k == hops else f"{hops - k} hop(s) before {to_node}"
        return Election(chosen, t_mig, _names(topology, path, k), "skylark",
                        f"{chosen} is {where}; T_mig {t_mig:.3f} ms <= {slo.max_latency_ms:g} ms")
    nearest = _path_migration_ms(path, 1, size_bytes)
    return _stay(from_node, "skylark",
                 f"no node on the path to {to_node} fits {slo.max_latency_ms:g} ms "
                 f"(nearest: {adj.names[path.nodes[1]]} at {nearest:.3f} ms); state stays")


def fit_on_path(path: Path, size_bytes: int, slo: SLO) -> tuple[int, float] | None:
    """Walking back from the end of ``path``, the first node whose ``T_mig`` from its start
    fits the SLO: ``(its index on the path, T_mig)``, or None when none does (the state stays).

    Prefix sums forward once, then the walk back: O(path length).
    """
    hops = len(path.nodes) - 1
    latency = [0.0] * (hops + 1)
    bottleneck = [math.inf] * (hops + 1)
    for k in range(hops):
        latency[k + 1] = latency[k] + path.hop_latency_ms[k]
        bottleneck[k + 1] = min(bottleneck[k], path.hop_bandwidth_mbps[k])
    for k in range(hops, 0, -1):
        t_mig = migration_time_ms(latency[k], bottleneck[k], size_bytes)
        if t_mig <= slo.max_latency_ms:
            return k, t_mig
    return None


def _elect_random(topology: Topology, from_node: str, size_bytes: int,
                  rng: Chooser) -> Election:
    adj = topology.adjacency()
    tree = ShortestPathTree(adj, adj.index[from_node])
    candidates = tree.reachable()
    pick = rng.choice(candidates)
    path = tree.path_to(pick)
    assert path is not None  # reachable by construction
    hops = len(path.nodes) - 1
    return Election(adj.names[pick], _path_migration_ms(path, hops, size_bytes),
                    _names(topology, path, hops), "random",
                    f"uniform pick among {len(candidates)} reachable ready node(s)")


def _elect_stateless(topology: Topology, from_node: str, to_node: str,
                     size_bytes: int) -> Election:
    if from_node == to_node:
        return _stay(from_node, "stateless", "the current node is the destination")
    adj = topology.adjacency()
    path = shortest_path(adj, adj.index[from_node], adj.index[to_node])
    if path is None:
        return Election(to_node, None, (from_node, to_node), "stateless",
                        f"always the destination; {to_node} is unreachable from {from_node}")
    hops = len(path.nodes) - 1
    return Election(to_node, _path_migration_ms(path, hops, size_bytes),
                    _names(topology, path, hops), "stateless", "always the destination")


def propagation_plan(
    topology: Topology,
    node: str,
    size_bytes: int,
    slo: SLO,
    policy: str = "skylark",
    rng: Chooser | None = None,
) -> list[Target]:
    """Like :func:`propagation_targets`, with each target's single-hop migration time."""
    _check_policy(policy)
    _check_size(size_bytes)
    links = topology.links_of(node)
    if policy in ("stateless", "pull"):
        return []
    if policy == "random":
        ready = [link for link in links if topology.node(link.other(node)).ready]
        if not ready:
            return []
        link = (rng or random.Random()).choice(ready)
        return [Target(link.other(node), migration_time_ms(link.latency_ms, link.bandwidth_mbps,
                                                           size_bytes))]
    fits = []
    for link in links:
        other = link.other(node)
        if not topology.node(other).ready or link.bandwidth_mbps < slo.min_bandwidth_mbps:
            continue
        t_mig = migration_time_ms(link.latency_ms, link.bandwidth_mbps, size_bytes)
        if t_mig <= slo.max_latency_ms:
            fits.append(Target(other, t_mig))
    fits.sort(key=lambda t: (t.migration_ms, t.node))
    return fits


def propagation_targets(
    topology: Topology,
    node: str,
    size_bytes: int,
    slo: SLO,
    policy: str = "skylark",
    rng: Chooser | None = None,
) -> list[str]:
    """Names of the neighbours of ``node`` a bundle of ``size_bytes`` is pushed to."""
    return [t.node for t in propagation_plan(topology, node, size_bytes, slo, policy, rng)]
