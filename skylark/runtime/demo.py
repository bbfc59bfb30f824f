"""``skylark demo``: the example workflow on a local cluster, under Skylark's policy and a baseline.

K sample images go through the example workflow (``ex_workflows/image-alarm.yaml``:
preprocess@node-a → detect@node-b → alarm@node-c) once per policy: ``skylark`` (each bundle is
pushed toward the node its reader runs on, so detect and alarm find their state locally) and by
default the ``pull`` baseline (state stays where it was written; the successors read it across
the link); ``--policies`` adds ``stateless`` (everything kept on the cloud node) or ``random``. The trace
the SDK carries along each chain says where every stage read its state and how long fetch,
compute and store took; the end-to-end time runs from the submission to the workflow's last
event reaching the cluster's observer.
"""

from __future__ import annotations

import io
import json
import secrets
import time
from importlib.resources import files

from PIL import Image, ImageOps
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from eventing.publisher import Publisher
from skylark.runtime.cluster import LocalCluster, default_workflow_path
from skylark.runtime.invoke import ClusterView, Invocation, e2e_table, input_event, invoke, stages_table, summary_json
from skylark.runtime.stats import percentile
from skylark.runtime.waterfall import new_traceparent, waterfall
from skylark.state.errors import ConfigError
from skylark.state.settings import POLICIES

SAMPLES = ("astronaut", "camera", "chelsea", "coffee", "rocket")


def sample_images(count: int) -> list[tuple[str, bytes]]:
    """``count`` JPEGs: the shipped samples in turn, mirrored on every second round."""
    out = []
    for i in range(count):
        name = SAMPLES[i % len(SAMPLES)]
        data = files("skylark.runtime").joinpath("samples", f"{name}.jpg").read_bytes()
        if (i // len(SAMPLES)) % 2 == 1:
            image = ImageOps.mirror(Image.open(io.BytesIO(data)))
            buffer = io.BytesIO()
            image.save(buffer, format="JPEG", quality=88)
            data, name = buffer.getvalue(), f"{name} (mirrored)"
        out.append((name, data))
    return out


def alarms_table(images: list[tuple[str, bytes]], runs: list[Invocation]) -> Table:
    table = Table(title="Alarms (policy skylark)")
    for col in ("image", "outcome", "detected"):
        table.add_column(col)
    for (name, _), run in zip(images, runs):
        matched = run.data.get("detections") or []
        detected = ", ".join(f"{d.get('class', '?')} {d.get('score', 0):.2f}" for d in matched) or "–"
        table.add_row(name, run.data.get("outcome", run.outcome), detected)
    return table


def main_demo(args) -> int:
    console = Console()
    images = sample_images(args.images)
    modes = tuple(p.strip() for p in args.policies.split(",") if p.strip())
    unknown = [m for m in modes if m not in POLICIES]
    if not modes or unknown:
        raise ConfigError(f"--policies: {', '.join(unknown) or 'none given'}; choose from {', '.join(POLICIES)}")
    run_tag = secrets.token_hex(3)
    results: dict[str, list[Invocation]] = {}
    started = time.monotonic()
    trace = bool(getattr(args, "trace", False))
    cluster = LocalCluster(args.topology, workflow=default_workflow_path(), policy=modes[0],
                           emulate_network=args.emulate_network, base_port=args.base_port, console=console,
                           trace=trace)
    traced: dict[str, str] = {}  # policy -> the trace id of one of its chains
    with console.status("starting a local cluster (Redis, handlers, functions, brokers per node)…"):
        cluster.start()
    try:
        view = ClusterView.from_dict(cluster.describe())
        placement = " → ".join(f"{f.name}@{f.node or 'any'}" for f in cluster.workflow.functions)
        console.print(f"cluster up in {time.monotonic() - started:.1f} s: {placement}")
        publisher = Publisher(retries=2)

        def run_one(mode: str, index: int, image: bytes) -> Invocation:
            chain = f"demo-{run_tag}-{mode}-{index:02d}"
            traceparent, trace_id = new_traceparent()
            if index == 0:
                traced[mode] = trace_id
            return invoke(view, input_event(view, chain, body=image, content_type="image/jpeg",
                                            traceparent=traceparent), publisher)

        with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                      TimeElapsedColumn(), console=console) as progress:
            task = progress.add_task("chains", total=len(images) * len(modes))
            for mode in modes:
                progress.update(task, description=f"policy {mode}: restarting handlers and functions")
                cluster.set_policy(mode)
                # One untimed chain first: worker start-up, lazy model loading and connection
                # set-up would otherwise land on the first measured chain of each mode.
                progress.update(task, description=f"policy {mode}: warm-up")
                run_one(mode, 99, images[0][1])
                progress.update(task, description=f"policy {mode}")
                results[mode] = []
                for index, (_, image) in enumerate(images):
                    results[mode].append(run_one(mode, index, image))
                    progress.advance(task)
        console.print(stages_table(cluster.workflow, results, "Per stage (p50 over the chains)"))
        console.print(e2e_table(results, "End to end: submission → last event"))
        p50 = {m: percentile([r.e2e_ms for r in runs if r.completed], 50)
               for m, runs in results.items() if any(r.completed for r in runs)}
        if len(p50) > 1 and "skylark" in p50:
            for mode in (m for m in p50 if m != "skylark"):
                console.print(f"skylark / {mode} (p50 end to end): {p50['skylark'] / p50[mode]:.2f}×")
        if "skylark" in results:
            console.print(alarms_table(images, results["skylark"]))
        for mode, trace_id in traced.items() if trace else ():
            spans = view.spans(trace_id)
            console.print(waterfall(spans, f"policy {mode}: the first chain's trace ({len(spans)} spans)"))
        if cluster.emulation is None:
            console.print("[yellow]links are not emulated[/yellow]: all nodes run on 127.0.0.1, so a remote "
                          "read costs a loopback round trip, not a satellite link (try --emulate-network as root)")
    finally:
        restarts = cluster.restarts()
        namespaces = sorted(n.netns for n in cluster.nodes.values() if n.netns)
        with console.status("stopping the cluster…"):
            cluster.stop()
    total = sum(len(v) for v in results.values())
    done = sum(r.completed for v in results.values() for r in v)
    if getattr(args, "report", None):
        chains = summary_json(results)
        for entry, (name, _) in zip(chains, [image for _ in results for image in images]):
            entry["image"] = name
        with open(args.report, "w") as out:
            json.dump({"workflow": cluster.workflow.name, "emulated": args.emulate_network, "completed": done,
                       "total": total, "placement": {f.name: f.node for f in cluster.workflow.functions},
                       "restarts": restarts, "namespaces": namespaces,
                       "chains": chains}, out, indent=1)
    console.print(f"{done}/{total} chains completed in {time.monotonic() - started:.1f} s")
    for mode, runs in results.items():
        for run in (r for r in runs if not r.completed):
            console.print(f"[red]incomplete[/red] {mode} {run.chain}: {run.outcome}")
    return 0 if done == total and total > 0 else 1
