"""Tables, plots, headline figures, targets and the spread of two runs for ``bench thesis`` (pure
except for printing and writing PNGs)."""

from __future__ import annotations

import statistics
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from bench.thesis_storage import theoretical_ms, thesis_value
from skylark.runtime.stats import percentile

MB = 1_000_000
POLICIES = ("skylark", "random", "stateless", "pull")
DATABELT = {"lower_workflow_time": 66.0, "higher_throughput": 50.0, "local_availability": 79.0, "slo_violations": 0.0}
TARGETS = {"storage_ratio": 1.10, "lower_than_stateless": 70.0, "local_availability": 79.0, "violations": 0.0,
           "spread": 10.0, "quick_s": 180.0}


def p50(values: Iterable[float]) -> float | None:
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def p95(values: Iterable[float]) -> float | None:
    values = [v for v in values if v is not None]
    return percentile(values, 95) if values else None


def fmt(value: float | None, digits: int = 0, unit: str = "") -> str:
    if value is None:
        return "–"
    return f"{value:,.{digits}f}{unit}"


def table(title: str, columns: Sequence[str], rows: Iterable[Sequence[object]], caption: str | None = None,
          left: int = 1) -> Table:
    """A table whose first ``left`` columns are text (left-aligned), the others numbers."""
    out = Table(title=title, caption=caption, title_justify="left", caption_justify="left")
    for i, col in enumerate(columns):
        out.add_column(col, justify="left" if i < left else "right", overflow="fold")
    for row in rows:
        out.add_row(*(str(c) for c in row))
    return out


# -- storage -----------------------------------------------------------------------------------

