"""The Dockerfiles (no Docker engine here, so a static check).

Three standalone images on python:3.11-slim, each installing ONE set of requirement files and
then the package with ``pip install --no-deps .``: the generic function image
(``skylark/sdk/Dockerfile``: requirements/core.txt, entrypoint ``skylark serve function``, which
serves $SKYLARK_FUNCTION), the handlers (core) and the neighbors service (core + k8s). The example
functions that need more than core are small images FROM the generic one that add only their own
dependencies; the example's alarm needs nothing more and runs in the generic image. Every image
the chart's default values name has a Dockerfile, runs as the chart's non-root uid, and copies
only package sources (never the tests or a local .venv).
"""

from __future__ import annotations

import ast
import importlib
import json
import re
import sys
import tomllib

import pytest
import yaml

from chart_fixtures import CHART, CHART_APP_VERSION, REPO, expected_functions, merged_values

# Dockerfile -> the image it builds (under image.registry) and what it is.
STANDALONE = {
    "skylark/sdk/Dockerfile": {"image": "skylark-function", "serve": "function", "requirements": {"core"}},
    "handlers/Dockerfile": {"image": "skylark-handlers", "serve": "handlers", "requirements": {"core"}},
    "neighbors_service/Dockerfile": {"image": "skylark-neighbors", "serve": "neighbors", "requirements": {"core", "k8s"}},
}
# Images FROM the generic function image: the example function (package) they serve.
DERIVED = {
    "ex_preprocess/Dockerfile": {"image": "skylark-preprocess", "package": "ex_preprocess"},
    "ex_detect/Dockerfile": {"image": "skylark-detect", "package": "ex_detect"},
}
DOCKERFILES = {**STANDALONE, **DERIVED}
GENERIC = "skylark-function"
NOT_SOURCES = {"tests", ".venv", ".tools", ".git", ".", "*", "bench/results"}
# Import name of each requirement of requirements/core.txt (and of the examples'), to tell which
# third-party imports an example function needs beyond core.
IMPORT_NAMES = {
    "redis": "redis", "xxhash": "xxhash", "pyyaml": "yaml", "cloudevents": "cloudevents", "flask": "flask",
    "gunicorn": "gunicorn", "requests": "requests", "urllib3": "urllib3", "prometheus-client": "prometheus_client",
    "pillow": "PIL", "opencv-python-headless": "cv2", "numpy": "numpy", "kubernetes": "kubernetes",
    # three distributions, one import package
    "opentelemetry-api": "opentelemetry", "opentelemetry-sdk": "opentelemetry",
    "opentelemetry-exporter-otlp-proto-http": "opentelemetry", "zstandard": "zstandard",
}


def _instructions(path: str) -> list[tuple[str, str]]:
    joined = re.sub(r"\\\n", " ", (REPO / path).read_text())
    out = []
    for line in joined.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def _args(instructions, word: str) -> list[str]:
    return [arg for w, arg in instructions if w == word]


def _requirement_names(file: str) -> dict[str, str]:
    """{distribution name (lower case): the requirement line} of requirements/<file>.txt."""
    out = {}
    for line in (REPO / "requirements" / f"{file}.txt").read_text().splitlines():
        spec = line.split("#", 1)[0].strip()
        if spec:
            out[re.split(r"[<>=!~;\[ ]", spec, maxsplit=1)[0].lower()] = spec
    return out


def _pip_installed(instructions) -> list[str]:
    """The requirement specs a Dockerfile's RUN pip install lines name (quoted)."""
    specs = []
    for run in _args(instructions, "RUN"):
        for command in re.split(r"&&", run):
            if re.search(r"\bpip install\b", command):
                specs += re.findall(r'"([^"]+)"', command)
    return specs


def _serve_services() -> dict[str, str]:
    for module in ("skylark.serving.serve", "skylark.runtime.serve"):
        try:
            return importlib.import_module(module).SERVICES
        except ImportError:
            continue
    pytest.fail("neither skylark.serving.serve nor skylark.runtime.serve has SERVICES", pytrace=False)


def _runs_as_the_charts_user(instructions, path: str) -> None:
    user = _args(instructions, "USER")[-1]
    uid = int(user.split(":")[0])
    assert uid != 0, f"{path} runs as root"
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    assert uid == values["knative"]["securityContext"]["runAsUser"], path


