"""The exceptions of the state library.

Every error a caller can act on has its own class; all derive from :class:`SkylarkError`, so a
service can map them to HTTP answers in one place (see ``skylark.serving.web``).
"""

from __future__ import annotations


class SkylarkError(Exception):
    """Base class. ``code`` is a short machine-readable name used in JSON error bodies."""

    code = "skylark_error"


class ConfigError(SkylarkError, ValueError):
    """A setting is missing or malformed (raised at start-up, never per request)."""

    code = "invalid_config"


class InvalidName(SkylarkError, ValueError):
    """A chain id, function name or field name does not match ``[A-Za-z0-9_.-]{1,128}``."""

    code = "invalid_name"


class BundleTooLarge(SkylarkError, ValueError):
    """A write would make a bundle larger than the configured limit; nothing was written."""

    code = "bundle_too_large"

    def __init__(self, size: int, limit: int) -> None:
        super().__init__(f"bundle would be {size} bytes, above the limit of {limit} bytes")
        self.size = size
        self.limit = limit


class BundleNotFound(SkylarkError, LookupError):
    """No bundle (or no such single field) exists for the chain and function."""

    code = "bundle_not_found"

    def __init__(self, chain: str, function: str, where: str = "local") -> None:
        super().__init__(f"no state for chain {chain!r}, function {function!r} ({where})")
        self.chain = chain
        self.function = function
        self.where = where


class VersionConflict(SkylarkError):
    """A compare-and-set write expected another version than the stored one."""

    code = "version_conflict"

    def __init__(self, expected: int, actual: int) -> None:
        super().__init__(f"expected version {expected}, found {actual}")
        self.expected = expected
        self.actual = actual


class VersionsExhausted(VersionConflict):
    """The state is at the largest version an int64 holds: no write can follow it (409)."""

    code = "versions_exhausted"

    def __init__(self, chain: str, function: str, version: int) -> None:
        SkylarkError.__init__(self, f"chain {chain!r}, function {function!r} is at version {version}, the largest "
                                    "an int64 holds: delete it and write it anew under another chain")
        self.expected = version
        self.actual = version


class ChecksumMismatch(SkylarkError, ValueError):
    """A bundle's content does not match the checksum it carries."""

    code = "checksum_mismatch"


class DependencyUnavailable(SkylarkError, ConnectionError):
    """Something a request needs (Redis, the neighbors service, a broker) is down: answer 503,
    so that Knative retries the delivery."""

    code = "dependency_unavailable"


class StoreUnavailable(DependencyUnavailable):
    """Redis could not be reached (after retries) or timed out. Callers answer 503."""

    code = "store_unavailable"
