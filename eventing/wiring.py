"""The event wiring, read from the Helm chart's values: one source of truth for Knative and local runs.

``charts/skylark/values.yaml`` declares the Broker name, the workflow (``workflow``: its
functions and the event types each accepts), the Triggers of Skylark's own services
(``eventing.triggers``: the propagation of bundles to each node's handlers, and any of your
own), their delivery (retries, backoff, dead-letter sink), the change stream and its consumer
group, and the warm-up PingSource. The chart's templates render Knative objects from them; this
module builds the very same objects in Python, so ``skylark up`` (no Helm, no Kubernetes) wires
its local brokers and sources exactly as the cluster is wired. ``tests/test_chart_wiring.py``
compares both renderings so they cannot drift.

Everything here is pure except :func:`load_chart_values`, which reads the YAML file.

Names: the chart calls each object ``<release>-<name>``; pass ``prefix=f"{release}-"`` to get the
chart's names, or leave it empty (the local broker) to get the bare names, where a subscriber's
``ref.name`` is the service key itself — a function's (:func:`function_service`, its name as a
DNS label), ``dead-letter``, or ``handlers-<node>`` (:func:`handlers_service`) — the key of the
local service map {service name -> URL}.

Functions: one Trigger per function and accepted event type, named after the function
(``<function>``, then ``<function>-2``... for further types), delivering to its Knative Service.
With ``nodes`` given (a local broker serves one node), only the functions that run on those
nodes (pinned there, or on any node) get Triggers.

Per node: the handlers run once per node (they own that node's Redis), so a Trigger to them is
``perNode``: it is expanded into one Trigger per node N, named ``<name>-<N>``, whose filter also
requires ``skylarktarget=N`` and whose subscriber is ``handlers-<N>``. The nodes are the values'
``nodes`` unless the caller names its own (``nodes=[...]``: e.g. the local cluster's simulated
nodes, or just one node for a per-node local broker). The warm-up ping to the handlers is
expanded the same way (without a filter); its data, unless the values give one, names every
function whose state another function reads.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import json

import yaml

from eventing import catalogue
from skylark.state.errors import ConfigError
from skylark.workflow import Workflow
from skylark.workflow.model import slug

# Skylark's own services a Trigger subscriber or a sink may name, besides the functions.
SERVICE_KEYS = ("handlers", "dead-letter")

TRIGGER_API_VERSION = "eventing.knative.dev/v1"
PINGSOURCE_API_VERSION = "sources.knative.dev/v1"
KSVC_API_VERSION = "serving.knative.dev/v1"

_MAX_NAME = 63  # a Kubernetes object name (DNS-1123 label)
_MAX_NODE_SLUG = 40


def default_values_path() -> Path:
    """The chart's values.yaml inside the repository this package lives in.

    Works from a checkout and from an editable install (``pip install -e .``), where the package
    directory is the repository's ``eventing/``; a plain wheel does not carry the chart, so pass
    the path explicitly there.
    """
    return Path(__file__).resolve().parent.parent / "charts" / "skylark" / "values.yaml"


def load_chart_values(path: str | Path | None = None) -> dict[str, Any]:
    """The chart's values (default: :func:`default_values_path`) as plain data."""
    file = Path(path) if path is not None else default_values_path()
    try:
        text = file.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(
            f"chart values not found at {file} (run from a checkout or an editable install, "
            "or pass the path of charts/skylark/values.yaml)"
        ) from None
    try:
        values = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{file} is not valid YAML: {exc}") from None
    if not isinstance(values, dict):
        raise ConfigError(f"{file} does not hold a mapping of values")
    return values


