"""The workflow model and its validation (pure).

:meth:`Workflow.from_document` turns a parsed document (YAML or JSON, plain data) into a
:class:`Workflow` or raises :class:`WorkflowError` naming the field (``spec.functions[1].entry``)
and, when the document came from a file, its line (see :mod:`skylark.workflow.load`).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from skylark.state.errors import ConfigError
from skylark.state.names import NAME_PATTERN
from skylark.state.settings import POLICIES

API_VERSION = "skylark.io/v1alpha1"
KIND = "Workflow"
ANY_NODE = "any"

# MODULE:FACTORY, e.g. ``ex_detect.function:Detect`` or ``mypkg.fns:make_scorer``.
_ENTRY = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*:[A-Za-z_][A-Za-z0-9_]*")
# A CloudEvents ``type``: printable ASCII without spaces (reverse-DNS by convention).
_EVENT_TYPE = re.compile(r"[\x21-\x7e]{1,255}")
# Keys a function's ``deploy`` block may hold: the chart's per-Knative-Service settings.
DEPLOY_KEYS = frozenset({
    "image", "tag", "minScale", "maxScale", "scaleToZeroRetention", "target", "containerConcurrency",
    "timeoutSeconds", "resources", "env", "nodeSelector", "affinity", "tolerations",
})


class WorkflowError(ConfigError):
    """A workflow declaration that cannot be used; ``str()`` names the place and the field."""

    code = "invalid_workflow"

    def __init__(self, detail: str, *, path: str = "", line: int | None = None, source: str = "") -> None:
        self.detail = detail
        self.path = path
        self.line = line
        self.source = source
        where = source + (f":{line}" if line else "")
        prefix = ": ".join(p for p in (where, path) if p)
        super().__init__(f"{prefix}: {detail}" if prefix else detail)


def slug(name: str) -> str:
    """A name as a DNS-1123 fragment (Kubernetes object names): lowercase, ``_``/``.`` → ``-``."""
    return name.lower().replace("_", "-").replace(".", "-").strip("-")


@dataclass(frozen=True)
class SLOSpec:
    """The workflow's service level objective, in the units of the topology files."""

    max_latency_ms: float = 500.0
    min_bandwidth_mbps: float = 10.0


@dataclass(frozen=True)
class FunctionSpec:
    """One function of a workflow.

    ``node`` is the node it is pinned to, or None when it may run on any node. ``reads`` names
    the functions whose state it reads (its inputs); ``config`` is passed to its ``start``.
    ``deploy`` holds the chart's Knative settings for it (image, scale, resources...).
    """

    name: str
    entry: str
    accepts: tuple[str, ...]
    emits: tuple[str, ...] = ()
    reads: tuple[str, ...] = ()
    node: str | None = None
    config: Mapping[str, str] = field(default_factory=dict)
    deploy: Mapping[str, Any] = field(default_factory=dict)

    @property
    def pinned(self) -> bool:
        return self.node is not None

    def runs_on(self, node: str) -> bool:
        return self.node is None or self.node == node


