"""Workflows as data: which functions run, where, on which events, reading whose state.

A workflow is declared in one YAML file (``apiVersion: skylark.io/v1alpha1``, ``kind:
Workflow``; the format is in ``docs/workflows.md``). :func:`load_workflow` reads and validates
it, with errors that name the file, the line and the field; :class:`Workflow` answers what the
rest of Skylark asks of it: the functions placed on a node, the readers of a function's state,
the consumers of an event type, where the workflow starts and ends.

This layer is pure (plus PyYAML to read the file): it knows nothing of HTTP, Redis or Knative.
"""

from skylark.workflow.load import load_workflow, parse_workflow, workflow_from_env
from skylark.workflow.model import (
    ANY_NODE,
    API_VERSION,
    KIND,
    FunctionSpec,
    SLOSpec,
    Workflow,
    WorkflowError,
)

__all__ = [
    "ANY_NODE",
    "API_VERSION",
    "KIND",
    "FunctionSpec",
    "SLOSpec",
    "Workflow",
    "WorkflowError",
    "load_workflow",
    "parse_workflow",
    "workflow_from_env",
]