# -- which images there are ------------------------------------------------------------------------------

def test_every_image_the_default_values_name_has_a_dockerfile():
    values = merged_values(None)
    images = {values["services"]["handlers"]["image"], values["neighbors"]["image"], values["functionDefaults"]["image"]}
    images |= {fn["settings"]["image"] for fn in expected_functions(values)}
    built = {spec["image"] for spec in DOCKERFILES.values()}
    assert images <= built, f"no Dockerfile builds {sorted(images - built)}"
    assert values["functionDefaults"]["image"] == GENERIC


def test_the_dockerfiles_are_exactly_these():
    """No stale per-function Dockerfile (ex_alarm runs in the generic image)."""
    found = {str(p.relative_to(REPO)) for p in REPO.rglob("Dockerfile")
             if not {".venv", ".tools", ".git", "node_modules"} & set(p.relative_to(REPO).parts)}
    assert found == set(DOCKERFILES)


@pytest.mark.parametrize("path", DOCKERFILES)
def test_the_build_comment_names_the_image_the_chart_pulls(path):
    """The header's `docker build -f <path> -t <registry>/<image>:<appVersion> .` is the image the
    chart's defaults pull (image.registry, appVersion)."""
    text = (REPO / path).read_text()
    registry = merged_values(None)["image"]["registry"]
    assert f"docker build -f {path} -t {registry}/{DOCKERFILES[path]['image']}:{CHART_APP_VERSION} ." in text


# -- the standalone images -------------------------------------------------------------------------------

@pytest.mark.parametrize("path", STANDALONE)
def test_standalone_image(path):
    spec = STANDALONE[path]
    instructions = _instructions(path)
    froms = _args(instructions, "FROM")
    assert froms and all(f.split()[0] == "python:3.11-slim" for f in froms)
    [entrypoint] = [json.loads(arg) for arg in _args(instructions, "ENTRYPOINT")]
    assert entrypoint == ["skylark", "serve", spec["serve"]]
    assert spec["serve"] in _serve_services(), f"`skylark serve {spec['serve']}` is not a service"
    _runs_as_the_charts_user(instructions, path)
    assert ("EXPOSE", "8080") in instructions


@pytest.mark.parametrize("path", STANDALONE)
def test_standalone_image_installs_one_requirement_set_then_the_package_without_dependencies(path):
    instructions = _instructions(path)
    runs = " && ".join(_args(instructions, "RUN"))
    installed = set(re.findall(r"pip install -r requirements/([a-z0-9_-]+)\.txt", runs))
    assert installed == STANDALONE[path]["requirements"], path
    assert re.search(r"pip install --no-deps \.(\s|$)", runs), f"{path}: the package goes in with --no-deps"
    assert not re.search(r"pip install (?!--no-deps)[^&]*\s\.(\s|$)", runs), f"{path}: a plain `pip install .` pulls every set"
    assert not re.search(r"\[(examples|k8s|local|test)\]", runs), f"{path}: no extras"
    # requirements/*.txt must be in the context before the install (pyproject reads them too).
    copied = [arg.split() for arg in _args(instructions, "COPY") if "--from" not in arg]
    assert ["requirements/", "requirements/"] in copied


def test_the_function_image_installs_core_only():
    runs = " && ".join(_args(_instructions("skylark/sdk/Dockerfile"), "RUN"))
    for heavy in ("examples", "k8s", "local", "test"):
        assert f"requirements/{heavy}.txt" not in runs, f"the function image must not install {heavy}.txt"
    for dist in ("pillow", "opencv", "numpy", "kubernetes", "rich"):
        assert dist not in runs.lower()


@pytest.mark.parametrize("path", STANDALONE)
def test_standalone_image_copies_the_package_sources_and_nothing_else(path):
    instructions = _instructions(path)
    sources = [s.rstrip("/") for arg in _args(instructions, "COPY") if "--from" not in arg for s in arg.split()[:-1]]
    assert not NOT_SOURCES & set(sources), f"{path} copies {NOT_SOURCES & set(sources)}"
    for source in sources:
        assert (REPO / source).exists(), f"{path} copies {source}, which does not exist"
    # Every package of the project that exists is copied (pip install . needs them all).
    patterns = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]["find"]["include"]
    packages = {p.rstrip("*") for p in patterns if (REPO / p.rstrip("*") / "__init__.py").is_file()}
    missing = packages - set(sources)
    assert not missing, f"{path} does not copy {sorted(missing)}"
    assert {"pyproject.toml", "README.md", "requirements"} <= set(sources)


