"""Knative Triggers for the local broker (pure): parse the objects, match events, resolve subscribers.

The input is the same Trigger objects the chart renders (``eventing.wiring.triggers_from_values``,
or any ``eventing.knative.dev/v1`` Trigger YAML). Supported: ``spec.broker``,
``spec.filter.attributes`` (exact match; an empty value matches any value of an attribute the event
has — Knative's ``TriggerAnyFilter``), ``spec.subscriber`` ``ref`` and/or ``uri``, and
``spec.delivery`` {``retry``, ``backoffPolicy`` linear|exponential, ``backoffDelay`` and ``timeout``
(ISO-8601 durations such as ``PT0.2S``), ``deadLetterSink``}. ``spec.filters`` (the newer SQL-ish
dialect) is refused rather than ignored.

A ``ref`` is resolved through a local service map {name → base URL}: the exact ref name first, then
the name without a release prefix (``skylark-handlers`` → ``handlers``), so the map can be keyed by
the chart's service keys whether or not the Triggers carry a release prefix.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urljoin

import yaml
from cloudevents.core.base import BaseCloudEvent

from skylark.state.errors import ConfigError

BACKOFF_POLICIES = ("linear", "exponential")
DEFAULT_BACKOFF_DELAY_S = 0.2  # Knative leaves it to the dispatcher; we pick the chart's default

# [0-9], not \d: \d also matches Unicode digits, which float() then reads ("PT١S" is one second).
_NUMBER = r"[0-9]{1,9}(?:\.[0-9]{1,9})?"
_DURATION = re.compile(
    rf"P(?:(?P<weeks>{_NUMBER})W)?(?:(?P<days>{_NUMBER})D)?"
    rf"(?:T(?:(?P<hours>{_NUMBER})H)?(?:(?P<minutes>{_NUMBER})M)?(?:(?P<seconds>{_NUMBER})S)?)?"
)
_SECONDS = {"weeks": 604800, "days": 86400, "hours": 3600, "minutes": 60, "seconds": 1}


def parse_duration(text: str) -> float:
    """An ISO-8601 duration (``PT0.2S``, ``PT1M30S``, ``P1D``) in seconds; years/months are refused."""
    match = _DURATION.fullmatch(text.strip().upper()) if isinstance(text, str) else None
    if match is None or text.strip().upper() in ("P", "PT") or text.strip().upper().endswith("T"):
        raise ConfigError(f"{text!r} is not an ISO-8601 duration like PT0.2S (no years or months)")
    return sum(float(v) * _SECONDS[k] for k, v in match.groupdict().items() if v)


@dataclass(frozen=True)
class Destination:
    """A Knative destination: a ``ref`` to a service by name and/or a ``uri`` (absolute, or relative to the ref)."""

    ref_name: str | None = None
    ref_kind: str | None = None
    uri: str | None = None

    @classmethod
    def from_object(cls, obj: Any, what: str) -> "Destination":
        if not isinstance(obj, Mapping):
            raise ConfigError(f"{what}: must be a mapping with ref and/or uri")
        ref = obj.get("ref")
        uri = obj.get("uri")
        if ref is not None and (not isinstance(ref, Mapping) or not ref.get("name")):
            raise ConfigError(f"{what}.ref: needs a name")
        if ref is None and not uri:
            raise ConfigError(f"{what}: needs ref or uri")
        if ref is None and not re.match(r"^[a-z][a-z0-9+.-]*://", str(uri), re.I):
            raise ConfigError(f"{what}.uri {uri!r}: without a ref it must be an absolute URL")
        return cls(ref_name=str(ref["name"]) if ref else None,
                   ref_kind=str(ref.get("kind") or "") or None if ref else None,
                   uri=str(uri) if uri else None)

    def resolve(self, services: Mapping[str, str]) -> str:
        """The URL to POST to; :class:`ConfigError` when the ref names no known service."""
        if self.ref_name is None:
            return str(self.uri)
        base = lookup_service(self.ref_name, services)
        if base is None:
            raise ConfigError(f"subscriber ref {self.ref_name!r} is not in the service map "
                              f"({', '.join(sorted(services)) or 'empty'})")
        if not self.uri:
            return base
        return urljoin(base if base.endswith("/") else base + "/", self.uri)


def lookup_service(name: str, services: Mapping[str, str]) -> str | None:
    if name in services:
        return services[name]
    # "<release>-<key>": try every suffix after a dash, longest first ("dead-letter" has one too).
    parts = name.split("-")
    for i in range(1, len(parts)):
        suffix = "-".join(parts[i:])
        if suffix in services:
            return services[suffix]
    return None


@dataclass(frozen=True)
class DeliverySpec:
    """Knative ``DeliverySpec``: ``retry`` retries after the first attempt, then the dead-letter sink."""

    retry: int = 0
    backoff_policy: str = "exponential"
    backoff_delay_s: float = DEFAULT_BACKOFF_DELAY_S
    timeout_s: float | None = None
    dead_letter_sink: Destination | None = None

    @classmethod
    def from_object(cls, obj: Any, what: str) -> "DeliverySpec":
        if obj is None:
            return cls()
        if not isinstance(obj, Mapping):
            raise ConfigError(f"{what}: must be a mapping")
        retry = obj.get("retry", 0)
        if isinstance(retry, bool) or not isinstance(retry, int) or retry < 0:
            raise ConfigError(f"{what}.retry must be a non-negative integer, got {retry!r}")
        policy = obj.get("backoffPolicy") or "exponential"
        if policy not in BACKOFF_POLICIES:
            raise ConfigError(f"{what}.backoffPolicy must be linear or exponential, got {policy!r}")
        delay = parse_duration(obj["backoffDelay"]) if obj.get("backoffDelay") else DEFAULT_BACKOFF_DELAY_S
        timeout = parse_duration(obj["timeout"]) if obj.get("timeout") else None
        dls = obj.get("deadLetterSink")
        return cls(retry=retry, backoff_policy=policy, backoff_delay_s=delay, timeout_s=timeout,
                   dead_letter_sink=Destination.from_object(dls, f"{what}.deadLetterSink") if dls else None)

    def backoff_s(self, retry_number: int) -> float:
        """Wait before retry ``retry_number`` (1-based), as Knative: delay·n (linear) or delay·2ⁿ."""
        if self.backoff_policy == "linear":
            return self.backoff_delay_s * retry_number
        return self.backoff_delay_s * (2 ** retry_number)


@dataclass(frozen=True)
class Trigger:
    name: str
    broker: str
    subscriber: Destination
    namespace: str = "default"
    attributes: Mapping[str, str] = field(default_factory=dict)
    delivery: DeliverySpec = field(default_factory=DeliverySpec)

    @classmethod
    def from_object(cls, obj: Mapping[str, Any]) -> "Trigger":
        """A Trigger from a Knative ``eventing.knative.dev/v1`` Trigger object (a parsed YAML document)."""
        if not isinstance(obj, Mapping):
            raise ConfigError("a Trigger must be a mapping")
        if obj.get("kind", "Trigger") != "Trigger":
            raise ConfigError(f"expected kind Trigger, got {obj.get('kind')!r}")
        meta = obj.get("metadata") or {}
        name = meta.get("name") if isinstance(meta, Mapping) else None
        if not name:
            raise ConfigError("Trigger needs metadata.name")
        what = f"Trigger {name}"
        spec = obj.get("spec")
        if not isinstance(spec, Mapping):
            raise ConfigError(f"{what}: needs a spec")
        if spec.get("filters"):
            raise ConfigError(f"{what}: spec.filters (the new filter dialect) is not supported; "
                              "use spec.filter.attributes")
        broker = spec.get("broker")
        if not broker:
            raise ConfigError(f"{what}: needs spec.broker")
        flt = spec.get("filter") or {}
        attributes = flt.get("attributes") if isinstance(flt, Mapping) else None
        attributes = attributes or {}
        if not isinstance(attributes, Mapping):
            raise ConfigError(f"{what}: spec.filter.attributes must be a mapping")
        return cls(
            name=str(name),
            broker=str(broker),
            namespace=str(meta.get("namespace") or "default"),
            subscriber=Destination.from_object(spec.get("subscriber"), f"{what}: spec.subscriber"),
            attributes={str(k): "" if v is None else str(v) for k, v in attributes.items()},
            delivery=DeliverySpec.from_object(spec.get("delivery"), f"{what}: spec.delivery"),
        )

    def matches(self, event: BaseCloudEvent) -> bool:
        """Knative's attributes filter: every listed attribute present and equal ("" = any value)."""
        attributes = event_attributes(event)
        for name, wanted in self.attributes.items():
            if name not in attributes:
                return False
            if wanted != "" and attributes[name] != wanted:
                return False
        return True


