"""``skylark bench faults``: faults injected into a local cluster while writes go on.

A three-node cluster (``demo3``: node-a – node-b – node-c) runs the example workflow; a writer
keeps writing preprocess's state on node-a and detect's on node-b (what the policy pushes to
node-b and node-c), a watcher samples the copies' versions, and one fault after another is
injected from outside, then healed:

- kill -9 of a handlers worker, then of the handlers' gunicorn master (the supervisor restarts it);
- a neighbour's broker down for 15 s (the pushes fail, are retried, dead-lettered, replayed);
- a node's Redis kill -9 and restart (AOF: the state and the dedupe marks survive);
- duplicate (×2) and reordered deliveries, stale, oversized and forged bundles, sent to a node's
  handlers directly.

After each: every write ends up on every node the policy pushes it to (dead letters replayed
first, ``skylark deadletter replay``), no bundle anywhere fails its checksum, no copy's version
ever went back, and the hostile deliveries were answered 4xx with a JSON body. The table says,
per fault, the writes made meanwhile, how many did not arrive (lost), and the time to converge.
"""

from __future__ import annotations

import argparse
import json
import os
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import psutil
import requests

from eventing.http import to_binary
from eventing.publisher import Publisher
from handlers.bundle_event import encode_payload, propagation_event
from neighbors_service.sources.file import load_topology_file
from neighbors_service.targets import PolicyTargets
from skylark.runtime.cluster import LocalCluster, default_topology_path
from skylark.runtime.deadletters import DeadLetters
from skylark.state.bundle import make_bundle
from skylark.state.errors import SkylarkError
from skylark.state.redis_client import connect
from skylark.state.store import StateStore

WRITERS = (("preprocess", "node-a"), ("detect", "node-b"))  # (function, node it writes on)


@dataclass
class FaultResult:
    fault: str
    writes: int = 0
    lost: int = 0
    dead_letters: int = 0
    replayed: int = 0
    converged_s: float | None = None
    restarts: int = 0
    hostile: dict[str, int] = field(default_factory=dict)  # status -> count
    notes: str = ""


@dataclass
class FaultRun:
    results: list[FaultResult]
    went_back: list[str]      # copies whose version went back (must be none)
    torn: list[str]           # bundles failing their checksum at the end (must be none)
    orphans: int              # handlers workers alive a second after their master was killed
    dead_while_down: int      # dead letters while the neighbour's broker was down
    redis_versions: tuple[int, int]  # a copy's version before its Redis was killed, and after


class _Loop:
    """A daemon thread running ``_run`` until :meth:`stop`."""

    def __init__(self, name: str) -> None:
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def start(self):  # noqa: ANN201 - returns self, of the subclass
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)

    def _run(self) -> None:
        raise NotImplementedError


class Writer(_Loop):
    """Writes state of (function, node) pairs for a few chains, round-robin, ~``rate`` per second,
    and remembers the last version each write was acknowledged with."""

    def __init__(self, cluster: LocalCluster, rate: float = 20.0, chains: int = 8) -> None:
        super().__init__("writer")
        self.stores = {fn: StateStore(connect(cluster.nodes[node].redis_url()), node=node) for fn, node in WRITERS}
        self.rate = rate
        self.chains = [f"f-{i}" for i in range(chains)]
        self.acked: dict[tuple[str, str], int] = {}
        self.writes = 0
        self.errors = 0
        self._lock = threading.Lock()

    def _run(self) -> None:
        i = 0
        while not self._stop.wait(1 / self.rate):
            chain = self.chains[i % len(self.chains)]
            for fn, store in self.stores.items():
                try:
                    put = store.put(chain, fn, {"n": str(i).encode(), "pad": os.urandom(256)})
                except SkylarkError:  # the node's own Redis is down: the writer (a function) gets a 503
                    with self._lock:
                        self.errors += 1
                    continue
                with self._lock:
                    self.acked[(chain, fn)] = put.meta.version
                    self.writes += 1
            i += 1

    def snapshot(self) -> tuple[int, dict[tuple[str, str], int]]:
        with self._lock:
            return self.writes, dict(self.acked)


