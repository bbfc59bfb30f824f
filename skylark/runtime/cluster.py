"""``skylark up``: a local Skylark cluster from a topology file, on one machine.

For each node of the topology: a redis-server, the handlers, the three example functions and the
node's broker (each under gunicorn), and an agent running the local stream source on the node's
change stream (and the warm-up PingSource). One neighbors service serves the topology, with the
addresses allocated here. The wiring — which event type goes to which service, the change
stream and its consumer group, the warm-up schedule — is read from the Helm chart's values
(:mod:`eventing.wiring`), the same definitions the chart renders its Knative objects from.

Without network emulation everything listens on 127.0.0.1 (free ports); with it each node runs
in its own network namespace (:mod:`skylark.runtime.netem`) and other nodes reach it over shaped links.
"""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import sys
import tempfile
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import yaml
from rich.console import Console
from rich.table import Table

from eventing import wiring
from skylark.runtime.embedded import EmbeddedRedis, find_redis_server, free_port, port_is_free
from skylark.state.errors import ConfigError
from skylark.runtime.netem import LinkSpec, NetworkEmulation
from skylark.runtime.procs import Child, http_ready, stop_all, wait_ready
from skylark.runtime.serve import gunicorn_argv

GUNICORN_SERVICES = ("handlers", "preprocess", "detect", "alarm", "broker")
NAMESPACE = "default"
# Fixed ports inside each node's own network namespace (emulation); without it, free ports.
NS_PORTS = {"redis": 6379, "handlers": 8080, "preprocess": 8081, "detect": 8082, "alarm": 8083, "broker": 8084}
# Where other nodes reach a node's Redis and broker when a relay adds the link delay.
RELAY_PORTS = {"redis": 16379, "broker": 18084}


def default_topology_path() -> Path:
    return Path(str(importlib.util.find_spec("neighbors_service").submodule_search_locations[0])) / "topologies" / "demo3.yaml"


@dataclass
class NodeRuntime:
    """Where one node's services listen, seen from inside the node and from the supervisor."""

    name: str
    ports: dict[str, int]
    inside_host: str = "127.0.0.1"      # how the node's own services reach each other
    supervisor_host: str = "127.0.0.1"  # how `skylark up` / the demo reach them
    peer_host: str = "127.0.0.1"        # how other nodes reach it
    peer_ports: dict[str, int] = field(default_factory=dict)
    netns: str | None = None
    neighbors_host: str = "127.0.0.1"   # how it reaches the neighbors service
    redis: EmbeddedRedis | None = None

    def url(self, service: str, *, view: str = "supervisor") -> str:
        host = {"supervisor": self.supervisor_host, "inside": self.inside_host, "peer": self.peer_host}[view]
        port = self.peer_ports.get(service, self.ports[service]) if view == "peer" else self.ports[service]
        return f"http://{host}:{port}"

    def redis_url(self, *, view: str = "supervisor") -> str:
        host = {"supervisor": self.supervisor_host, "inside": self.inside_host, "peer": self.peer_host}[view]
        port = self.peer_ports.get("redis", self.ports["redis"]) if view == "peer" else self.ports["redis"]
        return f"redis://{host}:{port}/0"


