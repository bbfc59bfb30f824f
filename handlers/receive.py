"""Bundle received (``io.skylark.bundle.propagated``): verify, dedupe, pull if claim-checked, apply.

A tombstone (a delete on the origin) is applied by the same rule: ``StateStore.apply_tombstone``
drops the local copy when the tombstone is newer and keeps its version. Both shapes of the
event are read: the binary one this release sends and the JSON one of the previous release
(``handlers/bundle_event.py``).

- The event must be meant for this node (``skylarktarget``, when present) — else 400.
- With a signing key configured, the HMAC in ``skylarksignature`` must match: an event without
  one is refused with 401 ``missing_signature`` (the sender did not authenticate), one whose
  signature does not match with 403 ``invalid_signature`` (it did, and is not trusted). Nothing is
  written either way; the check comes before the dedupe mark, any pull and any decompression.
- A redelivery of an event already applied (same source + id) is acknowledged without work.
- A claim check is resolved through the resolver's ``redis_url(origin)`` and read in one round
  trip (a pooled client per origin); an origin the topology does not know (yet) is a 404
  ``origin_unknown`` (retried by Knative, as a 503 would be, without claiming a server fault).
  If the origin now holds a *newer* version than claimed, that one is applied (newer wins either
  way; the answer says ``"newer": true``). If the origin no longer has the state, or has an
  older version than claimed (its Redis lost data), nothing is applied (``claim_gone``).
- A **delta** (the fields one write changed, on top of ``skylarkbase``) is applied where this
  node holds exactly the base (``StateStore.apply_delta``, which verifies the result's
  checksum); anywhere else the whole bundle is pulled from the origin like a claim check and
  applied instead (``"fallback": true``). A claim check naming changed fields pulls only those
  when the base is here.
- ``StateStore.apply`` verifies the checksum and keeps the newest version: equal is a no-op
  (``duplicate``), older is ``stale`` (counted), same version with other content is a
  ``conflict`` (local copy kept, counted). The dedupe mark is set in the same transaction as
  that outcome (``StateStore.apply(once_key=...)``), so a redelivery of an inline bundle is
  recognised without a round trip of its own and never half-handled.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass

from cloudevents.core.base import BaseCloudEvent
from opentelemetry.trace import SpanKind

from handlers.bundle_event import Claim, Incoming, decode_propagation
from skylark.state.dedupe import Deduper
from handlers.metrics import HandlerMetrics
from handlers.rebuild import changed_fields, current_bundle
from skylark.state.bundle import ApplyOutcome, Bundle, Delta
from skylark.state.errors import BundleNotFound, BundleTooLarge, ChecksumMismatch
from skylark.state.reader import RemoteStores
from skylark.state.store import StateStore
from skylark.serving.tracing import context_of_event, tracer
from skylark.serving.web import ClientError

log = logging.getLogger(__name__)
_TRACER = tracer("skylark.handlers")


@dataclass(frozen=True)
class ReceiveReport:
    outcome: str  # applied | duplicate | stale | conflict | duplicate_event | claim_gone
    chain: str
    function: str
    version: int
    local_version: int | None = None
    mode: str = "inline"
    newer: bool = False
    fallback: bool = False  # a delta whose base was not here: the whole bundle was pulled

    def to_dict(self) -> dict:
        return {"outcome": self.outcome, "chain": self.chain, "function": self.function,
                "version": self.version, "local_version": self.local_version, "mode": self.mode,
                "newer": self.newer, "fallback": self.fallback}


class Receiver:
    def __init__(self, *, node: str, store: StateStore, remote: RemoteStores, deduper: Deduper,
                 metrics: HandlerMetrics, signing_key: bytes | None = None) -> None:
        self.node = node
        self.store = store
        self.remote = remote
        self.deduper = deduper
        self.metrics = metrics
        self.signing_key = signing_key

    def handle(self, event: BaseCloudEvent, headers: Mapping[str, str] | None = None) -> ReceiveReport:
        """A pushed bundle, applied in a span that continues the push's trace."""
        with _TRACER.start_as_current_span(
                f"apply {event.get_extension('skylarkfunction') or 'bundle'}",
                context=context_of_event(event, headers),
                kind=SpanKind.CONSUMER, attributes={"skylark.node": self.node,
                                                    "skylark.chain": str(event.get_extension("skylarkchain") or ""),
                                                    "skylark.version": str(event.get_extension("skylarkversion") or "")}
        ) as span:
            report = self._handle(event)
            span.set_attribute("skylark.apply.outcome", report.to_dict().get("outcome", ""))
            return report

    def _handle(self, event: BaseCloudEvent) -> ReceiveReport:
        incoming = decode_propagation(event)
        if incoming.target is not None and incoming.target != self.node:
            raise ClientError(400, "wrong_target",
                              f"event is meant for node {incoming.target!r}, this is {self.node!r}")
        if self.signing_key is not None:
            if not incoming.signature:
                raise ClientError(401, "missing_signature",
                                  "this node requires signed propagation events: the skylarksignature "
                                  "extension is missing")
            if not incoming.verify(self.signing_key):
                raise ClientError(403, "invalid_signature",
                                  "skylarksignature does not match the event (wrong key, or the event "
                                  "was changed after signing)")
        incoming = incoming.materialize()
        if incoming.attributes is not None:
            self.metrics.bytes_received.labels(incoming.mode).inc(len(incoming.body))
        context = {"chain": incoming.chain, "function": incoming.function, "event_id": incoming.id,
                   "version": incoming.version, "mode": incoming.mode}
        once = {"once_key": self.deduper.key(incoming.source, incoming.id), "once_ttl_s": self.deduper.ttl_s}
        if incoming.tombstone is not None:
            result = self.store.apply_tombstone(incoming.tombstone, **once)
            return self._report(incoming, result, context, incoming.version)
        if incoming.bundle is not None:
            return self._report(incoming, self.store.apply(incoming.bundle, **once), context, incoming.version)
        if incoming.delta is not None:
            result = self.store.apply_delta(incoming.delta, **once)
            if result.outcome is not ApplyOutcome.NO_BASE:
                return self._report(incoming, result, context, incoming.version)
            claim = Claim(incoming.origin, incoming.chain, incoming.function, incoming.version,
                          incoming.delta.meta.checksum, incoming.delta.meta.size)
            return self._whole(incoming, claim, once, context, fallback=True)
        claim = incoming.claim
        assert claim is not None
        # Checked before the pull, which is the expensive part of a claim check; an inline
        # bundle is checked by the apply itself, in the same round trip.
        if self.deduper.seen(incoming.source, incoming.id):
            return self._duplicate_event(incoming, context)
        if claim.fields and self.store.local_version(claim.chain, claim.function) == claim.base_version:
            delta = self._pull_changed(claim)
            if delta is not None:
                result = self.store.apply_delta(delta, **once)
                if result.outcome is not ApplyOutcome.NO_BASE:
                    return self._report(incoming, result, context, incoming.version)
        return self._whole(incoming, claim, once, context)

    def _whole(self, incoming: Incoming, claim: Claim, once: dict, context: dict, *,
               fallback: bool = False) -> ReceiveReport:
        """Pull the whole bundle a claim (or a delta this node had no base for) names, and apply it."""
        if fallback:
            self.metrics.delta_fallbacks.inc()
        pulled = self._pull(claim)
        if pulled is None:
            log.info("claim check gone at its origin", extra=context)
            self.deduper.mark(incoming.source, incoming.id)
            return ReceiveReport("claim_gone", incoming.chain, incoming.function,
                                 incoming.version, None, incoming.mode, fallback=fallback)
        result = self.store.apply(pulled, **once)
        return self._report(incoming, result, context, pulled.version, pulled.version > incoming.version, fallback)

    def _report(self, incoming, result, context: dict, version: int, newer: bool = False,
                fallback: bool = False) -> ReceiveReport:
        if result.outcome is ApplyOutcome.SEEN:
            return self._duplicate_event(incoming, context)
        if result.outcome is ApplyOutcome.STALE:
            self.metrics.stale.inc()
        elif result.outcome is ApplyOutcome.DUPLICATE:
            self.metrics.duplicates.labels("version").inc()
        level = logging.INFO if result.outcome in (ApplyOutcome.APPLIED, ApplyOutcome.DUPLICATE) else logging.WARNING
        what = "tombstone" if incoming.tombstone is not None else "bundle"
        log.log(level, "%s %s", what, result.outcome.value,
                extra={**context, "version": version, "local_version": result.local_version})
        return ReceiveReport(result.outcome.value, incoming.chain, incoming.function, version,
                             result.local_version, incoming.mode, newer, fallback)

    def _duplicate_event(self, incoming, context: dict) -> ReceiveReport:
        self.metrics.duplicates.labels("event").inc()
        log.info("duplicate event acknowledged", extra=context)
        return ReceiveReport("duplicate_event", incoming.chain, incoming.function,
                             incoming.version, None, incoming.mode)

    def _origin(self, claim: Claim):  # noqa: ANN202 - a StateStore
        if claim.size > self.store.max_bundle_bytes:
            raise BundleTooLarge(claim.size, self.store.max_bundle_bytes)
        origin = self.remote.store_for(claim.node)
        if origin is None:
            # Most likely a topology that has not caught up with a new node yet, so the delivery
            # should be retried; but the node is named by the client, so this is not a failure of
            # ours (no 5xx): 404, which Knative's delivery retries like a 503.
            raise ClientError(404, "origin_unknown",
                              f"no Redis address known for origin node {claim.node!r} (yet)")
        return origin

    def _pull(self, claim: Claim) -> Bundle | None:
        origin = self._origin(claim)
        start = time.perf_counter()
        try:
            bundle = current_bundle(origin, claim.chain, claim.function)
        except BundleNotFound:
            return None
        self.metrics.pull_seconds.observe(time.perf_counter() - start)
        self.metrics.bytes_pulled.inc(bundle.meta.size)
        if bundle.version < claim.version:
            return None
        if bundle.version == claim.version and bundle.meta.checksum != claim.checksum:
            raise ChecksumMismatch(
                f"origin {claim.node} holds v{claim.version} of {claim.chain}/{claim.function} with "
                f"checksum {bundle.meta.checksum}, the claim says {claim.checksum}")
        return bundle

    def _pull_changed(self, claim: Claim) -> Delta | None:
        """The fields a claim names as changed, as a delta onto its base; None when the origin
        holds another version now (the whole bundle is pulled then)."""
        origin = self._origin(claim)
        start = time.perf_counter()
        snapshot = changed_fields(origin, claim.chain, claim.function, claim.fields)
        self.metrics.pull_seconds.observe(time.perf_counter() - start)
        if snapshot is None or snapshot.meta.version != claim.version or snapshot.meta.checksum != claim.checksum:
            return None
        self.metrics.bytes_pulled.inc(sum(len(n) + len(v) for n, v in snapshot.fields.items()))
        return Delta(snapshot.meta, claim.base_version, snapshot.fields)  # type: ignore[arg-type]
