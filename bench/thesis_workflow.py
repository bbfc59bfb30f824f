"""The thesis's propagation and scalability experiments on the local cluster (part of ``bench thesis``).

The cluster is ``skylark up --emulate-network`` on ``neighbors_service/topologies/thesis.yaml``:
every node in its own network namespace, links shaped as the topology says, the cloud link
moving to another satellite every minute (or one ``--snapshot``). The workflow is
``ex_workflows/thesis.yaml`` (preprocess@pi5u2 → detect-1@pi5u4 → detect-2@pi4u6 →
alarm@pi5u1), synthetic stages writing ``state_bytes`` of random data each (set per invocation).

What is measured, per workflow (one chain):

- **T(W)**, the workflow time: submission of the input event → the observer received the last
  event (``skylark.runtime.invoke``).
- per hop (a reader G of F's state): where G read it (local / the node), its **retrieval**
  time ``T(dr)`` (the read, without the wait for a pushed copy) and that **wait**, all from the
  SDK's trace; the **migration** time ``T(dm)`` of every copy the policy pushed: from the moment
  F's bundle was written at its origin to the moment the copy was readable at its target. Both
  instants come from Redis itself: every node's Redis publishes keyspace notifications
  (``notify-keyspace-events``) for the metadata hash a write or an apply updates in the same
  transaction as the data, and a listener per node records when each arrived (one clock, the
  machine's). Where the time of a hop went — stream → handlers, the handlers' rebuild + election
  + publish, the copy's way to the target (broker, claim-check pull, apply), the event's way to
  the reader — comes from the services' JSON logs (their timestamps and ``elapsed_ms``).
- **local-state availability**: the share of reads served from the reader's own Redis.
- **SLO violations**: a migration whose measured ``T(dm)`` exceeded the SLO's ``max_latency_ms``
  (the time the election promises a copy takes); the share of all migrations.

Settings of the cluster for these runs, and why: readers wait for a pushed copy up to
``SKYLARK_PROPAGATION_WAIT_MS`` (default 200 ms; here long enough for the largest copy, else
``stateless`` would read from the origin instead of the cloud and would not be the thesis's
baseline); the brokers' delivery timeout is raised (a 50 MB claim check over 30 Mbit/s takes
13 s, the local broker's default is 10 s); the warm-up PingSource is off (the thesis had none;
it would copy state between neighbours every minute); each chain's keys are deleted on every
node after it ran (the thesis flushed Redis before each run).
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import redis
import requests
import yaml

from eventing import wiring
from eventing.publisher import Publisher
from skylark.runtime.cluster import LocalCluster
from skylark.runtime.invoke import ClusterView, Invocation, input_event, invoke
from skylark.workflow import Workflow, load_workflow
from skylark.workflow.model import SLOSpec

SETTLE_S = 6.0  # after a snapshot change, longer than the services' topology cache (5 s)


def _ts(text: str) -> float:
    return datetime.strptime(text, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=timezone.utc).timestamp()


class KeyspaceWatch:
    """When each node's Redis changed each bundle's metadata: ``first(chain, function)`` →
    ``{node: unix time}`` of the first write (origin) or apply (copy) there."""

    PATTERN = "__keyspace@0__:skylark:meta:*"
    IGNORED = {b"del", b"expired", b"expire", b"evicted", b"persist"}

    def __init__(self, urls: dict[str, str]) -> None:
        self._lock = threading.Lock()
        self._first: dict[tuple[str, str], dict[str, float]] = {}
        self._clients: list[redis.Redis] = []
        self._pubsubs = []
        self._threads = []
        self._stop = threading.Event()
        self.errors: list[str] = []  # a listener that stopped, and why
        for node, url in urls.items():
            client = redis.Redis.from_url(url, socket_timeout=None)
            self._clients.append(client)  # its pool holds the subscription's connection
            client.config_set("notify-keyspace-events", "Khg")
            pubsub = client.pubsub(ignore_subscribe_messages=True)
            pubsub.psubscribe(self.PATTERN)
            self._pubsubs.append(pubsub)
            thread = threading.Thread(target=self._listen, args=(node, pubsub), daemon=True,
                                      name=f"keyspace-{node}")
            thread.start()
            self._threads.append(thread)

    def _listen(self, node: str, pubsub) -> None:  # noqa: ANN001
        while not self._stop.is_set():
            try:
                message = pubsub.get_message(timeout=0.5)
            except (redis.RedisError, ValueError, OSError) as exc:
                self.errors.append(f"{node}: {exc!r}")
                return
            if not message or message.get("type") != "pmessage":
                continue
            now = time.time()
            if message["data"] in self.IGNORED:
                continue
            parts = message["channel"].decode().split(":")
            # __keyspace@0__ : skylark : meta : chain : function  (the metadata hash itself)
            if len(parts) != 5:
                continue
            key = (parts[3], parts[4])
            with self._lock:
                self._first.setdefault(key, {}).setdefault(node, now)

    def first(self, chain: str, function: str) -> dict[str, float]:
        with self._lock:
            return dict(self._first.get((chain, function), {}))

    def forget(self, chain: str) -> None:
        with self._lock:
            for key in [k for k in self._first if k[0] == chain]:
                del self._first[key]

    def close(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=2)
        for pubsub in self._pubsubs:
            try:
                pubsub.close()
            except redis.RedisError:
                pass
        for client in self._clients:
            client.close()


class LogTail:
    """New JSON log lines of the handlers and functions, by chain (offsets kept per file)."""

    def __init__(self, directory: Path, nodes: Iterable[str]) -> None:
        self.directory = directory
        self.nodes = sorted(nodes, key=len, reverse=True)
        self._offsets: dict[Path, int] = {}
        self.by_chain: dict[str, list[dict[str, Any]]] = {}

    def _node_of(self, path: Path) -> str | None:
        return next((n for n in self.nodes if path.name.startswith(f"{n}-")), None)

    def poll(self) -> None:
        for path in sorted(self.directory.glob("*.log")):
            if not (path.name.endswith("-handlers.log") or "-fn-" in path.name):
                continue
            node = self._node_of(path)
            offset = self._offsets.get(path, 0)
            try:
                size = path.stat().st_size
            except OSError:
                continue
            if size < offset:  # a new file under the same name: start over
                offset = 0
            with path.open("rb") as handle:
                handle.seek(offset)
                data = handle.read()
            cut = data.rfind(b"\n") + 1
            self._offsets[path] = offset + cut
            for line in data[:cut].splitlines():
                if b'"chain"' not in line:
                    continue
                try:
                    entry = json.loads(line)
                except ValueError:
                    continue
                if "chain" in entry and "ts" in entry:
                    entry["_node"] = node
                    entry["_t"] = _ts(entry["ts"])
                    self.by_chain.setdefault(str(entry["chain"]), []).append(entry)

    def take(self, chain: str) -> list[dict[str, Any]]:
        return self.by_chain.pop(chain, [])


def bench_values(path: Path, delivery_timeout_s: int) -> Path:
    """The chart's values with the warm-up ping off and a delivery timeout for large copies."""
    values = wiring.merge_values(wiring.load_chart_values(), {
        "ping": {"enabled": False},
        "eventing": {"delivery": {"timeout": f"PT{delivery_timeout_s}S"}},
    })
    path.write_text(yaml.safe_dump(values, sort_keys=False))
    return path


