"""What ``/metrics`` serves under gunicorn: one worker's registry, or every worker's.

With several gunicorn workers, set ``PROMETHEUS_MULTIPROC_DIR`` (prometheus-client's
multiprocess mode; ``skylark/serving/gunicorn_conf.py`` clears it at start and marks dead
workers): a scrape then sums all workers instead of showing the one that answered.
"""

from __future__ import annotations

import os

from prometheus_client import CollectorRegistry, multiprocess

__all__ = ["exposition_registry"]


def exposition_registry(own: CollectorRegistry) -> CollectorRegistry:
    """``own``, or in multiprocess mode a registry that collects all workers' values."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        merged = CollectorRegistry()
        multiprocess.MultiProcessCollector(merged)
        return merged
    return own
