"""``skylark demo``: the example workflow on a local cluster, with and without propagation.

K sample images go through preprocess@A → detect@B → alarm@C twice: once with the handlers'
``skylark`` policy (bundles are pushed to the neighbours, so detect and alarm find their state
locally) and once with the ``stateless`` baseline (state stays where it was written; the
successors read it across the link). Each chain's trace (which the functions build up stage by
stage) says where every stage read its state and how long fetch and compute took; the
end-to-end time runs from the submission to the alarm record on C.
"""

from __future__ import annotations

import base64
import io
import json
import secrets
import time
from dataclasses import asdict, dataclass, field
from importlib.resources import files

from PIL import Image, ImageOps
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from bench.common import percentile
from eventing import catalogue
from eventing.http import new_event
from eventing.publisher import Publisher
from skylark.runtime.cluster import LocalCluster
from skylark.state.keys import DEFAULT_ALARM_STREAM
from skylark.state.redis_client import connect

SAMPLES = ("astronaut", "camera", "chelsea", "coffee", "rocket")
STAGES = ("preprocess", "detect", "alarm")
MODES = ("skylark", "stateless")


@dataclass
class ChainResult:
    image: str
    mode: str
    chain: str
    completed: bool
    e2e_ms: float = 0.0
    outcome: str = ""
    matched: list = field(default_factory=list)
    trace: list = field(default_factory=list)

    def stage(self, name: str) -> dict | None:
        return next((entry for entry in self.trace if entry.get("function") == name), None)


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


def _entry_ms(entry_id: bytes) -> int:
    return int(entry_id.split(b"-")[0])


def run_chain(cluster: LocalCluster, publisher: Publisher, alarms, route: list[str], mode: str,
              index: int, name: str, image: bytes, run_tag: str, timeout_s: float) -> ChainResult:
    chain = f"demo-{run_tag}-{mode}-{index:02d}"
    # Wait for the record from the current end of the stream on.
    last = alarms.xinfo_stream(DEFAULT_ALARM_STREAM)["last-generated-id"] if alarms.exists(DEFAULT_ALARM_STREAM) else b"0-0"
    event = new_event(catalogue.IMAGE_SUBMITTED, "/skylark/demo",
                      {"chain": chain, "image_base64": base64.b64encode(image).decode(), "route": route[1:]},
                      id_=f"{chain}-submit", skylarkchain=chain)
    submitted_ms = time.time_ns() // 1_000_000
    outcome = publisher.publish(cluster.broker_ingress(route[0]), event)
    result = ChainResult(name, mode, chain, completed=False)
    if not outcome.ok:
        result.outcome = f"submission failed: {outcome.reason}"
        return result
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        block = max(1, int((deadline - time.monotonic()) * 1000))
        for _, entries in alarms.xread({DEFAULT_ALARM_STREAM: last}, block=block) or []:
            for entry_id, fields in entries:
                last = entry_id
                if fields.get(b"chain", b"").decode() != chain:
                    continue
                result.completed = True
                result.e2e_ms = _entry_ms(entry_id) - submitted_ms
                result.outcome = fields[b"outcome"].decode()
                result.matched = json.loads(fields.get(b"matched", b"[]"))
                result.trace = json.loads(fields.get(b"trace", b"[]"))
                return result
    result.outcome = f"no alarm record within {timeout_s:.0f} s"
    return result


def _ms(values: list[float]) -> str:
    return f"{percentile(values, 50):.1f}" if values else "–"


