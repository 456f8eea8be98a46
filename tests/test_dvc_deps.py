"""dvc.yaml cannot drift from the code: each stage's ``deps`` list exactly the project
code files its command imports, directly or through other project modules.

A function moved to another module, or a new import, changes what a stage runs; if
``deps`` did not follow, ``dvc repro`` would not rerun the stage when that code changes.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("lungct", "stages")


def module_file(name: str) -> Path | None:
    """The file of a project module (``lungct.x`` -> lungct/x.py or lungct/x/__init__.py)."""
    if name.split(".")[0] not in PACKAGES:
        return None
    base = ROOT.joinpath(*name.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def imports_of(path: Path) -> set[str]:
    """Every project module ``path`` imports, at any depth of its code (lazy imports too)."""
    package = ".".join(path.relative_to(ROOT).with_suffix("").parts)
    if path.name != "__init__.py":
        package = package.rsplit(".", 1)[0]
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*parent, base] if base else parent)
            names.add(base)
            names.update(f"{base}.{alias.name}" for alias in node.names)  # submodules
    found = set()
    for name in names:
        parts = name.split(".")
        # importing a.b.c runs a/__init__ and a/b/__init__ too
        for i in range(1, len(parts) + 1):
            if module_file(".".join(parts[:i])) is not None:
                found.add(".".join(parts[:i]))
    return found


def closure(module: str) -> set[Path]:
    seen: set[str] = set()
    todo = [module]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        todo.extend(imports_of(module_file(name)))
    return {module_file(name) for name in seen}


def _only_docstring(path: Path) -> bool:
    """A package marker: an ``__init__.py`` that holds nothing but its docstring."""
    body = ast.parse(path.read_text(encoding="utf-8")).body
    return all(isinstance(n, ast.Expr) and isinstance(n.value, ast.Constant) for n in body)


def as_dep(path: Path, package_dirs: set[str]) -> str | None:
    """How dvc.yaml names a code file: its path, or the package folder it lies in when the
    stage depends on the whole folder; None for package markers that run no code."""
    rel = path.relative_to(ROOT).as_posix()
    if path.name == "__init__.py" and _only_docstring(path):
        return None
    for folder in package_dirs:
        if rel.startswith(folder + "/"):
            return folder
    return rel


def stages() -> dict[str, dict]:
    return yaml.safe_load((ROOT / "dvc.yaml").read_text(encoding="utf-8"))["stages"]


@pytest.mark.parametrize("name", sorted(stages()))
def test_stage_deps_are_the_code_it_imports(name):
    stage = stages()[name]
    module = stage["cmd"].removeprefix("python -m ").split()[0]
    code = {d for d in stage["deps"] if d.split("/")[0] in PACKAGES and (ROOT / d).exists()}
    folders = {d for d in code if (ROOT / d).is_dir()}
    imported = {as_dep(p, folders) for p in closure(module)} - {None}
    assert sorted(imported - code) == [], f"{name}: imported but not in deps"
    assert sorted(code - imported) == [], f"{name}: in deps but not imported"


def test_every_dep_exists():
    for name, stage in stages().items():
        for dep in stage["deps"]:
            if dep.split("/")[0] in PACKAGES:
                assert (ROOT / dep).exists(), f"{name}: {dep} does not exist"


def test_cv_stage_reads_every_train_key_but_the_ensembles():
    """The cv stage lists train's keys one by one (so that ``train.ensemble``,
    ``train.seeds`` or ``train.calibration`` alone refits no fold): a new train key must be
    added there too."""
    from lungct.params import TrainParams

    listed = {p.removeprefix("train.") for p in stages()["cv"]["params"] if p.startswith("train.")}
    assert listed == set(TrainParams.model_fields) - {"ensemble", "seeds", "calibration"}
