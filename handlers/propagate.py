"""Stream change → rebuild the bundle → publish it to every target node's broker.

Decisions (see ``handlers/README.md``):

- The bundle sent is the *current* one. A change whose version is older than the stored bundle
  was overtaken by a newer write; its own change entry follows, but propagating the newest now
  is never wrong (receivers keep the newest) and the later push of the same version is dropped
  by the receivers' dedupe (same event id). The answer says ``"newer": true``.
- A ``delete`` change is pushed as a tombstone (``mode: tombstone``) to every node that may
  hold a copy (``TargetResolver.holders``: for ``skylark`` the targets of a 0-byte bundle, for
  ``random`` every ready neighbour), and the receivers drop their copy
  (``StateStore.apply_tombstone``, newer wins). If the state was written again since, the
  current bundle is pushed instead (``"newer": true``).
- A change for state that no longer exists is acknowledged (``superseded``): a delete came
  after it, and its own change pushes the tombstone. A change for a (chain, function) this node
  never held — or a delete its Redis holds no tombstone of (never made here, or the tombstone
  expired after ``tombstone_ttl_s``) — is a 400 ``unknown_chain``.
- Targets are published to in parallel (the app's thread pool). Any target whose broker did not
  take the event after the publisher's retries makes the answer 503, so Knative (or the local
  stream source) delivers the change again; targets that did take it drop the repeat by event id.
  A broker's 4xx (other than 429) is final: counted, logged, not retried.
"""

from __future__ import annotations

import logging
import time
from concurrent.futures import Executor
from dataclasses import dataclass, field

from cloudevents.core.base import BaseCloudEvent

from eventing.publisher import Delivery, PublishOutcome, Publisher
from eventing.redisstream import decode_stream_event
from handlers.bundle_event import TOMBSTONE, Payload, encode_payload, encode_tombstone, propagation_event
from handlers.metrics import HandlerMetrics
from handlers.rebuild import current_bundle
from neighbors_service.targets import Target, TargetResolver
from skylark.state.bundle import Tombstone
from skylark.state.changes import ChangeRecord
from skylark.state.errors import BundleNotFound
from skylark.state.store import StateStore
from skylark.serving.web import ClientError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TargetOutcome:
    node: str
    delivery: str
    status: int | None
    elapsed_ms: float

    def to_dict(self) -> dict:
        return {"node": self.node, "delivery": self.delivery, "status": self.status,
                "elapsed_ms": round(self.elapsed_ms, 3)}


@dataclass(frozen=True)
class PropagationReport:
    outcome: str  # propagated | no_targets | superseded
    chain: str
    function: str
    change_version: int
    version: int | None = None
    mode: str | None = None
    newer: bool = False
    targets: tuple[TargetOutcome, ...] = field(default=())

    def to_dict(self) -> dict:
        out = {"outcome": self.outcome, "chain": self.chain, "function": self.function,
               "change_version": self.change_version}
        if self.version is not None:
            out.update(version=self.version, mode=self.mode, newer=self.newer,
                       targets=[t.to_dict() for t in self.targets])
        return out


class Propagator:
    def __init__(self, *, node: str, store: StateStore, targets: TargetResolver, publisher: Publisher,
                 executor: Executor, metrics: HandlerMetrics, inline_max_bytes: int,
                 change_stream: str, signing_key: bytes | None = None) -> None:
        self.node = node
        self.store = store
        self.targets = targets
        self.publisher = publisher
        self.executor = executor
        self.metrics = metrics
        self.inline_max_bytes = inline_max_bytes
        self.change_stream = change_stream
        self.signing_key = signing_key

    def handle(self, event: BaseCloudEvent) -> PropagationReport:
        start = time.perf_counter()
        change = decode_stream_event(event, stream=self.change_stream).change
        context = {"chain": change.chain, "function": change.function, "event_id": event.get_id(),
                   "version": change.version}
        try:
            bundle = current_bundle(self.store, change.chain, change.function, change.mechanism)
        except BundleNotFound:
            local_version = self.store.local_version(change.chain, change.function)
            if local_version == 0 or (change.op == "delete" and local_version < change.version):
                raise ClientError(400, "unknown_chain",
                                  f"no state (or tombstone) v{change.version} for chain {change.chain!r}, "
                                  f"function {change.function!r} on this node") from None
            if change.op == "delete" and local_version == change.version:
                # Only a delete this node's Redis shows is pushed, never what an event merely
                # claims: a forged change must not wipe the neighbours' copies.
                payload = self._tombstone(change)
            else:
                log.info("change superseded by a delete", extra=context)
                return PropagationReport("superseded", change.chain, change.function, change.version)
        else:
            payload = encode_payload(bundle, origin=self.node, inline_max_bytes=self.inline_max_bytes,
                                     sign=self.signing_key is not None)
        self.metrics.rebuild_seconds.observe(time.perf_counter() - start)

        version = payload.meta.version
        if payload.mode == TOMBSTONE:
            chosen = self.targets.holders(self.node, change.function)
        else:
            chosen = self.targets.targets(self.node, change.function, payload.meta.size, chain=change.chain,
                                          version=payload.meta.version)
        newer = version > change.version
        if not chosen:
            return PropagationReport("no_targets", change.chain, change.function, change.version,
                                     version, None, newer)
        outcomes = self._publish_all(payload, chosen)
        elapsed = time.perf_counter() - start
        self.metrics.propagation_seconds.labels(payload.mode).observe(elapsed)
        results = tuple(TargetOutcome(t.node, o.delivery.value, o.status_code, o.elapsed_ms)
                        for t, o in zip(chosen, outcomes))
        for target, outcome in zip(chosen, outcomes):
            self.metrics.publishes.labels(outcome.delivery.value).inc()
            if outcome.ok:
                self.metrics.bytes_sent.labels(payload.mode).inc(len(payload.data))
            else:
                log.warning("propagation to %s %s: %s", target.node, outcome.delivery.value,
                            outcome.reason[:200], extra={**context, "target": target.node,
                                                         "status": outcome.status_code})
        report = PropagationReport("propagated", change.chain, change.function, change.version,
                                   version, payload.mode, newer, results)
        failed = [r.node for r in results if r.delivery == Delivery.GAVE_UP.value]
        if failed:
            raise ClientError(503, "propagation_failed",
                              f"broker(s) of {', '.join(failed)} did not take v{version} of "
                              f"{change.chain}/{change.function}; deliver the change again")
        log.info("propagated", extra={**context, "version": version, "mode": payload.mode,
                                      "targets": [t.node for t in chosen], "newer": newer,
                                      "elapsed_ms": round(elapsed * 1000, 3)})
        return report

    def _tombstone(self, change: ChangeRecord) -> Payload:
        # The delete's own change entry was written with its tombstone, in the same transaction:
        # its node and time are the tombstone's.
        tombstone = Tombstone(change.chain, change.function, change.version, change.node, change.ts_ms)
        return encode_tombstone(tombstone, origin=self.node)

    def _publish_all(self, payload: Payload, chosen: list[Target]) -> list[PublishOutcome]:
        events = [propagation_event(payload, t.node, self.signing_key) for t in chosen]
        # The last target is published from the request thread itself: one target needs no pool.
        futures = [self.executor.submit(self.publisher.publish, t.broker_url, e)
                   for t, e in zip(chosen[:-1], events[:-1])]
        last = self.publisher.publish(chosen[-1].broker_url, events[-1])
        return [f.result() for f in futures] + [last]
