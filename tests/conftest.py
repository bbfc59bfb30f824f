"""Shared fixtures: real redis-server processes on free ports, stopped even when a test fails."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest
import redis

from skylark.runtime.embedded import EmbeddedRedis
from skylark.state.settings import Settings


@pytest.fixture(scope="session")
def redis_server() -> Iterator[EmbeddedRedis]:
    """One redis-server for the session; tests isolate themselves with ``redis_client`` (FLUSHALL)."""
    with EmbeddedRedis() as server:
        yield server


@pytest.fixture()
def redis_client(redis_server: EmbeddedRedis) -> Iterator[redis.Redis]:
    client = redis_server.client()
    client.flushall()
    yield client
    client.close()


@pytest.fixture()
def redis_factory() -> Iterator[Callable[..., EmbeddedRedis]]:
    """Start extra servers (one per simulated node); all are stopped at the end of the test."""
    started: list[EmbeddedRedis] = []

    def start(**kwargs) -> EmbeddedRedis:
        server = EmbeddedRedis(**kwargs).start()
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


@pytest.fixture()
def settings(redis_server: EmbeddedRedis, redis_client: redis.Redis) -> Settings:
    """Core settings of a node called ``node-a`` on the session's (flushed) Redis."""
    return Settings(node="node-a", redis_url=redis_server.url)
