"""The service's container image cannot drift from the code: requirements-serve.txt holds
every package the service's code imports (except what only the Keras model and the export
stage need), at requirements.lock's versions, and the Dockerfile copies what exists.
No Docker engine here: the image itself is not built (docs/deploy.md)."""

from __future__ import annotations

import ast
import re
import sys
from importlib.metadata import packages_distributions

from tests.conftest import ROOT
from tests.test_dvc_deps import closure

# Imported by code the ONNX service never runs: Predictor.load (a .keras model) and the
# export stage's conversion (tf2onnx, and onnx for its canonical form).
NOT_SERVED = {"tensorflow", "keras", "tf2onnx", "onnx"}


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
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
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


def test_dockerfile_copies_what_exists_and_serves_the_onnx_export():
    text = (ROOT / "Dockerfile").read_text()
    assert text.startswith("#") and re.search(r"^FROM python:3\.11\.\d+-slim-", text, re.MULTILINE)
    for source in re.findall(r"^COPY (\S+)", text, re.MULTILINE):
        assert (ROOT / source).exists(), source
        assert f"!{source}" in (ROOT / ".dockerignore").read_text(), source
    assert '"-m", "stages.serve"' in text and "models/export/onnx/model.onnx" in text
