"""One workflow invocation on a local cluster: submit its input, wait for the events that end
it, and say where each stage read its state and how long it took (``skylark run``, the demo).

The input goes to the broker of the node where the workflow's first function runs, as an event
of the workflow's entry type with the chain in ``skylarkchain``. The invocation is complete when
every function that emits an end-of-workflow type (``Workflow.terminal_types``) reported to the
cluster's observer; the last one's envelope carries the trace of every stage.
"""

from __future__ import annotations

import json
import mimetypes
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests
from rich.table import Table

from eventing import catalogue
from eventing.http import new_event
from eventing.publisher import Publisher
from skylark.runtime.stats import percentile
from skylark.state.errors import ConfigError
from skylark.workflow import Workflow


@dataclass(frozen=True)
class ClusterView:
    """What a client needs of a running local cluster: its workflow, brokers and observer."""

    workflow: Workflow
    brokers: Mapping[str, str]
    observer_url: str
    emulated: bool = False
    traces_url: str | None = None  # the trace collector, when the cluster records traces

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "ClusterView":
        return cls(Workflow.from_document(data["workflow"], source="cluster state"),
                   {name: node["broker_ingress"] for name, node in data["nodes"].items()},
                   data["observer_url"], bool(data.get("emulated")), data.get("traces_url"))

    def spans(self, trace_id: str, *, settle_s: float = 1.0, timeout_s: float = 10.0) -> list[dict[str, Any]]:
        """The spans of a trace, once no new one arrived for ``settle_s`` (they come in batches
        from every service)."""
        if not self.traces_url:
            raise ConfigError("this cluster records no traces: start it with --trace")
        deadline = time.monotonic() + timeout_s
        spans: list[dict[str, Any]] = []
        while time.monotonic() < deadline:
            more = requests.get(f"{self.traces_url}/traces/{trace_id}",
                                params={"min_spans": len(spans) + 1, "wait_ms": int(settle_s * 1000)},
                                timeout=settle_s + 5).json()["spans"]
            if len(more) == len(spans):
                break
            spans = more
        return spans

    def entry_node(self) -> str:
        """Where the input goes: the node of the first function that takes an entry type."""
        entry_types = self.workflow.entry_types()
        first = next((f for f in self.workflow.functions if set(f.accepts) & set(entry_types)), None)
        if first is None:
            raise ConfigError(f"workflow {self.workflow.name} has no entry: every accepted type is emitted by a function")
        return first.node or next(iter(self.brokers))

    def finishers(self) -> list[str]:
        """The functions whose events end the workflow."""
        terminal = set(self.workflow.terminal_types())
        return [f.name for f in self.workflow.functions if set(f.emits) & terminal]


@dataclass
class Invocation:
    chain: str
    completed: bool = False
    e2e_ms: float = 0.0
    outcome: str = ""          # the type of the (last) event that ended it, or why it did not end
    data: dict[str, Any] = field(default_factory=dict)  # that event's data, without the envelope
    trace: list[dict[str, Any]] = field(default_factory=list)

    def stage(self, function: str) -> dict[str, Any] | None:
        return next((entry for entry in self.trace if entry.get("function") == function), None)


def input_event(view: ClusterView, chain: str, *, body: bytes | None = None, data: Any = None,
                content_type: str | None = None, event_type: str | None = None, event_id: str | None = None,
                traceparent: str | None = None):
    """The workflow's input event: a binary ``body`` (a file) or JSON ``data``; ``traceparent``
    starts its trace."""
    entry_types = view.workflow.entry_types()
    event_type = event_type or (entry_types[0] if entry_types else None)
    if event_type is None:
        raise ConfigError(f"workflow {view.workflow.name} has no entry type; pass --type")
    extensions = {catalogue.EXT_CHAIN: chain, "traceparent": traceparent}
    if body is not None:
        return new_event(event_type, "/skylark/run", body, id_=event_id or f"{chain}-input",
                         datacontenttype=content_type or "application/octet-stream", **extensions)
    return new_event(event_type, "/skylark/run", data if data is not None else {}, id_=event_id or f"{chain}-input",
                     **extensions)


def guess_content_type(path: Path) -> str:
    return mimetypes.guess_type(path.name)[0] or "application/octet-stream"


