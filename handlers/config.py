"""Settings of the handlers service, read once from the environment.

=================================  =============================================================  ==========
env                                meaning                                                        default
=================================  =============================================================  ==========
``SKYLARK_DEDUPE_TTL``             seconds a received event's (source, id) is remembered           86400
``SKYLARK_SIGNING_KEY``            HMAC key of propagation events (sign on send, require on        –
                                   receive); unset = unsigned
``SKYLARK_PUBLISH_WORKERS``        threads per worker that publish to target brokers in parallel   8
``SKYLARK_PUBLISH_TIMEOUT``        read timeout of one publish, seconds                            10
``SKYLARK_PUBLISH_RETRIES``        retries of a publish (connect errors, 429, 5xx)                 3
``SKYLARK_TARGETS_TTL``            seconds a topology / SLO snapshot from the neighbors service    5
                                   is reused for target decisions
``SKYLARK_MAX_REQUEST_BYTES``      largest request body (413 above)                                see below
``SKYLARK_WARMUP_MAX_PAIRS``       most (chain, function) pairs one warm-up refreshes              1000
``SKYLARK_PROPAGATION_FORMAT``     ``binary``, or ``json``: the previous release's shape, for a    binary
                                   rolling upgrade while some receivers are not upgraded yet
``SKYLARK_COMPRESSION``            ``auto`` (zstd toward slow links, where it pays) or ``off``     auto
``PORT`` and the core ``SKYLARK_*``  see ``docs/conventions.md``
=================================  =============================================================  ==========

The default request limit fits the largest inline propagation event of either shape: a binary
event's body is at most ``SKYLARK_INLINE_MAX_BYTES``; the previous release's JSON shape, still
received during a rolling upgrade, grows the bundle by a third in base64, plus the JSON around it.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field

from skylark.state.errors import ConfigError
from skylark.state.settings import Settings, env_float, env_int

_ENVELOPE_ALLOWANCE = 64 * 1024
FORMATS = ("binary", "json")
COMPRESSION = ("auto", "off")


def default_max_request_bytes(inline_max_bytes: int) -> int:
    return max(1024 * 1024, inline_max_bytes * 4 // 3 + _ENVELOPE_ALLOWANCE)


@dataclass(frozen=True)
class HandlerSettings:
    core: Settings = field(default_factory=Settings)
    dedupe_ttl_s: int = 86_400
    signing_key: bytes | None = field(default=None, repr=False)
    publish_workers: int = 8
    publish_timeout_s: float = 10.0
    publish_retries: int = 3
    targets_ttl_s: float = 5.0
    max_request_bytes: int = 0  # 0: derived from core.inline_max_bytes
    warmup_max_pairs: int = 1000
    propagation_format: str = "binary"
    compression: str = "auto"

    def __post_init__(self) -> None:
        if self.max_request_bytes == 0:
            object.__setattr__(self, "max_request_bytes",
                               default_max_request_bytes(self.core.inline_max_bytes))
        if self.dedupe_ttl_s < 1:
            raise ConfigError("SKYLARK_DEDUPE_TTL must be >= 1")
        if self.publish_workers < 1:
            raise ConfigError("SKYLARK_PUBLISH_WORKERS must be >= 1")
        if self.max_request_bytes < 1024:
            raise ConfigError("SKYLARK_MAX_REQUEST_BYTES must be >= 1024")
        if self.warmup_max_pairs < 1:
            raise ConfigError("SKYLARK_WARMUP_MAX_PAIRS must be >= 1")
        if self.signing_key is not None and len(self.signing_key) < 16:
            raise ConfigError("SKYLARK_SIGNING_KEY must be at least 16 bytes")
        if self.propagation_format not in FORMATS:
            raise ConfigError(f"SKYLARK_PROPAGATION_FORMAT must be one of {', '.join(FORMATS)}")
        if self.compression not in COMPRESSION:
            raise ConfigError(f"SKYLARK_COMPRESSION must be one of {', '.join(COMPRESSION)}")

    @property
    def node(self) -> str:
        return self.core.node

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> "HandlerSettings":
        env = os.environ if env is None else env
        key = env.get("SKYLARK_SIGNING_KEY") or None
        return cls(
            core=Settings.from_env(env),
            dedupe_ttl_s=env_int(env, "SKYLARK_DEDUPE_TTL", 86_400, 1),
            signing_key=key.encode() if key else None,
            publish_workers=env_int(env, "SKYLARK_PUBLISH_WORKERS", 8, 1),
            publish_timeout_s=env_float(env, "SKYLARK_PUBLISH_TIMEOUT", 10.0, 0.001),
            publish_retries=env_int(env, "SKYLARK_PUBLISH_RETRIES", 3, 0),
            targets_ttl_s=env_float(env, "SKYLARK_TARGETS_TTL", 5.0, 0.001),
            max_request_bytes=env_int(env, "SKYLARK_MAX_REQUEST_BYTES", 0, 0),
            warmup_max_pairs=env_int(env, "SKYLARK_WARMUP_MAX_PAIRS", 1000, 1),
            propagation_format=env.get("SKYLARK_PROPAGATION_FORMAT", "binary"),
            compression=env.get("SKYLARK_COMPRESSION", "auto"),
        )
