"""Settings of a Skylark process, read once from the environment (Knative: env from a ConfigMap).

``Settings.from_env()`` is the only place the core reads ``os.environ``; everything else receives
a ``Settings`` explicitly, so tests and the local cluster build them by hand.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from urllib.parse import urlsplit

from skylark.state.errors import ConfigError
from skylark.state.keys import DEFAULT_CHANGE_STREAM
from skylark.state.names import validate_name
from skylark.state.numbers import parse_float, parse_int

# Where a bundle goes (neighbors_service.placement): skylark = elected toward its reader;
# random = a random reachable node; stateless = one store node (the thesis's cloud baseline);
# pull = nowhere, readers fetch it from where it was written.
POLICIES = ("skylark", "random", "stateless", "pull")
REDIS_SCHEMES = ("redis", "rediss", "unix")


def env_int(env: Mapping[str, str], name: str, default: int | None, minimum: int | None = None) -> int | None:
    """``env[name]`` as an integer (the default when unset or empty); :class:`ConfigError` otherwise.

    ASCII digits only and within int64 (:func:`skylark.state.numbers.parse_int`): ``int()`` would
    also take " 12", "1_000" and "١٢", and a typo should stop the service, not configure it.
    """
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = parse_int(raw, name)
    except ValueError:
        raise ConfigError(f"{name}={str(raw)[:40]!r} is not an integer (ASCII digits, within int64)") from None
    if minimum is not None and value < minimum:
        raise ConfigError(f"{name}={value} must be >= {minimum}")
    return value


def env_float(env: Mapping[str, str], name: str, default: float, minimum: float | None = None,
              maximum: float | None = None) -> float:
    """``env[name]`` as a finite number within [minimum, maximum] (the default when unset or empty).

    Plain ASCII decimals only (:func:`skylark.state.numbers.parse_float`): no "nan", "inf",
    "1_0" or Unicode digits, which ``float()`` would accept.
    """
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = parse_float(raw, name)
    except ValueError:
        raise ConfigError(f"{name}={str(raw)[:40]!r} is not a number (a finite ASCII decimal)") from None
    if (minimum is not None and value < minimum) or (maximum is not None and value > maximum):
        low = "-inf" if minimum is None else minimum
        high = "inf" if maximum is None else maximum
        raise ConfigError(f"{name}={value} must be within [{low}, {high}]")
    return value


def env_list(env: Mapping[str, str], name: str, default: Sequence[str]) -> tuple[str, ...]:
    """A comma-separated list (blanks dropped); the default when unset."""
    raw = env.get(name)
    if raw is None or raw.strip() == "":
        return tuple(default)
    return tuple(item.strip() for item in raw.split(",") if item.strip())


def validate_redis_url(url: str) -> str:
    parts = urlsplit(url)
    if parts.scheme not in REDIS_SCHEMES:
        raise ConfigError(f"Redis URL {url!r} must start with redis://, rediss:// or unix://")
    if parts.scheme != "unix" and not parts.hostname:
        raise ConfigError(f"Redis URL {url!r} has no host")
    return url


@dataclass(frozen=True)
class Settings:
    """Core settings shared by every service. Service-specific settings wrap this object."""

    node: str = field(default_factory=lambda: socket.gethostname().split(".")[0] or "local")
    redis_url: str = "redis://127.0.0.1:6379/0"
    redis_password: str | None = None
    # The ACL user for other nodes' Redis too (their URLs from the topology carry no credentials);
    # default: the user named in redis_url, if any.
    redis_username: str | None = None
    redis_ca_cert: str | None = None  # CA bundle to verify rediss:// servers with (a mounted Secret)
    redis_timeout_s: float = 5.0
    change_stream: str = DEFAULT_CHANGE_STREAM
    change_stream_maxlen: int = 100_000
    max_bundle_bytes: int = 64 * 1024 * 1024
    inline_max_bytes: int = 256 * 1024
    neighbors_url: str = "http://127.0.0.1:8090"
    policy: str = "skylark"
    broker_url: str | None = None
    port: int = 8080
    log_level: str = "INFO"
    # How long a successor waits for the bundle it was told about (by version) to arrive by
    # propagation before reading it from the origin instead; not at all under "stateless".
    propagation_wait_ms: int = 200

    def __post_init__(self) -> None:
        try:
            validate_name("node name", self.node)
        except ValueError as exc:
            raise ConfigError(f"SKYLARK_NODE: {exc}") from None
        validate_redis_url(self.redis_url)
        if self.policy not in POLICIES:
            raise ConfigError(f"SKYLARK_POLICY={self.policy!r} must be one of {', '.join(POLICIES)}")
        if self.max_bundle_bytes < 1:
            raise ConfigError("SKYLARK_MAX_BUNDLE_BYTES must be >= 1")
        if not 0 < self.port < 65536:
            raise ConfigError(f"PORT={self.port} is not a TCP port")
        if not self.change_stream:
            raise ConfigError("SKYLARK_CHANGE_STREAM must not be empty")

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> "Settings":
        env = os.environ if env is None else env
        node = env.get("SKYLARK_NODE")
        return cls(
            **({"node": node} if node else {}),
            redis_url=env.get("SKYLARK_REDIS_URL") or cls.redis_url,
            redis_password=env.get("SKYLARK_REDIS_PASSWORD") or None,
            redis_username=env.get("SKYLARK_REDIS_USERNAME") or None,
            redis_ca_cert=env.get("SKYLARK_REDIS_CA_CERT") or None,
            redis_timeout_s=env_float(env, "SKYLARK_REDIS_TIMEOUT", cls.redis_timeout_s, 0.001),
            change_stream=env.get("SKYLARK_CHANGE_STREAM") or cls.change_stream,
            change_stream_maxlen=env_int(env, "SKYLARK_CHANGE_STREAM_MAXLEN", cls.change_stream_maxlen, 1),
            max_bundle_bytes=env_int(env, "SKYLARK_MAX_BUNDLE_BYTES", cls.max_bundle_bytes, 1),
            inline_max_bytes=env_int(env, "SKYLARK_INLINE_MAX_BYTES", cls.inline_max_bytes, 0),
            neighbors_url=env.get("SKYLARK_NEIGHBORS_URL") or cls.neighbors_url,
            policy=env.get("SKYLARK_POLICY") or cls.policy,
            broker_url=env.get("K_SINK") or None,
            port=env_int(env, "PORT", cls.port, 1),
            log_level=(env.get("SKYLARK_LOG_LEVEL") or cls.log_level).upper(),
            propagation_wait_ms=env_int(env, "SKYLARK_PROPAGATION_WAIT_MS", cls.propagation_wait_ms, 0),
        )

    @property
    def redis_user(self) -> str | None:
        """The ACL user to log in as, on this node's Redis and on other nodes'."""
        return self.redis_username or urlsplit(self.redis_url).username or None

    @property
    def redis_secret(self) -> str | None:
        """The password for this node's and other nodes' Redis (explicit, else from redis_url)."""
        return self.redis_password or urlsplit(self.redis_url).password or None

    def with_(self, **changes: object) -> "Settings":
        """A copy with some fields changed (validated again)."""
        return replace(self, **changes)
