"""A tiny copy of this project as its own git + DVC repository, and the commands to drive it.

``dvc_project()`` builds it once per test session: the real ``dvc.yaml``, ``lungct/``
and ``stages/``, ``params.yaml`` with the tiny overrides (``tests.conftest.TINY``),
``dvc repro`` run and committed on ``main``. Tests that change it must put it back
(``main`` checked out, ``dvc checkout``); tests that need a scratch copy clone it.
"""

from __future__ import annotations

import atexit
import functools
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

from lungct.params import merge
from tests.conftest import ROOT, TINY, project_params

# in the order DVC runs them
STAGES = ("download", "convert", "split", "cv", "train", "evaluate", "export")


def command_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """`python` in dvc.yaml must be this interpreter; DVC must not phone home."""
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["DVC_NO_ANALYTICS"] = "1"
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    env.pop("PYTHONPATH", None)
    env.update(extra or {})
    return env


def run(
    cmd: list[str],
    cwd: Path,
    stdout_only: bool = False,
    check: bool = True,
    env: dict[str, str] | None = None,
) -> str:
    result = subprocess.run(cmd, cwd=cwd, env=command_env(env), capture_output=True, text=True)
    output = result.stdout + result.stderr
    if check:
        assert result.returncode == 0, f"{' '.join(cmd)} failed:\n{output}"
    return result.stdout if stdout_only else output


def dvc(*args: str, cwd: Path, **kwargs) -> str:
    return run([sys.executable, "-m", "dvc", *args], cwd, **kwargs)


def dvc_json(*args: str, cwd: Path) -> dict:
    return json.loads(run([sys.executable, "-m", "dvc", *args, "--json"], cwd, stdout_only=True))


def git(*args: str, cwd: Path) -> str:
    return run(["git", *args], cwd)


def ran_stages(output: str) -> list[str]:
    return [s for s in STAGES if f"Running stage '{s}'" in output]


def write_params(repo: Path, override: dict) -> None:
    (repo / "params.yaml").write_text(yaml.safe_dump(merge(project_params(), override)))


def init_repo(repo: Path) -> None:
    git("init", "-q", "-b", "main", cwd=repo)
    git("config", "user.name", "Test", cwd=repo)
    git("config", "user.email", "test@example.com", cwd=repo)


def new_project(override: dict, prefix: str = "lungct-project-") -> Path:
    """A fresh copy of the project with ``override`` laid over params.yaml, after one
    committed ``dvc repro`` (every stage ran); removed when the session ends."""
    repo = Path(tempfile.mkdtemp(prefix=prefix))
    atexit.register(shutil.rmtree, repo, ignore_errors=True)
    for name in ("dvc.yaml", "pyproject.toml"):
        shutil.copy(ROOT / name, repo / name)
    for package in ("lungct", "stages"):
        shutil.copytree(
            ROOT / package, repo / package, ignore=shutil.ignore_patterns("__pycache__")
        )
    write_params(repo, override)
    init_repo(repo)
    dvc("init", "-q", cwd=repo)
    dvc("config", "core.analytics", "false", cwd=repo)
    git("add", "-A", cwd=repo)
    git("commit", "-q", "-m", "project", cwd=repo)
    output = dvc("repro", cwd=repo)
    assert ran_stages(output) == list(STAGES), output
    git("add", "-A", cwd=repo)
    git("commit", "-q", "-m", "first run", cwd=repo)
    return repo


@functools.cache
def dvc_project() -> Path:
    """The tiny project after one committed ``dvc repro`` (every stage ran), shared by
    the session's tests."""
    return new_project(TINY)


def lock_outs(repo: Path) -> dict[str, str]:
    """Every output's hash in dvc.lock, by path."""
    lock = yaml.safe_load((repo / "dvc.lock").read_text())
    return {
        out["path"]: out["md5"]
        for stage in lock["stages"].values()
        for out in stage.get("outs", [])
    }