def event_attributes(event: BaseCloudEvent) -> dict[str, str]:
    """Context attributes and extensions as strings (``time`` in RFC 3339), as filters compare them."""
    out: dict[str, str] = {}
    for name, value in event.get_attributes().items():
        if value is None:
            continue
        if hasattr(value, "isoformat"):
            value = value.isoformat().replace("+00:00", "Z")
        out[name] = str(value)
    return out


def load_trigger_objects(text: str) -> list[dict[str, Any]]:
    """The Trigger documents of a (multi-document) YAML text; other kinds are skipped."""
    try:
        docs = [d for d in yaml.safe_load_all(text) if d]
    except yaml.YAMLError as exc:
        raise ConfigError(f"triggers YAML is not valid: {exc}") from None
    out: list[dict[str, Any]] = []
    for doc in docs:
        items = doc.get("items") if isinstance(doc, Mapping) and doc.get("kind") == "List" else [doc]
        for item in items or []:
            if isinstance(item, Mapping) and item.get("kind") == "Trigger":
                out.append(dict(item))
    return out


def parse_triggers(objects: Iterable[Mapping[str, Any] | Trigger]) -> list[Trigger]:
    triggers = [o if isinstance(o, Trigger) else Trigger.from_object(o) for o in objects]
    names = [t.name for t in triggers]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ConfigError(f"duplicate Trigger name(s): {', '.join(duplicates)}")
    return triggers
