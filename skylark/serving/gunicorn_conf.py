"""gunicorn configuration shared by every Skylark service (``skylark serve NAME``).

Knative conventions: bind ``0.0.0.0:$PORT`` (one port), config from the environment, JSON logs,
and a graceful stop on SIGTERM: gunicorn stops accepting, lets in-flight requests finish within
``graceful_timeout``, then exits before the kubelet's SIGKILL.
"""

import os
import pathlib

# SKYLARK_BIND (comma-separated host:port list) is for the local cluster, which binds a service
# to several management addresses at once; everywhere else it is $PORT on all interfaces.
bind = (os.environ["SKYLARK_BIND"].split(",") if os.environ.get("SKYLARK_BIND")
        else f"{os.environ.get('SKYLARK_BIND_HOST', '0.0.0.0')}:{os.environ.get('PORT', '8080')}")
workers = int(os.environ.get("SKYLARK_WORKERS", "2"))
threads = int(os.environ.get("SKYLARK_THREADS", "8"))
worker_class = "gthread"
timeout = int(os.environ.get("SKYLARK_WORKER_TIMEOUT", "60"))
graceful_timeout = int(os.environ.get("SKYLARK_GRACEFUL_TIMEOUT", "20"))
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
