"""Child processes of the local cluster: started in their own process group, supervised, stopped.

Every child gets its own session, so a Ctrl-C at the terminal reaches only the supervisor, which
then stops the children in order (SIGTERM, a grace period, then SIGKILL of the whole group) — no
gunicorn worker or redis-server is left behind, and their ports are free again.

:class:`Supervisor` restarts a child that exits on its own, as a pod's ``restartPolicy: Always``
does: after 1 s, then doubling up to 30 s while it keeps crashing, back to 1 s once it ran for a
minute. A child stopped on purpose (``Child.stop``) is not restarted.
"""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import redis
import requests

from skylark.state.errors import ConfigError


@dataclass
class Child:
    """One supervised process; ``ready`` tells when it serves (e.g. an HTTP health probe)."""

    name: str
    argv: Sequence[str]
    env: Mapping[str, str]
    log_path: Path
    netns: str | None = None
    ready: Callable[[], bool] | None = None
    process: subprocess.Popen | None = field(default=None, init=False, repr=False)
    restarts: int = field(default=0, init=False)
    started_at: float = field(default=0.0, init=False)
    last_exit: int | None = field(default=None, init=False)  # the code of the last exit on its own
    # Cleared by stop(): an exit then is wanted, and the supervisor leaves the child alone.
    wanted: bool = field(default=False, init=False)

    def start(self) -> "Child":
        argv = list(self.argv)
        if self.netns:
            argv = ["ip", "netns", "exec", self.netns, *argv]
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path, "ab")
        try:
            self.process = subprocess.Popen(argv, env=dict(self.env), stdout=log, stderr=subprocess.STDOUT,
                                            stdin=subprocess.DEVNULL, start_new_session=True)
        except FileNotFoundError as exc:
            raise ConfigError(f"{self.name}: cannot start {argv[0]!r}: {exc}") from None
        finally:
            log.close()
        self.started_at = time.monotonic()
        self.wanted = True
        return self

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process else None

    def exited(self) -> int | None:
        return None if self.process is None else self.process.poll()

    def log_tail(self, lines: int = 15) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def terminate(self) -> None:
        """Ask the process to stop (SIGTERM to its group); :meth:`stop` waits for it."""
        self.wanted = False
        if self.process is not None and self.process.poll() is None:
            _signal_group(self.process.pid, signal.SIGTERM)

    def stop(self, grace_s: float = 10.0) -> None:
        self.wanted = False
        if self.process is None:
            return
        if self.process.poll() is None:
            self.terminate()
            try:
                self.process.wait(timeout=grace_s)
            except subprocess.TimeoutExpired:
                pass
        # Whatever the leader did, nothing of its group may survive it.
        _signal_group(self.process.pid, signal.SIGKILL)
        try:
            self.process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass
        self.process = None


def _signal_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


class Supervisor:
    """Restarts the children of ``children`` (a list the owner may change; guarded by ``lock``)
    that exited although they were wanted; ``report`` hears of each restart."""

    FIRST_DELAY_S = 1.0
    MAX_DELAY_S = 30.0
    STABLE_S = 60.0  # running this long resets the back-off

    def __init__(self, children: list[Child], lock: threading.RLock,
                 report: Callable[[Child, int, float], None] = lambda child, code, delay: None,
                 poll_s: float = 0.2) -> None:
        self._children = children
        self._lock = lock
        self._report = report
        self._poll_s = poll_s
        self._due: dict[int, float] = {}     # id(child) -> when to restart it
        self._delay: dict[int, float] = {}   # id(child) -> its current back-off
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> "Supervisor":
        self._thread = threading.Thread(target=self._run, name="supervisor", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)

    @property
    def restarts(self) -> dict[str, int]:
        with self._lock:
            return {c.name: c.restarts for c in self._children if c.restarts}

    def _run(self) -> None:
        while not self._stop.wait(self._poll_s):
            with self._lock:
                for child in list(self._children):
                    self._check(child)

    def _check(self, child: Child) -> None:
        key = id(child)
        if not child.wanted or child.process is None:
            self._due.pop(key, None)
            return
        code = child.process.poll()
        if code is None:
            return
        now = time.monotonic()
        if key not in self._due:
            stable = now - child.started_at >= self.STABLE_S
            delay = self.FIRST_DELAY_S if stable or key not in self._delay else min(
                self._delay[key] * 2, self.MAX_DELAY_S)
            self._delay[key] = delay
            self._due[key] = now + delay
            child.last_exit = code
            self._report(child, code, delay)
            return
        if now >= self._due[key]:
            del self._due[key]
            _signal_group(child.process.pid, signal.SIGKILL)  # whatever of its group is left
            child.restarts += 1
            try:
                child.start()
            except ConfigError:
                self._due[key] = now + self._delay[key]  # try again later


def stop_all(children: Sequence[Child], grace_s: float = 10.0) -> None:
    """Stop children together: SIGTERM to all first, so their grace periods overlap."""
    for child in children:
        child.terminate()
    for child in children:
        child.stop(grace_s)


def http_ready(url: str, timeout_s: float = 0.5) -> Callable[[], bool]:
    def probe() -> bool:
        try:
            return requests.get(url, timeout=timeout_s).status_code == 200
        except requests.RequestException:
            return False

    return probe


def redis_ready(url: str) -> Callable[[], bool]:
    def probe() -> bool:
        client = redis.Redis.from_url(url, socket_connect_timeout=0.3, socket_timeout=0.5)
        try:
            return bool(client.ping())
        except redis.RedisError:
            return False
        finally:
            client.close()

    return probe


def wait_ready(children: Sequence[Child], timeout_s: float) -> None:
    """Wait until every child is ready; a child that exits or times out is a :class:`ConfigError`
    carrying the end of its log."""
    pending = [c for c in children if c.ready is not None]
    deadline = time.monotonic() + timeout_s
    while pending:
        for child in list(pending):
            code = child.exited()
            if code is not None:
                raise ConfigError(f"{child.name} exited with code {code} at start-up:\n{child.log_tail()}")
            if child.ready():
                pending.remove(child)
        if pending and time.monotonic() > deadline:
            names = ", ".join(c.name for c in pending)
            raise ConfigError(f"not ready after {timeout_s:.0f} s: {names}\n{pending[0].log_tail()}")
        if pending:
            time.sleep(0.1)
