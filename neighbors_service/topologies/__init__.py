"""Example topology files shipped with the package (``thesis.yaml``, ``demo3.yaml``)."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

EXAMPLES = ("thesis", "demo3")


def example_path(name: str) -> Path:
    """Filesystem path of the shipped example ``name`` (``"thesis"`` or ``"demo3"``)."""
    if name not in EXAMPLES:
        raise ValueError(f"no example topology {name!r}; choose one of {', '.join(EXAMPLES)}")
    return Path(str(resources.files(__name__).joinpath(f"{name}.yaml")))
