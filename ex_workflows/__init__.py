"""The example workflows, declared as data (``skylark.io/v1alpha1`` Workflow files).

- ``image-alarm.yaml``: preprocess → detect → alarm on camera images (``skylark demo``), one
  function pinned to each node of the 3-node demo topology;
- ``thesis.yaml``: the thesis's synthetic workflow, preprocess → detect → detect → alarm
  pinned to four nodes of the thesis testbed (``thesis.yaml`` topology), state of a
  configurable size (``ex_synthetic``).
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

__all__ = ["EXAMPLES", "example_path"]

EXAMPLES = ("image-alarm", "thesis")


def example_path(name: str) -> Path:
    """The file of the example workflow ``name`` (one of :data:`EXAMPLES`)."""
    if name not in EXAMPLES:
        raise LookupError(f"no example workflow {name!r} (one of {', '.join(EXAMPLES)})")
    return Path(str(files(__name__).joinpath(f"{name}.yaml")))