def merge_values(base: Mapping[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    """``override`` on top of ``base`` the way ``helm -f`` does it (pure).

    Mappings merge key by key, anything else (lists included) replaces, and a key set to null in
    ``override`` removes it.
    """
    merged: dict[str, Any] = dict(base)
    for key, value in override.items():
        if value is None:
            merged.pop(key, None)
        elif isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = merge_values(merged[key], value)
        else:
            merged[key] = value
    return merged


def object_name(name: str, prefix: str = "") -> str:
    """The chart's name for an object: ``<prefix><name>``, at most 63 characters (Helm's ``trunc 63``)."""
    return f"{prefix}{name}"[:_MAX_NAME].rstrip("-")


def node_slug(node: str) -> str:
    """A node name as a DNS-1123 fragment, as the chart's ``skylark.nodeSlug`` makes it."""
    return node.lower().replace(".", "-").replace("_", "-")[:_MAX_NODE_SLUG].rstrip("-")


def handlers_service(node: str) -> str:
    """The service key of ``node``'s own handlers (Knative Service ``<release>-handlers-<node>``)."""
    return f"handlers-{node_slug(node)}"


def function_service(function: str) -> str:
    """The service key of a workflow function (Knative Service ``<release>-<key>``)."""
    return slug(function)


def workflow_from_values(values: Mapping[str, Any]) -> Workflow:
    """The workflow the values declare (``workflow``), validated."""
    document = values.get("workflow")
    if document is None:
        raise ConfigError("set workflow: the workflow declaration (docs/workflows.md)")
    return Workflow.from_document(document, source="values.workflow")


def nodes_from_values(values: Mapping[str, Any]) -> list[str]:
    """The node names of ``nodes`` (each entry needs a name and an address, as in the chart)."""
    nodes = values.get("nodes")
    if not nodes or not isinstance(nodes, list):
        raise ConfigError("set nodes: one entry {name, address} per Kubernetes node")
    names = []
    for entry in nodes:
        if not isinstance(entry, Mapping) or not entry.get("name") or not entry.get("address"):
            raise ConfigError(f"every entry of nodes needs name and address, got {entry!r}")
        names.append(str(entry["name"]))
    return names


def stream_from_values(values: Mapping[str, Any]) -> tuple[str, str]:
    """(change stream key, consumer group) the RedisStreamSources read."""
    stream = _mapping(values.get("stream"), "stream")
    key, group = stream.get("key"), stream.get("group")
    if not isinstance(key, str) or not key:
        raise ConfigError("stream.key must be a non-empty string")
    if not isinstance(group, str) or not group:
        raise ConfigError("stream.group must be a non-empty string")
    return key, group


def broker_from_values(values: Mapping[str, Any]) -> str:
    """The Broker's name (not prefixed: functions address it by URL)."""
    name = _mapping(values.get("eventing"), "eventing").get("brokerName")
    if not isinstance(name, str) or not name:
        raise ConfigError("eventing.brokerName must be a non-empty string")
    return name


def destination(dest: Any, *, what: str, prefix: str = "", values: Mapping[str, Any] | None = None,
                node: str | None = None, functions: tuple[str, ...] = ()) -> dict[str, Any]:
    """A Knative destination ({ref, uri}) from ``{service, path}`` or ``{uri}``, as the chart renders it.

    ``service`` is one of :data:`SERVICE_KEYS` or the service key of one of ``functions``;
    ``{service: handlers}`` means ``node``'s own handlers, so it needs ``node``.
    """
    dest = _mapping(dest, what)
    service = dest.get("service")
    if service:
        known = (*SERVICE_KEYS, *(function_service(f) for f in functions))
        if service not in known:
            raise ConfigError(f"{what}: unknown service {service!r} (one of: {', '.join(known)})")
        if service == "dead-letter" and values is not None:
            if not _mapping(values.get("deadLetter"), "deadLetter").get("enabled"):
                raise ConfigError(f"{what}: names the dead-letter service but deadLetter.enabled is false")
        if service == "handlers":
            if not node:
                raise ConfigError(f"{what}: the handlers run once per node; a Trigger to them needs perNode: true")
            service = handlers_service(node)
        out: dict[str, Any] = {
            "ref": {"apiVersion": KSVC_API_VERSION, "kind": "Service", "name": object_name(service, prefix)}
        }
        if dest.get("path"):
            out["uri"] = str(dest["path"])
        return out
    if dest.get("uri"):
        return {"uri": str(dest["uri"])}
    raise ConfigError(f"{what}: needs either service or uri")


def delivery(spec: Any, *, what: str, prefix: str = "", values: Mapping[str, Any] | None = None,
             functions: tuple[str, ...] = ()) -> dict[str, Any]:
    """A Knative DeliverySpec from an ``eventing.delivery``-shaped mapping (empty: no delivery)."""
    spec = _mapping(spec, what)
    out: dict[str, Any] = {}
    if spec.get("retry") is not None:
        out["retry"] = _int(spec["retry"], f"{what}.retry")
    if spec.get("backoffPolicy"):
        if spec["backoffPolicy"] not in ("linear", "exponential"):
            raise ConfigError(f"{what}.backoffPolicy must be linear or exponential")
        out["backoffPolicy"] = spec["backoffPolicy"]
    if spec.get("backoffDelay"):
        out["backoffDelay"] = str(spec["backoffDelay"])
    if spec.get("deadLetterSink"):
        out["deadLetterSink"] = destination(
            spec["deadLetterSink"], what=f"{what} deadLetterSink", prefix=prefix, values=values, functions=functions
        )
    return out


def _trigger(name: str, namespace: str, prefix: str, spec: dict[str, Any]) -> dict[str, Any]:
    return {"apiVersion": TRIGGER_API_VERSION, "kind": "Trigger",
            "metadata": {"name": object_name(name, prefix), "namespace": namespace}, "spec": spec}


def triggers_from_values(values: Mapping[str, Any], namespace: str = "default", *, prefix: str = "",
                         nodes: list[str] | None = None, workflow: Workflow | None = None) -> list[dict[str, Any]]:
    """The Knative Trigger objects the chart renders: ``eventing.triggers``, then the workflow's.

    Each: apiVersion eventing.knative.dev/v1, kind Trigger, metadata {name, namespace}, spec {broker,
    filter.attributes (string values), subscriber {ref to a serving.knative.dev/v1 Service, uri
    path if given}, delivery (the trigger's own, else eventing.delivery; omitted when empty)}.
    ``perNode`` triggers come once per node of ``nodes`` (default: the values' nodes), in order;
    then one per function and accepted type (only functions that run on ``nodes``, when given).
    ``workflow`` replaces the values' own declaration (the local cluster runs the file it was given).
    """
    eventing = _mapping(values.get("eventing"), "eventing")
    broker = broker_from_values(values)
    workflow = workflow if workflow is not None else workflow_from_values(values)
    functions = workflow.names
    triggers = eventing.get("triggers") or []
    if not isinstance(triggers, list):
        raise ConfigError("eventing.triggers must be a list")
    default_delivery = eventing.get("delivery") or {}
    out: list[dict[str, Any]] = []
    seen: set[str] = set()

    def add(name: str, what: str, spec: dict[str, Any]) -> None:
        if name in seen:
            raise ConfigError(f"{what}: duplicate trigger name {name!r}")
        seen.add(name)
        out.append(_trigger(name, namespace, prefix, spec))

    for index, trigger in enumerate(triggers):
        trigger = _mapping(trigger, f"eventing.triggers[{index}]")
        name = trigger.get("name")
        what = f"eventing.triggers[{index}] ({name or '?'})"
        if not isinstance(name, str) or not name:
            raise ConfigError(f"{what}: needs a name")
        attributes = _mapping(trigger.get("filter"), f"{what}.filter").get("attributes")
        if not attributes or not isinstance(attributes, Mapping):
            raise ConfigError(f"{what}: needs filter.attributes (an empty filter would deliver every event)")
        per_node: list[str | None] = [None]
        if trigger.get("perNode"):
            per_node = list(nodes) if nodes is not None else nodes_from_values(values)
        for node in per_node:
            filter_attributes = {str(k): str(v) for k, v in attributes.items()}
            if node is not None:
                filter_attributes[catalogue.EXT_TARGET] = node
            spec: dict[str, Any] = {
                "broker": broker,
                # Sorted like Helm's template output (Go ranges over map keys in order).
                "filter": {"attributes": dict(sorted(filter_attributes.items()))},
                "subscriber": destination(trigger.get("subscriber"), what=what, prefix=prefix, values=values,
                                          node=node, functions=functions),
            }
            trigger_delivery = delivery(trigger.get("delivery") or default_delivery, what=what, prefix=prefix,
                                        values=values, functions=functions)
            if trigger_delivery:
                spec["delivery"] = trigger_delivery
            add(name if node is None else f"{name}-{node_slug(node)}", what, spec)

    function_delivery = delivery(default_delivery, what="eventing.delivery", prefix=prefix, values=values,
                                 functions=functions)
    for fn in workflow.functions:
        if nodes is not None and not any(fn.runs_on(n) for n in nodes):
            continue
        service = function_service(fn.name)
        for k, event_type in enumerate(fn.accepts):
            spec = {
                "broker": broker,
                "filter": {"attributes": {"type": event_type}},
                "subscriber": {"ref": {"apiVersion": KSVC_API_VERSION, "kind": "Service",
                                       "name": object_name(service, prefix)}},
            }
            if function_delivery:
                spec["delivery"] = function_delivery
            add(service if k == 0 else f"{service}-{k + 1}", f"workflow function {fn.name}", spec)
    return out


def warmup_data(workflow: Workflow) -> str | None:
    """The warm-up ping's data when the values give none: every function whose state another
    function of the workflow reads (what a successor needs locally); None when no function reads
    another's state (then there is nothing to warm, and no PingSource)."""
    read = sorted({name for fn in workflow.functions for name in fn.reads})
    return json.dumps({"functions": read}, separators=(",", ":")) if read else None


def pingsources_from_values(values: Mapping[str, Any], namespace: str = "default", *, prefix: str = "",
                            nodes: list[str] | None = None, workflow: Workflow | None = None) -> list[dict[str, Any]]:
    """The PingSources of ``ping`` as the chart renders them: none when ``ping.enabled`` is false,
    one per node (``<name>-<node>`` -> ``handlers-<node>``) when the sink is the handlers, else one.
    Without ``ping.data``, the data is :func:`warmup_data` of the workflow (none when it reads
    nothing: then no PingSource either)."""
    ping = _mapping(values.get("ping"), "ping")
    if not ping.get("enabled"):
        return []
    for key in ("name", "schedule"):
        if not ping.get(key):
            raise ConfigError(f"ping.{key} must be set")
    workflow = workflow if workflow is not None else workflow_from_values(values)
    spec: dict[str, Any] = {"schedule": str(ping["schedule"])}
    if ping.get("timezone"):
        spec["timezone"] = str(ping["timezone"])
    if ping.get("contentType"):
        spec["contentType"] = str(ping["contentType"])
    data = str(ping["data"]) if ping.get("data") else warmup_data(workflow)
    if data is None:
        return []
    spec["data"] = data
    sink = _mapping(ping.get("sink"), "ping.sink")
    per_node: list[str | None] = [None]
    if sink.get("service") == "handlers":
        per_node = list(nodes) if nodes is not None else nodes_from_values(values)
    out = []
    for node in per_node:
        name = str(ping["name"]) if node is None else f"{ping['name']}-{node_slug(node)}"
        out.append(
            {
                "apiVersion": PINGSOURCE_API_VERSION,
                "kind": "PingSource",
                "metadata": {"name": object_name(name, prefix), "namespace": namespace},
                "spec": {**spec, "sink": destination(sink, what="ping.sink", prefix=prefix, values=values, node=node,
                                                     functions=workflow.names)},
            }
        )
    return out


def _mapping(value: Any, what: str) -> Mapping[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise ConfigError(f"{what} must be a mapping, got {type(value).__name__}")
    return value


def _int(value: Any, what: str) -> int:
    if isinstance(value, bool):
        raise ConfigError(f"{what} must be an integer")
    try:
        number = int(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{what} must be an integer, got {value!r}") from None
    if number < 0:
        raise ConfigError(f"{what} must be >= 0")
    return number