class VersionWatch(_Loop):
    """Samples every copy's version on every node; a version that goes back is a violation."""

    def __init__(self, cluster: LocalCluster, chains: list[str], period_s: float = 0.05) -> None:
        super().__init__("watch")
        self.stores = {n: StateStore(connect(node.redis_url(), timeout_s=1.0, retries=0), node=n)
                       for n, node in cluster.nodes.items()}
        self.chains = chains
        self.period_s = period_s
        self.seen: dict[tuple[str, str, str], int] = {}
        self.went_back: list[str] = []

    def _run(self) -> None:
        while not self._stop.wait(self.period_s):
            for node, store in self.stores.items():
                for chain in self.chains:
                    for fn, _ in WRITERS:
                        try:
                            version = store.local_version(chain, fn)
                        except SkylarkError:
                            continue  # that Redis is down right now
                        key = (node, chain, fn)
                        if version < self.seen.get(key, 0):
                            self.went_back.append(f"{fn}/{chain} on {node}: {self.seen[key]} -> {version}")
                        self.seen[key] = max(version, self.seen.get(key, 0))


class FaultBench:
    def __init__(self, cluster: LocalCluster, writer: Writer, watch: VersionWatch) -> None:
        self.cluster = cluster
        self.writer = writer
        self.watch = watch
        topology = load_topology_file(cluster.workdir / "topology.yaml").current()
        self.targets = PolicyTargets.fixed(topology, workflow=cluster.workflow)
        self.stores = watch.stores
        self.publisher = Publisher(retries=2)
        self.orphans = 0          # workers that outlived a killed master by a second
        self.dead_while_down = 0  # dead letters when the broker came back
        self.redis_versions = (0, -1)  # a copy's version before the kill, and after the restart

    # -- what should be where ---------------------------------------------------------------

    def expected(self) -> dict[tuple[str, str, str], int]:
        """(node, chain, function) -> the version each target node must hold."""
        _, acked = self.writer.snapshot()
        out = {}
        for (chain, fn), version in acked.items():
            origin = dict(WRITERS)[fn]
            for target in self.targets.targets(origin, fn, 300, chain=chain, version=version):
                out[(target.node, chain, fn)] = version
        return out

    def missing(self, expected: dict[tuple[str, str, str], int]) -> list[str]:
        out = []
        for (node, chain, fn), version in expected.items():
            try:
                held = self.stores[node].local_version(chain, fn)
            except SkylarkError:
                held = -1
            if held < version:
                out.append(f"{fn}/{chain}@{node}: {held} < {version}")
        return out

    def converge(self, timeout_s: float) -> tuple[float | None, list[str]]:
        """Replay what was dead-lettered, then wait until every target holds its version."""
        start = time.monotonic()
        expected = self.expected()
        replayed = 0
        while time.monotonic() - start < timeout_s:
            missing = self.missing(expected)
            if not missing:
                return time.monotonic() - start, []
            replayed += self.replay()
            time.sleep(0.5)
        return None, self.missing(expected)

    def replay(self) -> int:
        """``skylark deadletter replay --all`` for the broker dead letters (the stream sources
        replay their own every few seconds)."""
        done = 0
        for name, node in self.cluster.nodes.items():
            letters = DeadLetters(connect(node.redis_url()), name)
            try:
                for letter in letters.list():
                    if letter.kind == "broker":
                        outcome = letters.replay(letter, self.cluster.broker_ingress(name), self.publisher)
                        done += bool(outcome and outcome.ok)
            except SkylarkError:
                continue
        return done

    def dead_letters(self) -> int:
        total = 0
        for name, node in self.cluster.nodes.items():
            try:
                total += len(DeadLetters(connect(node.redis_url()), name).list())
            except SkylarkError:
                pass
        return total

    def torn(self) -> list[str]:
        """Bundles that do not match their checksum, on any node (there must be none)."""
        bad = []
        for node, store in self.stores.items():
            for chain in self.writer.chains:
                for fn, _ in WRITERS:
                    try:
                        store.get_bundle(chain, fn).verify()
                    except SkylarkError as exc:
                        if exc.code != "bundle_not_found":
                            bad.append(f"{fn}/{chain}@{node}: {exc}")
        return bad

    # -- the faults -------------------------------------------------------------------------

    def child(self, name: str):  # noqa: ANN201
        return next(c for c in self.cluster.children if c.name == name)

    def run(self, name: str, inject: Callable[[], str], *, settle_s: float, converge_s: float) -> FaultResult:
        writes_before, _ = self.writer.snapshot()
        restarts_before = sum(self.cluster.restarts().values())
        dead_before = self.dead_letters()
        self.dead_while_down = 0
        notes = inject() or ""
        time.sleep(settle_s)
        dead = max(self.dead_letters(), self.dead_while_down) - dead_before
        converged, missing = self.converge(converge_s)
        writes_after, _ = self.writer.snapshot()
        result = FaultResult(name, writes=writes_after - writes_before, lost=len(missing), dead_letters=max(0, dead),
                             converged_s=None if converged is None else round(converged, 1),
                             restarts=sum(self.cluster.restarts().values()) - restarts_before, notes=notes)
        if missing:
            result.notes = (result.notes + "; " if result.notes else "") + "missing: " + ", ".join(missing[:3])
        return result

    def kill_worker(self) -> str:
        master = psutil.Process(self.child("handlers@node-a").pid)
        worker = master.children()[0]
        worker.kill()
        return f"worker {worker.pid} of handlers@node-a"

    def kill_master(self) -> str:
        handlers = self.child("handlers@node-a")
        master = psutil.Process(handlers.pid)
        workers = master.children()
        master.kill()
        time.sleep(1.0)
        # A dead worker may linger as a zombie until something reaps it: it holds no socket.
        alive = [w for w in workers if w.is_running() and w.status() != psutil.STATUS_ZOMBIE]
        self.orphans = len(alive)
        orphans = f"; {len(alive)} worker(s) outlived it by 1 s" if alive else "; its workers exited with it"
        return f"master {master.pid} of handlers@node-a{orphans}"

    def broker_down(self, seconds: float) -> str:
        broker = self.child("broker@node-b")
        broker.stop()  # on purpose: the supervisor leaves it down
        time.sleep(seconds)
        self.dead_while_down = self.dead_letters()  # the stream sources replay them once it is back
        with self.cluster._lock:  # noqa: SLF001 - the bench brings it back as an operator would
            broker.start()
        return f"broker@node-b down {seconds:g} s; {self.dead_while_down} dead letter(s) by then"

    def redis_kill(self) -> str:
        redis_child = self.child("redis@node-b")
        before = self.stores["node-b"].local_version(self.writer.chains[0], "preprocess")
        psutil.Process(redis_child.pid).kill()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                after = self.stores["node-b"].local_version(self.writer.chains[0], "preprocess")
                self.redis_versions = (before, after)
                return f"redis@node-b killed at v{before} of {self.writer.chains[0]}; restarted holding v{after}"
            except SkylarkError:
                time.sleep(0.2)
        return "redis@node-b killed; not back within 30 s"

    def hostile(self, result_holder: dict[str, int]) -> str:
        """Duplicates, reordering, stale, oversized and forged bundles, straight to node-b's handlers."""
        node_b = self.cluster.nodes["node-b"]
        url = node_b.url("handlers") + "/"
        key = self.cluster.signing_key.encode()

        def post(event) -> int:  # noqa: ANN001
            headers, body = to_binary(event)
            response = requests.post(url, data=body, headers=headers, timeout=10)
            if response.status_code >= 400:
                assert response.headers.get("content-type", "").startswith("application/json")
                assert {"error", "detail"} <= set(response.json())
            result_holder[str(response.status_code)] = result_holder.get(str(response.status_code), 0) + 1
            return response.status_code

        def event(version: int, fields: dict, signing_key: bytes | None = key):  # noqa: ANN202
            bundle = make_bundle("hostile", "preprocess", fields, version=version, node="node-a",
                                 updated_ms=int(time.time() * 1000))
            # inline whatever its size: the oversized one must arrive as one body
            payload = encode_payload(bundle, origin="node-a", inline_max_bytes=64 * 1024 * 1024, sign=True)
            return propagation_event(payload, "node-b", signing_key)

        v3, v2 = event(3, {"n": b"3"}), event(2, {"n": b"2"})
        codes = [post(v3), post(v3), post(v2)]                       # duplicate ×2, then an older one
        codes.append(post(event(4, {"n": b"4"}, b"not-the-cluster-key-0000")))  # forged
        codes.append(post(event(5, {"n": os.urandom(2 * 1024 * 1024)})))       # oversized
        held = self.stores["node-b"].local_version("hostile", "preprocess")
        return f"answers {codes}; node-b holds v{held}"


