"""End to end: the real dvc.yaml on a tiny cohort, in a temporary git repository."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lungct.evaluation.metrics import HEADLINE
from tests.dvc_project import dvc, dvc_json, dvc_project, ran_stages

pytestmark = pytest.mark.e2e


@pytest.fixture
def repo() -> Path:
    """The session's tiny DVC project (built once); tests put it back as they found it."""
    return dvc_project()


def test_metrics_have_documented_keys_and_sane_values(repo: Path):
    convert = json.loads((repo / "metrics/convert.json").read_text())
    assert convert["files"] == convert["converted"] == 9 * 2
    assert convert["patients"] == 9 and convert["skipped"] == 0

    split = json.loads((repo / "metrics/split.json").read_text())
    assert split["groups_in_several_splits"] == 0
    assert split["groups"] == {"train": 3, "val": 3, "test": 3}
    assert sum(split["images"].values()) == 18

    train = json.loads((repo / "metrics/train.json").read_text())
    assert train["epochs"] == 1 and train["train_images"] == 6
    assert 0.0 <= train["val_accuracy"] <= 1.0 and train["loss"] > 0

    evaluation = json.loads((repo / "metrics/eval_details.json").read_text())
    assert evaluation["images"] == 6 and evaluation["groups"] == 3
    assert 0.0 <= evaluation["accuracy"] <= 1.0 and evaluation["loss"] > 0
    assert set(evaluation["per_class"]) == {"benign", "malignant", "normal"}
    assert sum(sum(row.values()) for row in evaluation["confusion"].values()) == 6
    assert evaluation["group_level"]["groups"] == 3
    assert evaluation["ci95"]["resamples"] == 1000
    assert evaluation["split"]["strategy"] == "grouped" and evaluation["split"]["leaky"] is False
    json.loads((repo / "metrics/eval_details.json").read_text(), parse_constant=_no_nan)
    headline = json.loads((repo / "metrics/eval.json").read_text(), parse_constant=_no_nan)
    assert sorted(headline) == sorted(HEADLINE)
    assert headline["balanced_accuracy"] == evaluation["balanced_accuracy"]
    assert headline["ci_low"] == evaluation["ci95"]["balanced_accuracy"]["low"]
    assert headline["ece"] == evaluation["calibration"]["ece"] and headline["leaky"] is False
    report = (repo / "metrics/report.md").read_text()
    assert "| balanced accuracy |" in report and "Slices are not patients" in report
    assert (repo / "metrics/test_grid.png").stat().st_size > 0
    charts = ("training_curves.png", "confusion_normalized.png", "roc.png", "reliability.png")
    charts += ("risk_coverage.png",)
    assert sorted(p.name for p in (repo / "metrics/charts").iterdir()) == sorted(charts)
    assert all(f"](charts/{name})" in report for name in charts)
    assert sorted(p.name for p in (repo / "metrics/roc").iterdir()) == [
        f"{c}.csv" for c in ("benign", "malignant", "normal")
    ]

    contract = json.loads((repo / "models/labels.json").read_text())
    assert contract["classes"] == ["benign", "malignant", "normal"]
    assert contract["image_size"] == 32 and contract["channels"] == 1
    assert (repo / "metrics/train/plots/metrics/train/loss.tsv").exists()
    assert (repo / "data/raw/SOURCE.json").exists()


def _no_nan(token: str) -> None:
    raise AssertionError(f"eval.json holds {token}")


def test_metrics_show_fits_120_columns(repo: Path):
    """Only the headline figures are declared metrics: `dvc metrics show` is two narrow rows,
    the cross-validation means (empty without split.folds) on the same columns as the test
    figures."""
    shown = dvc("metrics", "show", cwd=repo, stdout_only=True)
    lines = [line for line in shown.splitlines() if line.strip()]
    assert [line.split()[0] for line in lines[1:]] == ["metrics/cv.json", "metrics/eval.json"]
    assert max(len(line) for line in lines) <= 120, shown


def test_second_repro_runs_nothing(repo: Path):
    assert ran_stages(dvc("repro", cwd=repo)) == []


def test_python_bytecode_beside_the_code_leaves_the_pipeline_up_to_date(repo: Path):
    # Python writes __pycache__/*.pyc into lungct/ when it imports it (unless
    # PYTHONDONTWRITEBYTECODE is set); their bytes carry the source's mtime, so hashed
    # with the directory dependencies they made every fresh clone rerun every stage.
    caches = [repo / "lungct" / folder / "__pycache__" for folder in ("phantom", "annotations")]
    try:
        for cache in caches:
            cache.mkdir(exist_ok=True)
            (cache / "written_by_this_test.cpython-311.pyc").write_bytes(b"\x00" * 16)
        assert dvc_json("status", cwd=repo) == {}
    finally:
        for cache in caches:
            (cache / "written_by_this_test.cpython-311.pyc").unlink(missing_ok=True)
