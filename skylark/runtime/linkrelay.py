"""A TCP relay that adds a link's one-way delay to every byte in both directions.

The network emulation uses it only where the kernel has no ``sch_netem`` (``tc ... netem`` is
the first choice): it listens on a node's address inside the node's network namespace and
forwards to the real service, holding each chunk for the one-way latency of the path from the
connecting node (known by its source address). Bandwidth is still shaped by the kernel (htb on
the veth links); only the propagation delay is added here. Data order is kept (a FIFO per
direction with a constant delay).

    python -m skylark.runtime.linkrelay --listen 10.78.0.1:16379 --target 127.0.0.1:6379 \\
        --delay 10.78.0.2=10 --delay 10.78.0.3=20
"""

from __future__ import annotations

import argparse
import asyncio
import signal

CHUNK = 64 * 1024


async def _pump(src: asyncio.StreamReader, dst: asyncio.StreamWriter, delay_s: float) -> None:
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[tuple[float, bytes | None]] = asyncio.Queue()

    async def feed() -> None:
        try:
            while data := await src.read(CHUNK):
                queue.put_nowait((loop.time() + delay_s, data))
        except (ConnectionError, OSError):
            pass
        queue.put_nowait((loop.time() + delay_s, None))

    async def release() -> None:
        while True:
            due, data = await queue.get()
            wait = due - loop.time()
            if wait > 0:
                await asyncio.sleep(wait)
            if data is None:
                try:
                    if dst.can_write_eof():
                        dst.write_eof()
                except (ConnectionError, OSError):
                    pass
                return
            try:
                dst.write(data)
                await dst.drain()
            except (ConnectionError, OSError):
                return

    await asyncio.gather(feed(), release())


def make_handler(target: tuple[str, int], delays_ms: dict[str, float], default_ms: float):
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peername")[0]
        delay_s = delays_ms.get(peer, default_ms) / 1000
        try:
            up_reader, up_writer = await asyncio.open_connection(*target)
        except OSError:
            writer.close()
            return
        try:
            await asyncio.gather(_pump(reader, up_writer, delay_s), _pump(up_reader, writer, delay_s))
        finally:
            for w in (writer, up_writer):
                w.close()

    return handle


def _addr(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return host, int(port)


async def serve(routes: list[tuple[tuple[str, int], tuple[str, int]]], delays_ms: dict[str, float],
                default_ms: float) -> None:
    servers = [await asyncio.start_server(make_handler(target, delays_ms, default_ms), *listen)
               for listen, target in routes]
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print("relay ready", flush=True)
    await stop.wait()
    for server in servers:
        server.close()
        await server.wait_closed()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m skylark.runtime.linkrelay", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--route", action="append", required=True,
                        help="LISTEN_HOST:PORT=TARGET_HOST:PORT (repeatable)")
    parser.add_argument("--delay", action="append", default=[], help="PEER_IP=MS one-way delay (repeatable)")
    parser.add_argument("--default-delay", type=float, default=0.0, help="ms for unknown peers")
    args = parser.parse_args(argv)
    routes = []
    for spec in args.route:
        listen, _, target = spec.partition("=")
        routes.append((_addr(listen), _addr(target)))
    delays = {}
    for spec in args.delay:
        ip, _, ms = spec.partition("=")
        delays[ip] = float(ms)
    asyncio.run(serve(routes, delays, args.default_delay))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
