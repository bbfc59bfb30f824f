"""A TCP relay that adds a link's one-way delay to every byte in both directions.

The network emulation uses it only where the kernel has no ``sch_netem`` (``tc ... netem`` is
the first choice): it listens on a node's address inside the node's network namespace and
forwards to the real service, holding each chunk for the one-way latency of the path from the
connecting node (known by its source address). Bandwidth is still shaped by the kernel (htb on
the veth links); only the propagation delay is added here. Data order is kept (a FIFO per
direction; a chunk never leaves before the one read before it).

The delays may change while connections are open (a moving topology: the testbed's cloud link
moves to another satellite every minute): with ``--delays-file`` the relay reads them from a
JSON file ``{"peers": {ip: ms}, "default": ms}`` at start and again on SIGHUP, and each chunk is
held for the delay in force when it was read.

    python -m skylark.runtime.linkrelay --route 10.78.0.1:16379=127.0.0.1:6379 \\
        --delay 10.78.0.2=10 --delay 10.78.0.3=20          # or --delays-file delays.json

What it does not model: the delay is added above TCP, so the TCP connection under it sees the
shaped bandwidth but not the latency (no slow start stretched over a long round trip); a
transfer costs ``latency + bytes / bandwidth`` like an ideal pipe, which is the floor the
benchmarks compare against.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import signal
from pathlib import Path

CHUNK = 64 * 1024


class Delays:
    """One-way delay (ms) per peer address; replaced as a whole by :meth:`load`."""

    def __init__(self, peers: dict[str, float] | None = None, default_ms: float = 0.0,
                 path: str | None = None) -> None:
        self.peers = dict(peers or {})
        self.default_ms = default_ms
        self.path = path
        if path:
            self.load()

    def load(self) -> None:
        data = json.loads(Path(self.path).read_text())
        peers = {str(ip): float(ms) for ip, ms in (data.get("peers") or {}).items()}
        if any(ms < 0 for ms in peers.values()):
            raise ValueError(f"{self.path}: delays must be >= 0 ms")
        self.peers, self.default_ms = peers, float(data.get("default", self.default_ms))

    def seconds(self, peer: str) -> float:
        return self.peers.get(peer, self.default_ms) / 1000


async def _pump(src: asyncio.StreamReader, dst: asyncio.StreamWriter, delay_s) -> None:  # noqa: ANN001
    """Copy ``src`` to ``dst``, each chunk ``delay_s()`` seconds after it was read."""
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[tuple[float, bytes | None]] = asyncio.Queue()

    async def feed() -> None:
        try:
            while data := await src.read(CHUNK):
                queue.put_nowait((loop.time() + delay_s(), data))
        except (ConnectionError, OSError):
            pass
        queue.put_nowait((loop.time() + delay_s(), None))

    async def release() -> None:
        while True:
            due, data = await queue.get()
            wait = due - loop.time()
            if wait > 0:
                await asyncio.sleep(wait)
            if data is None:
                with contextlib.suppress(ConnectionError, OSError):
                    if dst.can_write_eof():
                        dst.write_eof()
                return
            try:
                dst.write(data)
                await dst.drain()
            except (ConnectionError, OSError):
                return

    await asyncio.gather(feed(), release())


def make_handler(target: tuple[str, int], delays: Delays):
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peername")[0]
        up_writer = None
        try:
            up_reader, up_writer = await asyncio.open_connection(*target)
            await asyncio.gather(_pump(reader, up_writer, lambda: delays.seconds(peer)),
                                 _pump(up_reader, writer, lambda: delays.seconds(peer)))
        except (OSError, asyncio.CancelledError):
            pass  # the target is down, or the relay stops: the connection just ends
        finally:
            for w in (writer, up_writer):
                if w is not None:
                    w.close()

    return handle


def _addr(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return host, int(port)


async def serve(routes: list[tuple[tuple[str, int], tuple[str, int]]], delays: Delays) -> None:
    servers = [await asyncio.start_server(make_handler(target, delays), *listen) for listen, target in routes]
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    if delays.path:
        def reload() -> None:
            try:
                delays.load()
            except (OSError, ValueError) as exc:  # keep the delays in force; say why
                print(f"relay: cannot reload {delays.path}: {exc}", flush=True)
        loop.add_signal_handler(signal.SIGHUP, reload)
    print("relay ready", flush=True)
    await stop.wait()
    for server in servers:
        server.close()
    tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m skylark.runtime.linkrelay", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--route", action="append", required=True,
                        help="LISTEN_HOST:PORT=TARGET_HOST:PORT (repeatable)")
    parser.add_argument("--delay", action="append", default=[], help="PEER_IP=MS one-way delay (repeatable)")
    parser.add_argument("--default-delay", type=float, default=0.0, help="ms for unknown peers")
    parser.add_argument("--delays-file", help='JSON {"peers": {ip: ms}, "default": ms}, read again on SIGHUP')
    args = parser.parse_args(argv)
    routes = []
    for spec in args.route:
        listen, _, target = spec.partition("=")
        routes.append((_addr(listen), _addr(target)))
    peers = {}
    for spec in args.delay:
        ip, _, ms = spec.partition("=")
        peers[ip] = float(ms)
    delays = Delays(peers, args.default_delay, args.delays_file)
    asyncio.run(serve(routes, delays))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
