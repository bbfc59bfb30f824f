"""``skylark run``: submit one invocation of a workflow and show where its time went.

With a ``skylark up`` running (it leaves its addresses in :func:`~skylark.runtime.cluster.state_file`)
the invocation goes to that cluster; otherwise a cluster is started for the workflow given
(default: the example), the invocation runs, and the cluster stops again.
"""

from __future__ import annotations

import json
import secrets
from pathlib import Path

from rich.console import Console

from eventing.publisher import Publisher
from skylark.runtime.cluster import LocalCluster, load_state
from skylark.runtime.invoke import (
    ClusterView,
    e2e_table,
    guess_content_type,
    input_event,
    invoke,
    load_data_arg,
    stages_table,
    summary_json,
)
from skylark.runtime.waterfall import new_traceparent, waterfall
from skylark.state.errors import ConfigError
from skylark.state.names import validate_name
from skylark.workflow import load_workflow


def _running_cluster() -> ClusterView | None:
    try:
        return ClusterView.from_dict(load_state())
    except ConfigError:
        return None


def main_run(args) -> int:
    console = Console()
    if args.input and args.data is not None:
        raise ConfigError("give --input FILE or --data JSON, not both")
    body = Path(args.input).read_bytes() if args.input else None
    content_type = args.content_type or (guess_content_type(Path(args.input)) if args.input else None)
    data = load_data_arg(args.data)
    chain = validate_name("chain id", args.chain) if args.chain else f"run-{secrets.token_hex(4)}"

    view = None if args.standalone else _running_cluster()
    if view is not None and args.trace and not view.traces_url:
        console.print("[yellow]the running cluster records no traces (skylark up --trace); starting one that does[/yellow]")
        view = None
    if view is not None and args.workflow and load_workflow(args.workflow).name != view.workflow.name:
        console.print(f"[yellow]a local cluster runs workflow {view.workflow.name}; starting one for "
                      f"{args.workflow} instead[/yellow]")
        view = None
    cluster = None
    if view is None:
        cluster = LocalCluster(args.topology, workflow=args.workflow, policy=args.policy,
                               emulate_network=args.emulate_network, console=console, snapshot=args.snapshot,
                               trace=args.trace)
        with console.status(f"starting a local cluster for workflow {cluster.workflow.name}…"):
            cluster.start()
        view = ClusterView.from_dict(cluster.describe())
    traceparent, trace_id = new_traceparent()
    try:
        event = input_event(view, chain, body=body, data=data, content_type=content_type, event_type=args.type,
                            traceparent=traceparent)
        with console.status(f"chain {chain}: waiting for {', '.join(view.workflow.terminal_types()) or 'its end'}…"):
            result = invoke(view, event, Publisher(retries=2), timeout_s=args.timeout)
        spans = view.spans(trace_id) if args.trace else []
    finally:
        if cluster is not None:
            cluster.stop()
    results = {view.workflow.policy: [result]}
    if args.json:
        print(json.dumps({**summary_json(results)[0], **({"trace_id": trace_id, "spans": spans} if args.trace else {})},
                         indent=1))
    else:
        console.print(stages_table(view.workflow, results, f"chain {chain}: workflow {view.workflow.name}"))
        console.print(e2e_table(results, "End to end: submission → last event"))
        if args.trace:
            console.print(waterfall(spans, f"trace {trace_id}: {len(spans)} spans"))
        console.print(f"ended with {result.outcome}: {json.dumps(result.data)[:300]}" if result.completed
                      else f"[red]not complete[/red]: {result.outcome}")
    return 0 if result.completed else 1
