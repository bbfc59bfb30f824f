"""Stream change → read what the push needs → publish it to every target node's broker.

Decisions (see ``handlers/README.md``):

- The bundle sent is the *current* one. A change whose version is older than the stored bundle
  was overtaken by a newer write; its own change entry follows, but propagating the newest now
  is never wrong (receivers keep the newest) and the later push of the same version is dropped
  by the receivers' dedupe (same event id). The answer says ``"newer": true``.
- **Field deltas.** A write that changed some of a bundle's fields (the change record names
  them) at the version still stored is pushed as a delta: those fields only, on top of the
  previous version (``skylarkbase``), with the whole bundle's metadata; a receiver holding that
  version applies it and verifies the result's checksum, any other pulls the whole bundle from
  the origin's Redis itself, like a claim check (``handlers/receive.py``). No round trip back to
  the sender, and the warm-up repairs whatever a push missed.
- **Inline or claim check by the bytes sent**: the event carries the fields while its body is at
  most ``SKYLARK_INLINE_MAX_BYTES``, else it names them and the receiver pulls them (the changed
  fields of a delta, or the whole bundle). What a push does not send is not read either: a claim
  check reads the metadata only, a large delta its changed fields only.
- **Compression per link** (``handlers/compression.py``): a target whose path bottleneck is slow
  enough gets the fields zstd-compressed when the link time saved exceeds the CPU time; a fast
  link never does. The payload is encoded once per variant (raw, compressed) and shared.
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
from collections.abc import Callable, Mapping
from concurrent.futures import Executor
from dataclasses import dataclass, field

from cloudevents.core.base import BaseCloudEvent
from cloudevents.core.v1.event import CloudEvent
from opentelemetry import trace
from opentelemetry.trace import SpanKind

from eventing.publisher import Delivery, PublishOutcome, Publisher
from eventing.redisstream import decode_stream_event
from handlers.bundle_event import (
    Payload,
    encode_binary,
    encode_claim,
    encode_binary_tombstone,
    encode_payload,
    encode_tombstone,
    propagation_event,
)
from handlers.compression import Compressor
from handlers.metrics import HandlerMetrics
from handlers.rebuild import Snapshot, read_for_push
from neighbors_service.targets import Target, TargetResolver
from skylark.state.bundle import Bundle, BundleMeta, Placement, Tombstone
from skylark.state.changes import ChangeRecord
from skylark.state.errors import BundleNotFound
from skylark.state.store import StateStore
from skylark.serving.tracing import context_of, context_of_event, current_traceparent, tracer
from skylark.serving.web import ClientError

log = logging.getLogger(__name__)
_TRACER = tracer("skylark.handlers")


def _traced(event: BaseCloudEvent, trace: Mapping[str, str]) -> BaseCloudEvent:
    return CloudEvent({**event.get_attributes(), **trace}, event.get_data()) if trace else event
ZSTD_VARIANT = "zstd"


@dataclass(frozen=True)
class TargetOutcome:
    node: str
    delivery: str
    status: int | None
    elapsed_ms: float
    mode: str = ""
    compressed: bool = False
    bytes: int = 0  # of the event's body

    def to_dict(self) -> dict:
        return {"node": self.node, "delivery": self.delivery, "status": self.status,
                "elapsed_ms": round(self.elapsed_ms, 3), "mode": self.mode, "compressed": self.compressed,
                "bytes": self.bytes}


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


# A delta is sent when it carries at most this share of the bundle's bytes: above, the whole
# bundle costs little more and needs no base on the receiver.
DELTA_MAX_SHARE = 0.75
# With a slow link to compress for, a bundle up to this many times the inline limit is read whole:
# compressed, it may fit inline (JSON shrinks ~5×), which saves the receiver's pull.
COMPRESSIBLE_READ_FACTOR = 4


class Propagator:
    def __init__(self, *, node: str, store: StateStore, targets: TargetResolver, publisher: Publisher,
                 executor: Executor, metrics: HandlerMetrics, inline_max_bytes: int,
                 change_stream: str, signing_key: bytes | None = None, compressor: Compressor | None = None,
                 binary: bool = True) -> None:
        self.node = node
        self.store = store
        self.targets = targets
        self.publisher = publisher
        self.executor = executor
        self.metrics = metrics
        self.inline_max_bytes = inline_max_bytes
        self.change_stream = change_stream
        self.signing_key = signing_key
        self.compressor = compressor or Compressor(enabled=False)
        self.binary = binary  # False: the previous release's JSON shape (rolling upgrades)

    def handle(self, event: BaseCloudEvent, headers: Mapping[str, str] | None = None) -> PropagationReport:
        """A change, pushed in a span that continues the writer's trace: its traceparent came in
        the change record (a RedisStreamSource carries no trace of its own to continue)."""
        change = decode_stream_event(event, stream=self.change_stream).change
        parent = context_of_event(event, headers)
        if change.traceparent and trace.get_current_span(parent).get_span_context().trace_id != \
                trace.get_current_span(context_of(change.traceparent)).get_span_context().trace_id:
            # The source's own trace (a RedisStreamSource's), not the writer's: the record's wins.
            parent = context_of(change.traceparent)
        with _TRACER.start_as_current_span(
                f"propagate {change.function}", context=parent, kind=SpanKind.PRODUCER,
                attributes={"skylark.chain": change.chain, "skylark.function": change.function,
                            "skylark.node": self.node, "skylark.version": change.version,
                            "skylark.policy": getattr(self.targets, "policy", "")}) as span:
            report = self._handle(event, change)
            span.set_attributes({"skylark.outcome": report.outcome, "skylark.mode": report.mode or "",
                                 "skylark.targets": [t.node for t in report.targets]})
            return report

    def _handle(self, event: BaseCloudEvent, change: ChangeRecord) -> PropagationReport:
        start = time.perf_counter()
        context = {"chain": change.chain, "function": change.function, "event_id": event.get_id(),
                   "version": change.version}
        if change.op == "delete":
            chosen = self.targets.holders(self.node, change.function)
            links = {}
        else:
            # The change record's size decides what to read; the targets are decided again
            # below if the bundle read is another version (a newer write).
            chosen = self.targets.targets(self.node, change.function, change.size, chain=change.chain,
                                          version=change.version)
            links = self._links(chosen)
        # With a slow link to compress for, a larger bundle may go inline (compressed): read it.
        readable = self.inline_max_bytes * (COMPRESSIBLE_READ_FACTOR if any(
            self.compressor.may_pay(change.size, mbps) for mbps in links.values()) else 1)
        try:
            snapshot = read_for_push(self.store, change.chain, change.function, change.mechanism,
                                     size=change.size, whole_up_to=readable,
                                     wanted=self._wanted(change, readable))
        except BundleNotFound:
            local_version = self.store.local_version(change.chain, change.function)
            if local_version == 0 or (change.op == "delete" and local_version < change.version):
                raise ClientError(400, "unknown_chain",
                                  f"no state (or tombstone) v{change.version} for chain {change.chain!r}, "
                                  f"function {change.function!r} on this node") from None
            if change.op == "delete" and local_version == change.version:
                # Only a delete this node's Redis shows is pushed, never what an event merely
                # claims: a forged change must not wipe the neighbours' copies.
                payloads = {None: self._tombstone(change)}
                variant = dict.fromkeys((t.node for t in chosen), None)
            else:
                log.info("change superseded by a delete", extra=context)
                return PropagationReport("superseded", change.chain, change.function, change.version)
        else:
            meta = snapshot.meta
            if change.op == "delete" or (meta.version, meta.size) != (change.version, change.size):
                chosen = self.targets.targets(self.node, change.function, meta.size, chain=change.chain,
                                              version=meta.version)
                links = self._links(chosen)
            payloads, variant = self._encode(change, snapshot, chosen, links)
        self.metrics.rebuild_seconds.observe(time.perf_counter() - start)

        first = next(iter(payloads.values()))
        version = first.meta.version
        newer = version > change.version
        if not chosen:
            return PropagationReport("no_targets", change.chain, change.function, change.version,
                                     version, None, newer)
        sent = [payloads[variant[t.node]] for t in chosen]
        if change.op != "delete":
            # Before the copies leave: a reader waiting for one on a node we do not send it to
            # (its topology is newer or older than ours) reads this and stops waiting.
            self.store.record_placement(change.chain, change.function,
                                        Placement(version, tuple(t.node for t in chosen)),
                                        ttl_ms=first.meta.ttl_ms)
        outcomes = self._publish_all(sent, chosen)
        elapsed = time.perf_counter() - start
        self.metrics.propagation_seconds.labels(first.mode).observe(elapsed)
        results = tuple(TargetOutcome(t.node, o.delivery.value, o.status_code, o.elapsed_ms, p.mode,
                                      variant[t.node] == ZSTD_VARIANT, len(p.data))
                        for t, o, p in zip(chosen, outcomes, sent))
        for target, outcome, payload in zip(chosen, outcomes, sent):
            self.metrics.publishes.labels(outcome.delivery.value).inc()
            if outcome.ok:
                self.metrics.bytes_sent.labels(payload.mode).inc(len(payload.data))
            else:
                log.warning("propagation to %s %s: %s", target.node, outcome.delivery.value,
                            outcome.reason[:200], extra={**context, "target": target.node,
                                                         "status": outcome.status_code})
        report = PropagationReport("propagated", change.chain, change.function, change.version,
                                   version, first.mode, newer, results)
        failed = [r.node for r in results if r.delivery == Delivery.GAVE_UP.value]
        if failed:
            raise ClientError(503, "propagation_failed",
                              f"broker(s) of {', '.join(failed)} did not take v{version} of "
                              f"{change.chain}/{change.function}; deliver the change again")
        log.info("propagated", extra={**context, "version": version, "mode": first.mode,
                                      "targets": [t.node for t in chosen], "newer": newer,
                                      "elapsed_ms": round(elapsed * 1000, 3)})
        return report

    # -- what each target gets ----------------------------------------------------------------

    def _links(self, chosen: list[Target]) -> dict[str, float | None]:
        """Each target's path bottleneck (Mbit/s) where compression is on and the resolver knows it."""
        bandwidth = getattr(self.targets, "path_bandwidth_mbps", None)
        if not (self.compressor.enabled and self.binary) or bandwidth is None:
            return {}
        return {t.node: bandwidth(self.node, t.node) for t in chosen}


    def _encode(self, change: ChangeRecord, snapshot: Snapshot, chosen: list[Target],
                links: dict[str, float | None]) -> tuple[dict, dict]:
        """The payloads of this push by variant (None: raw, ZSTD_VARIANT: compressed) and the
        variant each target gets."""
        meta = snapshot.meta
        variant = dict.fromkeys((t.node for t in chosen), None)
        if not self.binary:
            return ({None: encode_payload(Bundle(meta, snapshot.fields), origin=self.node,
                                          inline_max_bytes=self.inline_max_bytes if snapshot.whole else -1,
                                          sign=self.signing_key is not None)}, variant)
        changed = self._delta(change, meta, snapshot.lengths)
        base = meta.version - 1 if changed else None
        fields = ({name: snapshot.fields[name] for name in changed if name in snapshot.fields} if changed
                  else snapshot.fields if snapshot.whole else {})
        claim = encode_claim(meta, origin=self.node, base_version=base, changed=changed)
        if len(fields) < (len(changed) if changed else meta.field_count):
            return {None: claim}, variant  # the values were not read: they would not go inline
        payloads = {None: encode_binary(meta, fields, origin=self.node, inline_max_bytes=self.inline_max_bytes,
                                        base_version=base) or claim}
        size = sum(len(v) for v in fields.values())
        slow = {node: mbps for node, mbps in links.items() if self.compressor.may_pay(size, mbps)}
        if slow:
            compressed = self.compressor.compress(fields)
            chosen_for = [node for node, mbps in slow.items() if self.compressor.pays(compressed, mbps)]
            self.metrics.compression.labels("compressed" if chosen_for else
                                            "incompressible" if not compressed.frames else "slower").inc()
            if chosen_for:
                payloads[ZSTD_VARIANT] = encode_binary(meta, fields, origin=self.node,
                                                       inline_max_bytes=self.inline_max_bytes, base_version=base,
                                                       compressed=compressed.frames) or claim
                variant.update(dict.fromkeys(chosen_for, ZSTD_VARIANT))
        return payloads, variant

    def _delta(self, change: ChangeRecord, meta: BundleMeta, lengths: Mapping[str, int]) -> dict[str, int] | None:
        """The changed fields (name → length) when a delta from the previous version can be
        sent: the stored version is the change's (a newer write's changes since are not known),
        the write merged some fields into a bundle of more (a write that replaced the bundle,
        started it anew after a delete or switched mechanism wrote all of it), and they are at
        most DELTA_MAX_SHARE of its bytes."""
        if (not self.binary or change.op != "put" or meta.version != change.version or change.version < 2
                or not 0 < len(change.fields) < meta.field_count
                or any(name not in lengths for name in change.fields)):
            return None
        changed = {name: lengths[name] for name in change.fields}
        if sum(len(n) + length for n, length in changed.items()) > DELTA_MAX_SHARE * meta.size:
            return None
        return changed

    def _wanted(self, change: ChangeRecord, readable: int) -> Callable[[BundleMeta, dict[str, int]], list[str]]:
        """For a bundle too large to read whole: the fields to read, those of a delta that may
        go inline (its bytes at most ``readable``), else none."""
        def wanted(meta: BundleMeta, lengths: dict[str, int]) -> list[str]:
            changed = self._delta(change, meta, lengths)
            if changed is None or sum(changed.values()) > readable:
                return []
            return list(changed)
        return wanted

    def _tombstone(self, change: ChangeRecord) -> Payload:
        # The delete's own change entry was written with its tombstone, in the same transaction:
        # its node and time are the tombstone's.
        tombstone = Tombstone(change.chain, change.function, change.version, change.node, change.ts_ms)
        if self.binary:
            return encode_binary_tombstone(tombstone, origin=self.node)
        return encode_tombstone(tombstone, origin=self.node)

    def _publish_all(self, payloads: list[Payload], chosen: list[Target]) -> list[PublishOutcome]:
        # The receivers' apply continues this push's trace (the signature does not cover it).
        trace = current_traceparent()
        events = [_traced(propagation_event(p, t.node, self.signing_key), trace) for p, t in zip(payloads, chosen)]
        # The last target is published from the request thread itself: one target needs no pool.
        futures = [self.executor.submit(self.publisher.publish, t.broker_url, e)
                   for t, e in zip(chosen[:-1], events[:-1])]
        last = self.publisher.publish(chosen[-1].broker_url, events[-1])
        return [f.result() for f in futures] + [last]
