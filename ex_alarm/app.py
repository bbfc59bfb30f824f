"""App factory of the alarm function (gunicorn: ``ex_alarm.app:create_app()``)."""

from __future__ import annotations

from flask import Flask

from ex_alarm.config import AlarmSettings
from ex_alarm.function import AlarmFunction
from skylark.fn import make_function_app
from skylark.serving.logs import configure_logging
from skylark.state.peers import PeerDirectory


def create_app(settings: AlarmSettings | None = None, peers: PeerDirectory | None = None) -> Flask:
    settings = settings or AlarmSettings.from_env()
    configure_logging(settings.core.log_level)
    return make_function_app(AlarmFunction(settings, peers), settings.core, max_body_bytes=1024 * 1024)
