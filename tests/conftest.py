"""Shared fixtures: the project's params with tiny overrides, and a working directory."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest
import yaml

from lungct.params import Params, merge, parse_params

ROOT = Path(__file__).resolve().parents[1]

# A cohort and network small enough for a unit test: seconds, not minutes.
TINY = {
    "data": {"synthetic": {"patients": 9, "slices": 2, "image_size": 64}},
    "convert": {"image_size": 32},
    "train": {
        "epochs": 1,
        "batch_size": 8,
        "filters": [4, 8],
        "convs_per_block": 1,  # two (the default) in tests of their own
        "seeds": 1,  # one model; the seed ensemble in tests of its own
        "dense_units": 8,
        # A one-epoch model is near chance, so the val split's rule would leave every answer
        # uncertain: never here, so the tests see classes (uncertain answers have their own).
        # A temperature always (auto would keep one only where val patients show it helps),
        # so that inference is tested with one.
        "calibration": {"max_uncertain": 0.0, "temperature": True},
        # Off by default; on here, so determinism and inference are tested with it.
        "augment": {
            "flip": True,
            "rotation": 0.03,
            "zoom": 0.1,
            "translation": 0.05,
            "contrast": 0.1,
            "brightness": 0.05,
        },
    },
}


def pytest_configure(config: pytest.Config) -> None:
    """The run's shared folder (``tests.dvc_project.SHARED_ENV``), made by the process that
    starts the workers (pytest-xdist's controller, or pytest alone) before they start: they
    inherit its environment."""
    from tests.dvc_project import SHARED_ENV

    if not hasattr(config, "workerinput"):
        os.environ[SHARED_ENV] = tempfile.mkdtemp(prefix="lungct-tests-")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """The long tests (``e2e``, ``slow``) spread evenly through the run: pytest-xdist's
    ``worksteal`` first gives each worker a contiguous share of the list, so each gets its
    part of them, rather than one worker all of them in a row."""
    long = [i for i in items if any(i.get_closest_marker(m) for m in ("e2e", "slow"))]
    if not long:
        return
    short = [i for i in items if i not in set(long)]
    step = len(items) / len(long)
    spread: list[pytest.Item] = []
    for k, item in enumerate(long):
        spread.extend(short[len(spread) - k : max(0, round(k * step) - k)])
        spread.append(item)
    spread.extend(short[len(spread) - len(long) :])
    items[:] = spread


def pytest_unconfigure(config: pytest.Config) -> None:
    from tests.dvc_project import SHARED_ENV

    if not hasattr(config, "workerinput") and os.environ.get(SHARED_ENV):
        shutil.rmtree(os.environ.pop(SHARED_ENV), ignore_errors=True)


def project_params() -> dict:
    return yaml.safe_load((ROOT / "params.yaml").read_text())


@pytest.fixture
def tiny_raw() -> dict:
    """The project's params.yaml with the tiny overrides, as a plain dict."""
    return merge(project_params(), TINY)


@pytest.fixture
def tiny(tiny_raw: dict) -> Params:
    return parse_params(tiny_raw)


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Run in an empty folder, as DVC runs stages in the project root."""
    monkeypatch.chdir(tmp_path)
    return tmp_path
