"""App factory of the detect function (gunicorn: ``ex_detect.app:create_app()``)."""

from __future__ import annotations

from flask import Flask

from ex_detect.config import DetectSettings
from ex_detect.function import DetectFunction
from skylark.fn import make_function_app
from skylark.serving.logs import configure_logging
from skylark.state.peers import PeerDirectory


def create_app(settings: DetectSettings | None = None, peers: PeerDirectory | None = None) -> Flask:
    settings = settings or DetectSettings.from_env()
    configure_logging(settings.core.log_level)
    # Events are small (the image is state, not payload): 1 MiB is plenty.
    return make_function_app(DetectFunction(settings, peers), settings.core, max_body_bytes=1024 * 1024)