def report(console: Console, results: dict[str, list[ChainResult]], route: list[str], emulated: bool) -> None:
    stages = Table(title="Per stage (p50 over the chains)")
    for col in ("mode", "stage", "node", "state read", "fetch ms", "compute ms"):
        stages.add_column(col, justify="left" if col in ("mode", "stage", "node", "state read") else "right")
    for mode, chains in results.items():
        for stage, node in zip(STAGES, route):
            entries = [c.stage(stage) for c in chains if c.completed and c.stage(stage)]
            where: dict[str, int] = {}
            for e in entries:
                label = e["fetch_location"] if e["fetch_location"] != "remote" else f"remote ({e['fetch_node']})"
                where[label] = where.get(label, 0) + 1
            stages.add_row(mode, stage, node, ", ".join(f"{k} ×{v}" for k, v in sorted(where.items())) or "–",
                           _ms([e["fetch_ms"] for e in entries]), _ms([e["compute_ms"] for e in entries]))
    console.print(stages)

    e2e = Table(title="End to end: submission → alarm record on " + route[-1])
    for col in ("mode", "completed", "p50 ms", "p95 ms"):
        e2e.add_column(col, justify="left" if col == "mode" else "right")
    p50 = {}
    for mode, chains in results.items():
        times = [c.e2e_ms for c in chains if c.completed]
        p50[mode] = percentile(times, 50) if times else None
        e2e.add_row(mode, f"{len(times)}/{len(chains)}", _ms(times),
                    f"{percentile(times, 95):.1f}" if times else "–")
    console.print(e2e)
    if p50.get("skylark") and p50.get("stateless"):
        console.print(f"skylark / baseline (p50 end to end): {p50['skylark'] / p50['stateless']:.2f}×")

    alarms = Table(title="Alarms (policy skylark)")
    for col in ("image", "outcome", "detected"):
        alarms.add_column(col)
    for chain in results.get("skylark", []):
        detected = ", ".join(f"{d.get('class', '?')} {d.get('score', 0):.2f}" for d in chain.matched) or "–"
        alarms.add_row(chain.image, chain.outcome, detected)
    console.print(alarms)
    if not emulated:
        console.print("[yellow]links are not emulated[/yellow]: all nodes run on 127.0.0.1, so a remote "
                      "read costs a loopback round trip, not a satellite link (try --emulate-network as root)")


def main_demo(args) -> int:
    console = Console()
    images = sample_images(args.images)
    run_tag = secrets.token_hex(3)
    results: dict[str, list[ChainResult]] = {}
    started = time.monotonic()
    cluster = LocalCluster(args.topology, policy=MODES[0], emulate_network=args.emulate_network,
                           base_port=args.base_port, console=console)
    route: list[str] = []
    with console.status("starting a local cluster (Redis, handlers, functions, brokers per node)…"):
        cluster.start()
    try:
        route = cluster.node_names[:3]
        if len(route) < 3:
            console.print("[red]the demo needs a topology with at least 3 nodes[/red]")
            return 2
        console.print(f"cluster up in {time.monotonic() - started:.1f} s: "
                      f"preprocess@{route[0]} → detect@{route[1]} → alarm@{route[2]}")
        alarms = connect(cluster.nodes[route[2]].redis_url())
        publisher = Publisher(retries=2)
        with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                      TimeElapsedColumn(), console=console) as progress:
            task = progress.add_task("chains", total=len(images) * len(MODES))
            for mode in MODES:
                if mode != cluster.policy:
                    progress.update(task, description=f"restarting handlers with policy {mode}")
                    cluster.restart("handlers", policy=mode)
                    cluster.restart("preprocess", policy=mode)
                    cluster.restart("detect", policy=mode)
                    cluster.restart("alarm", policy=mode)
                # One untimed chain first: worker start-up, lazy model loading and connection
                # set-up would otherwise land on the first measured chain of each mode.
                progress.update(task, description=f"policy {mode}: warm-up")
                run_chain(cluster, publisher, alarms, route, mode, 99, "warm-up", images[0][1], run_tag, timeout_s=30)
                progress.update(task, description=f"policy {mode}")
                results[mode] = []
                for index, (name, image) in enumerate(images):
                    results[mode].append(run_chain(cluster, publisher, alarms, route, mode, index, name,
                                                   image, run_tag, timeout_s=30))
                    progress.advance(task)
        report(console, results, route, emulated=cluster.emulation is not None)
    finally:
        with console.status("stopping the cluster…"):
            cluster.stop()
    total = sum(len(v) for v in results.values())
    done = sum(c.completed for v in results.values() for c in v)
    if getattr(args, "report", None):
        with open(args.report, "w") as out:
            json.dump({"route": route if results else [], "emulated": args.emulate_network,
                       "completed": done, "total": total,
                       "chains": [asdict(c) for v in results.values() for c in v]}, out, indent=1)
    console.print(f"{done}/{total} chains completed in {time.monotonic() - started:.1f} s")
    for chain in (c for v in results.values() for c in v if not c.completed):
        console.print(f"[red]incomplete[/red] {chain.mode} {chain.image}: {chain.outcome}")
    return 0 if done == total and total > 0 else 1
