"""Example function 3: the chain's detections → the alarm rule → an alarm record and event."""

from __future__ import annotations

import json
from typing import Any

from ex_alarm.rule import AlarmRule, InvalidDetections, parse_detections
from skylark.sdk import Config, Context, Emit, Function, StateError, check_stream

DETECT_COMPLETED = "io.skylark.detect.completed"
ALARM_RAISED = "io.skylark.alarm.raised"
ALARM_CLEAR = "io.skylark.alarm.clear"    # the rule did not fire: the chain ends all clear
DEFAULT_ALARM_STREAM = "skylark:alarms"   # every outcome is recorded here, on the alarm's node
ALARM, NO_ALARM = "alarm", "no_alarm"


def _json(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"))


def alarm_rule(config: Config) -> AlarmRule:
    d = AlarmRule()
    return AlarmRule(classes=frozenset(config.list("classes", sorted(d.classes))),
                     min_score=config.float("min_score", d.min_score, minimum=0.0, maximum=1.0),
                     min_count=config.int("min_count", d.min_count, minimum=1))


class Alarm(Function):
    name = "alarm"
    accepts = (DETECT_COMPLETED,)

    def start(self, config: Config) -> None:
        self.rule = alarm_rule(config)
        self.stream = check_stream(config.str("stream", DEFAULT_ALARM_STREAM))
        self.stream_maxlen = config.int("stream_maxlen", 10_000, minimum=1)

    def handle(self, ctx: Context) -> Emit:
        detected = ctx.input
        try:
            raw = detected.fields.get("detections")
            if raw is None:
                raise InvalidDetections("the detect bundle has no detections field")
            detections = parse_detections(json.loads(raw))
        except (InvalidDetections, ValueError) as exc:
            raise StateError("invalid_state", f"detections of chain {ctx.chain!r}: {exc}") from None
        outcome = self.rule.evaluate(detections)
        kind = ALARM if outcome.fired else NO_ALARM
        entry_id = ctx.state.append(self.stream, {
            "chain": ctx.chain, "node": ctx.node, "outcome": kind, "reason": outcome.reason,
            "detections": _json(detections), "matched": _json(list(outcome.matching)),
            "rule": _json(self.rule.to_dict()), "source_version": str(detected.version),
            "event_id": ctx.event.get_id()}, maxlen=self.stream_maxlen)
        return ctx.emit(ALARM_RAISED if outcome.fired else ALARM_CLEAR, {
            "outcome": kind, "detections": list(outcome.matching), "rule": self.rule.to_dict(),
            "reason": outcome.reason, "stream": self.stream, "stream_id": entry_id})
