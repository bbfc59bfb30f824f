"""``skylark serve NAME``: run one service under gunicorn with the shared configuration.

``skylark serve function MODULE:FACTORY`` serves any function written with the SDK (the entry
may also come from ``SKYLARK_FUNCTION``, which is what the generic function image does).
"""

from __future__ import annotations

import os
import sys
from importlib.resources import files

# Service name → app factory (module:callable), as in docs/conventions.md. Strings, not imports:
# gunicorn imports the one it serves, in its workers.
SERVICES = {
    "function": "skylark.sdk.app:create_app()",
    "handlers": "handlers.app:create_app()",
    "neighbors": "neighbors_service.app:create_app()",
    "broker": "eventing.broker.app:create_app()",
    "dead-letter": "skylark.runtime.deadletter:create_app()",
    "observer": "skylark.runtime.observer:create_app()",
    "traces": "skylark.runtime.traces:create_app()",
}
ENTRY_ENV = "SKYLARK_FUNCTION"


def gunicorn_config_path() -> str:
    return str(files("skylark.serving").joinpath("gunicorn_conf.py"))


def gunicorn_argv(service: str) -> list[str]:
    """The gunicorn command line for ``service`` (used by ``serve`` and the local cluster);
    a function's entry travels in ``SKYLARK_FUNCTION``."""
    return [sys.executable, "-m", "gunicorn", "-c", gunicorn_config_path(), SERVICES[service]]


def serve(service: str, port: int | None = None, entry: str | None = None) -> int:
    if service not in SERVICES:
        raise SystemExit(f"unknown service {service!r}; one of: {', '.join(SERVICES)}")
    if service == "function":
        entry = entry or os.environ.get(ENTRY_ENV)
        if not entry:
            raise SystemExit(f"skylark serve function needs MODULE:FACTORY (or {ENTRY_ENV})")
        os.environ[ENTRY_ENV] = entry
    elif entry:
        raise SystemExit(f"only 'function' takes an entry point, not {service!r}")
    if port is not None:
        os.environ["PORT"] = str(port)
    argv = gunicorn_argv(service)
    # Replace this process: gunicorn's master gets SIGTERM directly from Kubernetes.
    os.execv(argv[0], argv)
    return 0  # not reached
