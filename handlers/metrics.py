"""Prometheus metrics of one handlers app (own registry: no process-global state).

Under gunicorn with several workers, set ``PROMETHEUS_MULTIPROC_DIR`` (prometheus-client's
multiprocess mode): ``/metrics`` then aggregates every worker's values.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram

from eventing import catalogue
from skylark.serving.metrics import exposition_registry

# Seconds; propagation of small bundles takes a millisecond or two, a 5 MiB claim check more.
LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
_KNOWN_TYPES = {catalogue.REDIS_STREAM, catalogue.PING, catalogue.BUNDLE_PROPAGATED}


def type_label(event_type: str | None) -> str:
    """Bounded label values: clients choose event types."""
    return event_type if event_type in _KNOWN_TYPES else "other"


class HandlerMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.events = Counter("skylark_handler_events_total", "Events handled, by type and outcome",
                              ["type", "outcome"], registry=r)
        self.rebuild_seconds = Histogram("skylark_handler_rebuild_seconds",
                                         "Reading the current bundle of a change", buckets=LATENCY_BUCKETS,
                                         registry=r)
        self.propagation_seconds = Histogram(
            "skylark_handler_propagation_seconds",
            "From receiving a change to every target broker's answer", ["mode"],
            buckets=LATENCY_BUCKETS, registry=r)
        self.pull_seconds = Histogram("skylark_handler_claim_pull_seconds",
                                      "Pulling a claim-checked bundle from its origin's Redis",
                                      buckets=LATENCY_BUCKETS, registry=r)
        self.bytes_sent = Counter("skylark_handler_bytes_sent_total",
                                  "Bytes of propagation event data sent to brokers", ["mode"], registry=r)
        self.bytes_received = Counter("skylark_handler_bytes_received_total",
                                      "Bytes of binary propagation event bodies received", ["mode"], registry=r)
        self.bytes_pulled = Counter("skylark_handler_bytes_pulled_total",
                                    "Bundle bytes pulled from other nodes (claim checks, warm-up)",
                                    registry=r)
        self.publishes = Counter("skylark_handler_publishes_total",
                                 "Propagation events sent, by delivery outcome", ["delivery"], registry=r)
        self.stale = Counter("skylark_handler_stale_total",
                             "Received bundles older than the local copy (rejected)", registry=r)
        self.duplicates = Counter("skylark_handler_duplicates_total",
                                  "Duplicates: a redelivered event (event) or a version already here (version)",
                                  ["kind"], registry=r)
        self.compression = Counter("skylark_handler_compression_total",
                                   "Pushes to slow links: compressed for some target, incompressible, or "
                                   "compressing slower than sending the bytes", ["outcome"], registry=r)
        self.delta_fallbacks = Counter("skylark_handler_delta_fallbacks_total",
                                       "Deltas whose base version was not here: the whole bundle was pulled",
                                       registry=r)
        self.warmup_refreshed = Counter("skylark_handler_warmup_refreshed_total",
                                        "Bundles a warm-up pulled because the local copy was missing or older",
                                        registry=r)

    def exposition_registry(self) -> CollectorRegistry:
        """What ``/metrics`` serves: this app's registry, or all workers' in multiprocess mode."""
        return exposition_registry(self.registry)