@dataclasses.dataclass
class ClusterSettings:
    snapshot: int | None = None
    wait_ms: int = 120_000
    delivery_timeout_s: int = 300
    threads: int = 8
    timeout_s: float = 600.0


class ThesisCluster:
    """The local cluster on the thesis testbed, with the listeners the measurements need."""

    def __init__(self, settings: ClusterSettings, workdir: Path, log: Callable[[str], None]) -> None:
        from ex_workflows import example_path
        from neighbors_service.topologies import example_path as topology_path

        self.settings = settings
        self.log = log
        self.base: Workflow = load_workflow(example_path("thesis"))
        self.topology_path = topology_path("thesis")
        values = bench_values(workdir / "values.yaml", settings.delivery_timeout_s)
        self.cluster = LocalCluster(
            self.topology_path, workflow=self.base, emulate_network=True, snapshot=settings.snapshot,
            log_level="INFO", threads=settings.threads, chart_values=values,
            extra_env={"SKYLARK_PROPAGATION_WAIT_MS": str(settings.wait_ms)})
        self.publisher = Publisher(retries=2)
        self.watch: KeyspaceWatch | None = None
        self.logs: LogTail | None = None
        self.view: ClusterView | None = None
        self.configs = 0

    # -- life cycle -------------------------------------------------------------------------

    def start(self) -> "ThesisCluster":
        started = time.time()
        self.cluster.start()
        try:
            self.watch = KeyspaceWatch({n: node.redis_url() for n, node in self.cluster.nodes.items()})
            self.logs = LogTail(self.cluster.workdir / "logs", self.cluster.nodes)
            self.view = ClusterView.from_dict(self.cluster.describe())
        except BaseException:
            self.stop()
            raise
        where = (f"cloud link moving every {self.clock.interval_s:g} s" if self.moving
                 else f"snapshot {self.settings.snapshot}")
        delay = "netem" if self.cluster.emulation.netem else "linkrelay"
        self.log(f"cluster up in {time.time() - started:.1f} s ({len(self.cluster.nodes)} nodes, "
                 f"latency by {delay}, {where})")
        return self

    def stop(self) -> None:
        if self.watch is not None:
            self.watch.close()
            self.watch = None
        self.publisher.close()
        self.cluster.stop()

    @property
    def moving(self) -> bool:
        return self.cluster.mover is not None

    @property
    def clock(self):  # noqa: ANN201
        return self.cluster.snapshot_clock()

    def snapshot_now(self) -> int:
        return self.settings.snapshot if self.settings.snapshot is not None else self.clock.current()

    def configure(self, policy: str, slo_ms: float) -> float:
        """Run the workflow with ``policy`` and SLO ``slo_ms`` (restarts the handlers and the
        functions when either changes); seconds it took."""
        workflow = dataclasses.replace(self.cluster.workflow, policy=policy,
                                       slo=SLOSpec(float(slo_ms), self.base.slo.min_bandwidth_mbps))
        if workflow == self.cluster.workflow:
            return 0.0
        started = time.time()
        self.cluster.set_workflow(workflow)
        self.view = ClusterView.from_dict(self.cluster.describe())
        self.configs += 1
        return time.time() - started

    def topology(self, snapshot: int):  # noqa: ANN201
        return self.cluster.emulation.topology(snapshot if self.settings.snapshot is None else 0)

    # -- one workflow -----------------------------------------------------------------------

    def align(self, expected_s: float) -> dict[str, float]:
        """With a moving cloud link, wait so that a workflow of ``expected_s`` runs inside one
        snapshot, started ``SETTLE_S`` after its change (the services' topology caches agree by
        then). A workflow longer than a snapshot runs at once (it will span a change)."""
        if not self.moving:
            return {"waited_s": 0.0}
        clock = self.clock
        now = time.time()
        start_of = clock.next_change_at(now) - clock.interval_s
        usable = clock.interval_s - SETTLE_S
        if expected_s + 1.0 > usable:
            return {"waited_s": 0.0}
        wait = 0.0
        if now < start_of + SETTLE_S:
            wait = start_of + SETTLE_S - now
        elif now + expected_s + 1.0 > start_of + clock.interval_s:
            wait = start_of + clock.interval_s + SETTLE_S - now
        if wait > 0:
            time.sleep(wait)
        return {"waited_s": round(wait, 3)}

    def run(self, chain: str, size_bytes: int, *, compute_ms: int = 0) -> Invocation:
        event = input_event(self.view, chain, data={"state_bytes": int(size_bytes), "fields": 1,
                                                    "compute_ms": int(compute_ms)})
        return invoke(self.view, event, self.publisher, timeout_s=self.settings.timeout_s)

    def submit_all(self, chains: Sequence[str], size_bytes: int) -> list[Invocation]:
        """Submit one workflow per chain at once, then collect their ends from the observer.

        ``invoke`` long-polls the observer once per chain, which holds one of its threads each:
        fifty at once would exhaust it. Here every input is published first (a thread each),
        then the observer is asked for each chain without waiting (``wait_ms=1``) until all ended;
        the times are the observer's own receive times, so the polling interval does not count.
        """
        view, expected = self.view, max(1, len(self.view.finishers()))
        broker = view.brokers[view.entry_node()]
        submitted: dict[str, float] = {}

        def publish(chain: str) -> tuple[str, str]:
            event = input_event(view, chain, data={"state_bytes": int(size_bytes), "fields": 1, "compute_ms": 0})
            submitted[chain] = time.time()
            outcome = self.publisher.publish(broker, event)
            return chain, "" if outcome.ok else f"submission failed: {outcome.reason}"

        with ThreadPoolExecutor(max_workers=len(chains)) as pool:
            failed = dict(pool.map(publish, chains))
        results = {c: Invocation(c, outcome=failed[c]) for c in chains}
        pending = {c for c in chains if not failed[c]}
        deadline = time.monotonic() + self.settings.timeout_s
        session = requests.Session()
        try:
            while pending and time.monotonic() < deadline:
                for chain in sorted(pending):
                    try:
                        events = session.get(f"{view.observer_url}/chains/{chain}",
                                             params={"count": expected, "wait_ms": 1}, timeout=10).json()["events"]
                    except (requests.RequestException, ValueError, KeyError):
                        continue
                    if len(events) >= expected:
                        last = max(events, key=lambda e: e["received_ms"])
                        data = last.get("data") if isinstance(last.get("data"), dict) else {}
                        result = results[chain]
                        result.completed, result.outcome = True, last["type"]
                        result.e2e_ms = last["received_ms"] - submitted[chain] * 1000
                        result.trace = list((data.get("skylark") or {}).get("trace", []))
                        pending.discard(chain)
                if pending:
                    time.sleep(0.25)
        finally:
            session.close()
        for chain in pending:
            results[chain].outcome = f"no end-of-workflow event within {self.settings.timeout_s:.0f} s"
        for chain, result in results.items():
            result.submitted_s = submitted.get(chain, 0.0)
        return [results[c] for c in chains]

    def cleanup(self, chains: Iterable[str]) -> None:
        """Delete the chains' keys on every node (no change entries: nothing propagates)."""
        chains = list(chains)
        for node in self.cluster.nodes.values():
            client = redis.Redis.from_url(node.redis_url(), socket_timeout=30)
            try:
                for chain in chains:
                    found = list(client.scan_iter(match=f"skylark:*:{chain}:*", count=1000))
                    for i in range(0, len(found), 500):
                        client.unlink(*found[i:i + 500])
            finally:
                client.close()
        for chain in chains:
            self.watch.forget(chain)

    def sample(self, chain: str, result: Invocation, *, slo_ms: float, snapshot_start: int, snapshot_end: int,
               logs: list[dict[str, Any]]) -> dict[str, Any]:
        """One workflow's record: stages, hops, migrations, where the time went."""
        stages = {s.get("function"): s for s in result.trace}
        by_kind: dict[tuple[str, str, str], dict[str, Any]] = {}
        for entry in logs:
            msg = str(entry.get("msg", ""))
            kind = ("fn" if entry.get("logger") == "skylark.function" else
                    "propagated" if msg == "propagated" else
                    "applied" if msg.startswith("bundle ") else None)
            if kind is not None:
                by_kind.setdefault((kind, str(entry.get("function")), entry["_node"]), entry)
        topology = self.topology(snapshot_start)
        writes = {fn.name: self.watch.first(chain, fn.name) for fn in self.base.functions}
        hops = []
        for fn in self.base.functions:
            if not fn.reads or fn.name not in stages:
                continue
            source = fn.reads[0]
            reader, produced = stages[fn.name], stages.get(source, {})
            origin, reader_node = produced.get("node"), reader.get("node")
            at = writes.get(source, {})
            t_write = at.get(origin)
            prop = by_kind.get(("propagated", source, origin))
            targets = list(prop.get("targets") or []) if prop else []
            migrations = []
            for target in targets:
                t_copy = at.get(target)
                migrations.append({"target": target, "ms": None if t_copy is None or t_write is None
                                   else round((t_copy - t_write) * 1000, 1),
                                   "push_ms": None if t_copy is None or prop is None
                                   else round((t_copy - prop["_t"]) * 1000, 1)})
            fetch, waited = float(reader.get("fetch_ms", 0.0)), float(reader.get("waited_ms", 0.0))
            read_at = reader.get("fetch_node")
            fn_log = by_kind.get(("fn", fn.name, reader_node))
            src_log = by_kind.get(("fn", source, origin))
            start = None
            if fn_log is not None:
                start = fn_log["_t"] - (fetch + float(reader.get("compute_ms", 0.0))
                                        + float(reader.get("store_ms", 0.0))) / 1000
            hops.append({
                "reader": fn.name, "input": source, "origin": origin, "reader_node": reader_node,
                "location": reader.get("fetch_location"), "read_at": read_at,
                "hops_away": _hops(topology, reader_node, read_at),
                "fetch_ms": fetch, "waited_ms": waited, "retrieval_ms": round(fetch - waited, 3),
                "targets": targets, "migrations": migrations,
                "violations": sum(1 for m in migrations if m["ms"] is not None and m["ms"] > slo_ms),
                "stream_ms": None if prop is None or t_write is None
                else round((prop["_t"] - float(prop.get("elapsed_ms", 0.0)) / 1000 - t_write) * 1000, 1),
                "handler_ms": None if prop is None else float(prop.get("elapsed_ms", 0.0)),
                "event_ms": None if start is None or src_log is None else round((start - src_log["_t"]) * 1000, 1),
            })
        return {
            "chain": chain, "completed": result.completed, "e2e_ms": result.e2e_ms, "outcome": result.outcome,
            "snapshot_start": snapshot_start, "snapshot_end": snapshot_end,
            "stages": [{k: s.get(k) for k in ("function", "node", "fetch_location", "fetch_node", "fetch_ms",
                                               "waited_ms", "compute_ms", "store_ms")} for s in result.trace],
            "hops": hops,
        }

    def one(self, chain: str, size_bytes: int, slo_ms: float, expected_s: float) -> dict[str, Any]:
        waited = self.align(expected_s)
        snapshot_start = self.snapshot_now()
        load = os.getloadavg()[0]
        submitted = time.time()
        result = self.run(chain, size_bytes)
        time.sleep(0.3)  # the last keyspace notifications and log lines
        self.logs.poll()
        record = self.sample(chain, result, slo_ms=slo_ms, snapshot_start=snapshot_start,
                             snapshot_end=self.snapshot_now(), logs=self.logs.take(chain))
        record.update({"submitted": round(submitted, 3), "load1": round(load, 2), **waited})
        self.cleanup([chain])
        return record

    def batch(self, prefix: str, count: int, size_bytes: int, slo_ms: float) -> dict[str, Any]:
        """``count`` workflows submitted at once: each one's record, and the batch's wall time."""
        chains = [f"{prefix}-{i}" for i in range(count)]
        snapshot_start = self.snapshot_now()
        load = os.getloadavg()[0]
        started = time.time()
        results = self.submit_all(chains, size_bytes)
        ends = [r.e2e_ms / 1000 + r.submitted_s for r in results if r.completed]
        wall = (max(ends) if ends else time.time()) - started
        time.sleep(0.3)
        self.logs.poll()
        snapshot_end = self.snapshot_now()
        records = [self.sample(chain, result, slo_ms=slo_ms, snapshot_start=snapshot_start,
                               snapshot_end=snapshot_end, logs=self.logs.take(chain))
                   for chain, result in zip(chains, results)]
        for record in records:
            record["size_bytes"] = int(size_bytes)
        self.cleanup(chains)
        return {"parallel": count, "wall_s": round(wall, 3), "load1": round(load, 2), "submitted": round(started, 3),
                "completed": sum(1 for r in records if r["completed"]), "workflows": records,
                "failures": sorted({r["outcome"] for r in records if not r["completed"]})}


    # -- the floor: raw redis-py moving the same bytes over the same links -----------------

    def hop_pairs(self) -> list[tuple[str, str, str]]:
        """(reader, origin node, reader node) of each hop of the workflow."""
        nodes = {f.name: f.node for f in self.base.functions}
        return [(f.name, nodes[f.reads[0]], f.node) for f in self.base.functions if f.reads]

    def floor(self, size_bytes: int, reps: int) -> list[dict[str, Any]]:
        """Per hop: a raw GET of ``size_bytes`` from the origin's Redis, timed inside the reader's
        namespace over the same emulated path the functions use (the relay, the shaped links);
        and the theoretical floors of the path: ``2·L + bytes/B`` (a read) and ``L + bytes/B``
        (a push sent as it is written)."""
        from neighbors_service.paths import shortest_path

        out = []
        value = os.urandom(int(size_bytes))
        key = f"floor:{size_bytes}"
        for reader, origin, reader_node in self.hop_pairs():
            snapshot = self.snapshot_now()
            source = redis.Redis.from_url(self.cluster.nodes[origin].redis_url(), socket_timeout=60)
            try:
                source.set(key, value)
                spec = {"url": self.cluster.nodes[origin].redis_url(view="peer"), "key": key, "reps": reps,
                        "size": int(size_bytes)}
                result = subprocess.run(["ip", "netns", "exec", self.cluster.nodes[reader_node].netns, sys.executable,
                                         "-m", "bench.thesis_workflow", "--floor", json.dumps(spec)],
                                        capture_output=True, text=True, timeout=600,
                                        cwd=str(Path(__file__).resolve().parent.parent))
                if result.returncode != 0:
                    raise RuntimeError(f"floor probe {origin} → {reader_node} failed: {result.stderr[-2000:]}")
                samples = json.loads(result.stdout)
            finally:
                source.delete(key)
                source.close()
            adj = self.topology(snapshot).adjacency()
            path = shortest_path(adj, adj.index[origin], adj.index[reader_node])
            latency, bottleneck = path.latency_ms, min(path.hop_bandwidth_mbps)
            transfer = size_bytes * 8 / (bottleneck * 1000)
            out.append({"reader": reader, "origin": origin, "reader_node": reader_node, "size_bytes": int(size_bytes),
                        "snapshot": snapshot, "latency_ms": latency, "bottleneck_mbps": bottleneck,
                        "theory_read_ms": round(2 * latency + transfer, 1),
                        "theory_push_ms": round(latency + transfer, 1), "samples_ms": samples})
        return out


