"""A tiny copy of this project as its own git + DVC repository, and the commands to drive it.

``dvc_project()`` builds it once per test run: the real ``dvc.yaml``, ``lungct/``
and ``stages/``, ``params.yaml`` with the tiny overrides (``tests.conftest.TINY``),
``dvc repro`` run and committed on ``main``. Under pytest-xdist the first worker that
needs it builds it in the run's shared folder (``SHARED_ENV``, made by ``tests/conftest.py``)
while the others wait, and every worker process works on a copy of its own. Tests that
change it must put it back (``main`` checked out, ``dvc checkout``); tests that need a
scratch copy clone it.
"""

from __future__ import annotations

import atexit
import fcntl
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

# A folder every test process of one pytest run shares (tests/conftest.py makes it).
SHARED_ENV = "LUNGCT_TEST_SHARED"

# in the order DVC runs them
STAGES = ("download", "convert", "split", "cv", "train", "evaluate", "export")


def command_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """`python` in dvc.yaml must be this interpreter; DVC must not phone home."""
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["DVC_NO_ANALYTICS"] = "1"
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")  # quiet on a GPU machine too (lungct.model.quiet)
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


def scratch_dir(prefix: str) -> Path:
    """A new temporary folder, removed when this process ends."""
    path = Path(tempfile.mkdtemp(prefix=prefix))
    atexit.register(shutil.rmtree, path, ignore_errors=True)
    return path


def new_project(override: dict, prefix: str = "lungct-project-", repo: Path | None = None) -> Path:
    """A fresh copy of the project (its code, dvc.yaml, .gitignore, and the DVC config with
    the plots template) with ``override`` laid over params.yaml, after one
    committed ``dvc repro`` (every stage ran); in ``repo`` (a new folder) if given, else in
    a temporary folder removed when the session ends."""
    if repo is None:
        repo = scratch_dir(prefix)
    else:
        repo.mkdir()
    for name in ("dvc.yaml", "pyproject.toml", ".gitignore"):
        shutil.copy(ROOT / name, repo / name)
    for package in ("lungct", "stages", "plots_template"):
        shutil.copytree(
            ROOT / package, repo / package, ignore=shutil.ignore_patterns("__pycache__")
        )
    write_params(repo, override)
    init_repo(repo)
    dvc("init", "-q", cwd=repo)
    for name in (".dvcignore", ".dvc/config"):  # over the ones `dvc init` wrote
        shutil.copy(ROOT / name, repo / name)
    dvc("config", "core.analytics", "false", cwd=repo)
    git("add", "-A", cwd=repo)
    git("commit", "-q", "-m", "project", cwd=repo)
    output = dvc("repro", cwd=repo)
    assert ran_stages(output) == list(STAGES), output
    git("add", "-A", cwd=repo)
    git("commit", "-q", "-m", "first run", cwd=repo)
    return repo


def copy_project(source: Path, target: Path) -> Path:
    """A copy of a built project, its DVC cache included, without DVC's scratch state
    (``.dvc/tmp``: locks, hash database, queue) or a local remote (``.dvc/config.local``)."""

    def skip(folder: str, names: list[str]) -> list[str]:
        return ["tmp", "config.local"] if Path(folder) == source / ".dvc" else []

    shutil.copytree(source, target, symlinks=True, ignore=skip)
    return target


@functools.cache
def dvc_project() -> Path:
    """The tiny project after one committed ``dvc repro`` (every stage ran), shared by
    this process's tests: built once per run, copied once per process."""
    shared = os.environ.get(SHARED_ENV)
    if not shared:  # not under this suite's conftest (a script importing this module)
        return new_project(TINY)
    built = Path(shared) / "tiny-project"
    with open(Path(shared) / "tiny-project.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one process builds, the others wait for it
        if not built.exists():
            building = Path(shared) / "tiny-project.building"
            shutil.rmtree(building, ignore_errors=True)  # a build that failed before
            new_project(TINY, repo=building)
            building.rename(built)
    return copy_project(built, scratch_dir("lungct-project-") / "project")


def lock_outs(repo: Path) -> dict[str, str]:
    """Every output's hash in dvc.lock, by path."""
    lock = yaml.safe_load((repo / "dvc.lock").read_text())
    return {
        out["path"]: out["md5"]
        for stage in lock["stages"].values()
        for out in stage.get("outs", [])
    }
