"""The Dockerfiles (no Docker engine here, so a static check): python slim base, the whole package
installed from the repository root, non-root with the uid the chart runs as, and `skylark serve NAME`
as the entrypoint for a NAME that `skylark serve` knows."""

from __future__ import annotations

import json
import re
import tomllib

import pytest
import yaml

from chart_fixtures import CHART, REPO
from skylark.runtime.serve import SERVICES

DOCKERFILES = {
    "handlers/Dockerfile": "handlers",
    "neighbors_service/Dockerfile": "neighbors",
    "ex_preprocess/Dockerfile": "preprocess",
    "ex_detect/Dockerfile": "detect",
    "ex_alarm/Dockerfile": "alarm",
}


def _instructions(text: str) -> list[tuple[str, str]]:
    joined = re.sub(r"\\\n", " ", text)
    out = []
    for line in joined.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


@pytest.mark.parametrize(("path", "service"), DOCKERFILES.items())
def test_dockerfile(path, service):
    instructions = _instructions((REPO / path).read_text())
    froms = [arg for word, arg in instructions if word == "FROM"]
    assert froms and all(f.split()[0] == "python:3.11-slim" for f in froms)
    [entrypoint] = [json.loads(arg) for word, arg in instructions if word == "ENTRYPOINT"]
    assert entrypoint == ["skylark", "serve", service] and service in SERVICES
    # The last USER is numeric and the uid the chart's securityContext runs as.
    user = [arg for word, arg in instructions if word == "USER"][-1]
    uid = int(user.split(":")[0])
    assert uid != 0
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    assert uid == values["knative"]["securityContext"]["runAsUser"]
    # Every package the project ships is copied, and installed with pip from the root.
    packages = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]["find"]["include"]
    copied = {arg.split()[0].rstrip("/") for word, arg in instructions if word == "COPY" and "--from" not in arg}
    for pattern in packages:
        assert pattern.rstrip("*") in copied, f"{path} does not copy {pattern}"
    assert "pyproject.toml" in copied
    assert any(word == "RUN" and re.search(r"pip install \.$", arg) for word, arg in instructions)
    assert ("EXPOSE", "8080") in instructions
