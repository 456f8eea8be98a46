"""A stage started from the wrong folder ends with one line saying how to start it."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.conftest import ROOT

STAGES = sorted(
    p.stem for p in (ROOT / "stages").glob("*.py") if p.stem not in ("__init__", "stages")
)


def test_every_command_is_covered() -> None:
    assert {"download", "convert", "split", "cv", "train", "evaluate", "export"} <= set(STAGES)
    assert {"predict", "serve"} <= set(STAGES)


@pytest.mark.parametrize("stage", STAGES)
@pytest.mark.parametrize(
    "how",
    ["file from the root", "module from stages/", "file from stages/", "bare module from stages/"],
)
def test_wrong_folder_is_one_line(stage: str, how: str) -> None:
    command, cwd = {
        "file from the root": ([f"stages/{stage}.py"], ROOT),
        "module from stages/": (["-m", f"stages.{stage}"], ROOT / "stages"),
        "file from stages/": ([f"{stage}.py"], ROOT / "stages"),
        "bare module from stages/": (["-m", stage], ROOT / "stages"),
    }[how]
    env = {"PATH": "/usr/bin:/bin", "PYTHONDONTWRITEBYTECODE": "1"}
    result = subprocess.run(
        [sys.executable, *command, "--help"], cwd=cwd, env=env, capture_output=True, text=True
    )
    assert result.returncode != 0
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert lines == [
        f"error: run the stages from the project root ({ROOT}): "
        f"cd {ROOT} && python -m stages.{stage}"
    ], result.stderr


def test_from_the_root_the_guard_stays_out_of_the_way() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "stages.serve", "--help"],
        cwd=ROOT,
        env={"PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    assert "usage:" in result.stdout