@dataclass(frozen=True)
class Workflow:
    name: str
    functions: tuple[FunctionSpec, ...]
    policy: str = "skylark"
    slo: SLOSpec = field(default_factory=SLOSpec)
    # Where the ``stateless`` baseline keeps every function's state (the thesis's cloud); None:
    # the topology's node of type cloud.
    stateless_node: str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "_by_name", {f.name: f for f in self.functions})

    # -- queries ----------------------------------------------------------------------------

    def function(self, name: str) -> FunctionSpec | None:
        return self._by_name.get(name)  # type: ignore[attr-defined]

    def __contains__(self, name: object) -> bool:
        return name in self._by_name  # type: ignore[attr-defined]

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(f.name for f in self.functions)

    def readers_of(self, name: str) -> list[FunctionSpec]:
        """The functions that read ``name``'s state: where its bundle is needed next."""
        return [f for f in self.functions if name in f.reads]

    def consumers_of(self, event_type: str) -> list[FunctionSpec]:
        """The functions a Trigger delivers events of ``event_type`` to."""
        return [f for f in self.functions if event_type in f.accepts]

    def placed_on(self, node: str) -> list[FunctionSpec]:
        """The functions that run on ``node``: pinned there, or placed on any node."""
        return [f for f in self.functions if f.runs_on(node)]

    def entry_types(self) -> tuple[str, ...]:
        """Event types that start the workflow: accepted, but emitted by no function of it."""
        emitted = {t for f in self.functions for t in f.emits}
        return tuple(dict.fromkeys(t for f in self.functions for t in f.accepts if t not in emitted))

    def terminal_types(self) -> tuple[str, ...]:
        """Event types that end it: emitted, but accepted by no function of it."""
        accepted = {t for f in self.functions for t in f.accepts}
        return tuple(dict.fromkeys(t for f in self.functions for t in f.emits if t not in accepted))

    def pinned_nodes(self) -> tuple[str, ...]:
        nodes = [f.node for f in self.functions if f.node is not None]
        if self.stateless_node is not None:
            nodes.append(self.stateless_node)
        return tuple(dict.fromkeys(nodes))

    def check_nodes(self, known: Iterable[str], source: str = "") -> None:
        """Every node the workflow names exists in the topology (``known``)."""
        known = set(known)
        for i, fn in enumerate(self.functions):
            if fn.node is not None and fn.node not in known:
                raise WorkflowError(f"node {fn.node!r} is not in the topology (nodes: {', '.join(sorted(known))})",
                                    path=f"spec.functions[{i}].node", source=source)
        if self.stateless_node is not None and self.stateless_node not in known:
            raise WorkflowError(f"node {self.stateless_node!r} is not in the topology",
                                path="spec.stateless_node", source=source)

    def with_policy(self, policy: str) -> "Workflow":
        if policy not in POLICIES:
            raise WorkflowError(f"policy {policy!r} must be one of {', '.join(POLICIES)}", path="spec.policy")
        return Workflow(self.name, self.functions, policy, self.slo, self.stateless_node)

    # -- the document -----------------------------------------------------------------------

    def to_document(self) -> dict[str, Any]:
        """The declaration as plain data (what :meth:`from_document` reads back)."""
        functions = []
        for fn in self.functions:
            entry: dict[str, Any] = {"name": fn.name, "entry": fn.entry, "accepts": list(fn.accepts)}
            if fn.emits:
                entry["emits"] = list(fn.emits)
            if fn.reads:
                entry["reads"] = list(fn.reads)
            entry["node"] = fn.node or ANY_NODE
            if fn.config:
                entry["config"] = dict(fn.config)
            if fn.deploy:
                entry["deploy"] = dict(fn.deploy)
            functions.append(entry)
        spec: dict[str, Any] = {
            "policy": self.policy,
            "slo": {"max_latency_ms": self.slo.max_latency_ms, "min_bandwidth_mbps": self.slo.min_bandwidth_mbps},
        }
        if self.stateless_node is not None:
            spec["stateless_node"] = self.stateless_node
        spec["functions"] = functions
        return {"apiVersion": API_VERSION, "kind": KIND, "metadata": {"name": self.name}, "spec": spec}

    @classmethod
    def from_document(cls, data: object, *, source: str = "",
                      line_of: Callable[[str], int | None] = lambda _path: None) -> "Workflow":
        return _Reader(source, line_of).workflow(data)


