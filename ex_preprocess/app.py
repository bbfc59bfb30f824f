"""App factory of the preprocess function (gunicorn: ``ex_preprocess.app:create_app()``)."""

from __future__ import annotations

from flask import Flask

from ex_preprocess.config import PreprocessSettings
from ex_preprocess.function import PreprocessFunction
from skylark.fn import make_function_app
from skylark.serving.logs import configure_logging
from skylark.state.peers import PeerDirectory


def create_app(settings: PreprocessSettings | None = None, peers: PeerDirectory | None = None) -> Flask:
    settings = settings or PreprocessSettings.from_env()
    configure_logging(settings.core.log_level)
    return make_function_app(PreprocessFunction(settings, peers), settings.core,
                             max_body_bytes=settings.max_body_bytes)
