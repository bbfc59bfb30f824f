"""Local stand-in for a Knative PingSource: on a cron schedule, send ``dev.knative.sources.ping`` to a sink.

The event is built as knative/eventing's mtping adapter builds it (``pkg/adapter/mtping/runner.go``,
``makeEvent`` and ``cronTick``): type ``dev.knative.sources.ping``, source
``/apis/v1/namespaces/<ns>/pingsources/<name>``, a new UUID ``id`` per tick, ``time`` set when sent
(the adapter client's ``WithTimeNow``), the ``ceOverrides`` extensions, ``datacontenttype`` =
``contentType`` and data:

- ``dataBase64``: the decoded bytes (what the adapter's tests expect the sink to receive);
- ``data`` with ``application/json``: the JSON object re-encoded the way Go marshals it
  (compact, top-level keys sorted, ``<>&`` escaped) — it must be a JSON object;
- ``data`` with any other type: the text as is.

Differences: the schedule runs in this process (croniter; ``timezone`` an IANA name as the
PingSource's ``spec.timezone``); the real adapter waits a random 0–500 ms before each send to spread
load (``jitter_s`` here, default 0); a failed send is retried by the publisher, then logged and lost,
as in Knative.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import json
import logging
import random
import threading
import uuid
from collections.abc import Callable, Mapping
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from cloudevents.core.v1.event import CloudEvent
from croniter import croniter

from eventing import catalogue
from eventing.background import BackgroundSource
from eventing.broker.triggers import Destination
from eventing.http import to_binary
from eventing.publisher import PublishOutcome, Publisher
from eventing.redisstream import go_json
from skylark.state.errors import ConfigError

log = logging.getLogger(__name__)

JSON = "application/json"


def ping_source(namespace: str, name: str) -> str:
    """The ``source`` attribute of a PingSource's events (v1beta2.PingSourceSource)."""
    return f"/apis/v1/namespaces/{namespace}/pingsources/{name}"


def _utc_now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


class PingSource(BackgroundSource):
    def __init__(self, schedule: str, sink_url: str, data: str | None = None, data_base64: str | None = None,
                 content_type: str | None = JSON, timezone: str | None = "UTC", *, name: str = "ping",
                 namespace: str = "default", extensions: Mapping[str, str] | None = None,
                 publisher: Publisher | None = None, jitter_s: float = 0.0,
                 clock: Callable[[], dt.datetime] = _utc_now) -> None:
        schedule = schedule.strip()
        if schedule.upper().startswith("CRON_TZ="):
            # robfig/cron's inline zone, which Knative also produces from spec.timezone.
            zone, _, schedule = schedule.partition(" ")
            timezone = zone.split("=", 1)[1]
        if not (schedule.startswith("@") or len(schedule.split()) == 5) or not croniter.is_valid(schedule):
            raise ConfigError(f"PingSource schedule {schedule!r} is not a 5-field cron expression")
        try:
            self.zone = ZoneInfo(timezone or "UTC")
        except (ZoneInfoNotFoundError, ValueError):
            raise ConfigError(f"PingSource timezone {timezone!r} is not an IANA time zone") from None
        if data and data_base64:
            raise ConfigError("PingSource: set data or dataBase64, not both")
        self.schedule = schedule
        self.sink_url = sink_url
        self.content_type = content_type or None
        self.name = name
        self.namespace = namespace
        self.extensions = {str(k): str(v) for k, v in (extensions or {}).items()}
        self.body = _body(data, data_base64, self.content_type)
        super().__init__(publisher, f"ping-{name}")
        self.jitter_s = jitter_s
        self.clock = clock
        self.sent = 0
        self.failed = 0

    @classmethod
    def from_object(cls, obj: Mapping[str, Any], services: Mapping[str, str], **kwargs: Any) -> "PingSource":
        """From a Knative PingSource object (e.g. ``eventing.wiring.pingsource_from_values``)."""
        meta = obj.get("metadata") or {}
        spec = obj.get("spec") or {}
        if not meta.get("name"):
            raise ConfigError("PingSource needs metadata.name")
        sink = Destination.from_object(spec.get("sink"), f"PingSource {meta['name']}: spec.sink").resolve(services)
        return cls(spec.get("schedule") or "* * * * *", sink, data=spec.get("data"),
                   data_base64=spec.get("dataBase64"), content_type=spec.get("contentType"),
                   timezone=spec.get("timezone") or "UTC", name=meta["name"],
                   namespace=meta.get("namespace") or "default",
                   extensions=(spec.get("ceOverrides") or {}).get("extensions"), **kwargs)

    @property
    def source(self) -> str:
        return ping_source(self.namespace, self.name)

    def next_fire(self, after: dt.datetime) -> dt.datetime:
        """The first tick strictly after ``after`` (aware; naive means UTC), in UTC. Pure."""
        if after.tzinfo is None:
            after = after.replace(tzinfo=dt.timezone.utc)
        local = after.astimezone(self.zone)
        return croniter(self.schedule, local).get_next(dt.datetime).astimezone(dt.timezone.utc)

    def build_event(self) -> CloudEvent:
        attributes: dict[str, Any] = {"type": catalogue.PING, "source": self.source, "id": str(uuid.uuid4()),
                                      "time": self.clock(), **self.extensions}
        if self.content_type and self.body is not None:
            attributes["datacontenttype"] = self.content_type
        return CloudEvent(attributes, self.body)

    def fire_once(self) -> PublishOutcome:
        """Send one ping now."""
        event = self.build_event()
        headers, _ = to_binary(CloudEvent(event.get_attributes(), None))
        if self.content_type and self.body is not None:
            headers["content-type"] = self.content_type
        outcome = self.publisher.post(self.sink_url, headers, self.body or b"")
        if outcome.ok:
            self.sent += 1
        else:
            self.failed += 1
            log.error("ping: send failed, event lost", extra={"source": self.source, "id": event.get_id(),
                                                              "status": outcome.status_code,
                                                              "reason": outcome.reason[:200]})
        return outcome

    def run(self, stop_event: threading.Event) -> None:
        due = self.next_fire(self.clock())
        while not stop_event.is_set():
            left = (due - self.clock()).total_seconds()
            if left > 0:
                stop_event.wait(min(left, 1.0))  # re-read the clock: it may jump (suspend, NTP)
                continue
            if self.jitter_s:
                stop_event.wait(random.uniform(0, self.jitter_s))  # noqa: S311 - load spreading only
            if not stop_event.is_set():
                self.fire_once()
            due = self.next_fire(max(due, self.clock()))



def _body(data: str | None, data_base64: str | None, content_type: str | None) -> bytes | None:
    if data_base64:
        try:
            return base64.b64decode(data_base64, validate=True)
        except (binascii.Error, ValueError):
            raise ConfigError("PingSource dataBase64 is not valid base64") from None
    if not data:
        return None
    if content_type and content_type.split(";")[0].strip().lower() == JSON:
        try:
            obj = json.loads(data)
        except ValueError as exc:
            raise ConfigError(f"PingSource data is not JSON although contentType is {JSON}: {exc}") from None
        if not isinstance(obj, dict):
            raise ConfigError(f"PingSource data must be a JSON object for {JSON}")
        # Go unmarshals into map[string]*json.RawMessage and marshals it again: top-level keys
        # sorted, values compacted as they were.
        return go_json(dict(sorted(obj.items())))
    return data.encode("utf-8")
