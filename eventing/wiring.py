"""The event wiring, read from the Helm chart's values: one source of truth for Knative and local runs.

``charts/skylark/values.yaml`` declares the Broker name, the Triggers (filter -> subscriber
service), their delivery (retries, backoff, dead-letter sink), the change stream and its consumer
group, and the warm-up PingSource. The chart's templates render Knative objects from them; this
module builds the very same objects in Python, so ``skylark up`` (no Helm, no Kubernetes) wires its
local broker and sources exactly as the cluster is wired. ``tests/test_chart_wiring.py`` compares
both renderings so they cannot drift.

Everything here is pure except :func:`load_chart_values`, which reads the YAML file.

Names: the chart calls each object ``<release>-<name>``; pass ``prefix=f"{release}-"`` to get the
chart's names, or leave it empty (the local broker) to get the bare names, where a subscriber's
``ref.name`` is the service key itself — ``preprocess``, ``detect``, ``alarm``, ``dead-letter``, or
``handlers-<node>`` (:func:`handlers_service`) — the key of the local service map
{service name -> URL}.

Per node: the handlers run once per node (they own that node's Redis), so a Trigger to them is
``perNode``: it is expanded into one Trigger per node N, named ``<name>-<N>``, whose filter also
requires ``skylarktarget=N`` and whose subscriber is ``handlers-<N>``. The nodes are the values'
``nodes`` unless the caller names its own (``nodes=[...]``: e.g. the local cluster's simulated
nodes, or just one node for a per-node local broker). The warm-up ping to the handlers is
expanded the same way (without a filter).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from eventing import catalogue
from skylark.state.errors import ConfigError

# Services a Trigger subscriber or a sink may name (the Knative Services the chart renders).
SERVICE_KEYS = ("handlers", "preprocess", "detect", "alarm", "dead-letter")

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
                node: str | None = None) -> dict[str, Any]:
    """A Knative destination ({ref, uri}) from ``{service, path}`` or ``{uri}``, as the chart renders it.

    ``{service: handlers}`` means ``node``'s own handlers, so it needs ``node``.
    """
    dest = _mapping(dest, what)
    service = dest.get("service")
    if service:
        if service not in SERVICE_KEYS:
            raise ConfigError(f"{what}: unknown service {service!r} (one of: {', '.join(SERVICE_KEYS)})")
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


def delivery(spec: Any, *, what: str, prefix: str = "", values: Mapping[str, Any] | None = None) -> dict[str, Any]:
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
            spec["deadLetterSink"], what=f"{what} deadLetterSink", prefix=prefix, values=values
        )
    return out


def triggers_from_values(values: Mapping[str, Any], namespace: str = "default", *, prefix: str = "",
                         nodes: list[str] | None = None) -> list[dict[str, Any]]:
    """The Knative Trigger objects of ``eventing.triggers``, shaped exactly as the chart renders them.

    Each: apiVersion eventing.knative.dev/v1, kind Trigger, metadata {name, namespace}, spec {broker,
    filter.attributes (string values), subscriber {ref to a serving.knative.dev/v1 Service, uri
    path if given}, delivery (the trigger's own, else eventing.delivery; omitted when empty)}.
    ``perNode`` triggers come once per node of ``nodes`` (default: the values' nodes), in order.
    """
    eventing = _mapping(values.get("eventing"), "eventing")
    broker = broker_from_values(values)
    triggers = eventing.get("triggers") or []
    if not isinstance(triggers, list):
        raise ConfigError("eventing.triggers must be a list")
    default_delivery = eventing.get("delivery") or {}
    out: list[dict[str, Any]] = []
    seen: set[str] = set()
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
            trigger_name = name if node is None else f"{name}-{node_slug(node)}"
            if trigger_name in seen:
                raise ConfigError(f"{what}: duplicate trigger name {trigger_name!r}")
            seen.add(trigger_name)
            filter_attributes = {str(k): str(v) for k, v in attributes.items()}
            if node is not None:
                filter_attributes[catalogue.EXT_TARGET] = node
            spec: dict[str, Any] = {
                "broker": broker,
                # Sorted like Helm's template output (Go ranges over map keys in order).
                "filter": {"attributes": dict(sorted(filter_attributes.items()))},
                "subscriber": destination(trigger.get("subscriber"), what=what, prefix=prefix, values=values,
                                          node=node),
            }
            trigger_delivery = delivery(
                trigger.get("delivery") or default_delivery, what=what, prefix=prefix, values=values
            )
            if trigger_delivery:
                spec["delivery"] = trigger_delivery
            out.append(
                {
                    "apiVersion": TRIGGER_API_VERSION,
                    "kind": "Trigger",
                    "metadata": {"name": object_name(trigger_name, prefix), "namespace": namespace},
                    "spec": spec,
                }
            )
    return out


def pingsources_from_values(values: Mapping[str, Any], namespace: str = "default", *, prefix: str = "",
                            nodes: list[str] | None = None) -> list[dict[str, Any]]:
    """The PingSources of ``ping`` as the chart renders them: none when ``ping.enabled`` is false,
    one per node (``<name>-<node>`` -> ``handlers-<node>``) when the sink is the handlers, else one."""
    ping = _mapping(values.get("ping"), "ping")
    if not ping.get("enabled"):
        return []
    for key in ("name", "schedule"):
        if not ping.get(key):
            raise ConfigError(f"ping.{key} must be set")
    spec: dict[str, Any] = {"schedule": str(ping["schedule"])}
    if ping.get("timezone"):
        spec["timezone"] = str(ping["timezone"])
    if ping.get("contentType"):
        spec["contentType"] = str(ping["contentType"])
    if ping.get("data"):
        spec["data"] = str(ping["data"])
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
                "spec": {**spec, "sink": destination(sink, what="ping.sink", prefix=prefix, values=values, node=node)},
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
