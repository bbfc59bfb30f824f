"""Child processes of the local cluster: started in their own process group, watched, stopped.

Every child gets its own session, so a Ctrl-C at the terminal reaches only the supervisor, which
then stops the children in order (SIGTERM, a grace period, then SIGKILL of the whole group) — no
gunicorn worker or redis-server is left behind, and their ports are free again.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

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
        if self.process is not None and self.process.poll() is None:
            _signal_group(self.process.pid, signal.SIGTERM)

    def stop(self, grace_s: float = 10.0) -> None:
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
