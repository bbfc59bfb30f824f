"""Warm-up (``dev.knative.sources.ping``): pull the newest bundles of named chains/functions.

PingSource data (JSON)::

    {"chains": ["c1", "c2"], "functions": ["detect"], "nodes": ["node-b"], "reason": "warm-up"}

``chains`` and ``functions`` together name every (chain, function) pair of the two lists; with
only ``chains``, every function of those chains found on the neighbours (a SCAN of their
metadata keys); with only ``functions``, every chain that has one. ``nodes`` defaults to the
ready direct neighbours of this node; ``reason`` is free text (ignored). Every pair is examined,
however many: ``SKYLARK_WARMUP_MAX_PAIRS`` pairs per page (per page one pipelined round trip to
each neighbour and one to the local Redis), as many pages as it takes.

Per node, the versions of all pairs are read in one pipelined round trip; a pair is pulled (one
more round trip) from the node with the newest version when the local copy is missing or older,
and applied with the usual newer-wins rule. When that newest version is a tombstone (the state
was deleted there), the local copy is dropped instead (``deleted``), as a propagated delete would
have done. This also repairs propagation that the stream source lost (the real RedisStreamSource
acks failed deliveries and skips entries written while it restarts). A neighbour that cannot be
reached is reported, not fatal; the local Redis being down is a 503.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass, field

from cloudevents.core.base import BaseCloudEvent

from eventing.http import InvalidEvent
from handlers.metrics import HandlerMetrics
from handlers.rebuild import current_bundle
from skylark.state.store import redis_errors
from neighbors_service.targets import TargetResolver
from skylark.state import keys
from skylark.state.bundle import ApplyOutcome, Tombstone
from skylark.state.errors import BundleNotFound, BundleTooLarge, ChecksumMismatch, StoreUnavailable
from skylark.state.names import NAME_PATTERN, validate_name
from skylark.state.reader import RemoteStores
from skylark.state.store import StateStore
from skylark.serving.tracing import context_of_event, tracer

log = logging.getLogger(__name__)
_TRACER = tracer("skylark.handlers")
_MAX_NAMES = 1000  # per list in one ping's data


class InvalidWarmup(InvalidEvent):
    """PingSource data that does not say what to warm."""


@dataclass(frozen=True)
class WarmupRequest:
    chains: tuple[str, ...] = ()
    functions: tuple[str, ...] = ()
    nodes: tuple[str, ...] = ()


@dataclass(frozen=True)
class RemoteVersion:
    """What a neighbour holds for a pair: a live version, or the tombstone of a delete."""

    version: int
    deleted: bool
    node: str
    updated_ms: int


@dataclass
class WarmupReport:
    checked: int = 0
    refreshed: int = 0
    deleted: int = 0
    current: int = 0
    missing: int = 0
    failed: int = 0
    pages: int = 0
    nodes: list[str] = field(default_factory=list)
    unreachable: list[str] = field(default_factory=list)
    refreshed_pairs: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {"outcome": "warmed", "checked": self.checked, "refreshed": self.refreshed,
                "deleted": self.deleted, "current": self.current, "missing": self.missing,
                "failed": self.failed, "pages": self.pages,
                "nodes": self.nodes, "unreachable": self.unreachable,
                "refreshed_pairs": self.refreshed_pairs[:100]}


def _names(data: Mapping, key: str, kind: str) -> tuple[str, ...]:
    raw = data.get(key, [])
    if isinstance(raw, str):
        raw = [raw]
    if not isinstance(raw, list) or len(raw) > _MAX_NAMES:
        raise InvalidWarmup("invalid_warmup", f"{key} must be a list of at most {_MAX_NAMES} names")
    try:
        return tuple(dict.fromkeys(validate_name(kind, name) for name in raw))
    except ValueError as exc:
        raise InvalidWarmup("invalid_warmup", f"{key}: {exc}") from None


def parse_warmup(event: BaseCloudEvent) -> WarmupRequest:
    data = event.get_data()
    if isinstance(data, (bytes, bytearray)):
        # PingSource sends its data with the content type it was given, which may not say JSON.
        try:
            data = json.loads(data)
        except ValueError:
            raise InvalidWarmup("invalid_warmup", "ping data is not JSON") from None
    if not isinstance(data, Mapping):
        raise InvalidWarmup("invalid_warmup",
                            'ping data must be a JSON object like {"chains": [...], "functions": [...]}')
    unknown = set(data) - {"chains", "functions", "nodes", "reason"}
    if unknown:
        raise InvalidWarmup("invalid_warmup",
                            f"unknown keys {sorted(unknown)}; expected chains, functions, nodes, reason")
    request = WarmupRequest(_names(data, "chains", "chain id"), _names(data, "functions", "function name"),
                            _names(data, "nodes", "node name"))
    if not request.chains and not request.functions:
        raise InvalidWarmup("invalid_warmup", "name at least one chain or function to warm")
    return request


class Warmer:
    """Pulls newer bundles from the neighbours, in pages of ``page_pairs`` (pair, version) checks."""

    def __init__(self, *, node: str, store: StateStore, remote: RemoteStores, targets: TargetResolver,
                 executor: Executor, metrics: HandlerMetrics, page_pairs: int) -> None:
        self.node = node
        self.store = store
        self.remote = remote
        self.targets = targets
        self.executor = executor
        self.metrics = metrics
        self.page_pairs = page_pairs

    def handle(self, event: BaseCloudEvent, headers: Mapping[str, str] | None = None) -> WarmupReport:
        """A warm-up, in a span of the ping's trace (a PingSource starts one per tick)."""
        with _TRACER.start_as_current_span("warm-up", context=context_of_event(event, headers),
                                           attributes={"skylark.node": self.node}) as span:
            report = self._warm(event)
            span.set_attributes({"skylark.checked": report.checked, "skylark.refreshed": report.refreshed,
                                 "skylark.pages": report.pages})
            return report

    def _warm(self, event: BaseCloudEvent) -> WarmupReport:
        request = parse_warmup(event)
        nodes = [n for n in (request.nodes or tuple(self.targets.neighbors(self.node))) if n != self.node]
        report = WarmupReport(nodes=nodes)
        stores = {}
        for node in nodes:
            store = self.remote.store_for(node)
            if store is None:
                report.unreachable.append(node)
            else:
                stores[node] = store
        # Which pairs to look at: the named ones, or every one the neighbours hold (a full SCAN
        # of their metadata keys, per node in parallel). No cap: a long list is done page by page.
        if request.chains and request.functions:
            pairs = [(c, f) for c in request.chains for f in request.functions]
        else:
            futures = {node: self.executor.submit(self._scan, store, request) for node, store in stores.items()}
            found: dict[tuple[str, str], None] = {}
            for node, future in futures.items():
                try:
                    found.update(dict.fromkeys(future.result()))
                except StoreUnavailable as exc:
                    log.warning("warm-up: neighbour %s unreachable: %s", node, exc)
                    report.unreachable.append(node)
                    stores.pop(node)
            pairs = sorted(found)
        for start in range(0, len(pairs), self.page_pairs):
            self._page(pairs[start:start + self.page_pairs], stores, report)
            report.pages += 1
        self.metrics.warmup_refreshed.inc(report.refreshed)
        log.info("warm-up refreshed %d of %d", report.refreshed, report.checked,
                 extra={"refreshed": report.refreshed, "deleted": report.deleted, "checked": report.checked,
                        "pages": report.pages, "nodes": nodes})
        return report

    def _page(self, pairs: list[tuple[str, str]], stores: dict[str, StateStore], report: WarmupReport) -> None:
        """One page: every neighbour's versions of ``pairs`` (one pipelined round trip each, in
        parallel), the local ones (one more), then a pull per pair that is newer elsewhere."""
        futures = {node: self.executor.submit(self._versions, store, pairs) for node, store in stores.items()}
        remote_versions: dict[str, dict[tuple[str, str], RemoteVersion]] = {}
        for node, future in futures.items():
            try:
                remote_versions[node] = future.result()
            except StoreUnavailable as exc:
                log.warning("warm-up: neighbour %s unreachable: %s", node, exc)
                report.unreachable.append(node)
                stores.pop(node)
        report.checked += len(pairs)
        for pair, local_version in zip(pairs, self._local_versions(pairs)):
            best_node, best = None, None
            for node, versions in remote_versions.items():
                held = versions.get(pair)
                if held is not None and (best is None or held.version > best.version):
                    best_node, best = node, held
            if best_node is None or (best.deleted and local_version == 0):
                report.missing += 1  # nowhere, or deleted everywhere it is known
            elif best.version <= local_version:
                report.current += 1
            elif best.deleted:
                tombstone = Tombstone(pair[0], pair[1], best.version, best.node, best.updated_ms)
                if self.store.apply_tombstone(tombstone).outcome is ApplyOutcome.APPLIED:
                    report.deleted += 1
                    report.refreshed_pairs.append(f"{pair[0]}/{pair[1]}@{best_node} (deleted)")
                else:
                    report.current += 1
            else:
                outcome = self._refresh(stores[best_node], pair)
                if outcome == "refreshed":
                    report.refreshed += 1
                    report.refreshed_pairs.append(f"{pair[0]}/{pair[1]}@{best_node}")
                elif outcome == "failed":
                    report.failed += 1
                else:
                    report.current += 1

    @staticmethod
    def _scan(store: StateStore, request: WarmupRequest) -> list[tuple[str, str]]:
        """Every (chain, function) ``store`` holds metadata of, among the requested ones."""
        patterns = ([keys.meta_key(c, "*") for c in request.chains] if request.chains
                    else [keys.meta_key("*", f) for f in request.functions])
        prefix = len(keys.meta_key("", "")) - 1  # "skylark:meta:"
        found: dict[tuple[str, str], None] = {}
        with redis_errors("warm-up scan"):
            for pattern in patterns:
                for key in store.client.scan_iter(match=pattern, count=1000):
                    chain, _, function = key.decode(errors="replace")[prefix:].partition(":")
                    if NAME_PATTERN.fullmatch(chain) and NAME_PATTERN.fullmatch(function):
                        found[(chain, function)] = None
        return list(found)

    @staticmethod
    def _versions(store: StateStore, pairs: Sequence[tuple[str, str]]) -> dict[tuple[str, str], RemoteVersion]:
        """Versions held, live or tombstones (absent pairs left out), one round trip."""
        if not pairs:
            return {}
        with redis_errors("warm-up versions"):
            pipe = store.client.pipeline(transaction=False)
            for chain, function in pairs:
                pipe.hmget(keys.meta_key(chain, function), ["version", "deleted", "node", "updated_ms"])
            replies = pipe.execute()
        return {pair: RemoteVersion(int(version), deleted == b"1", (node or b"").decode(), int(updated or 0))
                for pair, (version, deleted, node, updated) in zip(pairs, replies) if version is not None}

    def _local_versions(self, pairs: Sequence[tuple[str, str]]) -> list[int]:
        """Local versions, counting tombstones: a deleted bundle is not brought back by an older copy."""
        if not pairs:
            return []
        with redis_errors("warm-up local versions"):
            pipe = self.store.client.pipeline(transaction=False)
            for chain, function in pairs:
                pipe.hget(keys.meta_key(chain, function), "version")
            return [int(v) if v is not None else 0 for v in pipe.execute()]

    def _refresh(self, origin: StateStore, pair: tuple[str, str]) -> str:
        """``refreshed``, ``current`` (the local copy caught up meanwhile) or ``failed``."""
        try:
            bundle = current_bundle(origin, *pair)
        except (BundleNotFound, StoreUnavailable) as exc:
            log.warning("warm-up: could not read %s/%s from %s: %s", *pair, origin.node, exc)
            return "failed"
        self.metrics.bytes_pulled.inc(bundle.meta.size)
        try:
            applied = self.store.apply(bundle).outcome is ApplyOutcome.APPLIED
        except (ChecksumMismatch, BundleTooLarge) as exc:
            log.warning("warm-up: %s/%s from %s not applied: %s", *pair, origin.node, exc)
            return "failed"
        return "refreshed" if applied else "current"
