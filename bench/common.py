"""Shared helpers of the benchmarks: percentiles, timing loops and rich tables."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from rich.console import Console
from rich.table import Table

from skylark.runtime.stats import percentile

__all__ = ["Summary", "percentile", "print_table", "ratio", "summarize", "time_interleaved", "time_ms"]


@dataclass(frozen=True)
class Summary:
    n: int
    median: float
    p95: float
    p99: float
    mean: float

    @property
    def p50(self) -> float:
        return self.median


def summarize(samples: Sequence[float]) -> Summary:
    return Summary(
        n=len(samples),
        median=statistics.median(samples),
        p95=percentile(samples, 95),
        p99=percentile(samples, 99),
        mean=statistics.fmean(samples),
    )


def time_ms(fn: Callable[[], object], repeat: int, warmup: int = 3) -> list[float]:
    """Run ``fn`` ``warmup`` times untimed, then ``repeat`` times; each duration in ms."""
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        out.append((time.perf_counter() - start) * 1000)
    return out


def time_interleaved(fns: dict[str, Callable[[], object]], repeat: int, warmup: int = 3) -> dict[str, list[float]]:
    """Time several operations round-robin, so each sees the same machine state (load from
    other processes, allocator and cache state); returns ms samples per name."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    out: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeat):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            out[name].append((time.perf_counter() - start) * 1000)
    return out


def ratio(value: float, floor: float) -> str:
    return f"{value / floor:.2f}×" if floor > 0 else "n/a"


def print_table(title: str, columns: Iterable[str], rows: Iterable[Iterable[object]],
                console: Console | None = None, caption: str | None = None) -> None:
    table = Table(title=title, caption=caption)
    for i, col in enumerate(columns):
        table.add_column(col, justify="left" if i == 0 else "right")
    for row in rows:
        table.add_row(*(f"{c:.3f}" if isinstance(c, float) else str(c) for c in row))
    (console or Console()).print(table)