class LocalCluster:
    def __init__(self, topology_path: str | Path | None = None, *, policy: str = "skylark",
                 emulate_network: bool = False, workers: int = 1, threads: int = 4,
                 base_port: int | None = None, chart_values: str | Path | None = None,
                 console: Console | None = None, log_level: str = "WARNING",
                 extra_env: Mapping[str, str] | None = None) -> None:
        self.topology_path = Path(topology_path or default_topology_path())
        self.policy = policy
        self.emulate_network = emulate_network
        self.workers = workers
        self.threads = threads
        self.base_port = base_port
        self.console = console or Console(stderr=True)
        self.log_level = log_level
        self.extra_env = dict(extra_env or {})
        self.values = wiring.load_chart_values(chart_values)
        self.stream_key, self.stream_group = wiring.stream_from_values(self.values)
        self.broker_name = wiring.broker_from_values(self.values)
        self.workdir = Path(tempfile.mkdtemp(prefix="skylark-up-"))
        self.document = self._read_topology()
        self.node_names = [n["name"] for n in self.document["nodes"]]
        self.nodes: dict[str, NodeRuntime] = {}
        self.children: list[Child] = []
        self.emulation: NetworkEmulation | None = None
        self.neighbors_port = 0
        self.dead_letter_port = 0
        self._started = False

    # -- plan -----------------------------------------------------------------------------

    def _read_topology(self) -> dict:
        try:
            document = yaml.safe_load(self.topology_path.read_text())
        except OSError as exc:
            raise ConfigError(f"cannot read topology {self.topology_path}: {exc}") from None
        except yaml.YAMLError as exc:
            raise ConfigError(f"topology {self.topology_path} is not YAML: {exc}") from None
        if not isinstance(document, dict) or not isinstance(document.get("nodes"), list) or not document["nodes"]:
            raise ConfigError(f"topology {self.topology_path} has no nodes list")
        # Validate it the way the neighbors service will (clear errors before anything starts).
        from neighbors_service.sources.file import parse_topology_document

        _, _, self._snapshots = parse_topology_document(document, str(self.topology_path))
        return document

    def _links(self) -> list[LinkSpec]:
        """The links to emulate: the first snapshot's (the emulation is static for a run)."""
        return [LinkSpec(l.a, l.b, l.latency_ms, l.bandwidth_mbps) for l in self._snapshots[0].links]

    def _allocate(self) -> None:
        if self.emulate_network:
            self.emulation = NetworkEmulation(self.node_names, self._links()).setup()
            relay = not self.emulation.netem
            for name, net in self.emulation.nodes.items():
                self.nodes[name] = NodeRuntime(
                    name, dict(NS_PORTS), supervisor_host=net.mgmt_addr, peer_host=net.node_addr,
                    peer_ports=dict(RELAY_PORTS) if relay else {}, netns=net.netns,
                    neighbors_host=net.host_addr)
            self.neighbors_port, self.dead_letter_port = free_port(), free_port()
            return
        next_port = self.base_port
        for name in self.node_names:
            ports = {}
            for service in ("redis", *GUNICORN_SERVICES):
                if next_port is None:
                    ports[service] = free_port()
                else:
                    if not port_is_free(next_port):
                        raise ConfigError(f"port {next_port} (for {service} of {name}) is already in use")
                    ports[service] = next_port
                    next_port += 1
            self.nodes[name] = NodeRuntime(name, ports)
        if next_port is None:
            self.neighbors_port, self.dead_letter_port = free_port(), free_port()
        else:
            for port, what in ((next_port, "the neighbors service"), (next_port + 1, "the dead-letter sink")):
                if not port_is_free(port):
                    raise ConfigError(f"port {port} (for {what}) is already in use")
            self.neighbors_port, self.dead_letter_port = next_port, next_port + 1

    def broker_ingress(self, node: str, *, view: str = "supervisor") -> str:
        return f"{self.nodes[node].url('broker', view=view)}/{NAMESPACE}/{self.broker_name}"

    def neighbors_url(self, node: str | None = None) -> str:
        host = self.nodes[node].neighbors_host if node else "127.0.0.1"
        if self.emulation and node is None:
            host = next(iter(self.emulation.nodes.values())).host_addr
        return f"http://{host}:{self.neighbors_port}"

    def _write_topology(self) -> Path:
        document = json.loads(json.dumps(self.document))
        for entry in document["nodes"]:
            node = self.nodes[entry["name"]]
            entry["redis_url"] = node.redis_url(view="peer")
            entry["broker_url"] = self.broker_ingress(entry["name"], view="peer")
        path = self.workdir / "topology.yaml"
        path.write_text(yaml.safe_dump(document, sort_keys=False))
        return path

    def _write_triggers(self, node: str) -> Path:
        triggers = wiring.triggers_from_values(self.values, namespace=NAMESPACE, nodes=[node])
        path = self.workdir / f"triggers-{node}.yaml"
        path.write_text(yaml.safe_dump_all(triggers, sort_keys=False))
        return path

    # -- start / stop ---------------------------------------------------------------------

    def _base_env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("SKYLARK_", "K_SINK", "PORT"))}
        env.update({
            "SKYLARK_WORKERS": str(self.workers),
            "SKYLARK_THREADS": str(self.threads),
            "SKYLARK_LOG_LEVEL": self.log_level,
            "SKYLARK_CHANGE_STREAM": self.stream_key,
            "PYTHONUNBUFFERED": "1",
        })
        env.update(self.extra_env)
        return env

    def _bind(self, node: NodeRuntime, service: str) -> str:
        host = "0.0.0.0" if node.netns else node.inside_host
        return f"{host}:{node.ports[service]}"

    def _service_env(self, node: NodeRuntime, service: str, base: dict[str, str]) -> dict[str, str]:
        env = dict(base)
        env.update({
            "PORT": str(node.ports[service]),
            "SKYLARK_BIND": self._bind(node, service),
            "SKYLARK_NODE": node.name,
            "SKYLARK_REDIS_URL": node.redis_url(view="inside"),
            "SKYLARK_NEIGHBORS_URL": self.neighbors_url(node.name),
            "SKYLARK_POLICY": self.policy,
        })
        if service in ("preprocess", "detect", "alarm"):
            env["K_SINK"] = self.broker_ingress(node.name, view="inside")
        if service == "broker":
            services = {wiring.handlers_service(node.name): node.url("handlers", view="inside"),
                        "handlers": node.url("handlers", view="inside")}
            for fn in ("preprocess", "detect", "alarm"):
                services[fn] = node.url(fn, view="inside")
            services["dead-letter"] = f"http://{node.neighbors_host}:{self.dead_letter_port}"
            env.update({
                "SKYLARK_BROKER_TRIGGERS": str(self._write_triggers(node.name)),
                "SKYLARK_BROKER_SERVICES": json.dumps(services),
                "SKYLARK_BROKER_NAMESPACE": NAMESPACE,
                "SKYLARK_BROKER_NAME": self.broker_name,
            })
        return env

    def _spawn(self, child: Child) -> Child:
        self.children.append(child)
        return child.start()

    def start(self) -> "LocalCluster":
        find_redis_server()
        if importlib.util.find_spec("gunicorn") is None:
            raise ConfigError("gunicorn is not installed (pip install -e .)")
        self._started = True
        try:
            self._start()
        except BaseException:
            self.stop()
            raise
        return self

    def _start(self) -> None:
        self._allocate()
        base = self._base_env()
        logs = self.workdir / "logs"
        for node in self.nodes.values():
            bind = "0.0.0.0" if node.netns else node.inside_host
            node.redis = EmbeddedRedis(port=node.ports["redis"], host=node.supervisor_host, bind=bind,
                                       netns=node.netns).start()

        topology_file = self._write_topology()
        nb_env = dict(base)
        binds = ([f"{n.neighbors_host}:{self.neighbors_port}" for n in self.nodes.values()]
                 if self.emulation else [f"127.0.0.1:{self.neighbors_port}"])
        # One worker: the SLO set by PUT /slo lives in the process (see neighbors_service/README.md).
        nb_env.update({"PORT": str(self.neighbors_port), "SKYLARK_BIND": ",".join(binds), "SKYLARK_WORKERS": "1",
                       "SKYLARK_TOPOLOGY_SOURCE": "file", "SKYLARK_TOPOLOGY_FILE": str(topology_file)})
        neighbors = self._spawn(Child("neighbors", gunicorn_argv("neighbors"), nb_env, logs / "neighbors.log",
                                      ready=http_ready(f"{self.neighbors_url()}/readyz")))

        dl_env = dict(base)
        dl_binds = ([f"{n.neighbors_host}:{self.dead_letter_port}" for n in self.nodes.values()]
                    if self.emulation else [f"127.0.0.1:{self.dead_letter_port}"])
        dl_env.update({"PORT": str(self.dead_letter_port), "SKYLARK_BIND": ",".join(dl_binds)})
        dead_letter = self._spawn(Child("dead-letter", gunicorn_argv("dead-letter"), dl_env, logs / "dead-letter.log",
                                        ready=http_ready(f"http://{dl_binds[0]}/healthz")))

        started = [neighbors, dead_letter]
        for node in self.nodes.values():
            for service in GUNICORN_SERVICES:
                child = Child(f"{service}@{node.name}", gunicorn_argv(service),
                              self._service_env(node, service, base), logs / f"{node.name}-{service}.log",
                              netns=node.netns, ready=http_ready(f"{node.url(service)}/healthz"))
                started.append(self._spawn(child))
            started.append(self._spawn(self._agent(node, base, logs)))
            if node.peer_ports:
                started.append(self._spawn(self._relay(node, base, logs)))
        wait_ready(started, timeout_s=90)
        # The handlers' readiness includes Redis; probe it once everything answers.
        wait_ready([Child(f"handlers@{n.name}", [], {}, logs / "unused.log",
                          ready=http_ready(f"{n.url('handlers')}/readyz")) for n in self.nodes.values()], 30)

    def _agent(self, node: NodeRuntime, base: dict[str, str], logs: Path) -> Child:
        ping = self.values.get("ping") or {}
        argv = [sys.executable, "-m", "skylark.runtime.agent",
                "--redis", node.redis_url(view="inside"),
                "--address", node.redis_url(view="peer").rsplit("/", 1)[0],
                "--stream", self.stream_key, "--group", self.stream_group,
                "--consumer", f"{node.name}-source",
                "--sink", node.url("handlers", view="inside") + "/"]
        if ping.get("enabled"):
            argv += ["--ping-schedule", str(ping.get("schedule", "*/1 * * * *")),
                     "--ping-data", str(ping.get("data", "")),
                     "--ping-content-type", str(ping.get("contentType", "application/json")),
                     "--ping-name", str(ping.get("name", "warmup"))]
            if ping.get("timezone"):
                argv += ["--ping-timezone", str(ping["timezone"])]
        return Child(f"agent@{node.name}", argv, dict(base), logs / f"{node.name}-agent.log", netns=node.netns,
                     ready=None)

    def _relay(self, node: NodeRuntime, base: dict[str, str], logs: Path) -> Child:
        argv = [sys.executable, "-m", "skylark.runtime.linkrelay"]
        for service, public in node.peer_ports.items():
            argv += ["--route", f"{node.peer_host}:{public}=127.0.0.1:{node.ports[service]}"]
        for other in self.nodes.values():
            if other.name != node.name:
                latency = self.emulation.path_latency_ms(other.name, node.name)
                argv += ["--delay", f"{other.peer_host}={latency:g}"]
        return Child(f"relay@{node.name}", argv, dict(base), logs / f"{node.name}-relay.log", netns=node.netns)

    def restart(self, service: str, *, policy: str | None = None) -> None:
        """Restart one service on every node (e.g. the handlers with another policy)."""
        if policy is not None:
            self.policy = policy
        base = self._base_env()
        restarted = []
        for node in self.nodes.values():
            name = f"{service}@{node.name}"
            old = next(c for c in self.children if c.name == name)
            old.stop()
            self.children.remove(old)
            child = Child(name, gunicorn_argv(service), self._service_env(node, service, base),
                          old.log_path, netns=node.netns, ready=http_ready(f"{node.url(service)}/readyz"))
            restarted.append(self._spawn(child))
        wait_ready(restarted, timeout_s=60)

    def stop(self) -> None:
        stop_all(list(reversed(self.children)))
        self.children.clear()
        for node in self.nodes.values():
            if node.redis is not None:
                node.redis.stop()
                node.redis = None
        if self.emulation is not None:
            self.emulation.teardown()
            self.emulation = None
        self._started = False

    def __enter__(self) -> "LocalCluster":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- reporting ------------------------------------------------------------------------

    def endpoints_table(self) -> Table:
        table = Table(title=f"Skylark local cluster: {len(self.nodes)} nodes, policy {self.policy}",
                      caption=f"logs in {self.workdir / 'logs'}")
        for col in ("node", "service", "listens at"):
            table.add_column(col)
        table.add_row("(cluster)", "neighbors", self.neighbors_url())
        for node in self.nodes.values():
            table.add_row(node.name, "redis", node.redis_url())
            table.add_row("", "broker ingress", self.broker_ingress(node.name))
            for service in ("handlers", "preprocess", "detect", "alarm"):
                table.add_row("", service, node.url(service))
        return table


def main_up(args) -> int:
    console = Console()
    cluster = LocalCluster(args.topology, policy=args.policy, emulate_network=args.emulate_network,
                           base_port=args.base_port, console=console,
                           log_level="INFO")
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    with console.status("starting the local cluster…"):
        cluster.start()
    try:
        console.print(cluster.endpoints_table())
        if cluster.emulation is None:
            console.print("links are not emulated: every node runs on 127.0.0.1 "
                          "(--emulate-network shapes them as the topology says)")
        console.print("Ctrl-C stops everything.")
        stop.wait()
    finally:
        with console.status("stopping…"):
            cluster.stop()
    console.print("stopped; no process left behind")
    return 0