def invoke(view: ClusterView, event, publisher: Publisher, timeout_s: float = 30.0) -> Invocation:
    """Submit ``event`` and wait (up to ``timeout_s``) for the events that end its chain."""
    chain = event.get_extension(catalogue.EXT_CHAIN)
    result = Invocation(chain)
    submitted_ms = time.time_ns() // 1_000_000
    outcome = publisher.publish(view.brokers[view.entry_node()], event)
    if not outcome.ok:
        result.outcome = f"submission failed: {outcome.reason}"
        return result
    expected = max(1, len(view.finishers()))
    deadline = time.monotonic() + timeout_s
    events: list[dict[str, Any]] = []
    while time.monotonic() < deadline:
        wait_ms = int(min(10.0, deadline - time.monotonic()) * 1000)
        try:
            response = requests.get(f"{view.observer_url}/chains/{chain}",
                                    params={"count": expected, "wait_ms": max(1, wait_ms)}, timeout=wait_ms / 1000 + 5)
            events = response.json()["events"]
        except (requests.RequestException, ValueError, KeyError) as exc:
            result.outcome = f"observer unreachable: {exc}"
            return result
        if len(events) >= expected:
            break
    if not events:
        result.outcome = f"no end-of-workflow event within {timeout_s:.0f} s"
        return result
    last = max(events, key=lambda e: e["received_ms"])
    data = last.get("data") if isinstance(last.get("data"), dict) else {}
    result.completed = len(events) >= expected
    result.e2e_ms = last["received_ms"] - submitted_ms
    result.outcome = last["type"] if result.completed else f"{len(events)} of {expected} end events"
    result.trace = list((data.get("skylark") or {}).get("trace", []))
    result.data = {k: v for k, v in data.items() if k != "skylark"}
    return result


def _where(entry: Mapping[str, Any]) -> str:
    """``local``, ``inline`` (in the event), or the node a remote read went to."""
    location = entry.get("fetch_location", "?")
    return location if location in ("local", "inline") else str(entry.get("fetch_node", "?"))


def _ms(values: list[float]) -> str:
    return f"{percentile(values, 50):.1f}" if values else "–"


def stages_table(workflow: Workflow, results: Mapping[str, list[Invocation]], title: str) -> Table:
    """Per mode and stage: where the state was read (counts), p50 fetch / wait / compute / store."""
    table = Table(title=title)
    for col in ("mode", "stage@node", "read at", "fetch", "wait", "compute", "store"):
        table.add_column(col, justify="left" if col in ("mode", "stage@node", "read at") else "right")
    for mode, runs in results.items():
        for fn in workflow.functions:
            entries = [r.stage(fn.name) for r in runs if r.completed and r.stage(fn.name)]
            where: dict[str, int] = {}
            for entry in entries:
                where[_where(entry)] = where.get(_where(entry), 0) + 1
            nodes = sorted({e.get("node", "?") for e in entries}) or [fn.node or "any"]
            table.add_row(mode, f"{fn.name}@{','.join(nodes)}",
                          ", ".join(f"{k} ×{v}" if len(entries) > 1 else k for k, v in sorted(where.items())) or "–",
                          *(_ms([float(e.get(k, 0.0)) for e in entries])
                            for k in ("fetch_ms", "waited_ms", "compute_ms", "store_ms")))
    table.caption = ("read at: where the stage found its input state (local, inline = in the event, or the node "
                     "it read across the link); milliseconds, p50; wait = part of fetch spent waiting for a pushed copy")
    return table


def e2e_table(results: Mapping[str, list[Invocation]], title: str) -> Table:
    table = Table(title=title)
    for col in ("mode", "completed", "p50 ms", "p95 ms"):
        table.add_column(col, justify="left" if col == "mode" else "right")
    for mode, runs in results.items():
        times = [r.e2e_ms for r in runs if r.completed]
        table.add_row(mode, f"{len(times)}/{len(runs)}", _ms(times), f"{percentile(times, 95):.1f}" if times else "–")
    return table


def summary_json(results: Mapping[str, list[Invocation]]) -> list[dict[str, Any]]:
    return [{"mode": mode, "chain": r.chain, "completed": r.completed, "e2e_ms": r.e2e_ms, "outcome": r.outcome,
             "data": r.data, "trace": r.trace} for mode, runs in results.items() for r in runs]


def load_data_arg(raw: str | None) -> Any:
    if raw is None:
        return None
    try:
        return json.loads(raw)
    except ValueError as exc:
        raise ConfigError(f"--data is not JSON: {exc}") from None
