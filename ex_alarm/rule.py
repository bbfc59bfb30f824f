"""The alarm rule (pure): which detections raise an alarm.

An alarm fires when at least ``min_count`` detections have a class in ``classes`` (``*`` = any)
and a score of at least ``min_score``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

ANY_CLASS = "*"


class InvalidDetections(ValueError):
    """The stored detections are not a list of {class, box [x, y, w, h], score}."""


def parse_detections(raw: object) -> list[dict[str, Any]]:
    """Validate detections as detect stores them; returns them as plain dicts."""
    if not isinstance(raw, list):
        raise InvalidDetections("detections must be a JSON list")
    out = []
    for i, item in enumerate(raw):
        if not isinstance(item, dict):
            raise InvalidDetections(f"detection {i} is not an object")
        cls, box, score = item.get("class"), item.get("box"), item.get("score")
        if not isinstance(cls, str) or not cls:
            raise InvalidDetections(f"detection {i} has no class")
        if (not isinstance(box, list) or len(box) != 4
                or not all(isinstance(v, int) and not isinstance(v, bool) for v in box)):
            raise InvalidDetections(f"detection {i}: box must be [x, y, w, h] integers")
        if not isinstance(score, (int, float)) or isinstance(score, bool) or not 0 <= score <= 1:
            raise InvalidDetections(f"detection {i}: score must be a number in [0, 1]")
        out.append({**item, "score": float(score)})
    return out


@dataclass(frozen=True)
class RuleOutcome:
    fired: bool
    matching: tuple[dict[str, Any], ...]
    reason: str


@dataclass(frozen=True)
class AlarmRule:
    classes: frozenset[str] = frozenset({"face", "person", "upper_body"})
    min_score: float = 0.7
    min_count: int = 1

    def __post_init__(self) -> None:
        if not self.classes:
            raise ValueError("an alarm rule needs at least one class (or '*')")
        if not 0 <= self.min_score <= 1:
            raise ValueError("min_score must be in [0, 1]")
        if self.min_count < 1:
            raise ValueError("min_count must be >= 1")

    def matches(self, detection: dict[str, Any]) -> bool:
        wanted = ANY_CLASS in self.classes or detection["class"] in self.classes
        return wanted and detection["score"] >= self.min_score

    def evaluate(self, detections: Sequence[dict[str, Any]]) -> RuleOutcome:
        matching = tuple(d for d in detections if self.matches(d))
        fired = len(matching) >= self.min_count
        verb = "≥" if fired else "<"
        reason = (f"{len(matching)} of {len(detections)} detection(s) in {{{', '.join(sorted(self.classes))}}} "
                  f"with score ≥ {self.min_score}: {verb} min_count {self.min_count}")
        return RuleOutcome(fired, matching, reason)

    def to_dict(self) -> dict[str, Any]:
        return {"classes": sorted(self.classes), "min_score": self.min_score, "min_count": self.min_count}
