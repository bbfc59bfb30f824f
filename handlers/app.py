"""The handlers app: ``create_app(settings=None, *, store=None, targets=None, publisher=None)``.

``skylark serve handlers`` runs it under gunicorn (``skylark/serving/gunicorn_conf.py``). Everything a
request needs lives in one :class:`Services` object per app (``app.extensions``), created here:
the local store, the target resolver, the publisher, the pooled clients of other nodes' Redis,
the dedupe marks, the metrics and the publishing thread pool. Nothing is shared between requests
through module state. :meth:`Services.close` (registered with ``atexit``, so it runs when a
gunicorn worker exits after SIGTERM) waits for in-flight publishes and closes the pools.
"""

from __future__ import annotations

import atexit
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from flask import Flask

from eventing.publisher import Publisher
from handlers.compression import Compressor
from handlers.config import HandlerSettings
from skylark.state.dedupe import Deduper
from handlers.ingress import EXTENSION, bp as events_bp
from handlers.metrics import HandlerMetrics
from handlers.propagate import Propagator
from handlers.receive import Receiver
from neighbors_service.targets import TargetResolver, targets_from_neighbors
from handlers.warmup import Warmer
from skylark.serving.logs import configure_logging
from skylark.serving.tracing import configure_tracing
from skylark.state.reader import RemoteStores
from skylark.state.redis_client import ClientPool
from skylark.state.settings import Settings
from skylark.state.store import StateStore
from skylark.workflow import Workflow, workflow_from_env
from skylark.serving.web import health_blueprint, install_error_handlers


@dataclass
class Services:
    settings: HandlerSettings
    store: StateStore
    targets: TargetResolver
    publisher: Publisher
    remote: RemoteStores
    metrics: HandlerMetrics
    executor: ThreadPoolExecutor
    propagator: Propagator
    receiver: Receiver
    warmer: Warmer
    closers: list[Callable[[], None]] = field(default_factory=list)
    _closed: bool = False
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def handler(self, route: str) -> Callable:
        return {"stream": self.propagator.handle, "bundle": self.receiver.handle,
                "warmup": self.warmer.handle}[route]

    def ready(self) -> tuple[bool, dict]:
        ok = self.store.ping()
        return ok, {"redis": "ok" if ok else "unreachable", "node": self.settings.node}

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
        self.executor.shutdown(wait=True, cancel_futures=False)
        for close in self.closers:
            close()


def _settings(settings: HandlerSettings | Settings | None) -> HandlerSettings:
    if settings is None:
        return HandlerSettings.from_env()
    if isinstance(settings, Settings):
        return HandlerSettings(core=settings)
    return settings


def create_app(settings: HandlerSettings | Settings | None = None, *, store: StateStore | None = None,
               targets: TargetResolver | None = None, publisher: Publisher | None = None,
               workflow: Workflow | None = None) -> Flask:
    """The app. Anything not given is built from ``settings`` (the environment when None; then the
    workflow, which says who reads each function's state and where, comes from
    ``SKYLARK_WORKFLOW`` too).

    Given objects (``store``, ``targets``, ``publisher``) stay owned by the caller: closing the
    app closes only what it built.
    """
    if settings is None and workflow is None:
        workflow = workflow_from_env()
    config = _settings(settings)
    core = config.core
    configure_logging(core.log_level)
    configure_tracing("skylark-handlers")
    closers: list[Callable[[], None]] = []

    if store is None:
        store = StateStore.from_settings(core)
        closers.append(store.client.close)
    if targets is None:
        targets, close_targets = targets_from_neighbors(core.neighbors_url, policy=core.policy, workflow=workflow,
                                                        ttl_s=config.targets_ttl_s)
        closers.append(close_targets)
    if publisher is None:
        publisher = Publisher(read_timeout_s=config.publish_timeout_s, retries=config.publish_retries,
                              pool_size=max(16, config.publish_workers * 2))
        closers.append(publisher.close)
    remote = RemoteStores(targets.redis_url, ClientPool.from_settings(core))  # log in as to our own Redis
    closers.append(remote.close)

    metrics = HandlerMetrics()
    executor = ThreadPoolExecutor(max_workers=config.publish_workers, thread_name_prefix="handlers-publish")
    deduper = Deduper(store.client, config.dedupe_ttl_s)
    services = Services(
        settings=config, store=store, targets=targets, publisher=publisher, remote=remote,
        metrics=metrics, executor=executor,
        propagator=Propagator(node=core.node, store=store, targets=targets, publisher=publisher,
                              executor=executor, metrics=metrics, inline_max_bytes=core.inline_max_bytes,
                              change_stream=core.change_stream, signing_key=config.signing_key,
                              compressor=Compressor(enabled=config.compression == "auto"),
                              binary=config.propagation_format == "binary"),
        receiver=Receiver(node=core.node, store=store, remote=remote, deduper=deduper, metrics=metrics,
                          signing_key=config.signing_key),
        warmer=Warmer(node=core.node, store=store, remote=remote, targets=targets, executor=executor,
                      metrics=metrics, page_pairs=config.warmup_max_pairs),
        closers=closers,
    )
    atexit.register(services.close)

    app = Flask("handlers")
    app.config["MAX_CONTENT_LENGTH"] = config.max_request_bytes
    app.extensions[EXTENSION] = services
    install_error_handlers(app)
    app.register_blueprint(health_blueprint(services.ready, metrics.exposition_registry()))
    app.register_blueprint(events_bp)
    return app


def services_of(app: Flask) -> Services:
    return app.extensions[EXTENSION]
