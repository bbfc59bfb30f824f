"""``skylark bench thesis``: the thesis's evaluation on an emulated copy of its testbed.

Every experiment runs here, on real parts: real redis-servers, real HTTP services (the local
cluster of ``skylark up``), each node in its own network namespace with the links shaped as the
thesis's testbed (``neighbors_service/topologies/thesis.yaml``: seven satellites in a chain, the
cloud node's link moving to another satellite every minute; ``--snapshot N`` fixes one). Root
is required (namespaces, tc); without it the bench fails and says so.

1. **storage**: single vs bundled, N = 1…5 pieces, total 0.5 / 1 / 5 / 20 MB, write + read,
   local vs remote over an emulated 60 ms / 35 Mbit/s link, next to raw redis-py moving the
   same bytes over the same link in the same run (``bench/thesis_storage.py``).
2. **propagation**: the thesis's workflow (preprocess@pi5u2 → detect-1@pi5u4 → detect-2@pi4u6 →
   alarm@pi5u1) under the policies skylark, random, stateless and pull, on the thesis's schedule
   of state sizes with their SLOs (1 MB / 100 ms … 50 MB / 710 ms) and an SLO sweep at fixed
   sizes; per hop migration and retrieval times, local-state availability, SLO violations, and
   the floor: the same reads as raw redis-py GETs over the same paths (``bench/thesis_workflow.py``).
3. **scalability**: 5…50 workflows submitted at once: throughput and T(W) p50 / p95 per policy.
4. **election**: decision cost on 10…10,000-node graphs, full election and data-path decision.

Output: the tables (80 columns), ``DIR/results.json`` (every sample, the plan, versions,
machine facts, headline figures, targets) and PNG plots in ``DIR``. ``--compare OLD.json`` adds
the spread of every headline figure against an earlier run. ``--quick``: one size, one SLO,
fewer repetitions (a CI test runs it).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path
from typing import Any

from rich.console import Console

from bench import thesis_report as report

MB = 1_000_000
EXPERIMENTS = ("storage", "propagation", "scalability", "election")
POLICIES = report.POLICIES
REPO = Path(__file__).resolve().parent.parent


def plan(quick: bool) -> dict[str, Any]:
    """What runs: sizes, SLOs, repetitions."""
    if quick:
        return {
            "storage": {"sizes_mb": [0.5], "max_n": 3, "repeat": {0.5: 1}},
            "propagation": {"pairs": [], "sweep": {"sizes_mb": [1.0], "slos": [500.0]}, "reps": {1.0: 2},
                            "passes": 1, "warmups": 1, "floor_reps": 2, "hop_cell": [1.0, 500.0]},
            "scalability": {"size_mb": 1.0, "slo_ms": 500.0, "parallel": [5], "reps": 1},
            "election": {"sizes": [10, 100, 1000, 10000], "repeat": 20},
        }
    return {
        "storage": {"sizes_mb": [0.5, 1.0, 5.0, 20.0], "max_n": 5, "repeat": {0.5: 5, 1.0: 5, 5.0: 3, 20.0: 2}},
        # The thesis ran each state size with its own SLO (experiments/README.md of its repository).
        "propagation": {"pairs": [[1.0, 100.0], [5.0, 150.0], [10.0, 200.0], [20.0, 330.0], [30.0, 450.0],
                                  [50.0, 710.0]],
                        "sweep": {"sizes_mb": [1.0, 5.0], "slos": [100.0, 150.0, 200.0, 330.0, 450.0, 500.0, 710.0]},
                        "reps": {1.0: 6, 5.0: 6, 10.0: 4, 20.0: 4, 30.0: 4, 50.0: 4}, "passes": 2, "warmups": 2,
                        "floor_reps": 3, "hop_cell": [5.0, 710.0]},
        "scalability": {"size_mb": 2.0, "slo_ms": 500.0, "parallel": [5, 10, 20, 50], "reps": 2},
        "election": {"sizes": [10, 100, 1000, 10000], "repeat": 200},
    }


def check_environment() -> str | None:
    """Why the bench cannot run here, or None."""
    if os.geteuid() != 0:
        return "needs root: every node runs in its own network namespace with tc-shaped links"
    for tool in ("ip", "tc"):
        if shutil.which(tool) is None:
            return f"needs '{tool}' (iproute2)"
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return "needs matplotlib for the plots (pip install -e '.[local]')"
    return None


def machine_facts() -> dict[str, Any]:
    def run(*argv: str) -> str:
        try:
            return subprocess.run(argv, capture_output=True, text=True, timeout=10, cwd=REPO).stdout.strip()
        except (OSError, subprocess.TimeoutExpired):
            return ""

    mem = next((line.split()[1] for line in Path("/proc/meminfo").read_text().splitlines()
                if line.startswith("MemTotal")), "0") if Path("/proc/meminfo").exists() else "0"
    versions = {}
    for package in ("redis", "flask", "gunicorn", "cloudevents", "urllib3", "matplotlib", "skylark"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = None
    from skylark.runtime.embedded import find_redis_server

    return {
        "cpus": os.cpu_count(), "mem_gib": round(int(mem) / 1024 / 1024, 1), "kernel": platform.release(),
        "machine": platform.machine(), "python": platform.python_version(),
        "redis_server": run(find_redis_server(), "--version"), "versions": versions,
        "git": {"commit": run("git", "rev-parse", "HEAD"),
                "dirty": sorted(line[3:] for line in run("git", "status", "--porcelain").splitlines())},
        "loadavg": list(os.getloadavg()),
    }


class Runner:
    def __init__(self, args: argparse.Namespace, console: Console) -> None:
        self.args = args
        self.console = console
        self.out = Path(args.out)
        self.plan = plan(args.quick)
        self.policies: list[str] = args.policies  # parsed by main(); the floor rides with pull's cells
        self.passes: int | None = args.passes  # run only the first passes (fewer repetitions)
        self.started = time.time()
        self.results: dict[str, Any] = {"timings": {}}

    def log(self, text: str) -> None:
        self.console.print(f"[dim]{time.strftime('%H:%M:%S')}[/dim] {text}", highlight=False)

    # -- experiments --------------------------------------------------------------------------

    def storage(self) -> None:
        from bench import thesis_storage

        p = self.plan["storage"]
        self.log(f"storage: {', '.join(f'{s:g}' for s in p['sizes_mb'])} MB × N = 1…{p['max_n']}, "
                 "local and remote (60 ms / 35 Mbit/s)")
        data = thesis_storage.run(p["sizes_mb"], p["max_n"], {float(k): v for k, v in p["repeat"].items()})
        data["plan"] = p
        self.results["storage"] = data

    def workflows(self, with_propagation: bool, with_scalability: bool) -> None:
        from bench.thesis_workflow import ClusterSettings, ThesisCluster, expected_seconds

        p, s = self.plan["propagation"], self.plan["scalability"]
        largest = max([x for x, _ in p["pairs"]] + p["sweep"]["sizes_mb"])
        # Long enough for the slowest copy: the largest state over the 30 Mbit/s cloud link, or
        # every parallel workflow's copy queued on it, twice (two copies may share the link).
        over_cloud_ms = max(largest, s["size_mb"] * max(s["parallel"])) * MB * 8 / 30e3
        wait_ms = int(max(120_000, 2 * over_cloud_ms))
        settings = ClusterSettings(snapshot=self.args.snapshot, wait_ms=wait_ms)
        workdir = self.out / "cluster"
        workdir.mkdir(parents=True, exist_ok=True)
        cluster = ThesisCluster(settings, workdir, self.log)
        tasks = self._tasks(with_propagation, with_scalability)
        prop = {"plan": p, "samples": [], "floors": [], "settings": vars(settings), "configs": []}
        scal = {"plan": s, "batches": [], "settings": vars(settings)}
        if with_propagation:
            self.results["propagation"] = prop  # filled as it runs: results.partial.json keeps it
        if with_scalability:
            self.results["scalability"] = scal
        cluster.start()
        try:
            prop["emulation"] = {"latency_by": "netem" if cluster.cluster.emulation.netem else "linkrelay",
                                 "moving": cluster.moving, "interval_s": cluster.clock.interval_s,
                                 "snapshot": self.args.snapshot}
            seen: dict[tuple, list[float]] = {}
            for number, (pass_no, policy, slo, jobs) in enumerate(tasks, start=1):
                took = cluster.configure(policy, slo)
                config = {"pass": pass_no, "policy": policy, "slo_ms": slo, "restart_s": round(took, 1)}
                self.log(f"[{number}/{len(tasks)}] policy {policy}, SLO {slo:g} ms (pass {pass_no + 1}): "
                         f"{', '.join(dict.fromkeys(j['label'] for j in jobs))}" + (f" — restarted in {took:.1f} s" if took else ""))
                for w in range(p["warmups"]):
                    cluster.run(f"warm-{number}-{w}", 1 * MB)
                    cluster.cleanup([f"warm-{number}-{w}"])
                for job in jobs:
                    if job["kind"] == "one":
                        key = (policy, job["size_mb"], slo if policy == "skylark" else None)
                        chain = f"p{pass_no}-{policy[:3]}-{slo:g}-{job['size_mb']:g}-{job['rep']}".replace(".", "_")
                        expected = expected_seconds(int(job["size_mb"] * MB), policy, seen.get(key, []))
                        record = cluster.one(chain, int(job["size_mb"] * MB), slo, expected)
                        record.update({"policy": policy, "slo_ms": slo, "size_bytes": int(job["size_mb"] * MB),
                                       "rep": job["rep"], "pass": pass_no, "experiments": job["experiments"]})
                        seen.setdefault(key, []).append(record["e2e_ms"])
                        prop["samples"].append(record)
                        if not record["completed"]:
                            self.log(f"  [yellow]{chain} did not complete: {record['outcome']}[/yellow]")
                    elif job["kind"] == "batch":
                        batch = cluster.batch(f"s{pass_no}-{policy[:3]}-{job['parallel']}-{job['rep']}",
                                              job["parallel"], int(s["size_mb"] * MB), slo)
                        batch.update({"policy": policy, "slo_ms": slo, "rep": job["rep"], "pass": pass_no})
                        scal["batches"].append(batch)
                        self.log(f"  {job['parallel']} parallel: {batch['completed']}/{job['parallel']} in "
                                 f"{batch['wall_s']:.1f} s" + (f" — {'; '.join(batch['failures'])[:200]}"
                                                               if batch["failures"] else ""))
                    elif job["kind"] == "floor":
                        prop["floors"] += cluster.floor(int(job["size_mb"] * MB), p["floor_reps"])
                prop["configs"].append(config)
                self._partial()
            prop["snapshot_changes"] = cluster.cluster.mover.changes if cluster.moving else []
            prop["restarts"] = cluster.cluster.restarts()
        finally:
            cluster.stop()

    def _tasks(self, with_propagation: bool, with_scalability: bool) -> list[tuple[int, str, float, list[dict]]]:
        """(pass, policy, SLO, jobs) in order: skylark's SLOs ascending, then the baselines; the
        repetitions of every cell are spread over the passes."""
        p, s = self.plan["propagation"], self.plan["scalability"]
        default_slo = s["slo_ms"]
        cells: dict[tuple[str, float], list[tuple[float, str]]] = {}
        if with_propagation:
            for size, slo in p["pairs"]:
                cells.setdefault(("skylark", slo), []).append((size, "pairs"))
                for policy in POLICIES[1:]:
                    cells.setdefault((policy, default_slo), []).append((size, "pairs"))
            for size in p["sweep"]["sizes_mb"]:
                for slo in p["sweep"]["slos"]:
                    cells.setdefault(("skylark", slo), []).append((size, "sweep"))
                for policy in POLICIES[1:]:
                    cells.setdefault((policy, default_slo), []).append((size, "sweep"))
        if with_scalability:
            for policy in POLICIES:
                cells.setdefault((policy, default_slo), [])
        cells = {key: jobs for key, jobs in cells.items() if key[0] in self.policies}
        order = sorted(cells, key=lambda k: (POLICIES.index(k[0]), k[1]))
        tasks = []
        passes = p["passes"] if with_propagation else 1
        for pass_no in range(passes):
            for policy, slo in order:
                sizes: dict[float, list[str]] = {}
                for size, experiment in cells[(policy, slo)]:
                    sizes.setdefault(size, [])
                    if experiment not in sizes[size]:
                        sizes[size].append(experiment)
                jobs = []
                reps = {size: [r for r in range(p["reps"][size]) if r % passes == pass_no] for size in sizes}
                for rep in range(max((len(v) for v in reps.values()), default=0)):
                    for size in sorted(sizes):
                        if rep < len(reps[size]):
                            jobs.append({"kind": "one", "size_mb": size, "rep": reps[size][rep],
                                         "experiments": sizes[size], "label": f"{size:g} MB"})
                if with_scalability and slo == default_slo:
                    for n in s["parallel"]:
                        for rep in range(s["reps"]):
                            if rep % passes == pass_no:
                                jobs.append({"kind": "batch", "parallel": n, "rep": rep, "label": f"{n}∥"})
                if with_propagation and policy == "pull":  # the floor, once per size and pass
                    for size in sorted({x for x, _ in p["pairs"]} | set(p["sweep"]["sizes_mb"])):
                        jobs.append({"kind": "floor", "size_mb": size, "label": f"floor {size:g} MB"})
                if jobs:
                    tasks.append((pass_no, policy, slo, jobs))
        return [t for t in tasks if self.passes is None or t[0] < self.passes]

    def election(self) -> None:
        from bench import thesis_election

        p = self.plan["election"]
        self.log(f"election: graphs of {', '.join(f'{n:,}' for n in p['sizes'])} nodes, {p['repeat']} decisions each")
        self.results["election"] = thesis_election.run(p["sizes"], p["repeat"])

    # -- output ---------------------------------------------------------------------------------

    def _partial(self) -> None:
        """Keep what is measured so far (a crash late in a long run loses nothing)."""
        (self.out / "results.partial.json").write_text(json.dumps(self.results, default=str))

    def finish(self, previous: dict | None) -> dict[str, Any]:
        r = self.results
        r["targets"] = report.targets(r)
        r["headline"] = report.headline(r)
        if previous is not None:
            r["spread"] = report.spread(r["headline"], previous.get("headline", {}))
            r["compared_with"] = self.args.compare
        r["meta"]["finished"] = time.time()
        r["meta"]["duration_s"] = round(time.time() - self.started, 1)
        r["meta"]["loadavg_end"] = list(os.getloadavg())
        if self.args.quick:
            met = r["meta"]["duration_s"] <= report.TARGETS["quick_s"]
            r["targets"].append({"target": "--quick ≤ 3 minutes", "measured": f"{r['meta']['duration_s']:.0f} s",
                                 "met": met})
        if previous is not None:
            rows = r["spread"]
            r["targets"].append({"target": "two runs within ±10 % on every headline figure",
                                 "measured": f"{sum(1 for x in rows if x['ok'])}/{len(rows)} within",
                                 "met": bool(rows) and all(x["ok"] for x in rows)})
        r["plots"] = [p.name for p in report.plots(r, self.out)]
        (self.out / "results.json").write_text(json.dumps(r, indent=1, default=str))
        partial = self.out / "results.partial.json"
        partial.unlink(missing_ok=True)
        return r


def _interrupted(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def rerender(path: Path, out: Path, previous: dict | None, console: Console) -> int:
    """Tables and plots of an earlier run's results (nothing is measured)."""
    results = json.loads(path.read_text())
    results["targets"] = [t for t in report.targets(results)] + [
        t for t in results.get("targets", []) if t["target"].startswith("--quick")]
    results["headline"] = report.headline(results)
    if previous is not None:
        results["spread"] = report.spread(results["headline"], previous.get("headline", {}))
        rows = results["spread"]
        results["targets"].append({"target": "two runs within ±10 % on every headline figure",
                                   "measured": f"{sum(1 for x in rows if x['ok'])}/{len(rows)} within",
                                   "met": bool(rows) and all(x["ok"] for x in rows)})
    out.mkdir(parents=True, exist_ok=True)
    results["plots"] = [p.name for p in report.plots(results, out)]
    report.print_all(console, results, previous)
    console.print(f"plots in {out}: {', '.join(results['plots'])}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="skylark bench thesis", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="one size, one SLO, fewer repetitions (≤ 3 min)")
    parser.add_argument("--out", default="thesis-results", help="directory for results.json and the plots")
    parser.add_argument("--experiments", default=",".join(EXPERIMENTS),
                        help=f"comma-separated subset of {','.join(EXPERIMENTS)}")
    parser.add_argument("--policies", default=",".join(POLICIES),
                        help=f"comma-separated subset of {','.join(POLICIES)} (the workflow experiments)")
    parser.add_argument("--passes", type=int, default=None,
                        help="run only the first N passes of the workflow experiments (each pass holds "
                             "an equal share of every cell's repetitions)")
    parser.add_argument("--snapshot", type=int, default=None,
                        help="fix one snapshot of the moving cloud link (0-6) instead of moving it every minute")
    parser.add_argument("--compare", help="results.json of an earlier run: print the spread of the headline figures")
    parser.add_argument("--report", metavar="RESULTS_JSON",
                        help="measure nothing: print the tables and draw the plots (into --out) of a results.json")
    args = parser.parse_args(argv or [])
    chosen = [e.strip() for e in args.experiments.split(",") if e.strip()]
    unknown = [e for e in chosen if e not in EXPERIMENTS]
    if unknown or not chosen:
        parser.error(f"--experiments: unknown {', '.join(unknown) or '(none given)'}; choose from {', '.join(EXPERIMENTS)}")
    policies = {x.strip() for x in args.policies.split(",") if x.strip()}
    if not policies or not policies <= set(POLICIES):
        parser.error(f"--policies: choose from {', '.join(POLICIES)}")
    args.policies = [x for x in POLICIES if x in policies]
    if args.passes is not None and args.passes < 1:
        parser.error("--passes must be 1 or more")
    if args.snapshot is not None and not 0 <= args.snapshot <= 6:
        parser.error("--snapshot must be 0…6 (the thesis topology's snapshots)")
    console = Console()
    # Stop cleanly (namespaces, servers) on SIGTERM, and on SIGINT even when started in the
    # background (where a shell ignores it).
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, _interrupted)
    previous = None
    if args.compare:
        try:
            previous = json.loads(Path(args.compare).read_text())
        except (OSError, ValueError) as exc:
            parser.error(f"--compare {args.compare}: {exc}")
    if args.report:
        return rerender(Path(args.report), Path(args.out), previous, console)
    why = check_environment()
    if why is not None:
        console.print(f"[red]skylark bench thesis cannot run here: {why}[/red]")
        return 2
    runner = Runner(args, console)
    runner.out.mkdir(parents=True, exist_ok=True)
    runner.results["meta"] = {"started": runner.started, "quick": args.quick, "experiments": chosen,
                              "snapshot": args.snapshot, "plan": runner.plan, "policies": runner.policies,
                              "passes": runner.passes, "argv": argv or [],
                              "machine": machine_facts()}
    load = os.getloadavg()
    runner.log(f"bench thesis{' --quick' if args.quick else ''}: {', '.join(chosen)}; load average "
               f"{load[0]:.2f} / {load[1]:.2f} / {load[2]:.2f} on {os.cpu_count()} cores")
    for name in EXPERIMENTS:
        if name not in chosen or name == "scalability" and "propagation" in chosen:
            continue
        started = time.time()
        if name == "storage":
            runner.storage()
        elif name in ("propagation", "scalability"):
            runner.workflows("propagation" in chosen, "scalability" in chosen)
        elif name == "election":
            runner.election()
        runner.results["timings"][name if name != "propagation" or "scalability" not in chosen
                                  else "propagation+scalability"] = round(time.time() - started, 1)
        runner._partial()
    results = runner.finish(previous)
    report.print_all(console, results, previous)
    console.print(f"results: {runner.out / 'results.json'}; plots: {', '.join(results['plots'])}; "
                  f"{results['meta']['duration_s']:.0f} s in all; load average at the end "
                  f"{results['meta']['loadavg_end'][0]:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