def run(args: argparse.Namespace) -> FaultRun:
    cluster = LocalCluster(default_topology_path(), policy="skylark", base_port=args.base_port, log_level="WARNING")
    cluster.start()
    writer = watch = None
    try:
        writer = Writer(cluster, rate=args.rate).start()
        watch = VersionWatch(cluster, writer.chains).start()
        bench = FaultBench(cluster, writer, watch)
        time.sleep(2)
        results = [
            bench.run("handlers worker -9", bench.kill_worker, settle_s=2, converge_s=args.converge),
            bench.run("handlers master -9", bench.kill_master, settle_s=3, converge_s=args.converge),
            bench.run(f"broker down {args.down:g} s", lambda: bench.broker_down(args.down), settle_s=1,
                      converge_s=args.converge),
            bench.run("Redis -9, restart", bench.redis_kill, settle_s=2, converge_s=args.converge),
        ]
        hostile: dict[str, int] = {}
        dead_while_down = results[2].dead_letters
        results.append(bench.run("hostile deliveries", lambda: bench.hostile(hostile),
                                 settle_s=0.5, converge_s=args.converge))
        results[-1].hostile = hostile
        writer.stop()
        watch.stop()
        final, missing = bench.converge(args.converge)
        torn = bench.torn()
        results.append(FaultResult("end state", writes=writer.writes, lost=len(missing),
                                   converged_s=None if final is None else round(final, 1),
                                   restarts=sum(cluster.restarts().values()),
                                   notes="; ".join([*(f"torn: {t}" for t in torn[:3]),
                                                    *(f"went back: {w}" for w in watch.went_back[:3])])))
        return FaultRun(results, list(watch.went_back), torn, bench.orphans, dead_while_down, bench.redis_versions)
    finally:
        if writer is not None:
            writer.stop()
        if watch is not None:
            watch.stop()
        cluster.stop()


