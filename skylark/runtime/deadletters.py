"""Durable dead letters: what the brokers and the stream sources gave up on, kept to be replayed.

Two kinds, each on the Redis of the node where delivery gave up:

- **broker** dead letters, ``skylark:deadletters`` (written by the dead-letter sink,
  ``skylark.runtime.deadletter``): the event as the broker sent it (its headers and body, so it
  can be sent again byte for byte), which node's broker gave up, on which subscriber
  (``knativeerrordest``), with which answer (``knativeerrorcode``, ``knativeerrordata``), when;
- **change** dead letters, ``skylark:changes:dead`` (written by the stream source,
  ``eventing.source``): a change record the handlers did not take after the source's retries.

:meth:`DeadLetters.replay` sends a broker dead letter again through the broker of its node, at
most once per event (source, id): the replayed mark lives in ``skylark:deadletters:replayed``.
Change dead letters are replayed by the stream source itself once the handlers answer again
(``StreamSource.replay_dead_letters``); ``skylark deadletter`` lists both. A broker dead letter stays listed after its replay, marked
replayed (the broker took it again; if its subscriber fails again, that is a new dead letter,
which clears the mark, so the event can be replayed once more).
"""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import redis

from eventing.publisher import PublishOutcome, Publisher
from skylark.state.keys import DEFAULT_CHANGE_STREAM, dead_letter_stream
from skylark.state.store import redis_errors

STREAM = "skylark:deadletters"
REPLAYED = "skylark:deadletters:replayed"
MAXLEN = 100_000
# Knative's failure extensions: about the failed delivery, not part of the event to replay.
ERROR_EXTENSIONS = ("knativeerrordest", "knativeerrorcode", "knativeerrordata")


def _text(value: bytes | str | None) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, (bytes, bytearray)) else (value or "")


@dataclass(frozen=True)
class DeadLetter:
    """One dead letter, of either kind, as listed."""

    kind: str          # "broker" | "change"
    node: str
    entry_id: str      # its id in the node's dead-letter stream
    event_id: str
    event_type: str
    reason: str
    failed_ms: int
    detail: dict[str, Any] = field(default_factory=dict)
    headers: dict[str, str] = field(default_factory=dict, repr=False)
    body: bytes = field(default=b"", repr=False)

    def to_dict(self, with_body: bool = False) -> dict[str, Any]:
        out = {"kind": self.kind, "node": self.node, "entry_id": self.entry_id, "event_id": self.event_id,
               "type": self.event_type, "reason": self.reason, "failed_ms": self.failed_ms, **self.detail}
        if with_body:
            out["headers"] = self.headers
            out["body_base64"] = base64.b64encode(self.body).decode()
        return out


class DeadLetters:
    """The dead letters kept on one node's Redis."""

    def __init__(self, client: redis.Redis, node: str, change_stream: str = DEFAULT_CHANGE_STREAM) -> None:
        self.client = client
        self.node = node
        self.change_dead = dead_letter_stream(change_stream)

    def record(self, *, event_id: str, source: str, event_type: str, headers: Mapping[str, str], body: bytes,
               dest: str, code: str, reason: str) -> str:
        """Keep a broker dead letter; returns its entry id. An event that fails again after a
        replay may be replayed again: its replayed mark goes with the new failure."""
        with redis_errors("dead-letter record"):
            pipe = self.client.pipeline(transaction=True)
            pipe.xadd(STREAM, {
                "event_id": event_id, "source": source, "type": event_type, "node": self.node,
                "dest": dest, "code": code, "reason": reason, "failed_ms": str(time.time_ns() // 1_000_000),
                "headers": json.dumps(dict(headers), separators=(",", ":")), "body": body,
            }, maxlen=MAXLEN, approximate=True)
            pipe.hdel(REPLAYED, f"{source}\n{event_id}")
            entry, _ = pipe.execute()
        return _text(entry)

    def _broker(self, entry_id: bytes, fields: Mapping[bytes, bytes]) -> DeadLetter:
        source = _text(fields.get(b"source"))
        event_id = _text(fields.get(b"event_id"))
        return DeadLetter(
            "broker", self.node, _text(entry_id), event_id, _text(fields.get(b"type")), _text(fields.get(b"reason")),
            int(fields.get(b"failed_ms") or 0),
            {"source": source, "dest": _text(fields.get(b"dest")), "code": _text(fields.get(b"code")),
             "replayed": self.client.hexists(REPLAYED, f"{source}\n{event_id}")},
            json.loads(fields.get(b"headers") or b"{}"), bytes(fields.get(b"body") or b""))

    def _change(self, entry_id: bytes, fields: Mapping[bytes, bytes]) -> DeadLetter:
        try:
            flat = json.loads(fields.get(b"data") or b"[]")
            record = dict(zip(flat[::2], flat[1::2]))
        except (ValueError, TypeError):
            record = {}
        return DeadLetter(
            "change", self.node, _text(entry_id), _text(fields.get(b"entry_id")), "dev.knative.sources.redisstream",
            _text(fields.get(b"reason")), int(fields.get(b"failed_ms") or 0),
            {"chain": record.get("chain", ""), "function": record.get("function", ""),
             "version": record.get("version", ""), "attempts": _text(fields.get(b"attempts"))})

    def list(self, count: int = 1000) -> list[DeadLetter]:
        """Both kinds, oldest first, at most ``count`` of each."""
        with redis_errors("dead-letter list"):
            broker = self.client.xrange(STREAM, count=count)
            changes = self.client.xrange(self.change_dead, count=count)
            out = [self._broker(i, f) for i, f in broker] + [self._change(i, f) for i, f in changes]
        return sorted(out, key=lambda d: (d.failed_ms, d.entry_id))

    def get(self, entry_id: str) -> DeadLetter | None:
        with redis_errors("dead-letter read"):
            for stream, read in ((STREAM, self._broker), (self.change_dead, self._change)):
                found = self.client.xrange(stream, min=entry_id, max=entry_id)
                if found:
                    return read(*found[0])
        return None

    def replay(self, letter: DeadLetter, broker_url: str, publisher: Publisher) -> PublishOutcome | None:
        """Send a broker dead letter again through ``broker_url`` (its node's broker), without
        Knative's failure extensions. None when this event (source, id) was replayed already."""
        if letter.kind != "broker":
            raise ValueError("change dead letters are replayed by their stream source")
        key = f"{letter.detail['source']}\n{letter.event_id}"
        with redis_errors("dead-letter replay mark"):
            if not self.client.hsetnx(REPLAYED, key, str(time.time_ns() // 1_000_000)):
                return None
        headers = {k: v for k, v in letter.headers.items()
                   if k.lower() not in {f"ce-{e}" for e in ERROR_EXTENSIONS}}
        outcome = publisher.post(broker_url, headers, letter.body)
        if not outcome.ok:
            with redis_errors("dead-letter replay mark"):
                self.client.hdel(REPLAYED, key)  # not delivered: it may be tried again
        return outcome