def storage_cells(storage: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Per (location, size, N): p50 of read + write for the library and the floors."""
    out = []
    for cell in storage["cells"]:
        s = cell["samples"]
        pair = lambda a, b: [x + y for x, y in zip(s[a], s[b])]  # noqa: E731 - per repetition
        n, size = cell["n"], cell["size_mb"]
        remote = cell["location"] == "remote"
        latency, bandwidth = storage["latency_ms"], storage["bandwidth_mbps"]
        out.append({
            "location": cell["location"], "size_mb": size, "n": n,
            "bundled": p50(pair("bundled_write", "bundled_read")), "raw_bundled": p50(pair("raw_hset", "raw_hgetall")),
            "single": p50(pair("single_write", "single_read")), "raw_single": p50(pair("raw_sets", "raw_gets")),
            "bundled_write": p50(s["bundled_write"]), "bundled_read": p50(s["bundled_read"]),
            "theory_bundled": theoretical_ms(size, 2, latency, bandwidth) if remote else None,
            "theory_single": theoretical_ms(size, 2 * n, latency, bandwidth) if remote else None,
            "thesis_bundled": thesis_value(size, f"bundled_{cell['location']}", n),
            "thesis_single": thesis_value(size, f"single_{cell['location']}", n),
        })
    return out


def storage_tables(storage: Mapping[str, Any]) -> list[Table]:
    cells = storage_cells(storage)
    link = f"{storage['latency_ms']:g} ms / {storage['bandwidth_mbps']:g} Mbit/s"
    remote = [c for c in cells if c["location"] == "remote"]
    local = [c for c in cells if c["location"] == "local"]
    ratio = lambda a, b: f"{a / b:.2f}×" if a and b else "–"  # noqa: E731

    def remote_table(mechanism: str, caption: str) -> Table:
        return table(f"Storage, remote ({link}): {mechanism} write + read, ms p50",
                     ["MB", "N", "ours", "raw", "ours/raw", "theory", "thesis"],
                     [[f"{c['size_mb']:g}", c["n"], fmt(c[mechanism]), fmt(c[f"raw_{mechanism}"]),
                       ratio(c[mechanism], c[f"raw_{mechanism}"]), fmt(c[f"theory_{mechanism}"]),
                       fmt(c[f"thesis_{mechanism}"])]
                      for c in remote],
                     caption=caption)

    return [
        remote_table("bundled", "ours: StateStore.put + get_bundle (one round trip each); raw: redis-py HSET + "
                                "HGETALL of the same bytes, same link, same run; theory: 4·latency + "
                                "2·bytes/bandwidth; thesis: its table (N = 1 and 5 only)"),
        remote_table("single", "ours: put_single (one round trip) + get_single (one GET per piece); raw: N×SET + "
                               "N×GET (the thesis's single mechanism); theory: 4N·latency + 2·bytes/bandwidth"),
        table("Storage, local: write + read, ms p50",
              ["MB", "N", "bundled", "raw", "single", "raw", "thesis b", "thesis s"],
              [[f"{c['size_mb']:g}", c["n"], fmt(c["bundled"], 1), fmt(c["raw_bundled"], 1), fmt(c["single"], 1),
                fmt(c["raw_single"], 1), fmt(c["thesis_bundled"]), fmt(c["thesis_single"])] for c in local],
              caption="the satellite's own Redis (thesis: a Raspberry Pi; here one x86 core shared)"),
    ]


# -- propagation ---------------------------------------------------------------------------------

def cell_key(sample: Mapping[str, Any]) -> tuple[str, int, float | None]:
    """Skylark's placement depends on the SLO, the others' does not: one cell per size for them."""
    slo = sample["slo_ms"] if sample["policy"] == "skylark" else None
    return sample["policy"], int(sample["size_bytes"]), slo


def cells(samples: Sequence[Mapping[str, Any]]) -> dict[tuple, list[Mapping[str, Any]]]:
    out: dict[tuple, list] = defaultdict(list)
    for s in samples:
        out[cell_key(s)].append(s)
    return out


def lookup(grouped: Mapping[tuple, list], policy: str, size_bytes: int, slo_ms: float) -> list:
    return grouped.get((policy, int(size_bytes), float(slo_ms) if policy == "skylark" else None), [])


def cell_stats(samples: Sequence[Mapping[str, Any]], slo_ms: float) -> dict[str, Any]:
    """What a cell's workflows show, with SLO violations judged against ``slo_ms``."""
    done = [s for s in samples if s["completed"]]
    hops = [h for s in done for h in s["hops"]]
    migrations = [m["ms"] for h in hops for m in h["migrations"]]
    measured = [m for m in migrations if m is not None]
    size = samples[0]["size_bytes"] if samples else 0
    return {
        "n": len(samples), "completed": len(done),
        "e2e": [s["e2e_ms"] for s in done], "e2e_p50": p50(s["e2e_ms"] for s in done),
        "e2e_p95": p95(s["e2e_ms"] for s in done),
        "reads": len(hops), "local": sum(1 for h in hops if h["location"] == "local"),
        "local_pct": 100 * sum(1 for h in hops if h["location"] == "local") / len(hops) if hops else None,
        "migrations": len(migrations), "unmeasured": len(migrations) - len(measured),
        "violations": sum(1 for m in measured if m > slo_ms),
        "violation_pct": 100 * sum(1 for m in measured if m > slo_ms) / len(measured) if measured else None,
        "moved_mb": len(migrations) * size / MB / len(done) if done else None,
        "hop_distance": p50(h["hops_away"] for h in hops) if hops else None,
        "mean_distance": statistics.fmean(h["hops_away"] for h in hops if h["hops_away"] is not None)
        if hops else None,
    }


def hop_stats(samples: Sequence[Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per hop (reader): p50 of each part of its time, where it read."""
    out: dict[str, dict[str, Any]] = {}
    for name in dict.fromkeys(h["reader"] for s in samples for h in s["hops"]):
        hs = [h for s in samples if s["completed"] for h in s["hops"] if h["reader"] == name]
        where: dict[str, int] = defaultdict(int)
        for h in hs:
            where["local" if h["location"] == "local" else h["read_at"] or "?"] += 1
        out[name] = {
            "read_at": dict(where),
            "migration": p50(m["ms"] for h in hs for m in h["migrations"]),
            "push": p50(m["push_ms"] for h in hs for m in h["migrations"]),
            "wait": p50(h["waited_ms"] for h in hs), "retrieval": p50(h["retrieval_ms"] for h in hs),
            "fetch": p50(h["fetch_ms"] for h in hs), "event": p50(h["event_ms"] for h in hs),
            "stream": p50(h["stream_ms"] for h in hs if h["migrations"]),
            "handler": p50(h["handler_ms"] for h in hs if h["migrations"]),
            "origin": hs[0]["origin"] if hs else None, "reader_node": hs[0]["reader_node"] if hs else None,
        }
    return out


def floor_by_size(floors: Sequence[Mapping[str, Any]]) -> dict[int, dict[str, float]]:
    """Per size: the workflow's floors — the sum over its hops of the raw read (p50, measured),
    of the theoretical read ``2·L + bytes/B`` and of the theoretical push ``L + bytes/B``."""
    by: dict[int, dict[str, list]] = defaultdict(lambda: defaultdict(list))
    for f in floors:
        entry = by[int(f["size_bytes"])]
        entry[f["reader"]].append(f)
    out = {}
    for size, per_hop in by.items():
        out[size] = {
            "raw_ms": sum(p50(x for f in fs for x in f["samples_ms"]) for fs in per_hop.values()),
            "theory_read_ms": sum(p50(f["theory_read_ms"] for f in fs) for fs in per_hop.values()),
            "theory_push_ms": sum(p50(f["theory_push_ms"] for f in fs) for fs in per_hop.values()),
        }
    return out


def reduction(ours: float | None, baseline: float | None) -> float | None:
    """How much lower ``ours`` is than ``baseline``, in percent (negative: higher)."""
    if ours is None or not baseline:
        return None
    return 100 * (1 - ours / baseline)


def propagation_tables(prop: Mapping[str, Any]) -> list[Table]:
    grouped = cells(prop["samples"])
    floors = floor_by_size(prop.get("floors", []))
    tables = []
    pairs = prop["plan"]["pairs"]
    sec = lambda v: fmt(None if v is None else v / 1000, 2)  # noqa: E731
    if pairs:
        rows, rows2 = [], []
        for size_mb, slo in pairs:
            size = int(size_mb * MB)
            stats = {p: cell_stats(lookup(grouped, p, size, slo), slo) for p in POLICIES}
            floor = floors.get(size, {})
            rows.append([f"{size_mb:g}", f"{slo:g}", *(sec(stats[p]["e2e_p50"]) for p in POLICIES),
                         sec(floor.get("raw_ms"))])
            sky = stats["skylark"]
            rows2.append([f"{size_mb:g}", f"{slo:g}",
                          fmt(reduction(sky["e2e_p50"], stats["stateless"]["e2e_p50"]), 0, " %"),
                          fmt(reduction(sky["e2e_p50"], stats["pull"]["e2e_p50"]), 0, " %"),
                          fmt(sky["local_pct"], 0, " %"), fmt(sky["violation_pct"], 0, " %"),
                          fmt(sky["moved_mb"], 1)])
        tables.append(table("Workflow time T(W), s p50: the thesis's schedule (size with its SLO)",
                            ["MB", "SLO ms", "skylark", "random", "statel.", "pull", "floor"], rows,
                            caption="T(W): input submitted → last event observed; floor: the three reads "
                                    "as raw redis-py GETs of the same bytes over the same emulated paths, "
                                    "same run (no events, no framework)"))
        tables.append(table("Skylark on the thesis's schedule: gain and the Databelt claims",
                            ["MB", "SLO ms", "vs statel.", "vs pull", "local", "SLO viol.", "moved MB"], rows2,
                            caption=f"vs X: how much lower skylark's T(W) p50 is (Databelt: up to "
                                    f"{DATABELT['lower_workflow_time']:g} % vs its baselines); local: reads "
                                    f"served by the reader's own Redis (claim: {DATABELT['local_availability']:g} "
                                    "%); SLO viol.: migrations slower than the SLO (claim: 0 %); moved: MB "
                                    "pushed per workflow"))
    sweep = prop["plan"]["sweep"]
    if sweep["slos"] and sweep["sizes_mb"]:
        sizes = sweep["sizes_mb"][:2]
        rows = []
        for slo in sweep["slos"]:
            row = [f"{slo:g}"]
            for size_mb in sizes:
                st = cell_stats(lookup(grouped, "skylark", int(size_mb * MB), slo), slo)
                row += [sec(st["e2e_p50"]), fmt(st["local_pct"], 0, "%"), fmt(st["violation_pct"], 0, "%")]
            rows.append(row)
        for policy in ("pull", "stateless", "random"):
            row = [policy]
            for size_mb in sizes:
                st = cell_stats(lookup(grouped, policy, int(size_mb * MB), 0), 1e18)
                row += [sec(st["e2e_p50"]), fmt(st["local_pct"], 0, "%"), "–"]
            rows.append(row)
        columns = ["SLO ms"]
        for size_mb in sizes:
            columns += [f"{size_mb:g} MB s", "local", "viol."]
        tables.append(table("SLO sweep: skylark's T(W) p50 and where it read", columns, rows,
                            caption="last rows: the baselines, whose placement does not depend on the SLO "
                                    "(measured once per size)"))
    return tables


def hop_tables(prop: Mapping[str, Any], size_bytes: int, slo_ms: float) -> list[Table]:
    grouped = cells(prop["samples"])
    rows, rows2 = [], []
    for policy in POLICIES:
        samples = lookup(grouped, policy, size_bytes, slo_ms)
        for name, h in hop_stats(samples).items():
            where = ", ".join(f"{k}×{v}" for k, v in sorted(h["read_at"].items()))
            rows.append([policy, name, where, fmt(h["migration"]), fmt(h["wait"]), fmt(h["retrieval"]),
                         fmt(h["event"])])
            if h["migration"] is not None:
                rows2.append([policy, name, fmt(h["stream"]), fmt(h["handler"]), fmt(h["push"]),
                              fmt(h["migration"]), fmt(h["event"])])
    title = f"Per hop at {size_bytes / MB:g} MB, SLO {slo_ms:g} ms: ms p50"
    return [
        table(title, ["policy", "hop", "read at", "T(dm)", "wait", "T(dr)", "event"], rows, left=3,
              caption="T(dm): write at the origin → copy readable at the target (Redis keyspace "
                      "notifications); wait: the reader waiting for that copy; T(dr): the read itself; "
                      "event: the predecessor's end → the reader's start (publish, broker, delivery)"),
        table("Where a migration's time goes: ms p50", ["policy", "hop", "stream", "handlers", "to target",
                                                        "T(dm)", "event"], rows2, left=2,
              caption="stream: write → the origin's handlers got the change; handlers: rebuild + election + "
                      "publish; to target: published → readable at the target (broker, claim-check pull "
                      "over the link, apply)"),
    ]


# -- scalability -------------------------------------------------------------------------------

def scalability_rows(scal: Mapping[str, Any]) -> list[dict[str, Any]]:
    by: dict[tuple[str, int], list] = defaultdict(list)
    for b in scal["batches"]:
        by[(b["policy"], b["parallel"])].append(b)
    rows = []
    for (policy, n), batches in sorted(by.items(), key=lambda kv: (kv[0][1], POLICIES.index(kv[0][0]))):
        e2e = [w["e2e_ms"] for b in batches for w in b["workflows"] if w["completed"]]
        rows.append({"policy": policy, "parallel": n, "batches": len(batches),
                     "throughput": p50(b["completed"] / b["wall_s"] for b in batches),
                     "p50_ms": p50(e2e), "p95_ms": p95(e2e),
                     "completed": sum(b["completed"] for b in batches),
                     "submitted": sum(b["parallel"] for b in batches),
                     "local_pct": cell_stats([w for b in batches for w in b["workflows"]], 1e18)["local_pct"]})
    return rows


def scalability_table(scal: Mapping[str, Any]) -> Table:
    rows = scalability_rows(scal)
    return table(f"Scalability: parallel workflows of {scal['plan']['size_mb']:g} MB (SLO "
                 f"{scal['plan']['slo_ms']:g} ms)", ["N", "policy", "wf/s", "p50 s", "p95 s", "done", "local"],
                 [[r["parallel"], r["policy"], fmt(r["throughput"], 2), fmt(r["p50_ms"] / 1000 if r["p50_ms"] else None, 1),
                   fmt(r["p95_ms"] / 1000 if r["p95_ms"] else None, 1), f"{r['completed']}/{r['submitted']}",
                   fmt(r["local_pct"], 0, "%")] for r in rows],
                 caption="wf/s: completed workflows / wall time of the batch (p50 over batches); p50/p95: "
                         "T(W) of every workflow of the batches", left=2)


# -- election ------------------------------------------------------------------------------------

def election_table(election: Mapping[str, Any]) -> Table:
    rows = []
    for g in election["graphs"]:
        e, f, d = p50(g["elect_ms"]), p50(g["floor_ms"]), p50(g["decision_ms"])
        rows.append([f"{g['nodes']:,}", fmt(e, 3), fmt(p95(g["elect_ms"]), 3), fmt(f, 3),
                     f"{e / f:.2f}×" if e and f else "–", fmt(d, 4), fmt(g["thesis_ms"])])
    return table(f"Election cost, ms ({election['repeat']} random pairs per graph)",
                 ["nodes", "elect p50", "p95", "floor", "/floor", "per event", "thesis"], rows,
                 caption="elect: the full election (policies.elect); floor: plain heapq Dijkstra source → "
                         "target on the same graph and pairs; per event: the data-path decision "
                         "(Placer.toward, cached tree per writer); thesis: Rust, per decision")


# -- headline figures, targets, spread -----------------------------------------------------------

def headline(results: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """The figures two runs must agree on: name → {value, unit, kind} (kind "rel": relative
    spread; "abs": difference in points)."""
    out: dict[str, dict[str, Any]] = {}

    def put(name: str, value: float | None, unit: str, kind: str = "rel") -> None:
        if value is not None:
            out[name] = {"value": round(float(value), 4), "unit": unit, "kind": kind}

    storage = results.get("storage")
    if storage:
        for c in storage_cells(storage):
            if c["location"] == "remote" and c["n"] in (1, 5):
                put(f"storage {c['size_mb']:g}MB N={c['n']} bundled", c["bundled"], "ms")
                put(f"storage {c['size_mb']:g}MB N={c['n']} single", c["single"], "ms")
    prop = results.get("propagation")
    if prop:
        grouped = cells(prop["samples"])
        keys = [(s, slo) for s, slo in prop["plan"]["pairs"]]
        keys += [(s, slo) for s in prop["plan"]["sweep"]["sizes_mb"] for slo in prop["plan"]["sweep"]["slos"]]
        seen = set()
        for size_mb, slo in keys:
            for policy in POLICIES:
                key = cell_key({"policy": policy, "size_bytes": int(size_mb * MB), "slo_ms": slo})
                if key in seen or key not in grouped:
                    continue
                seen.add(key)
                st = cell_stats(grouped[key], slo)
                label = f"T(W) {policy} {size_mb:g}MB" + (f" SLO{slo:g}" if policy == "skylark" else "")
                put(label, st["e2e_p50"], "ms")
                if policy == "skylark":
                    put(f"local {size_mb:g}MB SLO{slo:g}", st["local_pct"], "%", "abs")
    scal = results.get("scalability")
    if scal:
        for r in scalability_rows(scal):
            put(f"wf/s {r['policy']} N={r['parallel']}", r["throughput"], "wf/s")
            put(f"p50 {r['policy']} N={r['parallel']}", r["p50_ms"], "ms")
    election = results.get("election")
    if election:
        for g in election["graphs"]:
            if g["nodes"] >= 1000:
                put(f"elect {g['nodes']} nodes", p50(g["elect_ms"]), "ms")
                put(f"decision {g['nodes']} nodes", p50(g["decision_ms"]), "ms")
    return out


def targets(results: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Each target of the issue: what was measured and whether it is met."""
    out = []
    storage = results.get("storage")
    if storage:
        remote = [c for c in storage_cells(storage) if c["location"] == "remote"]
        ratios = [(c["bundled"] / c["raw_bundled"], c) for c in remote if c["raw_bundled"]]
        worst, wc = max(ratios, key=lambda r: r[0])
        one = next((r for r, c in ratios if c["size_mb"] == 1 and c["n"] == 1), None)
        text = (f"worst {worst:.2f}× ({wc['size_mb']:g} MB, N={wc['n']})"
                + (f"; 1 MB N=1 {one:.2f}×" if one is not None else "")
                + (f" ({fmt(next(c['bundled'] for c in remote if c['size_mb'] == 1 and c['n'] == 1))} ms, "
                   f"thesis 1,498 ms)" if one is not None else ""))
        out.append({"target": "bundled remote r+w ≤ 1.10× raw redis-py", "measured": text,
                    "met": worst <= TARGETS["storage_ratio"]})
    prop = results.get("propagation")
    if prop:
        grouped = cells(prop["samples"])
        keys = list(prop["plan"]["pairs"]) + [(s, slo) for s in prop["plan"]["sweep"]["sizes_mb"]
                                              for slo in prop["plan"]["sweep"]["slos"]]
        keys = list(dict.fromkeys((float(s), float(slo)) for s, slo in keys))
        gains, locals_, viols = [], [], []
        for size_mb, slo in keys:
            size = int(size_mb * MB)
            sky = cell_stats(lookup(grouped, "skylark", size, slo), slo)
            base = cell_stats(lookup(grouped, "stateless", size, slo), slo)
            pull = cell_stats(lookup(grouped, "pull", size, slo), slo)
            if sky["e2e_p50"] is None:
                continue
            if size_mb >= 5:
                gains.append((size_mb, slo, reduction(sky["e2e_p50"], base["e2e_p50"]),
                              reduction(sky["e2e_p50"], pull["e2e_p50"])))
            locals_.append((size_mb, slo, sky["local_pct"]))
            viols.append((size_mb, slo, sky["violation_pct"], sky["migrations"]))
        if gains:
            met = [g for g in gains if g[2] is not None and g[2] >= TARGETS["lower_than_stateless"]]
            text = "; ".join(f"{s:g}MB/{slo:g}: {fmt(g, 0)}% (vs pull {fmt(p, 0)}%)" for s, slo, g, p in gains)
            out.append({"target": "skylark ≥ 70 % lower T(W) than stateless (≥ 5 MB)",
                        "measured": f"{len(met)}/{len(gains)} cells: {text}", "met": len(met) == len(gains)})
        if locals_:
            met = [x for x in locals_ if x[2] is not None and x[2] >= TARGETS["local_availability"]]
            text = "; ".join(f"{s:g}MB/{slo:g}: {fmt(v, 0)}%" for s, slo, v in locals_)
            out.append({"target": "≥ 79 % local-state availability (skylark)",
                        "measured": f"{len(met)}/{len(locals_)} cells: {text}", "met": len(met) == len(locals_)})
        if viols:
            bad = [x for x in viols if x[2]]
            moved = sum(x[3] for x in viols)
            text = "; ".join(f"{s:g}MB/{slo:g}: {fmt(v, 0)}% of {m}" for s, slo, v, m in viols if m)
            out.append({"target": "0 SLO violations (skylark)",
                        "measured": f"{len(bad)} cell(s) with violations, {moved} migrations in all"
                                    + (f": {text}" if text else ""), "met": not bad})
    return out


def targets_table(rows: Sequence[Mapping[str, Any]]) -> Table:
    return table("Targets", ["target", "measured", "met"],
                 [[r["target"], r["measured"], "yes" if r["met"] else "NO"] for r in rows], left=2)


def spread(current: Mapping[str, Mapping[str, Any]], previous: Mapping[str, Mapping[str, Any]]
           ) -> list[dict[str, Any]]:
    """Each headline figure of both runs: the relative difference (or points, for shares)."""
    out = []
    for name, now in current.items():
        before = previous.get(name)
        if before is None:
            continue
        a, b = before["value"], now["value"]
        if now["kind"] == "abs":
            diff, ok = b - a, abs(b - a) <= TARGETS["spread"]
        else:
            diff = 100 * (b - a) / a if a else 0.0
            ok = abs(diff) <= TARGETS["spread"]
        out.append({"figure": name, "previous": a, "current": b, "unit": now["unit"], "kind": now["kind"],
                    "diff": round(diff, 2), "ok": ok})
    return out


def spread_table(rows: Sequence[Mapping[str, Any]]) -> Table:
    within = sum(1 for r in rows if r["ok"])
    return table(f"Two runs: {within}/{len(rows)} headline figures within ±{TARGETS['spread']:g} %",
                 ["figure", "before", "now", "spread"],
                 [[r["figure"], fmt(r["previous"], 1 if r["previous"] < 100 else 0),
                   fmt(r["current"], 1 if r["current"] < 100 else 0),
                   (f"{r['diff']:+.1f} pt" if r["kind"] == "abs" else f"{r['diff']:+.1f} %") + ("" if r["ok"] else " !")]
                  for r in rows],
                 caption="pt: percentage points (shares); ! outside the ±10 % band")


def print_all(console: Console, results: Mapping[str, Any], previous: Mapping[str, Any] | None = None) -> None:
    if results.get("storage"):
        for t in storage_tables(results["storage"]):
            console.print(t)
    prop = results.get("propagation")
    if prop:
        for t in propagation_tables(prop):
            console.print(t)
        size, slo = prop["plan"]["hop_cell"]
        for t in hop_tables(prop, int(size * MB), slo):
            console.print(t)
    if results.get("scalability"):
        console.print(scalability_table(results["scalability"]))
    if results.get("election"):
        console.print(election_table(results["election"]))
    console.print(targets_table(results["targets"]))
    if previous is not None:
        console.print(spread_table(results["spread"]))


# -- plots -------------------------------------------------------------------------------------

COLORS = {"skylark": "#1f77b4", "random": "#ff7f0e", "stateless": "#d62728", "pull": "#2ca02c",
          "floor": "#555555"}


def plots(results: Mapping[str, Any], out: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []

    def save(fig, name: str) -> None:  # noqa: ANN001
        path = out / name
        fig.tight_layout()
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)

    storage = results.get("storage")
    if storage:
        cells_ = storage_cells(storage)
        sizes = sorted({c["size_mb"] for c in cells_})
        # One size (--quick) still needs room for the legend beside it and the title above it.
        fig, axes = plt.subplots(1, len(sizes), figsize=(max(4.2 * len(sizes), 6.5), 3.8), squeeze=False)
        for ax, size in zip(axes[0], sizes):
            for loc, style in (("remote", "-"), ("local", ":")):
                cs = sorted((c for c in cells_ if c["size_mb"] == size and c["location"] == loc), key=lambda c: c["n"])
                ns = [c["n"] for c in cs]
                ax.plot(ns, [c["bundled"] for c in cs], style, marker="o", color="#1f77b4", label=f"bundled {loc}")
                ax.plot(ns, [c["single"] for c in cs], style, marker="s", color="#d62728", label=f"single {loc}")
                if loc == "remote":
                    ax.plot(ns, [c["raw_bundled"] for c in cs], "--", color="#1f77b4", alpha=0.5, label="raw HSET+HGETALL")
                    ax.plot(ns, [c["raw_single"] for c in cs], "--", color="#d62728", alpha=0.5, label="raw N×SET+GET")
                for key, color, marker in (("thesis_bundled", "#1f77b4", "*"), ("thesis_single", "#d62728", "*")):
                    pts = [(c["n"], c[key]) for c in cs if c[key] is not None]
                    if pts:
                        ax.plot(*zip(*pts), linestyle="none", marker=marker, markersize=10, color=color,
                                alpha=0.35, label=f"thesis {key.split('_')[1]} {loc}")
            ax.set_yscale("log")
            ax.set_title(f"{size:g} MB total")
            ax.set_xlabel("pieces N")
            ax.set_xticks(range(1, max(c["n"] for c in cells_) + 1))
        axes[0][0].set_ylabel("write + read, ms (p50)")
        axes[0][-1].legend(fontsize=6, loc="upper left", bbox_to_anchor=(1.0, 1.0))
        fig.suptitle(f"Storage: single vs bundled, local vs remote ({storage['latency_ms']:g} ms / "
                     f"{storage['bandwidth_mbps']:g} Mbit/s)", fontsize=10)
        save(fig, "storage.png")

    prop = results.get("propagation")
    if prop:
        grouped = cells(prop["samples"])
        floors = floor_by_size(prop.get("floors", []))
        pairs = prop["plan"]["pairs"]
        if pairs:
            fig, ax = plt.subplots(figsize=(7.5, 4.2))
            xs = [s for s, _ in pairs]
            for policy in POLICIES:
                ys = [p50(s["e2e_ms"] for s in lookup(grouped, policy, int(size * MB), slo) if s["completed"])
                      for size, slo in pairs]
                ax.plot(xs, [None if y is None else y / 1000 for y in ys], marker="o", color=COLORS[policy],
                        label=policy)
            fl = [floors.get(int(s * MB), {}) for s in xs]
            ax.plot(xs, [f.get("raw_ms", float("nan")) / 1000 for f in fl], "--", color=COLORS["floor"],
                    label="floor: raw reads")
            ax.plot(xs, [f.get("theory_push_ms", float("nan")) / 1000 for f in fl], ":", color=COLORS["floor"],
                    label="theory: pushes L+S/B")
            ax.set_xticks(xs)
            ax.set_xticklabels([f"{s:g} MB\n{slo:g} ms" for s, slo in pairs], fontsize=8)
            ax.set_xlabel("state size per function / SLO max latency (the thesis's schedule)")
            ax.set_ylabel("workflow time T(W), s (p50)")
            ax.set_yscale("log")
            ax.legend(fontsize=8)
            ax.set_title("Workflow time per policy vs state size", fontsize=10)
            save(fig, "workflow_size.png")
        sweep = prop["plan"]["sweep"]
        if sweep["slos"] and sweep["sizes_mb"]:
            sizes = sweep["sizes_mb"]
            fig, axes = plt.subplots(1, len(sizes), figsize=(4.6 * len(sizes), 3.9), squeeze=False)
            for ax, size_mb in zip(axes[0], sizes):
                size = int(size_mb * MB)
                slos = sweep["slos"]
                sky = [cell_stats(lookup(grouped, "skylark", size, slo), slo) for slo in slos]
                ax.plot(slos, [None if s["e2e_p50"] is None else s["e2e_p50"] / 1000 for s in sky], marker="o",
                        color=COLORS["skylark"], label="skylark")
                for policy in ("random", "stateless", "pull"):
                    v = cell_stats(lookup(grouped, policy, size, 0), 1e18)["e2e_p50"]
                    if v is not None:
                        ax.axhline(v / 1000, linestyle="--", color=COLORS[policy], label=f"{policy} (any SLO)")
                raw = floors.get(size, {}).get("raw_ms")
                if raw:
                    ax.axhline(raw / 1000, linestyle=":", color=COLORS["floor"], label="floor: raw reads")
                twin = ax.twinx()
                span = max(slos) - min(slos) or 100.0  # one SLO (--quick): an axis 100 ms wide around it
                twin.bar(slos, [s["local_pct"] or 0 for s in sky], width=span / 25, alpha=0.2, color=COLORS["skylark"])
                if len(slos) == 1:
                    ax.set_xlim(slos[0] - span / 2, slos[0] + span / 2)
                ax.ticklabel_format(axis="x", useOffset=False)
                twin.set_ylim(0, 100)
                twin.set_ylabel("skylark local reads, % (bars)", fontsize=8)
                ax.set_title(f"{size_mb:g} MB per function", fontsize=10)
                ax.set_xlabel("SLO max latency, ms")
                ax.set_ylabel("T(W), s (p50)")
                ax.set_zorder(twin.get_zorder() + 1)
                ax.patch.set_visible(False)
            axes[0][0].legend(fontsize=7)
            fig.suptitle("Workflow time per policy vs SLO", fontsize=10)
            save(fig, "workflow_slo.png")
        size, slo = prop["plan"]["hop_cell"]
        per = {p: hop_stats(lookup(grouped, p, int(size * MB), slo)) for p in POLICIES}
        hops_ = list(dict.fromkeys(h for p in POLICIES for h in per[p]))
        if hops_:
            import numpy as np

            fig, ax = plt.subplots(figsize=(8, 4))
            width = 0.2
            x = np.arange(len(hops_))
            for i, policy in enumerate(POLICIES):
                mig = [per[policy].get(h, {}).get("migration") or 0 for h in hops_]
                ret = [per[policy].get(h, {}).get("retrieval") or 0 for h in hops_]
                ax.bar(x + (i - 1.5) * width, mig, width * 0.95, color=COLORS[policy], alpha=0.45)
                ax.bar(x + (i - 1.5) * width, ret, width * 0.95, bottom=mig, color=COLORS[policy], label=policy)
            ax.set_xticks(x)
            ax.set_xticklabels([f"{h}\n{per['pull'].get(h, {}).get('origin', '')} → "
                                f"{per['pull'].get(h, {}).get('reader_node', '')}" for h in hops_], fontsize=8)
            ax.set_ylabel("ms (p50): migration T(dm) (light) + retrieval T(dr)")
            ax.set_title(f"Migration / retrieval per hop at {size:g} MB, SLO {slo:g} ms", fontsize=10)
            ax.legend(fontsize=8)
            save(fig, "hops.png")

    scal = results.get("scalability")
    if scal:
        rows = scalability_rows(scal)
        fig, (a1, a2) = plt.subplots(1, 2, figsize=(9, 3.8))
        for policy in POLICIES:
            rs = [r for r in rows if r["policy"] == policy]
            if not rs:
                continue
            ns = [r["parallel"] for r in rs]
            a1.plot(ns, [r["throughput"] for r in rs], marker="o", color=COLORS[policy], label=policy)
            a2.plot(ns, [r["p50_ms"] / 1000 if r["p50_ms"] else None for r in rs], marker="o", color=COLORS[policy],
                    label=f"{policy} p50")
            a2.plot(ns, [r["p95_ms"] / 1000 if r["p95_ms"] else None for r in rs], ":", marker=".",
                    color=COLORS[policy], label=f"{policy} p95")
        for ax in (a1, a2):
            ax.set_xticks(sorted({r["parallel"] for r in rows}))
        a1.set_xlabel("parallel workflows")
        a1.set_ylabel("throughput, workflows/s")
        a2.set_xlabel("parallel workflows")
        a2.set_ylabel("T(W), s")
        a1.legend(fontsize=8)
        a2.legend(fontsize=6, ncol=2)
        fig.suptitle(f"Scalability ({scal['plan']['size_mb']:g} MB per function)", fontsize=10)
        save(fig, "scalability.png")

    election = results.get("election")
    if election:
        gs = election["graphs"]
        ns = [g["nodes"] for g in gs]
        fig, ax = plt.subplots(figsize=(6, 3.8))
        ax.plot(ns, [p50(g["elect_ms"]) for g in gs], marker="o", label="full election (p50)")
        ax.plot(ns, [p50(g["floor_ms"]) for g in gs], "--", marker=".", label="floor: plain Dijkstra")
        ax.plot(ns, [p50(g["decision_ms"]) for g in gs], marker="s", label="data-path decision (p50)")
        th = [(g["nodes"], g["thesis_ms"]) for g in gs if g["thesis_ms"]]
        if th:
            ax.plot(*zip(*th), marker="*", linestyle=":", color="grey", label="thesis (Rust)")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("nodes")
        ax.set_ylabel("ms per decision")
        ax.legend(fontsize=8)
        ax.set_title("Election cost vs graph size", fontsize=10)
        save(fig, "election.png")
    return written