def print_results(run: FaultRun) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title="Faults injected while writes went on (demo3, policy skylark)",
                  caption="handlers of node-a, broker and Redis of node-b; hostile: duplicate ×2, "
                          "reordered, forged, oversized bundles to node-b. lost: writes not on every "
                          "node the policy pushes them to after the wait (dead letters replayed "
                          "first); converged: seconds after the fault was healed")
    for col in ("fault", "writes", "dead letters", "lost", "converged s", "restarts"):
        table.add_column(col, justify="left" if col == "fault" else "right", overflow="fold")
    for r in run.results:
        table.add_row(r.fault, str(r.writes), str(r.dead_letters), str(r.lost),
                      "–" if r.converged_s is None else f"{r.converged_s:.1f}", str(r.restarts))
    Console().print(table)
    for r in run.results:
        if r.notes or r.hostile:
            Console().print(f"[dim]{r.fault}: {r.notes}{' ' + json.dumps(r.hostile) if r.hostile else ''}[/dim]")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="skylark bench faults", description=__doc__.split("\n\n")[0])
    parser.add_argument("--rate", type=float, default=20.0, help="writes per second per writer (default 20)")
    parser.add_argument("--down", type=float, default=15.0, help="seconds the broker stays down (default 15)")
    parser.add_argument("--converge", type=float, default=60.0, help="seconds to wait for convergence (default 60)")
    parser.add_argument("--base-port", type=int)
    parser.add_argument("--json", help="also write the results as JSON to this file")
    args = parser.parse_args(argv or [])
    outcome = run(args)
    print_results(outcome)
    if args.json:
        with open(args.json, "w") as out:
            json.dump(asdict(outcome), out, indent=1)
    return 0 if all(r.lost == 0 for r in outcome.results) and not outcome.torn and not outcome.went_back else 1


if __name__ == "__main__":
    raise SystemExit(main())
