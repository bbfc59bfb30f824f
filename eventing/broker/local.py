"""A broker served in a thread of this process, for tests, benchmarks and ``skylark up``."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from eventing.broker.app import EXTENSION_KEY, BrokerConfig, create_app
from eventing.broker.dispatcher import BrokerStats, Dispatcher
from eventing.broker.triggers import Trigger
from skylark.serving.threaded_server import ThreadedServer


class LocalBroker:
    """``LocalBroker(triggers, services).start()``; POST events to ``.url``; ``.drain()``, ``.stop()``.

    ``triggers=None`` serves the chart's Triggers (``eventing.wiring``); ``services`` maps a
    subscriber ``ref.name`` (``handlers``, ``detect``, ...) to its base URL.
    """

    def __init__(self, triggers: Iterable[Mapping[str, Any] | Trigger] | None = None,
                 services: Mapping[str, str] | None = None, *, host: str = "127.0.0.1", port: int = 0,
                 namespace: str = "default", broker: str | None = None, workers: int = 8,
                 max_in_flight: int = 10_000, chart_values_path: str | None = None) -> None:
        self.config = BrokerConfig(namespace=namespace, broker=broker, workers=workers,
                                   max_in_flight=max_in_flight, chart_values_path=chart_values_path,
                                   services=dict(services or {}))
        self.app = create_app(self.config, triggers=list(triggers) if triggers is not None else None,
                              services=self.config.services)
        self.dispatcher: Dispatcher = self.app.extensions[EXTENSION_KEY]
        # Quiet: the broker counts and logs what matters itself.
        self._server = ThreadedServer(self.app, host, port, name="local-broker")
        self.host = host
        self.port = self._server.port

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def url(self) -> str:
        """The ingress URL (what a function's ``K_SINK`` points at)."""
        return f"{self.base_url}/{self.dispatcher.namespace}/{self.dispatcher.broker}"

    @property
    def stats(self) -> BrokerStats:
        return self.dispatcher.stats

    def start(self) -> "LocalBroker":
        self._server.start()
        return self

    def drain(self, timeout: float = 10.0) -> bool:
        """True once every accepted event is delivered, dead-lettered or dropped."""
        return self.dispatcher.drain(timeout)

    def stop(self, drain_timeout: float = 0.0) -> None:
        self._server.stop()
        self.dispatcher.close(drain_timeout)

    def __enter__(self) -> "LocalBroker":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
