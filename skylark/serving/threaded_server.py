"""A WSGI app on a real HTTP server in a daemon thread of this process.

For what runs in-process on a real socket: the local broker of tests and benchmarks, and the
test suite's receivers. Services of a cluster run under gunicorn instead (``skylark serve``).
"""

from __future__ import annotations

import json
import threading
from http import HTTPStatus

from werkzeug.serving import WSGIRequestHandler, make_server


class JsonErrorRequestHandler(WSGIRequestHandler):
    """Errors the HTTP server itself answers (a request line or header above 64 KiB, more than
    100 headers, a malformed request line) in the services' JSON shape, not Python's HTML page."""

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        try:
            phrase = HTTPStatus(code).phrase
        except ValueError:
            phrase = "error"
        body = json.dumps({"error": phrase.lower().replace(" ", "_"), "detail": message or explain or phrase}).encode()
        self.close_connection = True
        try:
            self.send_response(code, message)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Connection", "close")
            self.end_headers()
            if self.command != "HEAD" and code >= 200 and code not in (204, 304):
                self.wfile.write(body)
        except OSError:
            pass  # the client is gone


class QuietRequestHandler(JsonErrorRequestHandler):
    """No access-log line per request."""

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        pass


class ThreadedServer:
    """``ThreadedServer(app).start()`` serves on ``host:port`` (0: a free port) until ``stop()``."""

    def __init__(self, app, host: str = "127.0.0.1", port: int = 0, *, quiet: bool = True,
                 name: str = "wsgi") -> None:
        self.app = app
        self._server = make_server(host, port, app, threaded=True,
                                   request_handler=QuietRequestHandler if quiet else JsonErrorRequestHandler)
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
