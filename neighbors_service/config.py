"""Settings of the neighbors service, read once from the environment.

=====================================  =================================================  =========
env                                    meaning                                            default
=====================================  =================================================  =========
``SKYLARK_TOPOLOGY_SOURCE``            ``file`` or ``kubernetes``                          ``file``
``SKYLARK_TOPOLOGY_FILE``              topology YAML path, or a shipped example name       –
                                       (``thesis``, ``demo3``); required for ``file``
``SKYLARK_SLO_MAX_LATENCY_MS``         initial SLO max latency (ms)                        500
``SKYLARK_SLO_MIN_BANDWIDTH_MBPS``     initial SLO min bandwidth (Mbps)                    10
``SKYLARK_K8S_NAMESPACE``              namespace of the Redis pods and the brokers         default
``SKYLARK_REDIS_SELECTOR``             label selector of the Redis pods                    app=redis
``SKYLARK_REDIS_PORT``                 Redis port on the pod IP                            6379
``SKYLARK_BROKER_URL_TEMPLATE``        broker URL of a node; ``{namespace}``, ``{broker}``  ingress URL
                                       and ``{node}`` are filled in
``SKYLARK_K8S_BROKER``                 broker name for the template                        default
``SKYLARK_K8S_HOST``                   explicit API server URL (else in-cluster config,    –
                                       else ``KUBECONFIG`` / ``~/.kube/config``)
``KUBECONFIG``                         kubeconfig file                                     –
``SKYLARK_K8S_REFRESH``                ``watch`` or ``interval``                           watch
``SKYLARK_K8S_REFRESH_INTERVAL_S``     interval refresh period; in watch mode, the         30
                                       longest a watch request is held open
``SKYLARK_ELECT_SEED``                 seed of the ``random`` policy's generator           –
``PORT`` and the core ``SKYLARK_*``    see ``docs/conventions.md``
=====================================  =================================================  =========
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field

from neighbors_service.policies import SLO, InvalidElection
from skylark.state.errors import ConfigError
from skylark.state.settings import Settings, env_float, env_int

DEFAULT_BROKER_URL_TEMPLATE = "http://broker-ingress.knative-eventing.svc.cluster.local/{namespace}/{broker}"
SOURCES = ("file", "kubernetes")
REFRESH_MODES = ("watch", "interval")


@dataclass(frozen=True)
class NeighborsSettings:
    core: Settings = field(default_factory=Settings)
    topology_source: str = "file"
    topology_file: str | None = None
    slo: SLO = field(default_factory=SLO)
    k8s_namespace: str = "default"
    redis_selector: str = "app=redis"
    redis_port: int = 6379
    broker_url_template: str = DEFAULT_BROKER_URL_TEMPLATE
    k8s_broker: str = "default"
    k8s_host: str | None = None
    kubeconfig: str | None = None
    k8s_refresh: str = "watch"
    k8s_refresh_interval_s: float = 30.0
    elect_seed: int | None = None

    def __post_init__(self) -> None:
        if self.topology_source not in SOURCES:
            raise ConfigError(
                f"SKYLARK_TOPOLOGY_SOURCE={self.topology_source!r} must be one of {', '.join(SOURCES)}"
            )
        if self.topology_source == "file" and not self.topology_file:
            raise ConfigError(
                "SKYLARK_TOPOLOGY_FILE is required when SKYLARK_TOPOLOGY_SOURCE=file "
                "(a path, or a shipped example: thesis, demo3)"
            )
        if self.k8s_refresh not in REFRESH_MODES:
            raise ConfigError(f"SKYLARK_K8S_REFRESH={self.k8s_refresh!r} must be watch or interval")
        if self.k8s_refresh_interval_s <= 0:
            raise ConfigError("SKYLARK_K8S_REFRESH_INTERVAL_S must be > 0")
        if not 0 < self.redis_port < 65536:
            raise ConfigError(f"SKYLARK_REDIS_PORT={self.redis_port} is not a TCP port")
        try:
            self.broker_url_template.format(namespace="ns", broker="b", node="n")
        except (KeyError, IndexError, ValueError) as exc:
            raise ConfigError(
                f"SKYLARK_BROKER_URL_TEMPLATE={self.broker_url_template!r}: only {{namespace}}, "
                f"{{broker}} and {{node}} may be used ({exc})"
            ) from None

    @property
    def port(self) -> int:
        return self.core.port

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> "NeighborsSettings":
        env = os.environ if env is None else env
        try:
            slo = SLO(
                max_latency_ms=env_float(env, "SKYLARK_SLO_MAX_LATENCY_MS", 500.0),
                min_bandwidth_mbps=env_float(env, "SKYLARK_SLO_MIN_BANDWIDTH_MBPS", 10.0),
            )
        except InvalidElection as exc:
            raise ConfigError(f"SKYLARK_SLO_*: {exc}") from None
        return cls(
            core=Settings.from_env(env),
            topology_source=env.get("SKYLARK_TOPOLOGY_SOURCE") or "file",
            topology_file=env.get("SKYLARK_TOPOLOGY_FILE") or None,
            slo=slo,
            k8s_namespace=env.get("SKYLARK_K8S_NAMESPACE") or "default",
            redis_selector=env.get("SKYLARK_REDIS_SELECTOR") or "app=redis",
            redis_port=env_int(env, "SKYLARK_REDIS_PORT", 6379) or 6379,
            broker_url_template=env.get("SKYLARK_BROKER_URL_TEMPLATE") or DEFAULT_BROKER_URL_TEMPLATE,
            k8s_broker=env.get("SKYLARK_K8S_BROKER") or "default",
            k8s_host=env.get("SKYLARK_K8S_HOST") or None,
            kubeconfig=env.get("KUBECONFIG") or None,
            k8s_refresh=env.get("SKYLARK_K8S_REFRESH") or "watch",
            k8s_refresh_interval_s=env_float(env, "SKYLARK_K8S_REFRESH_INTERVAL_S", 30.0),
            elect_seed=env_int(env, "SKYLARK_ELECT_SEED", None),
        )
