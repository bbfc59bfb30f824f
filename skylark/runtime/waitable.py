"""Lists of records by key, bounded, that a reader can wait on (thread-safe): what the local
cluster's observer keeps per chain and its trace collector per trace."""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Hashable, Iterable
from typing import Any


class WaitableLists:
    """At most ``max_keys`` keys (the least recently added to is forgotten first), at most
    ``max_items`` records each; :meth:`wait` blocks until a key has enough records."""

    def __init__(self, max_keys: int, max_items: int) -> None:
        self.max_keys = max_keys
        self.max_items = max_items
        self._lists: OrderedDict[Hashable, list[Any]] = OrderedDict()
        self._changed = threading.Condition()

    def add(self, key: Hashable, records: Iterable[Any]) -> list[Any]:
        """Append ``records`` to ``key``'s list (as many as fit); returns the keys' lists that
        were forgotten to stay within ``max_keys``."""
        with self._changed:
            kept = self._lists.setdefault(key, [])
            self._lists.move_to_end(key)
            for record in records:
                if len(kept) >= self.max_items:
                    break
                kept.append(record)
            dropped = []
            while len(self._lists) > self.max_keys:
                dropped.append(self._lists.popitem(last=False)[1])
            self._changed.notify_all()
            return dropped

    def wait(self, key: Hashable, count: int, wait_ms: int) -> list[Any]:
        """``key``'s records once there are ``count`` (or what there is after ``wait_ms``)."""
        deadline = time.monotonic() + wait_ms / 1000
        with self._changed:
            while len(self._lists.get(key, ())) < count:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._changed.wait(left)
            return list(self._lists.get(key, ()))
