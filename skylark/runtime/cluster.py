"""``skylark up``: a local Skylark cluster for a declared workflow, on one machine.

For each node of the topology: a redis-server, the handlers, the node's broker and the
workflow's functions that run there (pinned to the node, or placed on any node), each under
gunicorn, and an agent running the local stream source on the node's change stream (and the
warm-up PingSource). One neighbors service serves the topology with the addresses allocated
here; one dead-letter sink takes what the brokers give up on; one observer collects the events
that end the workflow (``Workflow.terminal_types``), for ``skylark run`` and the demo.

The wiring — which event type goes to which service, the change stream and its consumer group,
the delivery policy, the warm-up — is read from the Helm chart's values (:mod:`eventing.wiring`)
with the workflow given here in place of the chart's, the same definitions the chart renders
its Knative objects from. Without network emulation everything listens on 127.0.0.1; with it
each node runs in its own network namespace (:mod:`skylark.runtime.netem`).
"""

from __future__ import annotations

import importlib.util
import json
import os
import secrets
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
from skylark.runtime.embedded import find_redis_server, free_port, port_is_free, redis_argv
from skylark.runtime.netem import LinkSpec, NetworkEmulation, SnapshotClock, SnapshotMover
from skylark.runtime.procs import Child, Supervisor, http_ready, redis_ready, stop_all, wait_ready
from skylark.serving.serve import gunicorn_argv
from skylark.state.errors import ConfigError
from skylark.workflow import Workflow, load_workflow
from skylark.workflow.model import slug

NAMESPACE = "default"
# Fixed ports inside each node's own network namespace (emulation); without it, free ports.
NS_PORTS = {"redis": 6379, "handlers": 8080, "broker": 8084}
NS_FUNCTION_PORT = 8100  # + the function's index in the workflow
# Where other nodes reach a node's Redis and broker when a relay adds the link delay.
RELAY_PORTS = {"redis": 16379, "broker": 18084}
NODE_SERVICES = ("redis", "handlers", "broker")  # every node has these; then its functions
CLUSTER_SERVICES = ("neighbors", "dead-letter", "observer")
STATE_FILE_ENV = "SKYLARK_CLUSTER_FILE"


def default_topology_path() -> Path:
    return Path(str(importlib.util.find_spec("neighbors_service").submodule_search_locations[0])) / "topologies" / "demo3.yaml"


def default_workflow_path() -> Path:
    from ex_workflows import example_path  # noqa: PLC0415 - the example is the default only

    return example_path("image-alarm")


def state_file() -> Path:
    """Where a running ``skylark up`` says where it is (for ``skylark run``)."""
    if os.environ.get(STATE_FILE_ENV):
        return Path(os.environ[STATE_FILE_ENV])
    base = Path(os.environ.get("XDG_RUNTIME_DIR") or tempfile.gettempdir())
    return base / f"skylark-up-{os.getuid()}.json"


def load_state() -> dict:
    """What the running ``skylark up`` says of itself (:meth:`LocalCluster.describe`), or
    :class:`ConfigError` when none runs."""
    path = state_file()
    try:
        data = json.loads(path.read_text())
        os.kill(int(data["pid"]), 0)  # still there?
    except FileNotFoundError:
        raise ConfigError(f"no local cluster is running ({path} is missing): start one with skylark up") from None
    except (OSError, ValueError, KeyError, TypeError):
        raise ConfigError(f"the local cluster that wrote {path} is gone") from None
    return data


def function_key(name: str) -> str:
    """The service key of a workflow function in a node's port map (``fn:<name>``)."""
    return f"fn:{name}"


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
    cluster_host: str = "127.0.0.1"     # how it reaches the cluster-wide services

    def _host(self, view: str) -> str:
        return {"supervisor": self.supervisor_host, "inside": self.inside_host, "peer": self.peer_host}[view]

    def _port(self, service: str, view: str) -> int:
        return self.peer_ports.get(service, self.ports[service]) if view == "peer" else self.ports[service]

    def url(self, service: str, *, view: str = "supervisor") -> str:
        return f"http://{self._host(view)}:{self._port(service, view)}"

    def redis_url(self, *, view: str = "supervisor") -> str:
        return f"redis://{self._host(view)}:{self._port('redis', view)}/0"

    @property
    def functions(self) -> list[str]:
        return [key.removeprefix("fn:") for key in self.ports if key.startswith("fn:")]


