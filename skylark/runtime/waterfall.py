"""One invocation's trace as a waterfall in the terminal, drawn from its spans (pure + rich).

Each row is a span, indented under its parent, with where it started (ms after the trace's
first span), how long it took, the node it ran on, and a bar on a shared time axis; what the span
says about state (where a read was served, the elected node, the bytes) beside it. One line per
span, 80 columns.
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from typing import Any

from rich import box
from rich.table import Table
from rich.text import Text

# Column widths that keep a row on one line of 80 columns (with 6-digit start and ms columns).
SPAN_WIDTH, NODE_WIDTH, STATE_WIDTH, TIME_WIDTH, BAR_WIDTH = 24, 6, 20, 6, 12


def _size(n: object) -> str:
    if not isinstance(n, int):
        return str(n)
    return f"{n} B" if n < 1000 else f"{n / 1000:.0f} kB" if n < 1_000_000 else f"{n / 1e6:.1f} MB"


# Span attributes worth a glance, in this order: (attribute, how to show it).
_NOTES = (
    ("skylark.read.location", str),
    ("skylark.read.node", lambda v: f"@{v}"),
    ("skylark.targets", lambda v: "→ " + (",".join(v) if isinstance(v, list) else str(v))),
    ("skylark.target", lambda v: f"→ {v}"),
    ("skylark.apply.outcome", str),
    ("skylark.bytes", _size),
)


def new_traceparent() -> tuple[str, str]:
    """A fresh W3C ``traceparent`` (sampled) and its trace id, to start an invocation's trace."""
    trace_id = secrets.token_hex(16)
    return f"00-{trace_id}-{secrets.token_hex(8)}-01", trace_id


def _depths(spans: Sequence[dict[str, Any]]) -> dict[str, int]:
    by_id = {s["span_id"]: s for s in spans}
    depths: dict[str, int] = {}

    def depth(span: dict[str, Any], seen: int = 0) -> int:
        if span["span_id"] in depths:
            return depths[span["span_id"]]
        parent = by_id.get(span.get("parent_id") or "")
        d = 0 if parent is None or seen > 50 else depth(parent, seen + 1) + 1
        depths[span["span_id"]] = d
        return d

    for span in spans:
        depth(span)
    return depths


def _order(spans: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Depth first: every span right under its parent, siblings by start time."""
    children: dict[str | None, list[dict[str, Any]]] = {}
    ids = {s["span_id"] for s in spans}
    for span in sorted(spans, key=lambda s: s["start_ns"]):
        parent = span.get("parent_id") if span.get("parent_id") in ids else None
        children.setdefault(parent, []).append(span)
    out: list[dict[str, Any]] = []

    def walk(parent: str | None) -> None:
        for child in children.get(parent, []):
            out.append(child)
            walk(child["span_id"])

    walk(None)
    return out


def _note(span: dict[str, Any]) -> str:
    attributes = span.get("attributes", {})
    return " ".join(show(attributes[key]) for key, show in _NOTES
                    if attributes.get(key) not in (None, "", [])).replace(" @", "@")


def _label(span: dict[str, Any], depth: int) -> str:
    """The span's name, indented one step per level; a delivery names what it delivered to
    (its trigger, without the node suffix the node column already shows)."""
    name = span["name"]
    node = _node(span)
    if node and name.endswith(f"-{node}"):
        name = name[: -len(node) - 1]
    return " " * min(depth, 8) + name


def _node(span: dict[str, Any]) -> str:
    service = span.get("service", "")
    return service.rpartition("@")[2] if "@" in service else ""  # the local cluster's <name>@<node>


def waterfall(spans: Sequence[dict[str, Any]], title: str) -> Table:
    """One line per span, at most 80 columns: a long name is cut (…), never wrapped."""
    table = Table(title=title, caption="start: ms after the first span; the bars share one time axis",
                  box=box.SIMPLE_HEAD, show_edge=False, padding=0)
    table.add_column("span", no_wrap=True, overflow="ellipsis", max_width=SPAN_WIDTH)
    table.add_column("node", no_wrap=True, overflow="ellipsis", width=NODE_WIDTH)
    table.add_column("state", no_wrap=True, overflow="ellipsis", max_width=STATE_WIDTH)
    table.add_column("start", justify="right", no_wrap=True, min_width=TIME_WIDTH)
    table.add_column("ms", justify="right", no_wrap=True, min_width=TIME_WIDTH)
    table.add_column("", no_wrap=True, width=BAR_WIDTH)
    if not spans:
        return table
    t0 = min(s["start_ns"] for s in spans)
    t1 = max(s["end_ns"] for s in spans)
    scale = BAR_WIDTH / max(1, t1 - t0)
    depths = _depths(spans)
    for span in _order(spans):
        start = min(BAR_WIDTH - 1, int((span["start_ns"] - t0) * scale))
        width = max(1, int((span["end_ns"] - span["start_ns"]) * scale))
        bar = Text(" " * start + "█" * min(width, BAR_WIDTH - start), style="red" if span.get("status") == 2 else "cyan")
        table.add_row(_label(span, depths[span["span_id"]]), _node(span), _note(span),
                      f"{(span['start_ns'] - t0) / 1e6:.1f}", f"{(span['end_ns'] - span['start_ns']) / 1e6:.1f}", bar)
    return table
