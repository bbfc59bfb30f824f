"""The per-node agent of the local cluster: the stream source (and the warm-up PingSource).

In a cluster these are Knative's RedisStreamSource and PingSource; here one small process per
node runs their stand-ins from :mod:`eventing` until SIGTERM.

    python -m skylark.runtime.agent --redis redis://127.0.0.1:6379/0 --address redis://127.0.0.1:6379 \\
        --stream skylark:changes --group skylark-handlers --consumer node-a-source \\
        --sink http://127.0.0.1:8080/ [--ping-schedule '*/1 * * * *' --ping-data '{...}']
"""

from __future__ import annotations

import argparse
import signal
import threading

from eventing.ping import PingSource
from eventing.source import StreamSource
from skylark.serving.logs import configure_logging
from skylark.serving.tracing import configure_tracing, flush
from skylark.state.redis_client import connect


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m skylark.runtime.agent", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--redis", required=True, help="the node's Redis URL")
    parser.add_argument("--address", required=True, help="the address events name in their source")
    parser.add_argument("--stream", required=True)
    parser.add_argument("--group", required=True)
    parser.add_argument("--consumer", required=True)
    parser.add_argument("--sink", required=True, help="the handlers' URL")
    parser.add_argument("--ping-schedule")
    parser.add_argument("--ping-data", default="")
    parser.add_argument("--ping-content-type", default="application/json")
    parser.add_argument("--ping-timezone", default="UTC")
    parser.add_argument("--ping-name", default="warmup")
    parser.add_argument("--log-level", default="INFO")
    args = parser.parse_args(argv)
    configure_logging(args.log_level)
    configure_tracing("skylark-stream-source")

    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    source = StreamSource(connect(args.redis), args.stream, args.group, args.consumer, args.sink,
                          address=args.address)
    source.start()
    ping = None
    if args.ping_schedule:
        ping = PingSource(args.ping_schedule, args.sink, data=args.ping_data or None,
                          content_type=args.ping_content_type, timezone=args.ping_timezone,
                          name=args.ping_name)
        ping.start()
    stop.wait()
    source.stop()
    if ping is not None:
        ping.stop()
    flush()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
