"""gunicorn's gthread worker, with its own error pages in the services' JSON error shape.

Some requests never reach a Flask app: gunicorn refuses them while parsing (a request line above
``limit_request_line`` → 414, a header above ``limit_request_field_size`` or more than
``limit_request_fields`` of them → 431, a malformed request line, header, chunk or
Content-Length → 400, an unknown transfer coding → 501) and answers with an HTML page written
straight to the socket by ``gunicorn.util.write_error``. :class:`JsonErrorWorker` (set as
``worker_class`` in ``gunicorn_conf.py``) answers those with ``{"error": code, "detail": text}``
instead, like every other error of a Skylark service.

How: gunicorn's own ``handle_error`` still decides (which exceptions are the client's fault,
which status and reason, what is logged — including the access log line), but it writes into a
capture instead of the socket; from the captured status line the JSON answer is built and
written, with ``Connection: close`` as gunicorn's page has. If the capture holds no status line
(a later gunicorn that writes otherwise), the answer is 400 for gunicorn's parse errors and 500
for anything else. A 500 never carries the exception text (it is in the service log).
"""

from __future__ import annotations

import json
import re

from gunicorn import util
from gunicorn.http.errors import ParseException
from gunicorn.workers.gthread import ThreadWorker

_STATUS_LINE = re.compile(rb"HTTP/1\.[01] ([0-9]{3}) ([^\r\n]*)\r\n")


class _Capture:
    """Stands in for the client socket while gunicorn writes its HTML error page."""

    def __init__(self) -> None:
        self.data = bytearray()

    def sendall(self, data: bytes) -> None:
        self.data += data

    def send(self, data: bytes) -> int:
        self.data += data
        return len(data)

    def gettimeout(self) -> float:
        return 0.0  # "non-blocking already": write_nonblock then leaves the blocking mode alone

    def setblocking(self, flag: bool) -> None:
        pass


def error_body(status: int, reason: str, exc: BaseException) -> bytes:
    """The JSON answer: the reason as a short code, gunicorn's view of the problem as the detail."""
    code = re.sub(r"[^a-z0-9]+", "_", reason.lower()).strip("_") or "error"
    if status >= 500 and not isinstance(exc, ParseException):
        detail = "internal error; see the service log"
    else:
        text = str(exc) or type(exc).__name__
        detail = f"{reason}: {text}"[:300]
    return json.dumps({"error": code, "detail": detail}).encode()


def json_response(status: int, reason: str, body: bytes) -> bytes:
    head = (f"HTTP/1.1 {status} {reason}\r\nConnection: close\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n")
    return head.encode("latin-1") + body


class JsonErrorWorker(ThreadWorker):
    """``worker_class = "skylark.serving.gunicorn_worker.JsonErrorWorker"``."""

    def handle_error(self, req, client, addr, exc):  # noqa: ANN001 - gunicorn's signature
        capture = _Capture()
        super().handle_error(req, capture, addr, exc)
        match = _STATUS_LINE.match(bytes(capture.data))
        if match is not None:
            status, reason = int(match.group(1)), match.group(2).decode("latin-1").strip()
        elif isinstance(exc, ParseException):
            status, reason = 400, "Bad Request"
        else:
            status, reason = 500, "Internal Server Error"
        try:
            util.write_nonblock(client, json_response(status, reason, error_body(status, reason, exc)))
        except Exception:  # noqa: BLE001 - as gunicorn: the client may be gone already
            self.log.debug("Failed to send error message.")
