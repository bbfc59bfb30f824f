"""The thesis's storage experiment on an emulated satellite ↔ cloud link (part of ``bench thesis``).

Two nodes, each in its own network namespace with its own redis-server, one link between them
shaped like the thesis's (60 ms one way, 35 Mbit/s: htb for the bandwidth, the link relay for
the latency where the kernel has no netem). A worker process *inside the satellite's
namespace* writes and reads state of a total size S split into N = 1…5 pieces:

- ``bundled``: the library's bundle (``StateStore.put`` / ``get_bundle``: one round trip each),
- ``single``: the library's single state (``put_single``: one round trip; ``get_single``: one
  GET per piece),

against its own Redis (``local``) and the cloud's across the link (``remote``), and next to them
the **floor** moving the same bytes with raw redis-py over the same connection path in the same
run: ``HSET`` + ``HGETALL`` of one hash (bundled), N × ``SET`` + N × ``GET`` (single, which is
also what the thesis's single mechanism did). The operations of one repetition alternate
(library, then floor), so load from elsewhere hits both alike. The theoretical floor of a
cell is ``round trips × 2 × latency + 2 × bytes × 8 / bandwidth`` (one write and one read).

Only the worker's own timings are used (``time.perf_counter`` around each call).
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

MB = 1_000_000
LINK_LATENCY_MS = 60.0
LINK_BANDWIDTH_MBPS = 35.0

# The thesis's storage table (read + write, ms): N = 1 → N = 5, per total size and mechanism.
THESIS = {
    0.5: {"single_remote": (904, 4637), "single_local": (64, 318), "bundled_remote": (1062, 3058),
          "bundled_local": (64, 202)},
    1.0: {"single_remote": (1187, 6063), "single_local": (92, 494), "bundled_remote": (1498, 3190),
          "bundled_local": (105, 373)},
    5.0: {"single_remote": (4718, 18292), "single_local": (354, 1809), "bundled_remote": (3881, 17432),
          "bundled_local": (388, 1818)},
    20.0: {"single_remote": (18144, 77085), "single_local": (1356, 6872), "bundled_remote": (14946, 57128),
           "bundled_local": (1434, 7018)},
}

OPS = ("bundled_write", "bundled_read", "raw_hset", "raw_hgetall",
       "single_write", "single_read", "raw_sets", "raw_gets")


def thesis_value(size_mb: float, key: str, n: int) -> float | None:
    pair = THESIS.get(size_mb, {}).get(key)
    if pair is None or n not in (1, 5):
        return None
    return float(pair[0] if n == 1 else pair[1])


def theoretical_ms(size_mb: float, round_trips: int, latency_ms: float, bandwidth_mbps: float) -> float:
    """``round trips × 2·latency + 2 × bytes/bandwidth``: one write and one read of the bytes."""
    return round_trips * 2 * latency_ms + 2 * size_mb * MB * 8 / (bandwidth_mbps * 1000)


# -- the worker (runs inside the satellite's namespace) ------------------------------------------

def _worker(spec: dict) -> dict:
    import redis

    from skylark.state.redis_client import connect
    from skylark.state.store import StateStore

    def client(url: str) -> redis.Redis:
        c = connect(url, timeout_s=120.0)
        deadline = time.monotonic() + 20
        while True:  # the relay may still be starting
            try:
                c.ping()
                return c
            except redis.RedisError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)

    out = {"cells": [], "python": platform.python_version(), "redis_py": redis.__version__}
    for location, url in (("local", spec["local"]), ("remote", spec["remote"])):
        lib, raw = client(url), client(url)
        out[f"redis_server_{location}"] = lib.info("server").get("redis_version")
        store = StateStore(lib, node="satellite", max_bundle_bytes=128 * MB, change_stream_maxlen=1000)
        for size_mb in spec["sizes_mb"]:
            repeat = int(spec["repeat"][str(size_mb)])
            for n in range(1, spec["max_n"] + 1):
                per = int(size_mb * MB) // n
                fields = {f"piece{i}": os.urandom(per) for i in range(n)}
                names = list(fields)
                chain = f"st-{location}-{size_mb}-{n}"
                raw_hash = f"raw:{chain}:hash"
                raw_keys = {name: f"raw:{chain}:{name}" for name in names}
                ops = {
                    "bundled_write": lambda: store.put(chain, "b", fields, replace=True),
                    "bundled_read": lambda: store.get_bundle(chain, "b"),
                    "raw_hset": lambda: raw.hset(raw_hash, mapping=fields),
                    "raw_hgetall": lambda: raw.hgetall(raw_hash),
                    "single_write": lambda: store.put_single(chain, "s", fields, replace=True),
                    "single_read": lambda: store.get_single(chain, "s", names),
                    "raw_sets": lambda: [raw.set(raw_keys[k], v) for k, v in fields.items()],
                    "raw_gets": lambda: [raw.get(raw_keys[k]) for k in names],
                }
                for op in OPS:  # warm-up: connections, buffers, the script cache
                    ops[op]()
                samples: dict[str, list[float]] = {op: [] for op in OPS}
                for _ in range(repeat):
                    for op in OPS:
                        start = time.perf_counter()
                        result = ops[op]()
                        samples[op].append((time.perf_counter() - start) * 1000)
                        if op == "bundled_read" and sum(len(v) for v in result.fields.values()) != per * n:
                            raise RuntimeError(f"{chain}: read {result.meta.size} bytes, wrote {per * n}")
                stale = [k.decode() for k in lib.scan_iter(match=f"*{chain}*", count=1000)]
                if stale:
                    lib.delete(*stale)
                out["cells"].append({"location": location, "size_mb": size_mb, "n": n, "bytes": per * n,
                                     "samples": samples})
                print(f"storage {location} {size_mb:g} MB × {n}: bundled r+w "
                      f"{sorted(a + b for a, b in zip(samples['bundled_write'], samples['bundled_read']))[repeat // 2]:.0f} ms",
                      file=sys.stderr, flush=True)
        lib.close()
        raw.close()
    return out


# -- the experiment (root: namespaces, servers, relay) ---------------------------------------------

def run(sizes_mb: Sequence[float], max_n: int, repeat: dict[float, int], *, latency_ms: float = LINK_LATENCY_MS,
        bandwidth_mbps: float = LINK_BANDWIDTH_MBPS, timeout_s: float = 3600.0) -> dict:
    """Set up the two-node emulation, run the worker inside the satellite, tear down; the
    worker's samples with the link's description."""
    from skylark.runtime.embedded import EmbeddedRedis
    from skylark.runtime.netem import LinkSpec, NetworkEmulation
    from skylark.runtime.procs import Child

    emulation = NetworkEmulation(["satellite", "cloud"], [LinkSpec("satellite", "cloud", latency_ms, bandwidth_mbps)])
    servers: list[EmbeddedRedis] = []
    relay: Child | None = None
    started = time.time()
    emulation.setup()
    try:
        sat, cloud = emulation.nodes["satellite"], emulation.nodes["cloud"]
        for net in (sat, cloud):
            servers.append(EmbeddedRedis(port=6379, host=net.mgmt_addr, bind="0.0.0.0", netns=net.netns).start())
        remote_url = f"redis://{cloud.node_addr}:6379/0"
        if not emulation.netem:
            workdir = Path(servers[1].directory)
            delays = workdir / "delays.json"
            delays.write_text(json.dumps({"peers": emulation.relay_delays("cloud")}))
            relay = Child("relay@cloud", [sys.executable, "-m", "skylark.runtime.linkrelay", "--delays-file",
                                          str(delays), "--route", f"{cloud.node_addr}:16379=127.0.0.1:6379"],
                          dict(os.environ), workdir / "relay.log", netns=cloud.netns).start()
            remote_url = f"redis://{cloud.node_addr}:16379/0"
        spec = {"local": "redis://127.0.0.1:6379/0", "remote": remote_url, "sizes_mb": list(sizes_mb),
                "max_n": max_n, "repeat": {str(k): v for k, v in repeat.items()}}
        result = subprocess.run(["ip", "netns", "exec", sat.netns, sys.executable, "-m", "bench.thesis_storage",
                                 "--worker", json.dumps(spec)],
                                stdout=subprocess.PIPE, text=True, timeout=timeout_s,
                                cwd=str(Path(__file__).resolve().parent.parent))
        if result.returncode != 0:
            raise RuntimeError(f"storage worker failed ({result.returncode}); its stderr is above")
        data = json.loads(result.stdout)
    finally:
        if relay is not None:
            relay.stop()
        for server in servers:
            server.stop()
        emulation.teardown()
    data.update({"latency_ms": latency_ms, "bandwidth_mbps": bandwidth_mbps, "delay_by": "netem" if emulation.netem
                 else "linkrelay", "seconds": round(time.time() - started, 1)})
    return data


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) == 2 and args[0] == "--worker":
        print(json.dumps(_worker(json.loads(args[1]))))
        return 0
    print("internal module of `skylark bench thesis` (run that)", file=sys.stderr)
    return 2


if __name__ == "__main__":
    raise SystemExit(main())
