"""Shared helpers of the benchmarks: percentiles, timing loops, tables that fit 80 columns, JSON.

Every benchmark prints its tables through one :class:`Report` and, with ``--json FILE``, writes
the same tables with unrounded numbers (and whatever else it adds) as JSON. Tables are drawn
without vertical rules and numbers are rounded to what a reader compares (three significant
digits), so that they fit an 80-column terminal: rich would otherwise cut a number that does
not fit (``0.8…``). Ratios are :class:`Ratio` values: ``1.05×`` on screen, ``1.05`` in JSON.
"""

from __future__ import annotations

import json
import os
import statistics
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, is_dataclass
from typing import Any

from rich import box
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from skylark.runtime.stats import percentile

__all__ = ["Fixed", "Ratio", "Report", "Summary", "add_json_option", "number", "percentile", "ratio", "summarize",
           "time_interleaved", "time_ms"]

WIDTH = 80


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


class Ratio(float):
    """A ratio to a floor: printed ``1.05×``, a plain number in JSON."""

    def __str__(self) -> str:
        return f"{float(self):.2f}×"

    def __format__(self, spec: str) -> str:
        return str(self) if not spec else float.__format__(self, spec)


class Fixed(float):
    """A number shown with a fixed count of decimals (e.g. a figure quoted from elsewhere)."""

    def __new__(cls, value: float, decimals: int = 3) -> "Fixed":
        out = super().__new__(cls, value)
        out.decimals = decimals
        return out

    def __str__(self) -> str:
        return f"{float(self):.{self.decimals}f}"


def ratio(value: float, floor: float) -> Ratio | str:
    return Ratio(value / floor) if floor > 0 else "n/a"


def number(value: float) -> str:
    """Three significant digits, no exponent: what a table shows of a measurement."""
    magnitude = abs(value)
    if magnitude >= 100 or value == int(value) and magnitude >= 10:
        return f"{value:,.0f}"
    if magnitude >= 10:
        return f"{value:.1f}"
    if magnitude >= 1:
        return f"{value:.2f}"
    return f"{value:.3f}"


def _cell(value: object) -> str:
    if isinstance(value, (Ratio, Fixed)):
        return str(value)
    if isinstance(value, bool) or value is None:
        return "–" if value is None else str(value)
    if isinstance(value, (int, float)):
        return number(value) if isinstance(value, float) else f"{value:,}"
    return str(value)


def _plain(value: object) -> object:
    """A JSON value: dataclasses as objects, ratios as numbers, other unknowns as text."""
    if is_dataclass(value) and not isinstance(value, type):
        return {k: _plain(v) for k, v in asdict(value).items()}
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, (str, int, float, bool)) or value is None:
        return float(value) if isinstance(value, float) else value
    return str(value)


def add_json_option(parser) -> None:  # noqa: ANN001 - an argparse parser
    parser.add_argument("--json", metavar="FILE",
                        help="also write the results (every table, unrounded, and more) as JSON to FILE")


class Report:
    """The tables (and any other results) of one benchmark run: printed as they come, written
    as JSON at the end with :meth:`write_json`."""

    def __init__(self, bench: str, console: Console | None = None) -> None:
        self.bench = bench
        self.console = console or Console()
        self.tables: list[dict[str, Any]] = []
        self.results: dict[str, Any] = {}
        # Other work on the machine moves every figure: the load goes beside them.
        self.load_before = os.getloadavg()

    def table(self, title: str, columns: Sequence[str], rows: Iterable[Sequence[object]],
              caption: str | None = None) -> None:
        """Print a table; a column name may hold a line break (a two-line header). The first
        column (a label) is left-aligned, the others right-aligned."""
        rows = [list(row) for row in rows]
        table = Table(box=box.SIMPLE_HEAD, padding=(0, 1, 0, 0), show_edge=False)
        for i, column in enumerate(columns):
            table.add_column(column, justify="left" if i == 0 else "right", no_wrap=i > 0)
        for row in rows:
            table.add_row(*(_cell(c) for c in row))
        # Title and caption as text of their own: a table's would be wrapped to its width.
        self.console.print(f"[bold]{escape(title)}[/bold]", width=WIDTH)
        self.console.print(table, width=WIDTH)
        if caption:
            self.console.print(f"[dim]{escape(caption)}[/dim]", width=WIDTH)
        names = [c.replace("\n", " ") for c in columns]
        self.tables.append({"title": title, "columns": names, "caption": caption,
                            "rows": [dict(zip(names, (_plain(c) for c in row))) for row in rows]})

    def line(self, text: str, **results: object) -> None:
        """Print a line of text (e.g. a verdict), and keep ``results`` for the JSON."""
        self.console.print(text, width=WIDTH, soft_wrap=False)
        self.results.update(results)

    def load(self) -> None:
        """Print the machine's load average (1, 5, 15 min) at the start and now."""
        before, after = self.load_before, os.getloadavg()
        self.line(f"load average (1/5/15 min): {' '.join(f'{x:.2f}' for x in before)} at the start, "
                  f"{' '.join(f'{x:.2f}' for x in after)} at the end, {os.cpu_count()} cores",
                  load_before=list(before), load_after=list(after), cores=os.cpu_count())

    def write_json(self, path: str | None) -> None:
        if not path:
            return
        document = {"bench": self.bench, "tables": self.tables, "results": _plain(self.results)}
        with open(path, "w") as out:
            json.dump(document, out, indent=1, ensure_ascii=False)
            out.write("\n")
