"""A WSGI app on a real HTTP server in a daemon thread of this process.

For what runs in-process on a real socket: the local broker of tests and benchmarks, and the
test suite's receivers. Services of a cluster run under gunicorn instead (``skylark serve``).
"""

from __future__ import annotations

import threading

from werkzeug.serving import WSGIRequestHandler, make_server


class QuietRequestHandler(WSGIRequestHandler):
    """No access-log line per request."""

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        pass


class ThreadedServer:
    """``ThreadedServer(app).start()`` serves on ``host:port`` (0: a free port) until ``stop()``."""

    def __init__(self, app, host: str = "127.0.0.1", port: int = 0, *, quiet: bool = True,
                 name: str = "wsgi") -> None:
        self.app = app
        self._server = make_server(host, port, app, threaded=True,
                                   request_handler=QuietRequestHandler if quiet else WSGIRequestHandler)
        self.host = host
        self.port = self._server.server_port
        self._name = name
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self) -> "ThreadedServer":
        if self._thread is None:
            self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                                            name=f"{self._name}-{self.port}", daemon=True)
            self._thread.start()
        return self

    def stop(self) -> None:
        if self._thread is not None:
            self._server.shutdown()
            self._thread.join(5)
            self._thread = None
        self._server.server_close()
