"""The service's container image cannot drift from the code: requirements-serve.txt holds
every package the service's code imports (except what only the Keras model and the export
stage need), at requirements.lock's versions, and the Dockerfile copies what exists.
No Docker engine here: the image itself is not built (docs/deploy.md)."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from importlib.metadata import packages_distributions

from tests.conftest import ROOT
from tests.test_dvc_deps import closure

# Imported by code the ONNX service never runs: Predictor.load (a .keras model: the network
# module, with scikit-learn's class weights) and the export stage's conversion (tf2onnx).
NOT_SERVED = {"tensorflow", "keras", "sklearn", "tf2onnx"}


def pins(name: str) -> dict[str, str]:
    found = {}
    for line in (ROOT / name).read_text().splitlines():
        match = re.match(r"^([A-Za-z0-9_.\-]+)(\[[^\]]*\])?==([^\s#]+)", line)
        if match:
            found[normalize(match.group(1))] = match.group(3)
    return found


def normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def third_party_imports(module: str) -> set[str]:
    names: set[str] = set()
    for path in closure(module):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for block in ast.walk(tree):  # imports for type checkers only are not run
            if isinstance(block, ast.If) and ast.unparse(block.test) == "TYPE_CHECKING":
                block.body = []
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names.add(node.module.split(".")[0])
    project = {"lungct", "stages", "__future__"}
    return {n for n in names if n not in sys.stdlib_module_names and n not in project}


def test_serve_requirements_cover_the_service_and_match_the_lock():
    # requirements-serve.in names the service's packages; requirements-serve.txt is it
    # compiled against requirements.lock (tests/test_packaging.py checks the header too).
    serve, lock = pins("requirements-serve.txt"), pins("requirements.lock")
    assert serve == {k: lock.get(k) for k in serve}
    listed = {
        normalize(re.match(r"[A-Za-z0-9_.\-]+", line).group())
        for line in (ROOT / "requirements-serve.in").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    }
    assert listed <= set(serve), sorted(listed - set(serve))
    serve = {k: v for k, v in serve.items() if k in listed}
    distributions = packages_distributions()
    needed = {
        normalize(distributions[name][0])
        for name in third_party_imports("stages.serve") - NOT_SERVED
    }
    assert needed <= set(serve), sorted(needed - set(serve))
    # Not imported by name, but needed: multipart bodies, compressed DICOM pixel data.
    assert {"python-multipart", "pylibjpeg-openjpeg", "python-gdcm", "pyjpegls"} <= set(serve)


def test_the_onnx_service_imports_neither_tensorflow_nor_pandas():
    code = (
        "import sys, stages.serve, lungct.serving.service; "
        "print(sorted({'tensorflow', 'keras', 'pandas'} & set(sys.modules)))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "[]"


def test_dockerfile_copies_what_exists_and_serves_the_onnx_export():
    text = (ROOT / "Dockerfile").read_text()
    assert text.startswith("#") and re.search(r"^FROM python:3\.11\.\d+-slim-", text, re.MULTILINE)
    for source in re.findall(r"^COPY (\S+)", text, re.MULTILINE):
        assert (ROOT / source).exists(), source
        assert f"!{source}" in (ROOT / ".dockerignore").read_text(), source
    assert '"-m", "stages.serve"' in text and "models/export/onnx/model.onnx" in text
