"""``skylark bench storage``: single vs bundled state, next to plain redis-py in the same run.

For total sizes 0.5 / 1 / 2 / 5 MB split into N = 1…5 fields: median and p95 of a write and of a
read of all fields, with the library (``StateStore``) and with the raw floor (redis-py without
Skylark: HSET/HGETALL of the same bytes for bundled, MSET/MGET — and N×GET — for single).
"""

from __future__ import annotations

import argparse
import os

from rich.console import Console

from bench.common import Report, add_json_option, ratio, summarize, time_interleaved
from skylark.runtime.embedded import EmbeddedRedis
from skylark.state.redis_client import connect
from skylark.state.store import StateStore

MB = 1_000_000
TARGET = 1.10  # library / raw, write and read each, at 1 MB


def _fields(total: int, n: int) -> dict[str, bytes]:
    per = total // n
    return {f"piece{i}": os.urandom(per) for i in range(n)}


def run(url: str, sizes_mb: list[float], max_fields: int, repeat: int, console: Console) -> list[dict]:
    client = connect(url)
    raw = connect(url)
    store = StateStore(client, node="bench", max_bundle_bytes=64 * 1024 * 1024, change_stream_maxlen=1000)
    results = []
    for size_mb in sizes_mb:
        for n in range(1, max_fields + 1):
            fields = _fields(int(size_mb * MB), n)
            names = list(fields)
            chain = f"bench-{size_mb}-{n}"
            raw_hash = f"raw:{chain}:hash"
            raw_keys = [f"raw:{chain}:{name}" for name in names]
            raw_pairs = dict(zip(raw_keys, fields.values()))
            row = {"size_mb": size_mb, "n": n}
            # Library and raw floor alternate call by call (see time_interleaved).
            groups = [
                {"bundled_write": lambda: store.put(chain, "b", fields),
                 "raw_hset": lambda: raw.hset(raw_hash, mapping=fields)},
                {"bundled_read": lambda: store.get_bundle(chain, "b"),
                 "raw_hgetall": lambda: raw.hgetall(raw_hash)},
                {"single_write": lambda: store.put_single(chain, "s", fields),
                 "raw_mset": lambda: raw.mset(raw_pairs)},
                {"single_read": lambda: store.get_single(chain, "s", names),
                 "raw_mget": lambda: raw.mget(raw_keys),
                 "raw_gets": lambda: [raw.get(k) for k in raw_keys]},
            ]
            for group in groups:
                for name, samples in time_interleaved(group, repeat).items():
                    row[name] = summarize(samples)
            client.delete(*client.keys(f"*{chain}*"))
            results.append(row)
            console.log(f"{size_mb} MB × {n} fields done")
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="skylark bench storage", description=__doc__)
    parser.add_argument("--redis-url", help="an existing Redis (default: start an embedded one)")
    parser.add_argument("--sizes", default="0.5,1,2,5", help="total sizes in MB (default 0.5,1,2,5)")
    parser.add_argument("--max-fields", type=int, default=5)
    parser.add_argument("--repeat", type=int, default=30, help="timed runs per cell (default 30)")
    add_json_option(parser)
    args = parser.parse_args(argv)
    report = Report("storage")
    sizes = [float(s) for s in args.sizes.split(",")]
    server = None if args.redis_url else EmbeddedRedis().start()
    try:
        rows = run(args.redis_url or server.url, sizes, args.max_fields, args.repeat, report.console)
    finally:
        if server:
            server.stop()

    report.table(
        "Bundled state (one HASH, one round trip) vs raw redis-py, ms",
        ["MB", "N", "write", "write\np95", "raw\nHSET", "write\n×raw", "read", "read\np95", "raw\nHGETALL",
         "read\n×raw"],
        [[r["size_mb"], r["n"], r["bundled_write"].p50, r["bundled_write"].p95, r["raw_hset"].p50,
          ratio(r["bundled_write"].p50, r["raw_hset"].p50), r["bundled_read"].p50, r["bundled_read"].p95,
          r["raw_hgetall"].p50, ratio(r["bundled_read"].p50, r["raw_hgetall"].p50)] for r in rows],
        caption="p50 unless p95; raw: HSET / HGETALL of the same bytes, the calls interleaved with the "
                "library's in the same run",
    )
    report.table(
        "Single state (one key per field, N round trips to read) vs raw redis-py, ms",
        ["MB", "N", "write", "write\np95", "raw\nMSET", "write\n×raw", "read", "read\np95", "raw\nMGET",
         "raw\nN×GET", "read\n×N×GET"],
        [[r["size_mb"], r["n"], r["single_write"].p50, r["single_write"].p95, r["raw_mset"].p50,
          ratio(r["single_write"].p50, r["raw_mset"].p50), r["single_read"].p50, r["single_read"].p95,
          r["raw_mget"].p50, r["raw_gets"].p50, ratio(r["single_read"].p50, r["raw_gets"].p50)] for r in rows],
        caption="p50 unless p95",
    )
    report.table(
        "Bundled / single (p50; < 1 means bundled is faster)",
        ["MB", "N", "write", "read", "read+write"],
        [[r["size_mb"], r["n"], ratio(r["bundled_write"].p50, r["single_write"].p50),
          ratio(r["bundled_read"].p50, r["single_read"].p50),
          ratio(r["bundled_write"].p50 + r["bundled_read"].p50, r["single_write"].p50 + r["single_read"].p50)]
         for r in rows],
    )
    one_mb = [r for r in rows if r["size_mb"] == 1]
    if one_mb:
        write = max(r["bundled_write"].p50 / r["raw_hset"].p50 for r in one_mb)
        read = max(r["bundled_read"].p50 / r["raw_hgetall"].p50 for r in one_mb)
        def verdict(value: float) -> str:
            return "met" if value <= TARGET else "NOT met"

        report.line(f"1 MB bundle, library / raw (p50, worst N; target ≤ {TARGET:.2f}× each): "
                    f"write {write:.2f}× ({verdict(write)}), read {read:.2f}× ({verdict(read)})",
                    worst_write_ratio_1mb=write, worst_read_ratio_1mb=read, target=TARGET)
    report.results["cells"] = rows
    report.load()
    report.write_json(args.json)
    return 0
