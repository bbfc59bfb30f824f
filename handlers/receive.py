"""Bundle received (``io.skylark.bundle.propagated``): verify, dedupe, pull if claim-checked, apply.

A tombstone (a delete on the origin) is applied by the same rule: ``StateStore.apply_tombstone``
drops the local copy when the tombstone is newer and keeps its version.

- The event must be meant for this node (``skylarktarget``, when present) — else 400.
- With a signing key configured, the HMAC in ``skylarksignature`` must match: an event without
  one is refused with 401 ``missing_signature`` (the sender did not authenticate), one whose
  signature does not match with 403 ``invalid_signature`` (it did, and is not trusted). Nothing is
  written either way; the check comes before the dedupe mark and any pull.
- A redelivery of an event already applied (same source + id) is acknowledged without work.
- A claim check is resolved through the resolver's ``redis_url(origin)`` and read in one round
  trip (a pooled client per origin); an origin the topology does not know (yet) is a 404
  ``origin_unknown`` (retried by Knative, as a 503 would be, without claiming a server fault).
  If the origin now holds a *newer* version than claimed, that one is applied (newer wins either
  way; the answer says ``"newer": true``). If the origin no longer has the state, or has an
  older version than claimed (its Redis lost data), nothing is applied (``claim_gone``).
- ``StateStore.apply`` verifies the checksum and keeps the newest version: equal is a no-op
  (``duplicate``), older is ``stale`` (counted), same version with other content is a
  ``conflict`` (local copy kept, counted). The dedupe mark is set in the same transaction as
  that outcome (``StateStore.apply(once_key=...)``), so a redelivery of an inline bundle is
  recognised without a round trip of its own and never half-handled.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

from cloudevents.core.base import BaseCloudEvent

from handlers import signing
from handlers.bundle_event import Claim, decode_propagation
from skylark.state.dedupe import Deduper
from handlers.metrics import HandlerMetrics
from handlers.rebuild import current_bundle
from skylark.state.bundle import ApplyOutcome, Bundle
from skylark.state.errors import BundleNotFound, BundleTooLarge, ChecksumMismatch
from skylark.state.reader import RemoteStores
from skylark.state.store import StateStore
from skylark.serving.web import ClientError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ReceiveReport:
    outcome: str  # applied | duplicate | stale | conflict | duplicate_event | claim_gone
    chain: str
    function: str
    version: int
    local_version: int | None = None
    mode: str = "inline"
    newer: bool = False

    def to_dict(self) -> dict:
        return {"outcome": self.outcome, "chain": self.chain, "function": self.function,
                "version": self.version, "local_version": self.local_version, "mode": self.mode,
                "newer": self.newer}


class Receiver:
    def __init__(self, *, node: str, store: StateStore, remote: RemoteStores, deduper: Deduper,
                 metrics: HandlerMetrics, signing_key: bytes | None = None) -> None:
        self.node = node
        self.store = store
        self.remote = remote
        self.deduper = deduper
        self.metrics = metrics
        self.signing_key = signing_key

    def handle(self, event: BaseCloudEvent) -> ReceiveReport:
        incoming = decode_propagation(event)
        if incoming.target is not None and incoming.target != self.node:
            raise ClientError(400, "wrong_target",
                              f"event is meant for node {incoming.target!r}, this is {self.node!r}")
        if self.signing_key is not None:
            if not incoming.signature:
                raise ClientError(401, "missing_signature",
                                  "this node requires signed propagation events: the skylarksignature "
                                  "extension is missing")
            if not signing.verify(self.signing_key, incoming.signed_message(), incoming.signature):
                raise ClientError(403, "invalid_signature",
                                  "skylarksignature does not match the event (wrong key, or the event "
                                  "was changed after signing)")
        context = {"chain": incoming.chain, "function": incoming.function, "event_id": incoming.id,
                   "version": incoming.version, "mode": incoming.mode}
        newer = False
        once = {"once_key": self.deduper.key(incoming.source, incoming.id), "once_ttl_s": self.deduper.ttl_s}
        if incoming.tombstone is not None:
            result = self.store.apply_tombstone(incoming.tombstone, **once)
            return self._report(incoming, result, context, incoming.version)
        if incoming.bundle is not None:
            bundle = incoming.bundle
        else:
            # Checked before the pull, which is the expensive part of a claim check; an inline
            # bundle is checked by the apply itself, in the same round trip.
            if self.deduper.seen(incoming.source, incoming.id):
                return self._duplicate_event(incoming, context)
            pulled = self._pull(incoming.claim)  # type: ignore[arg-type]
            if pulled is None:
                log.info("claim check gone at its origin", extra=context)
                self.deduper.mark(incoming.source, incoming.id)
                return ReceiveReport("claim_gone", incoming.chain, incoming.function,
                                     incoming.version, None, incoming.mode)
            bundle = pulled
            newer = bundle.version > incoming.version
        result = self.store.apply(bundle, **once)
        return self._report(incoming, result, context, bundle.version, newer)

    def _report(self, incoming, result, context: dict, version: int, newer: bool = False) -> ReceiveReport:
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
                             result.local_version, incoming.mode, newer)

    def _duplicate_event(self, incoming, context: dict) -> ReceiveReport:
        self.metrics.duplicates.labels("event").inc()
        log.info("duplicate event acknowledged", extra=context)
        return ReceiveReport("duplicate_event", incoming.chain, incoming.function,
                             incoming.version, None, incoming.mode)

    def _pull(self, claim: Claim) -> Bundle | None:
        if claim.size > self.store.max_bundle_bytes:
            raise BundleTooLarge(claim.size, self.store.max_bundle_bytes)
        origin = self.remote.store_for(claim.node)
        if origin is None:
            # Most likely a topology that has not caught up with a new node yet, so the delivery
            # should be retried; but the node is named by the client, so this is not a failure of
            # ours (no 5xx): 404, which Knative's delivery retries like a 503.
            raise ClientError(404, "origin_unknown",
                              f"no Redis address known for origin node {claim.node!r} (yet)")
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
