"""A function's configuration: its ``config`` from the workflow declaration, overridden by the
environment, read through typed getters that fail at start-up with the key's name.

For a function named ``detect``, the key ``min_score`` is ``SKYLARK_DETECT_MIN_SCORE`` in the
environment (a name with ``-`` or ``.`` uses ``_``: ``detect-2`` → ``SKYLARK_DETECT_2_MIN_SCORE``),
else ``config: {min_score: ...}`` in the workflow, else the default the function passes.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping, Sequence

from skylark.state.errors import ConfigError
from skylark.state.settings import env_float, env_int, env_list

__all__ = ["Config", "env_prefix"]

# Skylark's own variables: never a function's config key, whatever the function is called (a
# function named "redis" would otherwise read SKYLARK_REDIS_URL as its key "url").
SKYLARK_ENV = frozenset("""
SKYLARK_ACCESS_LOG SKYLARK_BIND SKYLARK_BROKER_MAX_IN_FLIGHT SKYLARK_BROKER_NAME SKYLARK_BROKER_NAMESPACE
SKYLARK_BROKER_SERVICES SKYLARK_BROKER_TRIGGERS SKYLARK_BROKER_URL_TEMPLATE SKYLARK_BROKER_WORKERS
SKYLARK_CHANGE_STREAM SKYLARK_CHANGE_STREAM_MAXLEN SKYLARK_CHART_VALUES SKYLARK_CLUSTER_FILE SKYLARK_DEDUPE_TTL
SKYLARK_ELECT_SEED SKYLARK_FUNCTION SKYLARK_FUNCTION_NAME SKYLARK_GRACEFUL_TIMEOUT SKYLARK_INLINE_MAX_BYTES
SKYLARK_K8S_BROKER SKYLARK_K8S_HOST SKYLARK_K8S_NAMESPACE SKYLARK_K8S_REFRESH SKYLARK_K8S_REFRESH_INTERVAL_S
SKYLARK_LOG_LEVEL SKYLARK_MAX_BUNDLE_BYTES SKYLARK_MAX_REQUEST_BYTES SKYLARK_NEIGHBORS_URL SKYLARK_NODE
SKYLARK_PEERS SKYLARK_POLICY SKYLARK_PROPAGATION_WAIT_MS SKYLARK_PUBLISH_RETRIES SKYLARK_PUBLISH_TIMEOUT
SKYLARK_PUBLISH_WORKERS SKYLARK_REDIS_CA_CERT SKYLARK_REDIS_PASSWORD SKYLARK_REDIS_PORT SKYLARK_REDIS_SELECTOR
SKYLARK_REDIS_SERVER SKYLARK_REDIS_TIMEOUT SKYLARK_REDIS_URL SKYLARK_REDIS_USERNAME SKYLARK_SIGNING_KEY
SKYLARK_SLO_MAX_LATENCY_MS SKYLARK_SLO_MIN_BANDWIDTH_MBPS SKYLARK_TARGETS_TTL SKYLARK_THREADS
SKYLARK_TOPOLOGY_FILE SKYLARK_TOPOLOGY_SOURCE SKYLARK_WARMUP_MAX_PAIRS SKYLARK_WORKERS SKYLARK_WORKER_TIMEOUT
SKYLARK_WORKFLOW
""".split())


def env_prefix(function: str) -> str:
    """``SKYLARK_<NAME>_``: where the environment overrides a function's configuration."""
    return "SKYLARK_" + re.sub(r"[^A-Za-z0-9]", "_", function).upper() + "_"


class Config(Mapping[str, str]):
    """Read-only string settings with typed getters (a :class:`~collections.abc.Mapping`)."""

    def __init__(self, values: Mapping[str, str] | None = None, *, function: str = "") -> None:
        self._values = {str(k): str(v) for k, v in (values or {}).items()}
        self.function = function

    @classmethod
    def merged(cls, function: str, declared: Mapping[str, str], env: Mapping[str, str],
               overrides: Mapping[str, str] | None = None) -> "Config":
        """The workflow's ``declared`` config, then the environment's ``SKYLARK_<NAME>_<KEY>``,
        then explicit ``overrides`` (tests, embedding code)."""
        prefix = env_prefix(function)
        values = dict(declared)
        values.update({k[len(prefix):].lower(): v for k, v in env.items()
                       if k.startswith(prefix) and len(k) > len(prefix) and k not in SKYLARK_ENV})
        values.update(overrides or {})
        return cls(values, function=function)

    def __getitem__(self, key: str) -> str:
        return self._values[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)

    def _name(self, key: str) -> str:
        return f"{self.function}.config.{key} ({env_prefix(self.function)}{key.upper()})" if self.function else key

    def str(self, key: str, default: str = "") -> str:
        value = self._values.get(key)
        return default if value is None or value == "" else value

    def int(self, key: str, default: int, *, minimum: int | None = None) -> int:
        return env_int({self._name(key): self._values[key]} if key in self._values else {}, self._name(key),
                       default, minimum)

    def float(self, key: str, default: float, *, minimum: float | None = None,
              maximum: float | None = None) -> float:
        return env_float({self._name(key): self._values[key]} if key in self._values else {}, self._name(key),
                         default, minimum, maximum)

    def list(self, key: str, default: Sequence[str] = ()) -> tuple[str, ...]:
        return env_list({key: self._values[key]} if key in self._values else {}, key, default)

    def bool(self, key: str, default: bool) -> bool:
        raw = self._values.get(key)
        if raw is None or raw == "":
            return default
        value = raw.strip().lower()
        if value in ("1", "true", "yes", "on"):
            return True
        if value in ("0", "false", "no", "off"):
            return False
        raise ConfigError(f"{self._name(key)}={raw!r} must be true or false")
