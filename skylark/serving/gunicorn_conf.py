"""gunicorn configuration shared by every Skylark service (``skylark serve NAME``).

Knative conventions: bind ``0.0.0.0:$PORT`` (one port), config from the environment, JSON logs,
and a graceful stop on SIGTERM: gunicorn stops accepting, lets in-flight requests finish within
``graceful_timeout``, then exits before the kubelet's SIGKILL.

Requests gunicorn refuses itself (request line, header and chunk limits, malformed HTTP) are
answered in the services' JSON error shape by ``skylark.serving.gunicorn_worker.JsonErrorWorker``;
the limits are set here explicitly (gunicorn's defaults) and documented in docs/conventions.md,
*Limits*.
"""

import os
import pathlib

from skylark.state.numbers import parse_int


def _env_int(name: str, default: int, minimum: int = 1) -> int:
    # ASCII digits only: int() would also take " 2", "1_0" or "٢" from a mistyped manifest.
    raw = os.environ.get(name)
    return default if not raw else parse_int(raw, name, minimum=minimum, maximum=1_000_000)


# SKYLARK_BIND (comma-separated host:port list) is for the local cluster, which binds a service
# to several management addresses at once; everywhere else it is $PORT on all interfaces.
bind = (os.environ["SKYLARK_BIND"].split(",") if os.environ.get("SKYLARK_BIND")
        else f"{os.environ.get('SKYLARK_BIND_HOST', '0.0.0.0')}:{os.environ.get('PORT', '8080')}")
workers = _env_int("SKYLARK_WORKERS", 2)
threads = _env_int("SKYLARK_THREADS", 8)
# gthread, with gunicorn's own HTML error pages (431, 414, 400...) replaced by JSON ones.
worker_class = "skylark.serving.gunicorn_worker.JsonErrorWorker"
timeout = _env_int("SKYLARK_WORKER_TIMEOUT", 60, minimum=0)  # 0: no timeout
graceful_timeout = _env_int("SKYLARK_GRACEFUL_TIMEOUT", 20, minimum=0)
# gunicorn's defaults, stated so that the documented limits are the configured ones. Above them
# gunicorn answers before the app sees the request: 414 for a request line (method, path and
# query) over limit_request_line bytes, 431 for more than limit_request_fields header fields or
# one over limit_request_field_size bytes. A CloudEvent attribute is at most 2048 bytes
# (eventing.http.MAX_ATTRIBUTE_BYTES), so even percent-encoded it fits one field.
limit_request_line = 4094
limit_request_fields = 100
limit_request_field_size = 8190
keepalive = 75  # longer than typical proxy idle timeouts (Knative's queue-proxy, Kourier)
# The app factories are called in each worker after the fork: every worker has its own Redis
# pool and HTTP session (sockets must not be shared across forks).
preload_app = False
accesslog = None if os.environ.get("SKYLARK_ACCESS_LOG", "0") != "1" else "-"
errorlog = "-"
loglevel = os.environ.get("SKYLARK_LOG_LEVEL", "info").lower()
logconfig_dict = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"json": {"()": "skylark.serving.logs.JsonFormatter"}},
    "handlers": {"stderr": {"class": "logging.StreamHandler", "formatter": "json", "stream": "ext://sys.stderr"}},
    "root": {"level": loglevel.upper(), "handlers": ["stderr"]},
    "loggers": {
        "gunicorn.error": {"level": loglevel.upper(), "handlers": ["stderr"], "propagate": False},
        "gunicorn.access": {"level": "INFO", "handlers": ["stderr"], "propagate": False},
    },
}
# gunicorn ≥ 24 opens a control socket at one fixed path per user; several services on one
# machine (the local cluster) would fight over it, and nothing here uses it.
control_socket_disable = True


# Prometheus multiprocess mode (set PROMETHEUS_MULTIPROC_DIR): every worker writes its metrics
# there, so a scrape of /metrics sums all workers instead of showing the one that answered.
def on_starting(server):
    directory = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if directory:
        for stale in pathlib.Path(directory).glob("*.db"):
            stale.unlink()


def child_exit(server, worker):
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(worker.pid)


# A worker dies with its master. When the master is killed (SIGKILL, OOM), gunicorn's own check
# (the worker notices its parent changed) can take the graceful timeout, while the orphan keeps
# the listening socket and clients hang instead of being refused. The kernel's parent-death
# signal ends it at once, so the port is free for the restarted master (Linux; elsewhere a no-op).
_PR_SET_PDEATHSIG = 1


def post_fork(server, worker):
    import ctypes
    import signal

    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):
        pass
    if os.getppid() != server.pid:  # the master died between fork and prctl: go now
        os._exit(1)