def _floor_worker(spec: dict) -> list[float]:
    client = redis.Redis.from_url(spec["url"], socket_timeout=300)
    deadline = time.monotonic() + 10
    while True:  # connect (and say hello) before timing
        try:
            client.ping()
            break
        except redis.RedisError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)
    samples = []
    for _ in range(int(spec["reps"])):
        start = time.perf_counter()
        value = client.get(spec["key"])
        samples.append(round((time.perf_counter() - start) * 1000, 3))
        if value is None or len(value) != spec["size"]:
            raise RuntimeError(f"floor probe read {0 if value is None else len(value)} bytes")
    return samples


def _hops(topology, a: str | None, b: str | None) -> int | None:  # noqa: ANN001
    """Links between two nodes on the minimum-latency path (0: the same node)."""
    if a is None or b is None:
        return None
    if a == b:
        return 0
    from neighbors_service.paths import shortest_path

    adj = topology.adjacency()
    path = shortest_path(adj, adj.index[a], adj.index[b])
    return None if path is None else len(path.nodes) - 1


def expected_seconds(size_bytes: int, policy: str, seen: Sequence[float]) -> float:
    """A bound on a workflow's time for the alignment: the slowest of the cell so far, else a
    model (six transfers over the 30 Mbit/s cloud link, plus 2 s)."""
    if seen:
        return max(seen) / 1000 * 1.2
    transfers = 6 if policy in ("stateless", "random") else 3
    return transfers * size_bytes * 8 / 30e6 + 2.0


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--floor":
        print(json.dumps(_floor_worker(json.loads(sys.argv[2]))))
        raise SystemExit(0)
    print("internal module of `skylark bench thesis` (run that)", file=sys.stderr)
    raise SystemExit(2)
