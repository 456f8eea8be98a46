"""The report's static PNG charts: valid images, byte-reproducible, skipped without data."""

import logging
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from lungct.evaluation.charts import (
    CONFUSION_FILE,
    CURVES_FILE,
    ROC_FILE,
    confusion_chart,
    read_curves,
    roc_chart,
    training_curves,
    write_charts,
)
from lungct.evaluation.metrics import classification_metrics, roc_curves
from lungct.evaluation.report import markdown_report

THREE = ["benign", "malignant", "normal"]
Y3 = np.array([0, 0, 1, 1, 1, 2])
P3 = np.array(
    [
        [0.7, 0.2, 0.1],
        [0.3, 0.6, 0.1],
        [0.1, 0.8, 0.1],
        [0.2, 0.5, 0.3],
        [0.1, 0.3, 0.6],
        [0.2, 0.1, 0.7],
    ]
)
PREDICTIONS = pd.DataFrame(
    {"actual": [THREE[i] for i in Y3], "predicted": [THREE[i] for i in P3.argmax(axis=1)]}
)


def write_curves(folder: Path, epochs: int = 3) -> Path:
    """DVCLive's layout, as the train stage writes it: <side>/<metric>.tsv, columns step, metric."""
    for side, offset in (("train", 0.0), ("eval", 0.1)):
        (folder / side).mkdir(parents=True)
        for metric, values in (
            ("loss", [1.2 - 0.3 * e + offset for e in range(epochs)]),
            ("accuracy", [0.4 + 0.15 * e - offset for e in range(epochs)]),
        ):
            table = pd.DataFrame({"step": range(epochs), metric: values})
            table.to_csv(folder / side / f"{metric}.tsv", sep="\t", index=False)
    return folder


def assert_png(path: Path, size: tuple[int, int]) -> None:
    with Image.open(path) as image:
        assert image.format == "PNG"
        assert image.size == size
        image.load()  # decodes every pixel: a truncated file fails here
        assert "Software" not in image.info  # no matplotlib version in the bytes
        assert np.asarray(image.convert("L")).std() > 0  # something is drawn


def test_each_chart_writes_a_png_of_fixed_size(tmp_path: Path):
    curves = read_curves(write_curves(tmp_path / "live"))
    assert curves is not None
    assert curves["loss"]["eval"]["step"].tolist() == [0, 1, 2]
    training_curves(curves, tmp_path / "curves.png")
    confusion_chart(PREDICTIONS["actual"], PREDICTIONS["predicted"], THREE, tmp_path / "cm.png")
    roc_chart(roc_curves(Y3, P3, THREE), tmp_path / "roc.png")
    assert_png(tmp_path / "curves.png", (1000, 400))
    assert_png(tmp_path / "cm.png", (600, 500))
    assert_png(tmp_path / "roc.png", (600, 500))
    assert not list(tmp_path.glob(".*.tmp-*")), "temporary leftovers"


def test_single_epoch_and_absent_class_still_draw(tmp_path: Path):
    """The tiny pipeline trains one epoch; a class without test images has an empty row."""
    curves = read_curves(write_curves(tmp_path / "live", epochs=1))
    training_curves(curves, tmp_path / "curves.png")
    confusion_chart(["benign", "normal"], ["normal", "normal"], THREE, tmp_path / "cm.png")
    assert_png(tmp_path / "curves.png", (1000, 400))
    assert_png(tmp_path / "cm.png", (600, 500))


def test_same_inputs_give_identical_bytes(tmp_path: Path):
    live = write_curves(tmp_path / "live")
    roc = roc_curves(Y3, P3, THREE)
    first = write_charts(tmp_path / "a", live, PREDICTIONS, THREE, roc)
    second = write_charts(tmp_path / "b", live, PREDICTIONS, THREE, roc)
    assert first == second
    assert [name for _, name in first] == [CURVES_FILE, CONFUSION_FILE, ROC_FILE]
    for _, name in first:
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name
    # Different data, different picture: the bytes follow the data.
    other = PREDICTIONS.assign(predicted=PREDICTIONS["actual"])
    write_charts(tmp_path / "c", live, other, THREE, roc)
    assert (tmp_path / "c" / CONFUSION_FILE).read_bytes() != (
        tmp_path / "a" / CONFUSION_FILE
    ).read_bytes()


def test_missing_curve_files_skip_the_curves_chart(tmp_path: Path, caplog):
    (tmp_path / "out").mkdir()
    with caplog.at_level(logging.INFO, logger="lungct.evaluation.charts"):
        drawn = write_charts(
            tmp_path / "out", tmp_path / "no-live", PREDICTIONS, THREE, roc_curves(Y3, P3, THREE)
        )
    assert [name for _, name in drawn] == [CONFUSION_FILE, ROC_FILE]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted(
        [CONFUSION_FILE, ROC_FILE]
    )
    assert "loss.tsv not found; no training curves chart" in caplog.text


@pytest.mark.parametrize(
    "content",
    ["", "step\tloss\n", "step\tloss\n0\tnot-a-number\n", "epoch\tvalue\n0\t1.0\n"],
    ids=["empty", "header-only", "not-a-number", "other-columns"],
)
def test_unreadable_curve_file_skips_the_curves_chart(tmp_path: Path, caplog, content: str):
    live = write_curves(tmp_path / "live")
    (live / "eval" / "loss.tsv").write_text(content)
    with caplog.at_level(logging.INFO, logger="lungct.evaluation.charts"):
        assert read_curves(live) is None
    assert "unreadable" in caplog.text


def test_no_roc_without_both_sides(tmp_path: Path, caplog):
    """A test set of one class: roc_curves is empty, so no ROC chart, not a crash."""
    y = np.zeros(3, dtype=int)
    predictions = pd.DataFrame({"actual": ["benign"] * 3, "predicted": ["benign"] * 3})
    roc = roc_curves(y, P3[:3], THREE)
    assert roc == {}
    (tmp_path / "out").mkdir()
    with caplog.at_level(logging.INFO, logger="lungct.evaluation.charts"):
        drawn = write_charts(tmp_path / "out", tmp_path / "no-live", predictions, THREE, roc)
    assert [name for _, name in drawn] == [CONFUSION_FILE]
    assert "no ROC chart" in caplog.text


SPLIT = {
    "leaky": False,
    "images": {"train": 10, "val": 4, "test": 6},
    "groups": {"train": 5, "val": 2, "test": 4},
    "images_per_class": {s: {"benign": 2} for s in ("train", "val", "test")},
    "layout": "synthetic",
    "classes": "default",
    "strategy": "grouped",
    "leakage": "drop",
    "groups_in_several_splits": 0,
    "cross_split_near_duplicate_pairs": 0,
    "dropped": 0,
}


def test_report_embeds_the_chart_links(tmp_path: Path):
    metrics = classification_metrics(Y3, P3, THREE, groups=np.array(["a", "b", "c", "c", "c", "d"]))
    drawn = write_charts(
        tmp_path, write_curves(tmp_path / "live"), PREDICTIONS, THREE, roc_curves(Y3, P3, THREE)
    )
    report = markdown_report(metrics, SPLIT, drawn, "charts")
    assert "## Charts" in report
    for title, name in drawn:
        assert f"![{title}](charts/{name})" in report
    # Between the confusion matrix and the dataset, the rest of the report unchanged.
    assert report.index("## Confusion matrix") < report.index("## Charts")
    assert report.index("## Charts") < report.index("## Dataset and split")
    without = markdown_report(metrics, SPLIT)
    assert "## Charts" not in without and "![" not in without
    assert set(without.splitlines()) <= set(report.splitlines())
