"""Topology from the Kubernetes API: nodes, their labels/annotations, and the Redis pod on each.

What is read (see ``neighbors_service/README.md`` for the reference and the RBAC rules):

* ``GET /api/v1/nodes`` — each node's name, labels and ``Ready`` condition;
  label ``skylark.io/node-type`` = ``cloud`` | ``edge`` | ``satellite`` (default ``edge``);
  annotation ``skylark.io/links`` = JSON list ``[{"to": "<node>", "latency_ms": 12,
  "bandwidth_mbps": 90}, ...]``. A link may be declared on either end or both; when both ends
  declare it with different figures the conservative ones win (higher latency, lower bandwidth).
* ``GET /api/v1/namespaces/<ns>/pods?labelSelector=<selector>`` — the Redis pod of each node
  (``spec.nodeName``), running and with a pod IP: ``redis_url = redis://<podIP>:<port>/0``.

A node is *ready* when its ``Ready`` condition is ``True`` **and** it has a running Redis pod: a
node without its Redis cannot take state. Broker URLs come from a template.

Refreshing runs in background threads started by :meth:`KubernetesTopologySource.start`:
``watch`` mode lists, then follows watch events on nodes and pods (relisting after a 410 Gone or
any error), ``interval`` mode relists every ``interval_s``. Whatever fails, the last good
topology keeps being served and :meth:`status` says what went wrong and since when.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import urllib3
from kubernetes import client as k8s_client
from kubernetes import config as k8s_config
from kubernetes import watch as k8s_watch

from neighbors_service.config import DEFAULT_BROKER_URL_TEMPLATE
from neighbors_service.sources import TopologyUnavailable
from neighbors_service.topology import NODE_TYPES, Link, Node, Topology, TopologyError

log = logging.getLogger(__name__)

NODE_TYPE_LABEL = "skylark.io/node-type"
LINKS_ANNOTATION = "skylark.io/links"
MAX_WARNINGS = 20


# -- pure: Kubernetes JSON -> Topology ---------------------------------------------------------


def _is_ready(obj: Mapping[str, Any]) -> bool:
    conditions = (obj.get("status") or {}).get("conditions") or []
    return any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)


def _redis_pods_by_node(pods: Iterable[Mapping[str, Any]]) -> dict[str, Mapping[str, Any]]:
    """The Redis pod that serves each node: running, with an IP, not terminating; ready first."""
    best: dict[str, Mapping[str, Any]] = {}
    for pod in pods:
        meta = pod.get("metadata") or {}
        status = pod.get("status") or {}
        node = (pod.get("spec") or {}).get("nodeName")
        if not node or status.get("phase") != "Running" or not status.get("podIP"):
            continue
        if meta.get("deletionTimestamp"):
            continue
        rank = (not _is_ready(pod), meta.get("name", ""))
        current = best.get(node)
        if current is None or rank < (not _is_ready(current), current["metadata"].get("name", "")):
            best[node] = pod
    return best


def _redis_url(pod_ip: str, port: int) -> str:
    host = f"[{pod_ip}]" if ipaddress.ip_address(pod_ip).version == 6 else pod_ip
    return f"redis://{host}:{port}/0"


@dataclass
class BuildResult:
    topology: Topology
    warnings: list[str] = field(default_factory=list)


def build_topology(
    nodes: Iterable[Mapping[str, Any]],
    pods: Iterable[Mapping[str, Any]],
    *,
    namespace: str,
    broker: str = "default",
    broker_url_template: str = DEFAULT_BROKER_URL_TEMPLATE,
    redis_port: int = 6379,
) -> BuildResult:
    """The topology described by Node and Pod objects (Kubernetes API JSON). Never raises on
    bad object contents: what cannot be used is skipped and reported in ``warnings``."""
    warnings: list[str] = []
    redis_pods = _redis_pods_by_node(pods)
    built: list[Node] = []
    declared: list[tuple[str, Any]] = []
    for obj in sorted(nodes, key=lambda o: (o.get("metadata") or {}).get("name", "")):
        meta = obj.get("metadata") or {}
        name = meta.get("name", "")
        labels = meta.get("labels") or {}
        node_type = labels.get(NODE_TYPE_LABEL, "edge")
        if node_type not in NODE_TYPES:
            warnings.append(f"node {name}: {NODE_TYPE_LABEL}={node_type!r} unknown, using edge")
            node_type = "edge"
        pod = redis_pods.get(name)
        try:
            redis_url = _redis_url(pod["status"]["podIP"], redis_port) if pod else ""
        except ValueError:
            warnings.append(f"node {name}: Redis pod IP {pod['status']['podIP']!r} is not an IP")  # type: ignore[index]
            redis_url = ""
        if not redis_url:
            warnings.append(f"node {name}: no running Redis pod; not ready")
        try:
            built.append(Node(
                name=name,
                type=node_type,
                redis_url=redis_url,
                broker_url=broker_url_template.format(namespace=namespace, broker=broker, node=name),
                ready=_is_ready(obj) and bool(redis_url),
                labels=labels,
            ))
        except TopologyError as exc:
            warnings.append(f"node skipped: {exc}")
            continue
        raw_links = (meta.get("annotations") or {}).get(LINKS_ANNOTATION)
        if raw_links:
            try:
                entries = json.loads(raw_links)
                if not isinstance(entries, list):
                    raise ValueError("not a JSON list")
            except ValueError as exc:
                warnings.append(f"node {name}: annotation {LINKS_ANNOTATION} ignored: {exc}")
                continue
            declared.extend((name, entry) for entry in entries)

    known = {n.name for n in built}
    links: dict[frozenset[str], Link] = {}
    for name, entry in declared:
        if not isinstance(entry, Mapping) or not isinstance(entry.get("to"), str):
            warnings.append(f"node {name}: link entry {entry!r} needs a 'to' node name")
            continue
        other = entry["to"]
        if other not in known:
            warnings.append(f"node {name}: link to unknown node {other!r} ignored")
            continue
        try:
            link = Link(name, other, entry.get("latency_ms"), entry.get("bandwidth_mbps"))  # type: ignore[arg-type]
        except TopologyError as exc:
            warnings.append(f"node {name}: {exc}")
            continue
        pair = frozenset((name, other))
        seen = links.get(pair)
        if seen is not None:
            link = Link(seen.a, seen.b, max(seen.latency_ms, link.latency_ms),
                        min(seen.bandwidth_mbps, link.bandwidth_mbps))
        links[pair] = link
    ordered = sorted(links.values(), key=lambda l: tuple(sorted((l.a, l.b))))
    return BuildResult(Topology(tuple(built), tuple(ordered)), warnings)


# -- the source --------------------------------------------------------------------------------


@dataclass
class _Resource:
    """The cached objects of one listed/watched resource (nodes or pods)."""

    kind: str
    objects: dict[str, Mapping[str, Any]] = field(default_factory=dict)
    resource_version: str | None = None
    listed: bool = False
    last_success: float | None = None
    last_error: str | None = None
    last_error_at: float | None = None


class KubernetesTopologySource:
    """Serves the topology of a Kubernetes cluster, refreshed in the background.

    Exactly one of ``host`` (explicit API URL, e.g. a test server), ``kubeconfig`` (file) or the
    in-cluster service account is used: ``host`` first, then ``kubeconfig``, then in-cluster
    config when ``KUBERNETES_SERVICE_HOST`` is set, else the default kubeconfig. Nothing talks
    to the API before :meth:`start` or :meth:`refresh`.
    """

    def __init__(
        self,
        namespace: str = "default",
        redis_selector: str = "app=redis",
        *,
        broker_url_template: str = DEFAULT_BROKER_URL_TEMPLATE,
        broker: str = "default",
        redis_port: int = 6379,
        host: str | None = None,
        kubeconfig: str | None = None,
        refresh: str = "watch",
        interval_s: float = 30.0,
        request_timeout_s: float = 10.0,
        retry_backoff_s: float = 0.5,
        max_backoff_s: float = 15.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if refresh not in ("watch", "interval"):
            raise ValueError(f"refresh must be 'watch' or 'interval', not {refresh!r}")
        self.namespace = namespace
        self.redis_selector = redis_selector
        self.broker_url_template = broker_url_template
        self.broker = broker
        self.redis_port = redis_port
        self.host = host
        self.kubeconfig = kubeconfig
        self.refresh_mode = refresh
        self.interval_s = interval_s
        self.request_timeout_s = request_timeout_s
        self.retry_backoff_s = retry_backoff_s
        self.max_backoff_s = max_backoff_s
        self._clock = clock
        self._lock = threading.Lock()
        self._api: k8s_client.CoreV1Api | None = None
        self._nodes = _Resource("nodes")
        self._pods = _Resource("pods")
        self._topology: Topology | None = None
        self._built_at: float | None = None
        self._warnings: list[str] = []
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._watches: dict[str, k8s_watch.Watch] = {}

    # -- the API client ------------------------------------------------------------------------

    def _core_api(self) -> k8s_client.CoreV1Api:
        with self._lock:
            if self._api is not None:
                return self._api
        configuration = k8s_client.Configuration()
        if self.host:
            configuration.host = self.host
        elif self.kubeconfig:
            k8s_config.load_kube_config(config_file=self.kubeconfig, client_configuration=configuration)
        else:
            try:
                k8s_config.load_incluster_config(client_configuration=configuration)
            except k8s_config.ConfigException:
                k8s_config.load_kube_config(client_configuration=configuration)
        # Our loops retry with backoff; the client itself only retries a failed connect twice.
        configuration.retries = urllib3.Retry(total=2, connect=2, read=0, status=0, backoff_factor=0.1)
        api = k8s_client.CoreV1Api(k8s_client.ApiClient(configuration))
        with self._lock:
            if self._api is None:
                self._api = api
            return self._api

    def _list_call(self, kind: str) -> tuple[Callable[..., Any], dict[str, Any]]:
        api = self._core_api()
        if kind == "nodes":
            return api.list_node, {}
        return api.list_namespaced_pod, {"namespace": self.namespace, "label_selector": self.redis_selector}

    def _resource(self, kind: str) -> _Resource:
        return self._nodes if kind == "nodes" else self._pods

    # -- listing and watching ------------------------------------------------------------------

    def _list(self, kind: str) -> None:
        fn, kwargs = self._list_call(kind)
        response = fn(**kwargs, _preload_content=False,
                      _request_timeout=(min(3.0, self.request_timeout_s), self.request_timeout_s))
        try:
            body = json.loads(response.data)
        finally:
            response.release_conn()
        items = body.get("items") or []
        objects = {_key(obj): obj for obj in items}
        resource = self._resource(kind)
        with self._lock:
            resource.objects = objects
            resource.resource_version = (body.get("metadata") or {}).get("resourceVersion")
            resource.listed = True
            resource.last_success = self._clock()
        self._rebuild()

    def _record_error(self, kind: str, exc: BaseException) -> None:
        resource = self._resource(kind)
        text = _describe(exc)
        with self._lock:
            resource.last_error = text
            resource.last_error_at = self._clock()
        log.warning("kubernetes %s refresh failed: %s", kind, text,
                    extra={"kind": kind, "serving_last_good": self._topology is not None})

    def refresh(self) -> bool:
        """List nodes and pods now. True if both succeeded; on failure the last good topology stays."""
        ok = True
        for kind in ("nodes", "pods"):
            try:
                self._list(kind)
            except Exception as exc:  # noqa: BLE001 - any API/transport/config failure is reported
                self._record_error(kind, exc)
                ok = False
        return ok

    def _apply_event(self, kind: str, event: Mapping[str, Any], watcher: k8s_watch.Watch) -> None:
        obj = event.get("raw_object") or {}
        resource = self._resource(kind)
        with self._lock:
            if event.get("type") in ("ADDED", "MODIFIED"):
                resource.objects[_key(obj)] = obj
            elif event.get("type") == "DELETED":
                resource.objects.pop(_key(obj), None)
            resource.resource_version = watcher.resource_version or resource.resource_version
            resource.last_success = self._clock()
        if event.get("type") != "BOOKMARK":
            self._rebuild()

    def _watch_loop(self, kind: str) -> None:
        failures = 0
        while not self._stop.is_set():
            try:
                resource = self._resource(kind)
                if not resource.listed or resource.resource_version is None:
                    self._list(kind)
                fn, kwargs = self._list_call(kind)
                watcher = k8s_watch.Watch()
                self._watches[kind] = watcher
                hold = max(1, int(self.interval_s))
                for event in watcher.stream(
                    fn, **kwargs,
                    resource_version=resource.resource_version,
                    timeout_seconds=hold,
                    allow_watch_bookmarks=True,
                    _request_timeout=(min(3.0, self.request_timeout_s), hold + self.request_timeout_s),
                ):
                    self._apply_event(kind, event, watcher)
                    failures = 0
                    if self._stop.is_set():
                        break
                # The server closed the watch (timeout_seconds): watch on from the same version.
                failures = 0
            except k8s_client.ApiException as exc:
                if exc.status == 410:  # our resourceVersion is too old: list again, (almost) at once
                    with self._lock:
                        self._resource(kind).listed = False
                    self._stop.wait(0.05)
                    continue
                failures = self._after_failure(kind, exc, failures)
            except Exception as exc:  # noqa: BLE001 - transport errors, config errors, bad JSON
                failures = self._after_failure(kind, exc, failures)

    def _after_failure(self, kind: str, exc: BaseException, failures: int) -> int:
        if self._stop.is_set():
            return failures
        self._record_error(kind, exc)
        with self._lock:
            self._resource(kind).listed = False  # events may have been missed: relist
        delay = min(self.max_backoff_s, self.retry_backoff_s * (2 ** failures))
        self._stop.wait(delay)
        return failures + 1

    def _interval_loop(self) -> None:
        while not self._stop.is_set():
            self.refresh()
            self._stop.wait(self.interval_s)

    def start(self) -> None:
        """Start the background refresh thread(s). Idempotent."""
        if self._threads:
            return
        self._stop.clear()
        if self.refresh_mode == "watch":
            targets = [(self._watch_loop, ("nodes",)), (self._watch_loop, ("pods",))]
        else:
            targets = [(self._interval_loop, ())]
        for fn, args in targets:
            thread = threading.Thread(target=fn, args=args, daemon=True,
                                      name=f"k8s-topology-{'-'.join(args) or 'interval'}")
            thread.start()
            self._threads.append(thread)

    def stop(self, timeout_s: float = 5.0) -> None:
        """Stop the background threads (closing open watch connections). Idempotent."""
        self._stop.set()
        for watcher in list(self._watches.values()):
            watcher.stop()
            # Watch.stop() only takes effect at the next event; shutting the socket down ends a
            # blocked read now (urllib3 >= 2.3). ``_resp`` is the client's open watch response.
            response = getattr(watcher, "_resp", None)
            if response is not None and hasattr(response, "shutdown"):
                try:
                    response.shutdown()
                except OSError:
                    pass
        for thread in self._threads:
            thread.join(timeout_s)
        self._threads = []
        self._watches.clear()

    # -- serving -------------------------------------------------------------------------------

    def _rebuild(self) -> None:
        with self._lock:
            if not (self._nodes.listed and self._pods.listed) and self._topology is None:
                return  # wait for both lists before serving a first topology
            nodes = list(self._nodes.objects.values())
            pods = list(self._pods.objects.values())
        result = build_topology(nodes, pods, namespace=self.namespace, broker=self.broker,
                                broker_url_template=self.broker_url_template,
                                redis_port=self.redis_port)
        with self._lock:
            self._topology = result.topology
            self._built_at = self._clock()
            self._warnings = result.warnings[:MAX_WARNINGS]

    def current(self) -> Topology:
        with self._lock:
            topology = self._topology
        if topology is None:
            raise TopologyUnavailable("no topology yet: the Kubernetes API has not answered")
        return topology

    def next(self) -> Topology:
        """Kubernetes has no schedule of future topologies: the current one."""
        return self.current()

    def status(self) -> dict[str, Any]:
        now = self._clock()
        with self._lock:
            errors = {}
            degraded = False
            for resource in (self._nodes, self._pods):
                if resource.last_error_at is not None and (
                    resource.last_success is None or resource.last_error_at > resource.last_success
                ):
                    degraded = True
                    errors[resource.kind] = {
                        "error": resource.last_error,
                        "since_s": round(now - resource.last_error_at, 3),
                    }
            return {
                "source": "kubernetes",
                "ready": self._topology is not None,
                "degraded": degraded,
                "serving": "last good topology" if degraded and self._topology is not None else
                           ("live" if self._topology is not None else "nothing yet"),
                "mode": self.refresh_mode,
                "namespace": self.namespace,
                "nodes": len(self._topology.nodes) if self._topology else 0,
                "topology_age_s": None if self._built_at is None else round(now - self._built_at, 3),
                "errors": errors,
                "warnings": list(self._warnings),
            }


def _key(obj: Mapping[str, Any]) -> str:
    meta = obj.get("metadata") or {}
    return f"{meta.get('namespace', '')}/{meta.get('name', '')}"


def _describe(exc: BaseException) -> str:
    if isinstance(exc, k8s_client.ApiException):
        return f"API answered {exc.status} {exc.reason}".strip()
    if isinstance(exc, urllib3.exceptions.HTTPError):
        reason = getattr(exc, "reason", None)
        return f"{type(exc).__name__}: {reason or exc}"
    return f"{type(exc).__name__}: {exc}"
