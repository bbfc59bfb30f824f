"""Pooled Redis clients with timeouts and retries, one per URL per process."""

from __future__ import annotations

import threading
from urllib.parse import urlsplit

import redis
from redis.backoff import ExponentialWithJitterBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from redis.retry import Retry

from skylark.state.settings import validate_redis_url


def connect(url: str, *, username: str | None = None, password: str | None = None, timeout_s: float = 5.0,
            retries: int = 3, ca_cert: str | None = None) -> redis.Redis:
    """A client for ``url`` (redis://, rediss:// for TLS, unix://) with its own connection pool.

    TLS: ``ca_cert`` (or ``?ssl_ca_certs=PATH`` in the URL) verifies the server's certificate.

    Connection errors and timeouts are retried with jittered exponential backoff; the pool is
    shared by every thread of the process that uses this client.
    """
    validate_redis_url(url)
    kwargs: dict = {
        "socket_timeout": timeout_s,
        "socket_connect_timeout": timeout_s,
        "retry": Retry(ExponentialWithJitterBackoff(base=0.05, cap=1.0), retries),
        "retry_on_error": [RedisConnectionError, RedisTimeoutError],
        "health_check_interval": 30,
    }
    # Credentials in the URL win; the explicit ones fill in what it lacks (other nodes' URLs from
    # the topology carry none).
    parts = urlsplit(url)
    if password and not parts.password:
        kwargs["password"] = password
    if username and not parts.username:
        kwargs["username"] = username
    if ca_cert and parts.scheme == "rediss":
        kwargs["ssl_ca_certs"] = ca_cert
    return redis.Redis.from_url(url, **kwargs)


class ClientPool:
    """Process-wide cache of clients by URL (remote reads reuse connections to each node)."""

    def __init__(self, *, username: str | None = None, password: str | None = None,
                 timeout_s: float = 5.0, ca_cert: str | None = None) -> None:
        self._username = username
        self._ca_cert = ca_cert
        self._password = password
        self._timeout_s = timeout_s
        self._clients: dict[str, redis.Redis] = {}
        self._lock = threading.Lock()

    @classmethod
    def from_settings(cls, settings) -> "ClientPool":
        """Clients that log in to every node as this node does (user, password, timeouts)."""
        return cls(username=settings.redis_user, password=settings.redis_secret,
                   timeout_s=settings.redis_timeout_s, ca_cert=settings.redis_ca_cert)

    def get(self, url: str) -> redis.Redis:
        with self._lock:
            client = self._clients.get(url)
            if client is None:
                client = connect(url, username=self._username, password=self._password,
                                 timeout_s=self._timeout_s, ca_cert=self._ca_cert)
                self._clients[url] = client
            return client

    def close(self) -> None:
        with self._lock:
            for client in self._clients.values():
                client.close()
            self._clients.clear()
