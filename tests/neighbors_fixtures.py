"""Fixtures of the neighbors-service tests: real HTTP servers on 127.0.0.1 in threads.

* :class:`ServedApp` — a WSGI app behind werkzeug's threaded server, counting requests.
* :class:`FakeKubeApi` — a small Kubernetes API server: ``GET /api/v1/nodes`` (NodeList),
  ``GET /api/v1/namespaces/<ns>/pods?labelSelector=`` (PodList) and ``?watch=true`` streams of
  watch events, all as the real API's JSON. Tests change its objects and the changes reach
  open watches; it can also fail (HTTP 500/503), expire watches (410) or go down entirely.
"""

from __future__ import annotations

import copy
import json
import queue
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from werkzeug.wrappers import Request, Response

from skylark.runtime.embedded import free_port
from skylark.serving.threaded_server import ThreadedServer


def wait_for(predicate: Callable[[], object], timeout_s: float = 10.0, interval_s: float = 0.02) -> Any:
    """Poll ``predicate`` until it returns something truthy (bounded); fail the test otherwise."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"condition not met within {timeout_s} s")
        time.sleep(interval_s)


class ServedApp:
    """``app`` served on 127.0.0.1:``port`` by a threaded werkzeug server until :meth:`stop`."""

    def __init__(self, app: Callable, port: int | None = None) -> None:
        self.app = app
        self.port = port or free_port()
        self.requests = 0
        self._lock = threading.Lock()
        self._server = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _counting(self, environ, start_response):
        with self._lock:
            self.requests += 1
        return self.app(environ, start_response)

    def start(self) -> "ServedApp":
        self._server = ThreadedServer(self._counting, port=self.port, quiet=False, name="served-app").start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.stop()
            self._server = None


@pytest.fixture()
def serve() -> Iterator[Callable[..., ServedApp]]:
    """Start WSGI apps on free ports; all stopped at the end of the test."""
    started: list[ServedApp] = []

    def start(app: Callable, port: int | None = None) -> ServedApp:
        served = ServedApp(app, port).start()
        started.append(served)
        return served

    yield start
    for served in reversed(started):
        served.stop()


# -- Kubernetes API objects, as the API server returns them ----------------------------------


def k8s_node(name: str, *, node_type: str | None = "satellite", ready: bool = True,
             links: list[dict] | str | None = None) -> dict:
    labels = {"kubernetes.io/hostname": name, "kubernetes.io/os": "linux"}
    if node_type is not None:
        labels["skylark.io/node-type"] = node_type
    annotations = {"node.alpha.kubernetes.io/ttl": "0"}
    if links is not None:
        annotations["skylark.io/links"] = links if isinstance(links, str) else json.dumps(links)
    return {
        "metadata": {
            "name": name,
            "uid": f"uid-{name}",
            "resourceVersion": "1",
            "creationTimestamp": "2025-01-01T00:00:00Z",
            "labels": labels,
            "annotations": annotations,
        },
        "spec": {"podCIDR": "10.1.0.0/24", "podCIDRs": ["10.1.0.0/24"]},
        "status": {
            "capacity": {"cpu": "4", "memory": "8008284Ki", "pods": "110"},
            "conditions": [
                {"type": "MemoryPressure", "status": "False", "reason": "KubeletHasSufficientMemory",
                 "lastHeartbeatTime": "2025-01-01T00:00:00Z", "lastTransitionTime": "2025-01-01T00:00:00Z",
                 "message": "kubelet has sufficient memory available"},
                {"type": "Ready", "status": "True" if ready else "False",
                 "reason": "KubeletReady" if ready else "KubeletNotReady",
                 "lastHeartbeatTime": "2025-01-01T00:00:00Z", "lastTransitionTime": "2025-01-01T00:00:00Z",
                 "message": "kubelet is posting ready status" if ready else "container runtime is down"},
            ],
            "addresses": [{"type": "Hostname", "address": name}],
            "nodeInfo": {"kubeletVersion": "v1.31.0", "architecture": "arm64", "operatingSystem": "linux",
                         "osImage": "Ubuntu 24.04", "kernelVersion": "6.8.0", "containerRuntimeVersion": "containerd://1.7",
                         "kubeProxyVersion": "v1.31.0", "machineID": "m", "systemUUID": "s", "bootID": "b"},
        },
    }


def k8s_redis_pod(node: str, ip: str | None, *, phase: str = "Running", ready: bool = True,
                  namespace: str = "skylark", name: str | None = None) -> dict:
    status: dict[str, Any] = {
        "phase": phase,
        "conditions": [{"type": "Ready", "status": "True" if ready else "False",
                        "lastTransitionTime": "2025-01-01T00:00:00Z"}],
        "hostIP": "192.0.2.1",
        "startTime": "2025-01-01T00:00:00Z",
    }
    if ip is not None:
        status["podIP"] = ip
        status["podIPs"] = [{"ip": ip}]
    return {
        "metadata": {
            "name": name or f"redis-{node}",
            "namespace": namespace,
            "uid": f"uid-redis-{node}",
            "resourceVersion": "1",
            "creationTimestamp": "2025-01-01T00:00:00Z",
            "labels": {"app": "redis", "controller-revision-hash": "abc"},
            "ownerReferences": [{"apiVersion": "apps/v1", "kind": "DaemonSet", "name": "redis",
                                 "uid": "uid-ds", "controller": True, "blockOwnerDeletion": True}],
        },
        "spec": {
            "nodeName": node,
            "containers": [{"name": "redis", "image": "redis:7.4",
                            "ports": [{"containerPort": 6379, "name": "redis", "protocol": "TCP"}]}],
            "restartPolicy": "Always",
            "serviceAccountName": "default",
        },
        "status": status,
    }


class FakeKubeApi:
    """The part of the Kubernetes API the topology source uses, over real HTTP."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.rv = 100
        self.nodes: dict[str, dict] = {}
        self.pods: dict[str, dict] = {}  # key: namespace/name
        self.fail_status: int | None = None
        self.list_calls = {"nodes": 0, "pods": 0}
        self.watch_calls = {"nodes": 0, "pods": 0}
        self.selectors: list[str] = []
        self._watchers: dict[str, list[queue.Queue]] = {"nodes": [], "pods": []}
        self.closed = threading.Event()

    # -- changing the cluster -------------------------------------------------------------

    def _bump(self, obj: dict) -> dict:
        self.rv += 1
        obj = copy.deepcopy(obj)
        obj["metadata"]["resourceVersion"] = str(self.rv)
        return obj

    def _broadcast(self, kind: str, event_type: str, obj: dict) -> None:
        kind_name = "Node" if kind == "nodes" else "Pod"
        event = {"type": event_type, "object": {"kind": kind_name, "apiVersion": "v1", **obj}}
        for q in self._watchers[kind]:
            q.put(event)

    def put_node(self, obj: dict, notify: bool = True) -> None:
        with self._lock:
            obj = self._bump(obj)
            event = "MODIFIED" if obj["metadata"]["name"] in self.nodes else "ADDED"
            self.nodes[obj["metadata"]["name"]] = obj
            if notify:
                self._broadcast("nodes", event, obj)

    def delete_node(self, name: str) -> None:
        with self._lock:
            obj = self._bump(self.nodes.pop(name))
            self._broadcast("nodes", "DELETED", obj)

    def put_pod(self, obj: dict, notify: bool = True) -> None:
        key = f"{obj['metadata']['namespace']}/{obj['metadata']['name']}"
        with self._lock:
            obj = self._bump(obj)
            event = "MODIFIED" if key in self.pods else "ADDED"
            self.pods[key] = obj
            if notify:
                self._broadcast("pods", event, obj)

    def delete_pod(self, namespace: str, name: str) -> None:
        with self._lock:
            obj = self._bump(self.pods.pop(f"{namespace}/{name}"))
            self._broadcast("pods", "DELETED", obj)

    def expire_watches(self) -> None:
        """Tell every open watch its resourceVersion is too old (HTTP 410 in an ERROR event)."""
        status = {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                  "message": "too old resource version: 1 (200)", "reason": "Expired", "code": 410}
        with self._lock:
            for kind in self._watchers:
                for q in self._watchers[kind]:
                    q.put({"type": "ERROR", "object": status})

    def watchers(self, kind: str) -> int:
        with self._lock:
            return len(self._watchers[kind])

    # -- serving ---------------------------------------------------------------------------

    def _status(self, code: int, reason: str, message: str) -> Response:
        body = {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                "message": message, "reason": reason, "code": code}
        return Response(json.dumps(body), status=code, mimetype="application/json")

    def _matches(self, pod: dict, selector: str) -> bool:
        labels = pod["metadata"].get("labels") or {}
        for term in filter(None, selector.split(",")):
            key, _, value = term.partition("=")
            if labels.get(key) != value:
                return False
        return True

    def __call__(self, environ, start_response):
        request = Request(environ)
        path = request.path
        if self.fail_status is not None:
            return self._status(self.fail_status, "InternalError", "etcd is unavailable")(environ, start_response)
        if path == "/api/v1/nodes":
            kind, namespace = "nodes", None
        elif path.startswith("/api/v1/namespaces/") and path.endswith("/pods"):
            kind, namespace = "pods", path.split("/")[4]
        else:
            return self._status(404, "NotFound", f"the server could not find {path}")(environ, start_response)
        selector = request.args.get("labelSelector", "")
        if kind == "pods":
            self.selectors.append(selector)
        if request.args.get("watch") in ("true", "1"):
            return self._watch(kind, namespace, selector, request)(environ, start_response)
        with self._lock:
            self.list_calls[kind] += 1
            if kind == "nodes":
                items = [copy.deepcopy(o) for o in self.nodes.values()]
            else:
                items = [copy.deepcopy(o) for o in self.pods.values()
                         if o["metadata"]["namespace"] == namespace and self._matches(o, selector)]
            body = {"kind": "NodeList" if kind == "nodes" else "PodList", "apiVersion": "v1",
                    "metadata": {"resourceVersion": str(self.rv)}, "items": items}
        return Response(json.dumps(body), mimetype="application/json")(environ, start_response)

    def _watch(self, kind: str, namespace: str | None, selector: str, request: Request) -> Response:
        timeout_s = float(request.args.get("timeoutSeconds", "30"))
        q: queue.Queue = queue.Queue()
        with self._lock:
            self.watch_calls[kind] += 1
            self._watchers[kind].append(q)

        def events() -> Iterator[bytes]:
            deadline = time.monotonic() + timeout_s
            # Like the real API server, send the status line and headers at once (werkzeug
            # sends them on the first chunk, even an empty one).
            yield b""
            try:
                while time.monotonic() < deadline and not self.closed.is_set():
                    try:
                        event = q.get(timeout=0.05)
                    except queue.Empty:
                        continue
                    obj = event["object"]
                    if kind == "pods" and event["type"] != "ERROR" and (
                        obj["metadata"].get("namespace") != namespace or not self._matches(obj, selector)
                    ):
                        continue
                    yield (json.dumps(event) + "\n").encode()
                    if event["type"] == "ERROR":
                        return
            finally:
                with self._lock:
                    if q in self._watchers[kind]:
                        self._watchers[kind].remove(q)

        return Response(events(), mimetype="application/json", direct_passthrough=True)


@pytest.fixture()
def fake_kube(serve) -> Iterator[tuple[FakeKubeApi, ServedApp]]:
    api = FakeKubeApi()
    served = serve(api)
    yield api, served
    api.closed.set()
