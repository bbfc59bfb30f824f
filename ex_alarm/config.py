"""Settings of the alarm function (environment → frozen dataclass)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field

from ex_alarm.rule import AlarmRule
from skylark.state import keys
from skylark.state.errors import ConfigError
from skylark.state.settings import Settings, env_float, env_int, env_list

FUNCTION = "alarm"
SOURCE_FUNCTION = "detect"  # whose bundle alarm reads


@dataclass(frozen=True)
class AlarmSettings:
    core: Settings = field(default_factory=Settings)
    rule: AlarmRule = field(default_factory=AlarmRule)
    stream: str = keys.DEFAULT_ALARM_STREAM
    stream_maxlen: int = 10_000  # approximate MAXLEN of the alarm stream

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> "AlarmSettings":
        env = os.environ if env is None else env
        d = AlarmRule()
        try:
            rule = AlarmRule(
                classes=frozenset(env_list(env, "SKYLARK_ALARM_CLASSES", sorted(d.classes))),
                min_score=env_float(env, "SKYLARK_ALARM_MIN_SCORE", d.min_score, 0.0, 1.0),
                min_count=env_int(env, "SKYLARK_ALARM_MIN_COUNT", d.min_count, 1),
            )
        except ValueError as exc:
            raise ConfigError(f"alarm rule: {exc}") from None
        return cls(
            core=Settings.from_env(env),
            rule=rule,
            stream=env.get("SKYLARK_ALARM_STREAM") or cls.stream,
            stream_maxlen=env_int(env, "SKYLARK_ALARM_STREAM_MAXLEN", cls.stream_maxlen, 1),
        )
