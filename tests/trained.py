"""The tiny trained project the inference tests read, and the environment to run stages in.

It is ``tests.dvc_project.dvc_project()``: the project's params.yaml with the tiny
overrides (``tests.conftest.TINY``), every stage run by ``dvc repro``, so the model,
``models/labels.json`` and ``metrics/predictions.csv`` are exactly what a user gets.
Inference tests read it and never change it (a test that writes does so under its own
``tmp_path``).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from tests.conftest import ROOT
from tests.dvc_project import dvc_project


def stage_env() -> dict[str, str]:
    """This interpreter, the repository's code, and no GPU probing noise."""
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")  # quiet on a GPU machine too (lungct.model.quiet)
    return env


def trained_project() -> Path:
    """A folder holding data/, models/ and metrics/ of a tiny run of every stage: the
    session's tiny DVC project (built once by ``dvc repro``, shared with the pipeline
    and fault tests)."""
    return dvc_project()