class LocalCluster:
    def __init__(self, topology_path: str | Path | None = None, *, workflow: Workflow | str | Path | None = None,
                 policy: str | None = None, emulate_network: bool = False, workers: int = 1, threads: int = 4,
                 base_port: int | None = None, chart_values: str | Path | None = None,
                 console: Console | None = None, log_level: str = "WARNING",
                 extra_env: Mapping[str, str] | None = None, snapshot: int | None = None,
                 trace: bool = False) -> None:
        self.topology_path = Path(topology_path or default_topology_path())
        self.snapshot = snapshot
        # With ``trace``, every service exports its spans to the cluster's collector (traces.py).
        self.cluster_services = (*CLUSTER_SERVICES, "traces") if trace else CLUSTER_SERVICES
        if workflow is None or isinstance(workflow, (str, Path)):
            self.workflow_source = str(workflow or default_workflow_path())
            workflow = load_workflow(self.workflow_source)
        else:
            self.workflow_source = f"<workflow {workflow.name}>"
        self.workflow = workflow.with_policy(policy) if policy else workflow
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
        # Propagation events are signed, as the chart does: a key per cluster, so that nobody who
        # merely reaches a handler can push state into a node (unsigned or forged: 401 / 403).
        self.signing_key = secrets.token_hex(32)
        self.document = self._read_topology()
        self.node_names = [n["name"] for n in self.document["nodes"]]
        self.workflow.check_nodes(self.node_names, self.workflow_source)
        self.nodes: dict[str, NodeRuntime] = {}
        self.children: list[Child] = []
        self._lock = threading.RLock()  # the children list: the supervisor reads it, we change it
        self.supervisor: Supervisor | None = None
        self.emulation: NetworkEmulation | None = None
        self.cluster_ports: dict[str, int] = {}
        self.mover: SnapshotMover | None = None  # moves the emulated links with the snapshots
        self._started = False

    @property
    def policy(self) -> str:
        return self.workflow.policy

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

        self._interval_s, self._epoch_s, self._snapshots = parse_topology_document(document, str(self.topology_path))
        if self.snapshot is not None:
            # One snapshot for the whole run: its links join the common ones, nothing rotates.
            snapshots = document.get("snapshots") or [[]]
            if not 0 <= self.snapshot < len(snapshots):
                raise ConfigError(f"--snapshot {self.snapshot}: {self.topology_path} has snapshots 0..{len(snapshots) - 1}")
            document = {k: v for k, v in document.items() if k not in ("snapshots", "snapshot_interval_s", "epoch_s")}
            document["links"] = [*(document.get("links") or []), *snapshots[self.snapshot]]
            self._snapshots = (self._snapshots[self.snapshot],)
        return document

    def _snapshot_links(self) -> list[list[LinkSpec]]:
        """The links to emulate, per snapshot (one, with ``--snapshot``: nothing moves)."""
        return [[LinkSpec(l.a, l.b, l.latency_ms, l.bandwidth_mbps) for l in s.links] for s in self._snapshots]

    def snapshot_clock(self) -> SnapshotClock:
        """Which snapshot is in force when (the neighbors service's rule, from the topology file)."""
        return SnapshotClock(len(self._snapshots), self._interval_s, self._epoch_s)

    def _node_services(self, node: str) -> list[str]:
        return [*NODE_SERVICES, *(function_key(f.name) for f in self.workflow.placed_on(node))]

    def ports_needed(self) -> int:
        """How many consecutive ports ``--base-port`` needs for this topology and workflow."""
        return sum(len(self._node_services(n)) for n in self.node_names) + len(self.cluster_services)

    def _allocate(self) -> None:
        if self.emulate_network:
            self.emulation = NetworkEmulation(self.node_names, snapshots=self._snapshot_links()).setup(
                self.snapshot_clock().current())
            relay = not self.emulation.netem
            index = {f.name: i for i, f in enumerate(self.workflow.functions)}
            for name, net in self.emulation.nodes.items():
                ports = dict(NS_PORTS)
                ports.update({function_key(f.name): NS_FUNCTION_PORT + index[f.name]
                              for f in self.workflow.placed_on(name)})
                self.nodes[name] = NodeRuntime(
                    name, ports, supervisor_host=net.mgmt_addr, peer_host=net.node_addr,
                    peer_ports=dict(RELAY_PORTS) if relay else {}, netns=net.netns, cluster_host=net.host_addr)
            self.cluster_ports = {s: free_port() for s in self.cluster_services}
            return
        next_port = self.base_port

        def take(what: str) -> int:
            nonlocal next_port
            if next_port is None:
                return free_port()
            if not port_is_free(next_port):
                raise ConfigError(f"port {next_port} (for {what}) is already in use")
            next_port += 1
            return next_port - 1

        for name in self.node_names:
            self.nodes[name] = NodeRuntime(name, {s: take(f"{s} of {name}") for s in self._node_services(name)})
        self.cluster_ports = {s: take(f"the {s} service") for s in self.cluster_services}

    def broker_ingress(self, node: str, *, view: str = "supervisor") -> str:
        return f"{self.nodes[node].url('broker', view=view)}/{NAMESPACE}/{self.broker_name}"

    def cluster_url(self, service: str, node: str | None = None) -> str:
        """A cluster-wide service (neighbors, dead-letter, observer), as ``node`` (or the
        supervisor, when None) reaches it."""
        if node is not None:
            host = self.nodes[node].cluster_host
        elif self.emulation:
            host = next(iter(self.emulation.nodes.values())).host_addr
        else:
            host = "127.0.0.1"
        return f"http://{host}:{self.cluster_ports[service]}"

    def neighbors_url(self, node: str | None = None) -> str:
        return self.cluster_url("neighbors", node)

    def observer_url(self) -> str:
        return self.cluster_url("observer")

    def function_url(self, function: str, node: str) -> str:
        return self.nodes[node].url(function_key(function))

    def _write_topology(self) -> Path:
        document = json.loads(json.dumps(self.document))
        for entry in document["nodes"]:
            node = self.nodes[entry["name"]]
            entry["redis_url"] = node.redis_url(view="peer")
            entry["broker_url"] = self.broker_ingress(entry["name"], view="peer")
        path = self.workdir / "topology.yaml"
        path.write_text(yaml.safe_dump(document, sort_keys=False))
        return path

    def _write_workflow(self) -> Path:
        path = self.workdir / "workflow.json"
        path.write_text(json.dumps(self.workflow.to_document(), indent=1))
        return path

    def _write_triggers(self, node: str) -> Path:
        triggers = wiring.triggers_from_values(self.values, namespace=NAMESPACE, nodes=[node], workflow=self.workflow)
        observer = f"{self.cluster_url('observer', node)}/"
        for event_type in self.workflow.terminal_types():
            triggers.append({
                "apiVersion": wiring.TRIGGER_API_VERSION, "kind": "Trigger",
                "metadata": {"name": f"observer-{slug(event_type)}"[:63].rstrip("-"), "namespace": NAMESPACE},
                "spec": {"broker": self.broker_name, "filter": {"attributes": {"type": event_type}},
                         "subscriber": {"uri": observer}}})
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
            "SKYLARK_SIGNING_KEY": self.signing_key,
            "PYTHONUNBUFFERED": "1",
        })
        env.update(self.extra_env)
        return env

    def _bind(self, node: NodeRuntime, service: str) -> str:
        host = "0.0.0.0" if node.netns else node.inside_host
        return f"{host}:{node.ports[service]}"

    def _tracing_env(self, service_name: str, node: str | None) -> dict[str, str]:
        if "traces" not in self.cluster_ports:
            return {}
        return {"OTEL_EXPORTER_OTLP_ENDPOINT": self.cluster_url("traces", node), "OTEL_SERVICE_NAME": service_name,
                "OTEL_BSP_SCHEDULE_DELAY": "100"}  # spans reach the waterfall right after the run

    def _service_env(self, node: NodeRuntime, service: str, base: dict[str, str]) -> dict[str, str]:
        env = dict(base)
        env.update(self._tracing_env(f"{service.removeprefix('fn:')}@{node.name}", node.name))
        env.update({
            "PORT": str(node.ports[service]),
            "SKYLARK_BIND": self._bind(node, service),
            "SKYLARK_NODE": node.name,
            "SKYLARK_REDIS_URL": node.redis_url(view="inside"),
            "SKYLARK_NEIGHBORS_URL": self.neighbors_url(node.name),
            "SKYLARK_POLICY": self.policy,
            "SKYLARK_WORKFLOW": str(self.workdir / "workflow.json"),
        })
        if service.startswith("fn:"):
            spec = self.workflow.function(service.removeprefix("fn:"))
            env.update({"SKYLARK_FUNCTION": spec.entry, "SKYLARK_FUNCTION_NAME": spec.name,
                        "K_SINK": self.broker_ingress(node.name, view="inside")})
        if service == "broker":
            services = {wiring.handlers_service(node.name): node.url("handlers", view="inside"),
                        "handlers": node.url("handlers", view="inside"),
                        # the sink keeps each dead letter on the Redis of the node whose broker gave up
                        "dead-letter": f"{self.cluster_url('dead-letter', node.name)}/nodes/{node.name}"}
            for fn in node.functions:
                services[wiring.function_service(fn)] = node.url(function_key(fn), view="inside")
            env.update({
                "SKYLARK_BROKER_TRIGGERS": str(self._write_triggers(node.name)),
                "SKYLARK_BROKER_SERVICES": json.dumps(services),
                "SKYLARK_BROKER_NAMESPACE": NAMESPACE,
                "SKYLARK_BROKER_NAME": self.broker_name,
            })
        return env

    def _child(self, node: NodeRuntime, service: str, base: dict[str, str], logs: Path, probe: str) -> Child:
        name = f"{service.removeprefix('fn:')}@{node.name}"
        kind = "function" if service.startswith("fn:") else service
        log_name = f"{node.name}-{service.replace(':', '-')}.log"
        return Child(name, gunicorn_argv(kind), self._service_env(node, service, base), logs / log_name,
                     netns=node.netns, ready=http_ready(f"{node.url(service)}/{probe}"))

    def _spawn(self, child: Child) -> Child:
        with self._lock:
            self.children.append(child)
            return child.start()

    def _on_exit(self, child: Child, code: int, delay: float) -> None:
        self.console.print(f"[yellow]{child.name} exited ({code}); restart #{child.restarts + 1} in {delay:g} s[/yellow]"
                           f" (log: {child.log_path})")

    def _redis(self, node: NodeRuntime, logs: Path) -> Child:
        """The node's redis-server, its data (AOF, fsync every second) in the cluster's work
        directory: a restart after a crash keeps the state and the dedupe marks."""
        bind = "0.0.0.0" if node.netns else node.inside_host
        argv = redis_argv(find_redis_server(), node.ports["redis"], bind, str(self.workdir / "redis" / node.name),
                          persist=True)
        return Child(f"redis@{node.name}", argv, self._base_env(), logs / f"{node.name}-redis.log", netns=node.netns,
                     ready=redis_ready(node.redis_url()))

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

    def _cluster_child(self, service: str, base: dict[str, str], logs: Path, extra: Mapping[str, str]) -> Child:
        port = self.cluster_ports[service]
        binds = ([f"{n.cluster_host}:{port}" for n in self.nodes.values()] if self.emulation
                 else [f"127.0.0.1:{port}"])
        env = {**base, "PORT": str(port), "SKYLARK_BIND": ",".join(binds), **self._tracing_env(service, None), **extra}
        return Child(service, gunicorn_argv(service), env, logs / f"{service}.log",
                     ready=http_ready(f"{self.cluster_url(service)}/healthz"))

    def _start(self) -> None:
        self._allocate()
        base = self._base_env()
        logs = self.workdir / "logs"
        wait_ready([self._spawn(self._redis(node, logs)) for node in self.nodes.values()], timeout_s=30)
        topology_file = self._write_topology()
        self._write_workflow()
        started = [
            # One worker each: the SLO set by PUT /slo, and the observer's events, live in the process.
            self._spawn(self._cluster_child("neighbors", base, logs, {
                "SKYLARK_WORKERS": "1", "SKYLARK_TOPOLOGY_SOURCE": "file",
                "SKYLARK_TOPOLOGY_FILE": str(topology_file)})),
            self._spawn(self._cluster_child("dead-letter", base, logs, {
                "SKYLARK_DEADLETTER_STORES": json.dumps({n.name: n.redis_url() for n in self.nodes.values()})})),
            self._spawn(self._cluster_child("observer", base, logs, {"SKYLARK_WORKERS": "1", "SKYLARK_THREADS": "16"})),
        ]
        if "traces" in self.cluster_ports:
            started.append(self._spawn(self._cluster_child("traces", base, logs, {
                "SKYLARK_WORKERS": "1", "SKYLARK_THREADS": "16", "OTEL_SDK_DISABLED": "true"})))
        for node in self.nodes.values():
            for service in self._node_services(node.name):
                if service != "redis":
                    started.append(self._spawn(self._child(node, service, base, logs, "healthz")))
            started.append(self._spawn(self._agent(node, base, logs)))
            if node.peer_ports:
                started.append(self._spawn(self._relay(node, base, logs)))
        wait_ready(started, timeout_s=90)
        # Readiness includes Redis (and a function's own models); probe it once everything answers.
        wait_ready([Child(f"{s}@{n.name}", [], {}, logs / "unused.log", ready=http_ready(f"{n.url(s)}/readyz"))
                    for n in self.nodes.values() for s in self._node_services(n.name) if s != "redis"], 60)
        self.supervisor = Supervisor(self.children, self._lock, self._on_exit).start()
        if self.emulation is not None and len(self._snapshots) > 1:
            self.mover = SnapshotMover(self.emulation, self.snapshot_clock(), self._moved).start()

    def _agent(self, node: NodeRuntime, base: dict[str, str], logs: Path) -> Child:
        argv = [sys.executable, "-m", "skylark.runtime.agent",
                "--redis", node.redis_url(view="inside"),
                "--address", node.redis_url(view="peer").rsplit("/", 1)[0],
                "--stream", self.stream_key, "--group", self.stream_group,
                "--consumer", f"{node.name}-source",
                "--sink", node.url("handlers", view="inside") + "/"]
        for ping in wiring.pingsources_from_values(self.values, NAMESPACE, nodes=[node.name], workflow=self.workflow):
            spec = ping["spec"]
            argv += ["--ping-schedule", spec["schedule"], "--ping-data", spec.get("data", ""),
                     "--ping-content-type", spec.get("contentType", "application/json"),
                     "--ping-name", ping["metadata"]["name"]]
            if spec.get("timezone"):
                argv += ["--ping-timezone", spec["timezone"]]
        return Child(f"agent@{node.name}", argv, {**base, **self._tracing_env(f"stream@{node.name}", node.name)},
                     logs / f"{node.name}-agent.log", netns=node.netns, ready=None)

    def _relay_delays(self, node: NodeRuntime) -> Path:
        path = self.workdir / f"delays-{node.name}.json"
        path.write_text(json.dumps({"peers": self.emulation.relay_delays(node.name)}))
        return path

    def _relay(self, node: NodeRuntime, base: dict[str, str], logs: Path) -> Child:
        argv = [sys.executable, "-m", "skylark.runtime.linkrelay", "--delays-file", str(self._relay_delays(node))]
        for service, public in node.peer_ports.items():
            argv += ["--route", f"{node.peer_host}:{public}=127.0.0.1:{node.ports[service]}"]
        return Child(f"relay@{node.name}", argv, dict(base), logs / f"{node.name}-relay.log", netns=node.netns)

    def _moved(self, index: int) -> None:
        """The emulated links moved to snapshot ``index``: the relays get the new path latencies."""
        for node in self.nodes.values():
            if node.peer_ports:
                self._relay_delays(node)
                with self._lock:
                    relay = next((c for c in self.children if c.name == f"relay@{node.name}"), None)
                if relay is not None and relay.pid is not None:
                    try:
                        os.kill(relay.pid, signal.SIGHUP)
                    except ProcessLookupError:
                        pass  # restarting: it reads the file when it starts

    def set_policy(self, policy: str) -> None:
        """Run the workflow under another policy: the handlers and the functions of every node
        restart with it (the state stays)."""
        if policy != self.policy:
            self.set_workflow(self.workflow.with_policy(policy))

    def set_workflow(self, workflow: Workflow) -> None:
        """Run another version of the workflow (its policy, its SLO): the handlers and the
        functions of every node restart with it (the state stays)."""
        workflow.check_nodes(self.node_names, f"<workflow {workflow.name}>")
        self.workflow = workflow
        self._write_workflow()
        base = self._base_env()
        replaced: list[tuple[NodeRuntime, str, Child]] = []
        with self._lock:
            for node in self.nodes.values():
                for service in self._node_services(node.name):
                    if service not in ("redis", "broker"):
                        old = next(c for c in self.children if c.name == f"{service.removeprefix('fn:')}@{node.name}")
                        self.children.remove(old)
                        replaced.append((node, service, old))
        stop_all([old for _, _, old in replaced])  # their grace periods overlap
        restarted = [self._spawn(self._child(node, service, base, old.log_path.parent, "readyz"))
                     for node, service, old in replaced]
        wait_ready(restarted, timeout_s=60)

    def stop(self) -> None:
        if self.mover is not None:
            self.mover.stop()
            self.mover = None
        if self.supervisor is not None:
            self.supervisor.stop()
        with self._lock:
            children = list(reversed(self.children))
            self.children.clear()
        stop_all([c for c in children if not c.name.startswith("redis@")])
        stop_all([c for c in children if c.name.startswith("redis@")])  # last: the others may still write
        if self.emulation is not None:
            self.emulation.teardown()
            self.emulation = None
        self._started = False

    def __enter__(self) -> "LocalCluster":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- reporting ------------------------------------------------------------------------

    def restarts(self) -> dict[str, int]:
        """How often each service was restarted after it exited on its own."""
        return self.supervisor.restarts if self.supervisor is not None else {}

    def describe(self) -> dict:
        """Where everything is, as ``skylark run`` needs it (written to :func:`state_file`)."""
        return {
            "pid": os.getpid(), "workflow": self.workflow.to_document(), "workflow_source": self.workflow_source,
            "topology": str(self.topology_path), "observer_url": self.observer_url(),
            "traces_url": self.cluster_url("traces") if "traces" in self.cluster_ports else None,
            "emulated": self.emulation is not None,
            "nodes": {name: {"broker_ingress": self.broker_ingress(name), "redis_url": node.redis_url(),
                             "handlers_url": node.url("handlers"), "functions": node.functions}
                      for name, node in self.nodes.items()},
        }

    def endpoints_table(self) -> Table:
        table = Table(title=f"Skylark local cluster: workflow {self.workflow.name}, {len(self.nodes)} nodes, "
                            f"policy {self.policy}", caption=f"logs in {self.workdir / 'logs'}")
        for col in ("node", "service", "listens at"):
            table.add_column(col)
        for service in self.cluster_services:
            table.add_row("(cluster)", service, self.cluster_url(service))
        for node in self.nodes.values():
            table.add_row(node.name, "redis", node.redis_url())
            table.add_row("", "broker ingress", self.broker_ingress(node.name))
            table.add_row("", "handlers", node.url("handlers"))
            for fn in node.functions:
                table.add_row("", f"function {fn}", node.url(function_key(fn)))
        return table


