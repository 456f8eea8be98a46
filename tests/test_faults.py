"""Faults cost time, never data or trust: stages killed with SIGKILL, and a DVC remote round trip.

The kill is injected from outside the project's code: a ``sitecustomize`` module on
``PYTHONPATH`` (imported by every Python process at start-up) wraps ``os.replace`` and
SIGKILLs the process at the moment a stage is about to move a finished output into
place (``LUNGCT_KILL_BEFORE=<final name>``): all of that output's work done, nothing
committed; the latest point at which a stage can die without finishing.
"""

from __future__ import annotations

import json
import shutil
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from tests.dvc_project import dvc, dvc_json, dvc_project, git, lock_outs, ran_stages

pytestmark = pytest.mark.e2e

KILL_HOOK = textwrap.dedent(
    '''
    """Test failpoint: SIGKILL this process just before it renames its temporary
    ``.<name>.tmp-*`` into ``<name>`` (``LUNGCT_KILL_BEFORE=<name>``)."""
    import os
    import signal

    _target = os.environ.get("LUNGCT_KILL_BEFORE")
    if _target:
        _replace = os.replace

        def _killing_replace(src, dst, *args, **kwargs):
            if os.path.basename(os.fspath(dst)) == _target and os.path.basename(
                os.fspath(src)
            ).startswith(f".{_target}.tmp-"):
                os.kill(os.getpid(), signal.SIGKILL)
            return _replace(src, dst, *args, **kwargs)

        os.replace = _killing_replace
    '''
)

# (stage, the output it is killed before renaming), in pipeline order. convert and train
# are killed twice: before their main output, and after it but before their metrics, so
# a rerun sees a new output that dvc.lock does not vouch for.
KILLS = [
    ("download", "raw"),
    ("convert", "converted"),
    ("convert", "convert.json"),
    ("split", "splits"),
    ("cv", "folds"),
    ("train", "model.keras"),
    ("train", "train.json"),
    ("evaluate", "eval.json"),
    ("export", "export"),  # after evaluate: DVC runs them in dvc.yaml order
]
METRICS = (
    "convert.json",
    "split.json",
    "cv.json",
    "cv_details.json",
    "train.json",
    "eval.json",
    "eval_details.json",
)


@pytest.fixture
def clone(tmp_path: Path) -> Path:
    """A fresh git clone of the tiny project: code, params and dvc.lock, no data, no cache."""
    target = tmp_path / "clone"
    git("clone", "-q", str(dvc_project()), str(target), cwd=tmp_path)
    return target


def test_killed_stages_rerun_to_the_outputs_of_an_uninterrupted_run(tmp_path: Path, clone: Path):
    # Metrics and plots come with the clone (git tracks them); without them every stage,
    # evaluate included, has work to do.
    shutil.rmtree(clone / "metrics")
    hook = tmp_path / "failpoint"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(KILL_HOOK)
    for stage, name in KILLS:
        output = dvc(
            "repro",
            cwd=clone,
            check=False,
            env={"PYTHONPATH": str(hook), "LUNGCT_KILL_BEFORE": name},
        )
        assert ran_stages(output)[-1] == stage, output
        assert "failed to reproduce" in output.lower(), output
        # No leftover that a later run could mistake for a finished output.
        assert dvc_json("status", cwd=clone), f"killed {stage} looks up to date"
    output = dvc("repro", cwd=clone)
    assert ran_stages(output) == ["export"], output  # everything before it already finished
    reference = dvc_project()
    assert lock_outs(clone) == lock_outs(reference)
    for name in METRICS:
        assert json.loads((clone / "metrics" / name).read_text()) == json.loads(
            (reference / "metrics" / name).read_text()
        ), name
    assert not list(clone.glob("**/.*.tmp-*")), "temporary leftovers after a good run"


def test_remote_round_trip(tmp_path: Path, clone: Path):
    reference = dvc_project()
    remote = tmp_path / "remote"
    # --local: the remote lives in .dvc/config.local, which git ignores; the reference
    # project stays as the other tests expect it.
    dvc("remote", "add", "--local", "-d", "store", str(remote), cwd=reference)
    dvc("push", cwd=reference)
    dvc("remote", "add", "--local", "-d", "store", str(remote), cwd=clone)
    dvc("pull", cwd=clone)

    assert dvc_json("status", cwd=clone) == {}
    assert ran_stages(dvc("repro", cwd=clone)) == []
    assert lock_outs(clone) == lock_outs(reference)

    # The pulled model gives the predictions the reference run evaluated.
    from lungct.model.dataset import image_dataset
    from lungct.model.saving import load_model

    contract = json.loads((clone / "models/labels.json").read_text())
    expected = pd.read_csv(reference / "metrics/predictions.csv")
    paths = [str(clone / "data/splits" / image) for image in expected["image"]]
    labels = [contract["classes"].index(c) for c in expected["actual"]]
    data = image_dataset(paths, labels, contract["image_size"], contract["channels"], 64)
    probabilities = load_model(clone / "models/model.keras").predict(data, verbose=0)
    columns = [f"p_{name}" for name in contract["classes"]]
    np.testing.assert_allclose(probabilities, expected[columns].to_numpy(), atol=1e-5)
