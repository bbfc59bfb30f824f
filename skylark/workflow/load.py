"""Reading a workflow declaration: from a YAML file, a YAML/JSON string, or the environment.

YAML is composed into its node tree once, so an error can name the line of the field it is
about (``workflow.yaml:14: spec.functions[1].entry: ...``); the values come from PyYAML's safe
constructor, as ``yaml.safe_load`` would give them.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import yaml

from skylark.workflow.model import Workflow, WorkflowError

# Where a function or the handlers find the workflow: a file path, or the declaration itself
# (YAML or JSON: what the chart's ConfigMap carries).
ENV_WORKFLOW = "SKYLARK_WORKFLOW"
MAX_DOCUMENT_BYTES = 1024 * 1024


def _lines(node: yaml.Node, path: str, out: dict[str, int]) -> None:
    out.setdefault(path, node.start_mark.line + 1)
    if isinstance(node, yaml.MappingNode):
        for key, value in node.value:
            name = str(key.value)
            child = f"{path}.{name}" if path else name
            out.setdefault(child, key.start_mark.line + 1)
            _lines(value, child, out)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            _lines(item, f"{path}[{i}]", out)


def parse_workflow(text: str, source: str = "<workflow>") -> Workflow:
    """A workflow from YAML (JSON is YAML too); :class:`WorkflowError` names line and field."""
    if len(text.encode("utf-8", "surrogatepass")) > MAX_DOCUMENT_BYTES:
        raise WorkflowError(f"the declaration is larger than {MAX_DOCUMENT_BYTES} bytes", source=source)
    try:
        loader = yaml.SafeLoader(text)
        try:
            root = loader.get_single_node()
            data = loader.construct_document(root) if root is not None else None
        finally:
            loader.dispose()
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        raise WorkflowError(f"not valid YAML: {exc.problem or exc}", source=source,
                            line=mark.line + 1 if mark else None) from None
    except yaml.YAMLError as exc:
        raise WorkflowError(f"not valid YAML: {exc}", source=source) from None
    lines: dict[str, int] = {}
    if root is not None:
        _lines(root, "", lines)

    def line_of(path: str) -> int | None:
        # The field itself, else the nearest enclosing one that exists in the file.
        while path:
            if path in lines:
                return lines[path]
            path = path.rsplit("[", 1)[0] if path.endswith("]") else path.rpartition(".")[0]
        return lines.get("")

    return Workflow.from_document(data, source=source, line_of=line_of)


def load_workflow(path: str | Path) -> Workflow:
    """The workflow declared in the YAML file at ``path``."""
    file = Path(path)
    try:
        text = file.read_text(encoding="utf-8")
    except OSError as exc:
        raise WorkflowError(f"cannot read the workflow file: {exc.strerror or exc}", source=str(file)) from None
    except UnicodeDecodeError:
        raise WorkflowError("the workflow file is not UTF-8 text", source=str(file)) from None
    return parse_workflow(text, str(file))


def workflow_from_env(env: Mapping[str, str] | None = None) -> Workflow | None:
    """``SKYLARK_WORKFLOW``: a file path, or the declaration itself (YAML/JSON); None when unset.

    ``SKYLARK_POLICY``, when set, overrides the declaration's policy: one workflow runs under
    another policy (the chart's ``config.policy``, ``skylark up --policy``) without an edit.
    """
    env = os.environ if env is None else env
    raw = env.get(ENV_WORKFLOW, "").strip()
    if not raw:
        return None
    if "\n" in raw or raw.startswith("{"):
        workflow = parse_workflow(raw, f"${ENV_WORKFLOW}")
    else:
        workflow = load_workflow(raw)
    policy = env.get("SKYLARK_POLICY", "").strip()
    return workflow.with_policy(policy) if policy else workflow
