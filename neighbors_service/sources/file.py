"""Topology from a YAML file, optionally as a cycle of snapshots that change with time.

Schema (see ``neighbors_service/README.md`` for the full reference)::

    snapshot_interval_s: 60        # seconds each snapshot is in force (default 60)
    epoch_s: 0                     # when snapshot 0 starts (unix seconds, default 0)
    nodes:
      - {name: pi5u2, type: satellite, redis_url: "redis://…", broker_url: "http://…"}
    links:                         # in every snapshot (optional)
      - {a: pi5u2, b: pi5u3, latency_ms: 10, bandwidth_mbps: 90}
    snapshots:                     # optional; each a list of links added to ``links``
      - [{a: pi5u1, b: pi5u2, latency_ms: 50, bandwidth_mbps: 30}]
      - [{a: pi5u1, b: pi5u3, latency_ms: 46, bandwidth_mbps: 30}]

The snapshot in force at time ``t`` is ``floor((t - epoch_s) / snapshot_interval_s) mod N``: it
depends on the wall clock only, so every node's service agrees on it without talking to the
others. With no ``snapshots:`` there is one snapshot: ``links``.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import yaml

from neighbors_service.topology import Link, Node, Topology, TopologyError
from skylark.state.errors import ConfigError

_KEYS = {"snapshot_interval_s", "epoch_s", "nodes", "links", "snapshots"}


def _number(origin: str, name: str, value: object, default: float) -> float:
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ConfigError(f"{origin}: {name} must be a number, not {value!r}")
    return float(value)


def parse_topology_document(data: object, origin: str = "<topology>") -> tuple[float, float, tuple[Topology, ...]]:
    """``(snapshot_interval_s, epoch_s, snapshots)`` of a parsed YAML/JSON document."""
    if not isinstance(data, Mapping):
        raise ConfigError(f"{origin}: the document must be a mapping with nodes: and links:/snapshots:")
    unknown = set(data) - _KEYS
    if unknown:
        raise ConfigError(f"{origin}: unknown keys {sorted(unknown)} (allowed: {sorted(_KEYS)})")
    interval = _number(origin, "snapshot_interval_s", data.get("snapshot_interval_s"), 60.0)
    if interval <= 0:
        raise ConfigError(f"{origin}: snapshot_interval_s must be > 0")
    epoch = _number(origin, "epoch_s", data.get("epoch_s"), 0.0)
    nodes_raw = data.get("nodes")
    common_raw = data.get("links") or []
    snapshots_raw = data.get("snapshots")
    if not isinstance(nodes_raw, list) or not nodes_raw:
        raise ConfigError(f"{origin}: nodes: must be a non-empty list")
    if not isinstance(common_raw, list):
        raise ConfigError(f"{origin}: links: must be a list")
    if snapshots_raw is None:
        snapshots_raw = [[]]
    if not isinstance(snapshots_raw, list) or not snapshots_raw:
        raise ConfigError(f"{origin}: snapshots: must be a non-empty list of link lists")
    try:
        nodes = tuple(Node.from_dict(n) for n in nodes_raw)
        common = [Link.from_dict(l) for l in common_raw]
        snapshots = []
        for i, extra in enumerate(snapshots_raw):
            if not isinstance(extra, list):
                raise TopologyError(f"snapshot {i} must be a list of links")
            try:
                snapshots.append(Topology(nodes, tuple(common + [Link.from_dict(l) for l in extra])))
            except TopologyError as exc:
                raise TopologyError(f"snapshot {i}: {exc}") from None
    except TopologyError as exc:
        raise ConfigError(f"{origin}: {exc}") from None
    return interval, epoch, tuple(snapshots)


class FileTopologySource:
    """Serves the snapshot of a topology file that is in force at ``clock()``."""

    def __init__(self, path: str | Path, clock: Callable[[], float] = time.time) -> None:
        self.path = str(path)
        try:
            text = Path(path).read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigError(f"cannot read topology file {self.path!r}: {exc.strerror}") from None
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise ConfigError(f"{self.path}: not valid YAML: {exc}") from None
        self._clock = clock
        self.snapshot_interval_s, self.epoch_s, self._snapshots = parse_topology_document(data, self.path)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], clock: Callable[[], float] = time.time,
                  origin: str = "<dict>") -> "FileTopologySource":
        """The same source from an already parsed document (tests, generated topologies)."""
        source = cls.__new__(cls)
        source.path = origin
        source._clock = clock
        source.snapshot_interval_s, source.epoch_s, source._snapshots = parse_topology_document(data, origin)
        return source

    @property
    def snapshot_count(self) -> int:
        return len(self._snapshots)

    def index_at(self, t: float) -> int:
        return int(math.floor((t - self.epoch_s) / self.snapshot_interval_s)) % len(self._snapshots)

    def current_index(self) -> int:
        return self.index_at(self._clock())

    def current(self) -> Topology:
        return self._snapshots[self.current_index()]

    def next(self) -> Topology:
        return self._snapshots[(self.current_index() + 1) % len(self._snapshots)]

    def snapshot(self, i: int) -> Topology:
        if not 0 <= i < len(self._snapshots):
            raise IndexError(f"snapshot {i} does not exist (0..{len(self._snapshots) - 1})")
        return self._snapshots[i]

    def with_addresses(self, mapping: Mapping[str, tuple[str, str]]) -> "FileTopologySource":
        """A copy whose nodes (in every snapshot) get ``mapping[name] = (redis_url, broker_url)``."""
        other = copy.copy(self)
        other._snapshots = tuple(s.with_addresses(mapping) for s in self._snapshots)
        return other

    def status(self) -> dict[str, Any]:
        now = self._clock()
        elapsed = (now - self.epoch_s) % self.snapshot_interval_s
        return {
            "source": "file",
            "ready": True,
            "path": self.path,
            "snapshot": self.index_at(now),
            "snapshots": len(self._snapshots),
            "snapshot_interval_s": self.snapshot_interval_s,
            "next_change_in_s": round(self.snapshot_interval_s - elapsed, 3),
        }

    def start(self) -> None:
        """Nothing to refresh: the file is read once, at construction."""

    def stop(self) -> None:
        """Nothing to stop."""


def load_topology_file(path: str | Path, clock: Callable[[], float] = time.time) -> FileTopologySource:
    """Read and validate a topology file (:class:`ConfigError` naming the problem if it is bad)."""
    return FileTopologySource(path, clock=clock)