class _Reader:
    """Validates a document field by field; every error names its path (and line)."""

    def __init__(self, source: str, line_of: Callable[[str], int | None]) -> None:
        self.source = source
        self.line_of = line_of

    def fail(self, path: str, detail: str) -> WorkflowError:
        return WorkflowError(detail, path=path, line=self.line_of(path), source=self.source)

    def mapping(self, value: object, path: str, allowed: Iterable[str], required: Iterable[str] = ()) -> Mapping:
        if not isinstance(value, Mapping):
            raise self.fail(path, f"must be a mapping, not {_kind(value)}")
        unknown = [str(k) for k in value if k not in allowed]
        if unknown:
            raise self.fail(f"{path}.{unknown[0]}" if path else unknown[0],
                            f"unknown key (allowed here: {', '.join(sorted(allowed))})")
        for key in required:
            if value.get(key) is None:
                raise self.fail(path, f"missing {key}")
        return value

    def name(self, value: object, path: str, kind: str) -> str:
        if not isinstance(value, str) or NAME_PATTERN.fullmatch(value) is None:
            raise self.fail(path, f"{kind} {_shown(value)} must match [A-Za-z0-9_.-]{{1,128}}")
        return value

    def strings(self, value: object, path: str, check: Callable[[object, str], str]) -> tuple[str, ...]:
        if value is None:
            return ()
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list):
            raise self.fail(path, f"must be a list, not {_kind(value)}")
        out = [check(item, f"{path}[{i}]") for i, item in enumerate(value)]
        duplicates = sorted({x for x in out if out.count(x) > 1})
        if duplicates:
            raise self.fail(path, f"{duplicates[0]!r} appears twice")
        return tuple(out)

    def event_type(self, value: object, path: str) -> str:
        if not isinstance(value, str) or _EVENT_TYPE.fullmatch(value) is None:
            raise self.fail(path, f"event type {_shown(value)} must be 1-255 printable ASCII characters, no spaces")
        return value

    def number(self, value: object, path: str, *, positive: bool) -> float:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise self.fail(path, f"must be a finite number, not {_shown(value)}")
        if value < 0 or (positive and value == 0):
            raise self.fail(path, f"must be {'> 0' if positive else '>= 0'}, not {value!r}")
        return float(value)

    def workflow(self, data: object) -> Workflow:
        doc = self.mapping(data, "", ("apiVersion", "kind", "metadata", "spec"), ("apiVersion", "kind", "spec"))
        if doc["apiVersion"] != API_VERSION:
            raise self.fail("apiVersion", f"{_shown(doc['apiVersion'])} is not supported (this Skylark reads {API_VERSION})")
        if doc["kind"] != KIND:
            raise self.fail("kind", f"must be {KIND}, not {_shown(doc['kind'])}")
        metadata = self.mapping(doc.get("metadata") or {}, "metadata", ("name", "labels", "annotations"))
        name = self.name(metadata.get("name", "workflow"), "metadata.name", "workflow name")
        spec = self.mapping(doc["spec"], "spec", ("policy", "slo", "stateless_node", "functions"), ("functions",))
        policy = spec.get("policy", "skylark")
        if policy not in POLICIES:
            raise self.fail("spec.policy", f"{_shown(policy)} must be one of {', '.join(POLICIES)}")
        slo = SLOSpec()
        if spec.get("slo") is not None:
            raw = self.mapping(spec["slo"], "spec.slo", ("max_latency_ms", "min_bandwidth_mbps"))
            slo = SLOSpec(
                self.number(raw.get("max_latency_ms", slo.max_latency_ms), "spec.slo.max_latency_ms", positive=True),
                self.number(raw.get("min_bandwidth_mbps", slo.min_bandwidth_mbps), "spec.slo.min_bandwidth_mbps",
                            positive=False),
            )
        stateless_node = None
        if spec.get("stateless_node") is not None:
            stateless_node = self.name(spec["stateless_node"], "spec.stateless_node", "node name")
        raw_functions = spec["functions"]
        if not isinstance(raw_functions, list) or not raw_functions:
            raise self.fail("spec.functions", "must be a non-empty list of functions")
        functions = [self.function(raw, f"spec.functions[{i}]") for i, raw in enumerate(raw_functions)]
        self.cross_check(functions)
        return Workflow(name, tuple(functions), policy, slo, stateless_node)

    def function(self, raw: object, path: str) -> FunctionSpec:
        fn = self.mapping(raw, path, ("name", "entry", "accepts", "emits", "reads", "node", "config", "deploy"),
                          ("name", "entry", "accepts"))
        name = self.name(fn["name"], f"{path}.name", "function name")
        entry = fn["entry"]
        if not isinstance(entry, str) or _ENTRY.fullmatch(entry) is None:
            raise self.fail(f"{path}.entry", f"{_shown(entry)} must be MODULE:FACTORY, e.g. mypkg.functions:Score")
        accepts = self.strings(fn["accepts"], f"{path}.accepts", self.event_type)
        if not accepts:
            raise self.fail(f"{path}.accepts", "name at least one event type")
        emits = self.strings(fn.get("emits"), f"{path}.emits", self.event_type)
        reads = self.strings(fn.get("reads"), f"{path}.reads", lambda v, p: self.name(v, p, "function name"))
        node_raw = fn.get("node", ANY_NODE)
        node = None if node_raw == ANY_NODE else self.name(node_raw, f"{path}.node", f"node name (or {ANY_NODE!r})")
        config: dict[str, str] = {}
        for key, value in self.mapping(fn.get("config") or {}, f"{path}.config", _AnyKey()).items():
            key_path = f"{path}.config.{key}"
            if not isinstance(key, str) or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]{0,63}", key):
                raise self.fail(key_path, "config keys must be identifiers ([A-Za-z_][A-Za-z0-9_]*)")
            if isinstance(value, bool):
                value = "true" if value else "false"
            elif isinstance(value, (list, tuple)):
                if not all(isinstance(v, (str, int, float)) and not isinstance(v, bool) for v in value):
                    raise self.fail(key_path, "a list value may hold strings and numbers only")
                value = ",".join(str(v) for v in value)
            elif not isinstance(value, (str, int, float)):
                raise self.fail(key_path, f"must be a string, number, boolean or list, not {_kind(value)}")
            config[key] = str(value)
        deploy = dict(self.mapping(fn.get("deploy") or {}, f"{path}.deploy", DEPLOY_KEYS))
        return FunctionSpec(name, entry, accepts, emits, reads, node, config, deploy)

    def cross_check(self, functions: list[FunctionSpec]) -> None:
        seen: dict[str, int] = {}
        slugs: dict[str, str] = {}
        for i, fn in enumerate(functions):
            if fn.name in seen:
                raise self.fail(f"spec.functions[{i}].name", f"{fn.name!r} is already the name of spec.functions[{seen[fn.name]}]")
            seen[fn.name] = i
            other = slugs.setdefault(slug(fn.name), fn.name)
            if other != fn.name:
                raise self.fail(f"spec.functions[{i}].name",
                                f"{fn.name!r} and {other!r} map to the same Kubernetes name {slug(fn.name)!r}")
        for i, fn in enumerate(functions):
            for k, read in enumerate(fn.reads):
                if read == fn.name:
                    raise self.fail(f"spec.functions[{i}].reads[{k}]", "a function cannot read its own state as input")
                if read not in seen:
                    raise self.fail(f"spec.functions[{i}].reads[{k}]",
                                    f"{read!r} is not a function of this workflow ({', '.join(seen)})")


class _AnyKey:
    """``allowed`` for a mapping whose keys are free (checked by the caller)."""

    def __contains__(self, _key: object) -> bool:
        return True

    def __iter__(self):  # noqa: ANN204 - only for error messages, never reached
        return iter(())


def _kind(value: object) -> str:
    return "null" if value is None else type(value).__name__


def _shown(value: object) -> str:
    if isinstance(value, str):
        return repr(value if len(value) <= 60 else value[:57] + "...")
    return _kind(value) if not isinstance(value, (int, float)) else repr(value)
