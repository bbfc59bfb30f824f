"""The alarm function: the chain's detections → a rule → an alarm record (and event) or "no alarm"."""

from __future__ import annotations

import json
import time
from typing import Any

import redis
from cloudevents.core.base import BaseCloudEvent

from eventing import catalogue
from ex_alarm.config import FUNCTION, SOURCE_FUNCTION, AlarmSettings
from ex_alarm.rule import InvalidDetections, parse_detections
from skylark.state.errors import StoreUnavailable
from skylark.fn import StatefulFunction, Handled, StageTimings, chain_of, data_object
from skylark.fn import origin_of, result_data, result_event, route_of, size_hint, trace_of, version_of
from skylark.serving.web import ClientError

ALARM, NO_ALARM = "alarm", "no_alarm"


def _json(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"))


class AlarmFunction(StatefulFunction):
    name = FUNCTION
    accepts = (catalogue.DETECT_COMPLETED,)

    settings: AlarmSettings

    def handle(self, event: BaseCloudEvent) -> Handled:
        data = data_object(event)
        chain = chain_of(event, data)
        origin = origin_of(event, data)
        trace, route = trace_of(data), route_of(data)
        node, rule = self.settings.core.node, self.settings.rule

        read = self.state.read(chain, SOURCE_FUNCTION, origin, version_of(event), size_hint(data))

        start = time.perf_counter()
        try:
            raw = read.bundle.fields.get("detections")
            if raw is None:
                raise InvalidDetections("the detect bundle has no detections field")
            detections = parse_detections(json.loads(raw))
        except (InvalidDetections, ValueError) as exc:
            raise ClientError(422, "invalid_state", f"detections of chain {chain!r}: {exc}") from None
        outcome = rule.evaluate(detections)
        compute_ms = (time.perf_counter() - start) * 1000
        kind = ALARM if outcome.fired else NO_ALARM

        # This stage's store time is not known before the write: the record leaves it out (the
        # event and the log carry it).
        partial = StageTimings(FUNCTION, node, read.location, read.node, read.elapsed_ms, compute_ms, 0.0)
        entry = {k: v for k, v in partial.trace_entry().items() if k != "store_ms"}
        record = {
            "chain": chain, "node": node, "outcome": kind, "reason": outcome.reason,
            "detections": _json(detections), "matched": _json(list(outcome.matching)),
            "rule": _json(rule.to_dict()), "source_version": str(read.bundle.version),
            "event_id": event.get_id(),
            "timings": _json({k: v for k, v in partial.timings().items() if k != "store_ms"}),
            "trace": _json([*trace, entry]),
        }
        start = time.perf_counter()
        try:
            entry_id = self.state.store.client.xadd(
                self.settings.stream, record, maxlen=self.settings.stream_maxlen, approximate=True)
        except redis.RedisError as exc:
            raise StoreUnavailable(f"cannot append to {self.settings.stream}: {exc}") from exc
        store_ms = (time.perf_counter() - start) * 1000
        entry_id = entry_id.decode() if isinstance(entry_id, bytes) else str(entry_id)

        timings = StageTimings(FUNCTION, node, read.location, read.node, read.elapsed_ms,
                               compute_ms, store_ms)
        extra = {"stream_id": entry_id, "matched": len(outcome.matching)}
        if not outcome.fired:
            return Handled(None, NO_ALARM, timings, chain, extra)
        out = result_event(
            catalogue.ALARM_RAISED, cause=event, chain=chain, timings=timings,
            data=result_data(chain, timings, trace, route, detections=list(outcome.matching),
                             rule=rule.to_dict(), reason=outcome.reason, stream=self.settings.stream,
                             stream_id=entry_id),
        )
        return Handled(out, ALARM, timings, chain, extra)
