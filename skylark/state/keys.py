"""Redis key layout (pure). One place, so every part and the chart agree on it."""

from __future__ import annotations

PREFIX = "skylark"
DEFAULT_CHANGE_STREAM = "skylark:changes"


def bundle_key(chain: str, function: str) -> str:
    """HASH of the bundled fields of (chain, function)."""
    return f"{PREFIX}:bundle:{chain}:{function}"


def meta_key(chain: str, function: str) -> str:
    """HASH of the bundle's metadata (version, node, size, checksum, per-field digests)."""
    return f"{PREFIX}:meta:{chain}:{function}"


def placement_key(chain: str, function: str) -> str:
    """STRING on the origin naming where its handlers pushed the bundle (``bundle.Placement``)."""
    return f"{PREFIX}:placed:{chain}:{function}"


def single_key(chain: str, function: str, field: str) -> str:
    """STRING holding one field of single (unbundled) state."""
    return f"{PREFIX}:single:{chain}:{function}:{field}"


def dead_letter_stream(stream: str) -> str:
    """Where the local stream source parks entries that failed too often."""
    return f"{stream}:dead"
