"""A synthetic stage, as the thesis's experiments used (its functions hashed random bytes).

Each invocation reads its input state (what the workflow says it reads; the store verifies its
checksum), spends ``compute_ms`` (a sleep: the experiments measure where state is, not the CPU),
and writes ``state_bytes`` bytes of fresh random data as its own state, split into ``fields``
fields — random, so that nothing compresses it. The input event may override the three numbers
(``{"state_bytes": ..., "fields": ..., "compute_ms": ...}``); each stage passes them on, so one
submission sets the size of every state along the chain.

Config (workflow ``config:`` or ``SKYLARK_<NAME>_<KEY>``): ``state_bytes`` (1048576),
``fields`` (1), ``compute_ms`` (0), ``emits`` (the event type to emit; the workflow's first
``emits`` when unset). Limits: 1 ≤ fields ≤ 64, 0 ≤ state_bytes ≤ 256 MiB, 0 ≤ compute_ms ≤ 60000.
"""

from __future__ import annotations

import os
import time
from typing import Any

from skylark.sdk import Config, Context, Emit, Function, InputError
from skylark.state.numbers import parse_int

MAX_STATE_BYTES = 256 * 1024 * 1024
LIMITS = {"state_bytes": (0, MAX_STATE_BYTES), "fields": (1, 64), "compute_ms": (0, 60_000)}


def _bounded(value: object, key: str) -> int:
    low, high = LIMITS[key]
    try:
        return parse_int(value, key, minimum=low, maximum=high)
    except ValueError as exc:
        raise InputError("invalid_parameters", str(exc)) from None


def random_fields(size: int, count: int) -> dict[str, bytes]:
    """``size`` random bytes as ``count`` fields ``f0``… of near-equal length."""
    base, extra = divmod(size, count)
    return {f"f{i}": os.urandom(base + (1 if i < extra else 0)) for i in range(count)}


class Synthetic(Function):
    name = "synthetic"
    max_request_bytes = 64 * 1024

    def start(self, config: Config) -> None:
        self.defaults = {key: _bounded(config.str(key, str(default)), key)
                         for key, default in (("state_bytes", 1024 * 1024), ("fields", 1), ("compute_ms", 0))}
        self.emits = config.str("emits", "")

    def handle(self, ctx: Context) -> Emit:
        data = ctx.json() if not isinstance(ctx.data, (bytes, bytearray)) else {}
        params: dict[str, Any] = {key: _bounded(data.get(key, default), key) for key, default in self.defaults.items()}
        read = ctx.input.meta.size if (ctx.reads if ctx.reads is not None else ctx.located) else 0
        time.sleep(params["compute_ms"] / 1000)
        ctx.state.put(random_fields(params["state_bytes"], params["fields"]))
        emits = self.emits or (ctx.emits[0] if ctx.emits else "")
        if not emits:
            raise RuntimeError(f"{ctx.function} declares no event type to emit (workflow emits, or config emits)")
        return ctx.emit(emits, {**params, "read_bytes": read})
