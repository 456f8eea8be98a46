"""Static PNG charts for ``metrics/report.md``: readable offline, unlike the HTML page of
``dvc plots show`` (which loads vega from a CDN). Drawn with matplotlib's
:class:`~matplotlib.figure.Figure` (no pyplot) in the default style, at a fixed size and
dpi, without the ``Software`` metadata: equal inputs give equal bytes.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib import colormaps, style
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator
from sklearn.metrics import confusion_matrix

from lungct.atomic import atomic_file

DPI = 100
CURVES_FILE = "training_curves.png"
CONFUSION_FILE = "confusion_normalized.png"
ROC_FILE = "roc.png"
CURVES_TITLE = "Loss and accuracy per epoch (train, val)"
CONFUSION_TITLE = "Test confusion matrix (row-normalised, counts in brackets)"
ROC_TITLE = "Test ROC, one class vs the rest"
RELIABILITY_FILE = "reliability.png"
RELIABILITY_TITLE = "Test reliability diagram, before and after the temperature"
RISK_COVERAGE_FILE = "risk_coverage.png"
RISK_COVERAGE_TITLE = "Test risk-coverage curve (calibrated answers)"
# DVCLive's layout under metrics/train/plots/metrics: <side>/<metric>.tsv, columns step, <metric>.
CURVE_SIDES = {"train": "train", "eval": "val"}
CURVE_METRICS = {"loss": "cross-entropy", "accuracy": "accuracy"}
RocCurves = Mapping[str, tuple[np.ndarray, np.ndarray, np.ndarray]]  # metrics.roc_curves output

log = logging.getLogger(__name__)


def _save(fig: Figure, path: Path) -> None:
    """Write ``fig`` as PNG atomically; no ``Software`` key, so the bytes depend on the data only."""
    with atomic_file(path) as tmp:
        fig.savefig(tmp, format="png", dpi=DPI, metadata={"Software": None})


def read_curves(folder: Path) -> dict[str, dict[str, pd.DataFrame]] | None:
    """DVCLive's per-epoch tables, ``{metric: {side: DataFrame(step, value)}}``; None (and a
    log line) when a file is missing or unreadable (a model trained outside the pipeline)."""
    curves: dict[str, dict[str, pd.DataFrame]] = {metric: {} for metric in CURVE_METRICS}
    for metric, side in itertools.product(CURVE_METRICS, CURVE_SIDES):
        path = folder / side / f"{metric}.tsv"
        try:
            table = pd.read_csv(path, sep="\t")[["step", metric]].astype(float)
            if table.empty:
                raise ValueError("no rows")
            curves[metric][side] = table
        except FileNotFoundError:
            log.info("charts: %s not found; no training curves chart", path)
            return None
        except (pd.errors.ParserError, pd.errors.EmptyDataError, KeyError, ValueError) as exc:
            log.info("charts: %s unreadable (%s); no training curves chart", path, exc)
            return None
    return curves


def training_curves(curves: Mapping[str, Mapping[str, pd.DataFrame]], path: Path) -> None:
    """Loss and accuracy per epoch, train and val on one panel each (``read_curves`` output)."""
    with style.context("default"):
        fig = Figure(figsize=(10, 4), layout="constrained")
        for ax, (metric, label) in zip(fig.subplots(1, 2), CURVE_METRICS.items(), strict=True):
            for side, name in CURVE_SIDES.items():
                table = curves[metric][side]
                # DVCLive counts steps from 0; epochs are counted from 1.
                ax.plot(table["step"] + 1, table[metric], marker="o", label=name)
            ax.set(title=f"{label.capitalize()} per epoch", xlabel="epoch", ylabel=label)
            # Whole epochs on the axis, a single epoch (the tiny pipeline) included.
            last = max(curves[metric][side]["step"].max() for side in CURVE_SIDES) + 1
            ax.set_xlim(0.5, last + 0.5)
            ax.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))
            if metric == "accuracy":
                ax.set_ylim(-0.02, 1.02)
            ax.grid(alpha=0.3)
            ax.legend()
        _save(fig, path)


def confusion_chart(
    actual: list[str] | np.ndarray | pd.Series,
    predicted: list[str] | np.ndarray | pd.Series,
    classes: list[str],
    path: Path,
) -> None:
    """Row-normalised confusion matrix (rows: actual, columns: predicted), counts in the cells;
    a class without test images has an empty (grey) row."""
    counts = confusion_matrix(actual, predicted, labels=classes)
    totals = counts.sum(axis=1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        share = np.ma.masked_invalid(counts / totals)
    with style.context("default"):
        fig = Figure(figsize=(6, 5), layout="constrained")
        ax = fig.subplots()
        cmap = colormaps["Blues"].with_extremes(bad="0.85")
        image = ax.imshow(share, cmap=cmap, vmin=0.0, vmax=1.0)
        fig.colorbar(image, ax=ax, label="share of the actual class")
        for i, j in itertools.product(range(len(classes)), repeat=2):
            if totals[i, 0] == 0:
                text, colour = "no images", "black"
            else:
                text = f"{share[i, j]:.2f}\n({counts[i, j]})"
                colour = "white" if share[i, j] > 0.5 else "black"
            ax.text(j, i, text, ha="center", va="center", color=colour, fontsize=9)
        ticks = range(len(classes))
        ax.set_xticks(ticks, classes, rotation=30, ha="right")
        ax.set_yticks(ticks, classes)
        ax.set(xlabel="predicted", ylabel="actual")
        ax.set_title(f"Test confusion matrix, row-normalised ({counts.sum()} images)")
        _save(fig, path)


def roc_chart(curves: RocCurves, path: Path) -> None:
    """One-vs-rest ROC, one line per class (``lungct.evaluation.metrics.roc_curves`` output), AUC in the legend."""
    with style.context("default"):
        fig = Figure(figsize=(6, 5), layout="constrained")
        ax = fig.subplots()
        ax.plot([0, 1], [0, 1], linestyle="--", color="0.6", label="chance (AUC 0.5)")
        for name, (fpr, tpr, _threshold) in curves.items():
            auc = float(np.trapezoid(tpr, fpr))
            ax.plot(fpr, tpr, label=f"{name} (AUC {auc:.3f})")
        ax.set(xlim=(-0.01, 1.01), ylim=(-0.01, 1.01), aspect="equal", title=ROC_TITLE)
        ax.set(xlabel="false positive rate", ylabel="true positive rate")
        ax.grid(alpha=0.3)
        ax.legend(loc="lower right")
        _save(fig, path)


def reliability_chart(curves: Mapping[str, list[dict]], path: Path) -> None:
    """Accuracy against mean confidence per bin (``lungct.evaluation.calibration.reliability``
    rows), one line per curve (``before``, ``after`` the temperature); the diagonal is perfect."""
    with style.context("default"):
        fig = Figure(figsize=(6, 5), layout="constrained")
        ax = fig.subplots()
        ax.plot([0, 1], [0, 1], linestyle="--", color="0.6", label="perfectly calibrated")
        for name, rows in curves.items():
            confidence = [row["confidence"] for row in rows]
            ax.plot(confidence, [row["accuracy"] for row in rows], marker="o", label=name)
        ax.set(xlim=(0, 1.01), ylim=(-0.01, 1.01), aspect="equal", title=RELIABILITY_TITLE)
        ax.set(xlabel="mean top-class probability in the bin", ylabel="accuracy in the bin")
        ax.grid(alpha=0.3)
        ax.legend(loc="upper left")
        _save(fig, path)


def risk_coverage_chart(coverage: np.ndarray, risk: np.ndarray, path: Path) -> None:
    """The share of answered images that are wrong against the share answered, most
    confident first (``lungct.evaluation.calibration.risk_coverage``)."""
    with style.context("default"):
        fig = Figure(figsize=(6, 4), layout="constrained")
        ax = fig.subplots()
        ax.step(coverage, risk, where="post")
        ax.set(xlim=(0, 1.01), ylim=(0, max(0.05, float(np.max(risk, initial=0)) * 1.1)))
        ax.set(xlabel="coverage (share answered)", ylabel="risk (share wrong)")
        ax.set(title=RISK_COVERAGE_TITLE)
        ax.grid(alpha=0.3)
        _save(fig, path)


def write_charts(
    folder: Path,
    curves_dir: Path,
    predictions: pd.DataFrame,
    classes: list[str],
    roc: RocCurves,
    calibration: Mapping | None = None,
) -> list[tuple[str, str]]:
    """Draw every chart there is data for into ``folder``; ``(title, file name)`` of each drawn:
    no curves chart (a log line) when DVCLive's files in ``curves_dir`` are missing, no ROC
    chart when ``roc`` is empty; ``predictions``: columns ``actual``, ``predicted``;
    ``calibration``: :func:`lungct.evaluation.report.write_calibration`'s data (reliability
    and risk-coverage charts)."""
    drawn = []
    curves = read_curves(curves_dir)
    if curves is not None:
        training_curves(curves, folder / CURVES_FILE)
        drawn.append((CURVES_TITLE, CURVES_FILE))
    confusion_chart(
        predictions["actual"], predictions["predicted"], classes, folder / CONFUSION_FILE
    )
    drawn.append((CONFUSION_TITLE, CONFUSION_FILE))
    if roc:
        roc_chart(roc, folder / ROC_FILE)
        drawn.append((ROC_TITLE, ROC_FILE))
    else:
        log.info("charts: no class has test images on both sides; no ROC chart")
    if calibration is not None:
        reliability_chart(calibration["reliability"], folder / RELIABILITY_FILE)
        risk_coverage_chart(*calibration["risk_coverage"], folder / RISK_COVERAGE_FILE)
        drawn += [(RELIABILITY_TITLE, RELIABILITY_FILE), (RISK_COVERAGE_TITLE, RISK_COVERAGE_FILE)]
    return drawn