def test_the_charts_env_is_what_the_function_image_reads():
    """The chart sets SKYLARK_FUNCTION / SKYLARK_FUNCTION_NAME / SKYLARK_WORKFLOW, the names the
    SDK reads."""
    from skylark.sdk.app import ENV_ENTRY, ENV_NAME
    from skylark.workflow.load import ENV_WORKFLOW

    assert (ENV_ENTRY, ENV_NAME, ENV_WORKFLOW) == ("SKYLARK_FUNCTION", "SKYLARK_FUNCTION_NAME", "SKYLARK_WORKFLOW")
    text = (CHART / "templates" / "knative-services.yaml").read_text() + (CHART / "templates" / "configmap.yaml").read_text()
    for name in (ENV_ENTRY, ENV_NAME, ENV_WORKFLOW):
        assert name in text


# -- the example images, FROM the generic one ------------------------------------------------------------

@pytest.mark.parametrize("path", DERIVED)
def test_example_image_extends_the_generic_image(path):
    instructions = _instructions(path)
    registry = merged_values(None)["image"]["registry"]
    assert ("ARG", f"BASE={registry}/{GENERIC}:{CHART_APP_VERSION}") in instructions
    assert _args(instructions, "FROM") == ["${BASE}"], "one stage, FROM the generic function image"
    assert not _args(instructions, "ENTRYPOINT") and not _args(instructions, "CMD"), "the generic entrypoint"
    assert not [a for a in _args(instructions, "COPY") if "--from" not in a], "its code is in the generic image"
    _runs_as_the_charts_user(instructions, path)


def _third_party_imports(package: str) -> set[str]:
    """Top-level modules the package imports that are neither stdlib nor this project's."""
    own = {p.name for p in REPO.iterdir() if (p / "__init__.py").is_file()}
    names: set[str] = set()
    for file in (REPO / package).rglob("*.py"):
        for node in ast.walk(ast.parse(file.read_text())):
            if isinstance(node, ast.Import):
                names |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names.add(node.module.split(".")[0])
    return {n for n in names if n not in sys.stdlib_module_names and n not in own and n != "__future__"}


@pytest.mark.parametrize("package", ["ex_preprocess", "ex_detect", "ex_alarm"])
def test_each_example_image_installs_what_its_function_imports_beyond_core(package):
    """The image the default workflow runs a function in provides every third-party module the
    function imports: core's from the generic image, the rest from its own pip install, with the
    very specs of requirements/examples.txt. alarm needs nothing more: the generic image."""
    core = {IMPORT_NAMES[name] for name in _requirement_names("core")}
    examples = _requirement_names("examples")
    needed = _third_party_imports(package) - core
    unknown = needed - set(IMPORT_NAMES.values())
    assert not unknown, f"{package} imports {sorted(unknown)}: add them to IMPORT_NAMES and an image"
    [fn] = [fn for fn in expected_functions(merged_values(None)) if fn["spec"].entry.startswith(f"{package}.")]
    image = fn["settings"]["image"]
    if image == GENERIC:
        assert not needed, f"{package} runs in the generic image but imports {sorted(needed)}"
        return
    [path] = [p for p, spec in DERIVED.items() if spec["image"] == image]
    assert DERIVED[path]["package"] == package
    specs = _pip_installed(_instructions(path))
    assert specs and all(spec in examples.values() for spec in specs), (specs, "must be lines of examples.txt")
    provided = {IMPORT_NAMES[re.split(r"[<>=!~;\[ ]", s, maxsplit=1)[0].lower()] for s in specs}
    assert provided == needed, f"{path} installs {sorted(provided)}, {package} needs {sorted(needed)}"


def test_the_detect_image_keeps_the_system_library_opencv_loads():
    runs = " ".join(_args(_instructions("ex_detect/Dockerfile"), "RUN"))
    assert "apt-get install -y --no-install-recommends libglib2.0-0" in runs
    assert "rm -rf /var/lib/apt/lists/*" in runs


def test_every_core_requirement_has_an_import_name():
    assert set(_requirement_names("core")) <= set(IMPORT_NAMES)
    assert set(_requirement_names("examples")) <= set(IMPORT_NAMES)