def env_pairs(pairs: list[str]) -> dict[str, str]:
    """``--env KEY=VALUE`` arguments as a mapping."""
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ConfigError(f"--env {pair!r} must be KEY=VALUE")
        out[key] = value
    return out


def main_up(args) -> int:
    console = Console()
    cluster = LocalCluster(args.topology, workflow=args.workflow, policy=args.policy,
                           emulate_network=args.emulate_network, base_port=args.base_port, console=console,
                           log_level="INFO", snapshot=args.snapshot, trace=args.trace,
                           extra_env=env_pairs(args.env))
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    with console.status("starting the local cluster…"):
        cluster.start()
    pointer = state_file()
    try:
        pointer.write_text(json.dumps(cluster.describe(), indent=1))
        console.print(cluster.endpoints_table())
        if cluster.emulation is None:
            console.print("links are not emulated: every node runs on 127.0.0.1 "
                          "(--emulate-network shapes them as the topology says)")
        console.print(f"skylark run --input FILE submits one invocation ({pointer}). Ctrl-C stops everything.")
        stop.wait()
    finally:
        pointer.unlink(missing_ok=True)
        restarts = cluster.restarts()
        with console.status("stopping…"):
            cluster.stop()
    if restarts:
        table = Table(title="Restarts (services that exited on their own)")
        table.add_column("service")
        table.add_column("restarts", justify="right")
        for name, count in sorted(restarts.items()):
            table.add_row(name, str(count))
        console.print(table)
    console.print("stopped; no process left behind")
    return 0
