"""``skylark serve NAME``: run one service under gunicorn with the shared configuration."""

from __future__ import annotations

import os
import sys
from importlib.resources import files

# Service name → app factory (module:callable), as in docs/conventions.md.
SERVICES = {
    "handlers": "handlers.app:create_app()",
    "neighbors": "neighbors_service.app:create_app()",
    "broker": "eventing.broker.app:create_app()",
    "preprocess": "ex_preprocess.app:create_app()",
    "detect": "ex_detect.app:create_app()",
    "alarm": "ex_alarm.app:create_app()",
    "dead-letter": "skylark.runtime.deadletter:create_app()",
}


def gunicorn_config_path() -> str:
    return str(files("skylark.serving").joinpath("gunicorn_conf.py"))


def gunicorn_argv(service: str) -> list[str]:
    """The gunicorn command line for ``service`` (used by ``serve`` and the local cluster)."""
    return [sys.executable, "-m", "gunicorn", "-c", gunicorn_config_path(), SERVICES[service]]


def serve(service: str, port: int | None = None) -> int:
    if service not in SERVICES:
        raise SystemExit(f"unknown service {service!r}; one of: {', '.join(SERVICES)}")
    if port is not None:
        os.environ["PORT"] = str(port)
    argv = gunicorn_argv(service)
    # Replace this process: gunicorn's master gets SIGTERM directly from Kubernetes.
    os.execv(argv[0], argv)
    return 0  # not reached
