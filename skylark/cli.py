"""The ``skylark`` command line.

    skylark demo                         the example workflow on one machine (see README)
    skylark up [--workflow FILE]         a local cluster running a workflow (default: the example)
    skylark run --input FILE             one invocation, and where each stage read its state
    skylark workflow check FILE          validate a workflow declaration
    skylark deadletter list|show|replay  what the brokers and stream sources gave up on
    skylark serve function MODULE:FACTORY
    skylark serve NAME                   a service under gunicorn ($PORT): handlers, broker, ...
    skylark redis up|down                an embedded redis-server
    skylark state get|put|delete         inspect and write state on a node
    skylark bench NAME                   benchmarks (storage, eventing, propagate, elect, functions)

Only ``serve`` is needed in a function image: the other commands' dependencies (rich, the local
runtime) are imported when they run.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

from skylark import __version__
from skylark.state.errors import SkylarkError
from skylark.state.settings import POLICIES

BENCHES = ("storage", "eventing", "propagate", "elect", "functions", "faults", "thesis")
DEMO_MODES = ("skylark", "pull")


def _pidfile(port: int) -> Path:
    base = Path(os.environ.get("XDG_RUNTIME_DIR") or tempfile.gettempdir())
    return base / f"skylark-redis-{port}.pid"


def cmd_redis(args: argparse.Namespace) -> int:
    from rich.console import Console

    from skylark.runtime.embedded import EmbeddedRedis, find_redis_server, free_port, port_is_free

    console = Console(stderr=True)
    if args.action == "down":
        pidfile = _pidfile(args.port)
        if not pidfile.exists():
            console.print(f"no detached Skylark Redis on port {args.port} ({pidfile} missing)")
            return 1
        pid = int(pidfile.read_text().strip() or 0)
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            console.print(f"process {pid} was already gone")
        pidfile.unlink(missing_ok=True)
        console.print(f"stopped redis-server on port {args.port}")
        return 0

    port = args.port or free_port()
    if args.detach:
        if not port_is_free(port):
            console.print(f"[red]port {port} is already in use[/red]")
            return 1
        pidfile = _pidfile(port)
        cmd = [find_redis_server(), "--port", str(port), "--bind", "127.0.0.1", "--save", "",
               "--appendonly", "no", "--daemonize", "yes", "--pidfile", str(pidfile),
               "--dir", tempfile.gettempdir(), "--logfile", str(pidfile.with_suffix(".log"))]
        if args.password:
            cmd += ["--requirepass", args.password]
        subprocess.run(cmd, check=True)
        auth = f":{args.password}@" if args.password else ""
        print(f"redis://{auth}127.0.0.1:{port}/0")
        console.print(f"detached; stop it with: skylark redis down --port {port}")
        return 0

    server = EmbeddedRedis(port=port, password=args.password).start()
    print(server.url, flush=True)
    console.print("redis-server running; Ctrl-C stops it")
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    try:
        stop.wait()
    finally:
        server.stop()
    return 0


def _store(args: argparse.Namespace):
    from skylark.state.settings import Settings
    from skylark.state.store import StateStore

    settings = Settings.from_env()
    changes = {}
    if args.redis:
        changes["redis_url"] = args.redis
    if args.node:
        changes["node"] = args.node
    return StateStore.from_settings(settings.with_(**changes) if changes else settings)


def _field_value(spec: str) -> tuple[str, bytes]:
    name, sep, value = spec.partition("=")
    if not sep:
        raise SystemExit(f"field {spec!r} must be NAME=VALUE or NAME=@FILE")
    if value.startswith("@"):
        return name, Path(value[1:]).read_bytes()
    return name, value.encode()


def _show(value: bytes, limit: int = 60) -> str:
    try:
        text = value.decode()
        if text.isprintable():
            return text if len(text) <= limit else text[:limit] + f"… ({len(value)} bytes)"
    except UnicodeDecodeError:
        pass
    return f"<{len(value)} bytes>"


def cmd_state(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    store = _store(args)
    out = Console()
    if args.action == "put":
        fields = dict(_field_value(spec) for spec in args.fields)
        write = store.put_single if args.single else store.put
        result = write(args.chain, args.function, fields, replace=args.replace)
        out.print_json(json.dumps({**result.meta.to_dict(), "entry_id": result.entry_id}))
        return 0
    if args.action == "delete":
        version = store.delete(args.chain, args.function)
        out.print_json(json.dumps({"chain": args.chain, "function": args.function, "tombstone_version": version}))
        return 0
    if args.single:
        fields = store.get_single(args.chain, args.function, args.fields)
        meta = store.get_meta(args.chain, args.function)
    else:
        bundle = store.get_bundle(args.chain, args.function)
        fields, meta = bundle.fields, bundle.meta
    if args.json:
        print(json.dumps({"meta": meta.to_dict() if meta else None,
                          "fields": {k: _show(v, 10**9) for k, v in fields.items()}}))
        return 0
    caption = (f"v{meta.version} · origin {meta.node} · {meta.size} bytes · checksum {meta.checksum[:12]}"
               if meta else None)
    table = Table(title=f"{args.chain} / {args.function}", caption=caption)
    table.add_column("field")
    table.add_column("bytes", justify="right")
    table.add_column("value")
    for name, value in sorted(fields.items()):
        table.add_row(name, str(len(value)), _show(value))
    out.print(table)
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from skylark.serving.serve import serve

    return serve(args.service, args.port, args.entry)


def cmd_bench(args: argparse.Namespace) -> int:
    module = importlib.import_module(f"bench.{args.name}")
    return int(module.main(args.args) or 0)


def cmd_up(args: argparse.Namespace) -> int:
    from skylark.runtime.cluster import main_up

    return main_up(args)


def cmd_demo(args: argparse.Namespace) -> int:
    from skylark.runtime.demo import main_demo

    return main_demo(args)


def cmd_run(args: argparse.Namespace) -> int:
    from skylark.runtime.run import main_run

    return main_run(args)


def cmd_deadletter(args: argparse.Namespace) -> int:
    from skylark.runtime.deadletter_cmd import main_deadletter

    return main_deadletter(args)


def cmd_workflow(args: argparse.Namespace) -> int:
    from skylark.workflow import load_workflow

    workflow = load_workflow(args.file)
    if args.topology:
        from neighbors_service.sources.file import load_topology_file

        workflow.check_nodes([n.name for n in load_topology_file(args.topology).current().nodes], args.file)
    pinned = ", ".join(f"{f.name}@{f.node or 'any'}" for f in workflow.functions)
    print(f"{args.file}: workflow {workflow.name} is valid: {pinned}; policy {workflow.policy}; "
          f"starts on {', '.join(workflow.entry_types())}; ends with {', '.join(workflow.terminal_types()) or 'no event'}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="skylark", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"skylark {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    redis_p = sub.add_parser("redis", help="start or stop an embedded redis-server")
    redis_p.add_argument("action", choices=("up", "down"))
    redis_p.add_argument("--port", type=int, default=0, help="port (default: a free one)")
    redis_p.add_argument("--password", help="require this password (AUTH)")
    redis_p.add_argument("--detach", action="store_true", help="run in the background (stop with 'down')")
    redis_p.set_defaults(func=cmd_redis)

    state_p = sub.add_parser("state", help="read or write state on a node's Redis")
    state_p.add_argument("action", choices=("get", "put", "delete"))
    state_p.add_argument("chain")
    state_p.add_argument("function")
    state_p.add_argument("fields", nargs="*", help="put: NAME=VALUE or NAME=@FILE; get --single: field names")
    state_p.add_argument("--redis", help="Redis URL (default $SKYLARK_REDIS_URL)")
    state_p.add_argument("--node", help="node name recorded as origin (default $SKYLARK_NODE)")
    state_p.add_argument("--single", action="store_true", help="single state (one key per field)")
    state_p.add_argument("--replace", action="store_true", help="put: replace the whole bundle")
    state_p.add_argument("--json", action="store_true", help="get: print JSON")
    state_p.set_defaults(func=cmd_state)

    serve_p = sub.add_parser("serve", help="run a service under gunicorn")
    serve_p.add_argument("service", choices=("function", "handlers", "neighbors", "broker", "dead-letter", "observer"))
    serve_p.add_argument("entry", nargs="?", help="function: MODULE:FACTORY (default $SKYLARK_FUNCTION)")
    serve_p.add_argument("--port", type=int, help="default $PORT or 8080")
    serve_p.set_defaults(func=cmd_serve)

    bench_p = sub.add_parser("bench", help="run a benchmark")
    bench_p.add_argument("name", choices=BENCHES)
    bench_p.add_argument("args", nargs=argparse.REMAINDER, help="options of the benchmark (see --help)")
    bench_p.set_defaults(func=cmd_bench)

    up_p = sub.add_parser("up", help="start a local cluster running a workflow")
    up_p.add_argument("--workflow", help="workflow YAML (default: the example, ex_workflows/image-alarm.yaml)")
    up_p.add_argument("--topology", help="topology YAML (default: the 3-node demo topology)")
    up_p.add_argument("--emulate-network", action="store_true",
                      help="one network namespace per node, links shaped with tc netem (root)")
    up_p.add_argument("--policy", choices=POLICIES, help="override the workflow's policy")
    up_p.add_argument("--env", action="append", default=[], metavar="KEY=VALUE",
                      help="an environment variable for every service (repeatable), e.g. SKYLARK_PROPAGATION_WAIT_MS=500")
    up_p.add_argument("--trace", action="store_true", help="record traces: every service exports its spans to "
                      "a collector of the cluster (skylark run --trace draws them)")
    up_p.add_argument("--snapshot", type=int, help="use this snapshot of the topology for the whole run (default: "
                      "the file as it is; snapshots rotate with the clock)")
    up_p.add_argument("--base-port", type=int, help="use consecutive ports from here; pick them below the ephemeral range (Linux: 32768) so outgoing connections cannot take one (default: free ones)")
    up_p.set_defaults(func=cmd_up)

    demo_p = sub.add_parser("demo", help="run the example workflow with and without propagation")
    demo_p.add_argument("--images", type=int, default=10, help="how many sample images (default 10)")
    demo_p.add_argument("--emulate-network", action="store_true",
                        help="one network namespace per node, links shaped with tc netem (root)")
    demo_p.add_argument("--topology", help="topology YAML (default: the 3-node demo topology)")
    demo_p.add_argument("--base-port", type=int, help="use consecutive ports from here; pick them below the ephemeral range (Linux: 32768) so outgoing connections cannot take one (default: free ones)")
    demo_p.add_argument("--policies", default=",".join(DEMO_MODES),
                        help=f"comma-separated policies to compare (default {','.join(DEMO_MODES)})")
    demo_p.add_argument("--report", help="also write the results as JSON to this file")
    demo_p.add_argument("--trace", action="store_true", help="record traces; draw one invocation's per policy")
    demo_p.set_defaults(func=cmd_demo)

    run_p = sub.add_parser("run", help="submit one invocation of a workflow and show where its time went")
    run_p.add_argument("--workflow", help="workflow YAML (default: the running cluster's, else the example)")
    run_p.add_argument("--topology", help="topology YAML when a cluster is started for the run")
    run_p.add_argument("--input", help="a file sent as the input event's body (content type from its name)")
    run_p.add_argument("--data", help="JSON data of the input event instead of a file")
    run_p.add_argument("--type", help="the input event's type (default: the workflow's entry type)")
    run_p.add_argument("--content-type", help="of --input (default: guessed from the file name)")
    run_p.add_argument("--chain", help="chain id (default: a new one)")
    run_p.add_argument("--policy", choices=POLICIES, help="override the workflow's policy (new cluster only)")
    run_p.add_argument("--snapshot", type=int, help="as for up (new cluster only)")
    run_p.add_argument("--timeout", type=float, default=60.0, help="seconds to wait for the end (default 60)")
    run_p.add_argument("--standalone", action="store_true", help="start a cluster even if one is running")
    run_p.add_argument("--emulate-network", action="store_true", help="as for up (new cluster only; root)")
    run_p.add_argument("--json", action="store_true", help="print the result as JSON")
    run_p.add_argument("--trace", action="store_true", help="draw the invocation's trace as a waterfall")
    run_p.set_defaults(func=cmd_run)

    dl_p = sub.add_parser("deadletter", help="list, show or replay the dead letters of the running local cluster")
    dl_p.add_argument("action", choices=("list", "show", "replay"))
    dl_p.add_argument("entries", nargs="*", help="show/replay: entry ids (from list)")
    dl_p.add_argument("--all", action="store_true", help="replay: every dead letter")
    dl_p.add_argument("--node", help="only this node's")
    dl_p.add_argument("--json", action="store_true", help="list: print JSON")
    dl_p.set_defaults(func=cmd_deadletter)

    wf_p = sub.add_parser("workflow", help="validate a workflow declaration")
    wf_p.add_argument("action", choices=("check",))
    wf_p.add_argument("file")
    wf_p.add_argument("--topology", help="also check that its nodes are in this topology")
    wf_p.set_defaults(func=cmd_workflow)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except SkylarkError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
