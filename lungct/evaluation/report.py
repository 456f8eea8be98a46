"""Human-readable outputs of evaluate: ``metrics/report.md`` and the test image grid."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image, ImageDraw

from lungct.artifacts import SPLITS, is_leaky
from lungct.atomic import atomic_file
from lungct.evaluation.calibration import reliability, risk_coverage

TILE = 128
# metrics/calibration/: the DVC plots of calibration (dvc.yaml)
RELIABILITY_DIR = "reliability"
RISK_COVERAGE_FILE = "risk_coverage.csv"
# The split stage's sample grid (metrics/split_samples.png): tiles, class-name column.
SAMPLES_PER_CLASS = 6
SAMPLE_TILE = 96
SAMPLE_LABEL_WIDTH = 110
CAPTION = 30
COLUMNS = 6

CAVEATS = (
    "Slices are not patients: image-level numbers count every slice of a patient, so "
    "the group-level rows and the patient-level bootstrap intervals are the honest ones.",
    "A public dataset is not a clinical validation: one site's scanners, protocols and "
    "case mix, labels of unknown provenance, and no prospective test.",
    "The synthetic phantom (the default data) checks that the pipeline works; its "
    "accuracy says nothing about real CT.",
)


def _fmt(value: object) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:.3f}"
    return str(value)


def _interval(metrics: dict, key: str) -> str:
    ci = metrics.get("ci95", {}).get(key)
    return f"{_fmt(ci['low'])} - {_fmt(ci['high'])}" if ci else "not computed"


def _table(header: list[str], rows: list[list[object]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_fmt(v) for v in row) + " |" for row in rows]
    return lines


def markdown_report(
    metrics: dict, split: dict, charts: Sequence[tuple[str, str]] = (), charts_dir: str = "charts"
) -> str:
    """The metrics table, confusion matrix, charts, dataset and split summary, and caveats.

    ``charts``: ``(title, file name)`` of each PNG in ``charts_dir`` (a link relative to the
    report), as :func:`lungct.evaluation.charts.write_charts` returns them; no section when empty.
    """
    classes = list(metrics["per_class"])
    lines = ["# Test-set evaluation", ""]
    if is_leaky(split):
        lines += [
            "> **Leaky split:** images of one patient or near-duplicate group are on both sides "
            "of the split; these numbers overstate what the model does on new patients.",
            "",
        ]
    lines += ["## Summary", ""]
    rows = [
        ["accuracy", metrics["accuracy"], _interval(metrics, "accuracy")],
        [
            "balanced accuracy",
            metrics["balanced_accuracy"],
            _interval(metrics, "balanced_accuracy"),
        ],
        ["macro F1", metrics["macro_f1"], ""],
        ["ROC AUC (one-vs-rest, macro)", metrics["roc_auc"], ""],
        ["loss (cross-entropy)", metrics["loss"], ""],
        ["expected calibration error (calibrated)", metrics["calibration"]["ece"], ""],
        ["Brier score (calibrated)", metrics["calibration"]["brier"], ""],
        ["group-level accuracy", metrics["group_level"]["accuracy"], ""],
        ["group-level balanced accuracy", metrics["group_level"]["balanced_accuracy"], ""],
    ]
    cvn = metrics.get("cancer_vs_normal")
    if cvn:
        rows += [[f"cancer-vs-normal {k}", cvn[k], ""] for k in ("sensitivity", "specificity")]
    lines += _table(["metric", "value", "95 % interval (patient bootstrap)"], rows)
    lines += [
        "",
        f"{metrics['images']} test images from {metrics['groups']} patients (likely "
        "patients or near-duplicate groups, for images without ids).",
        "",
    ]
    leak = metrics.get("leak_sensitivity")
    if leak and leak["far_half"]["images"]:
        far = leak["far_half"]
        lines += [
            f"Leak sensitivity: balanced accuracy {_fmt(far['balanced_accuracy'])} on the "
            f"{far['images']} test images farthest from train and val (at least "
            f"{far['min_bits']} pHash bits from the nearest), "
            f"{_fmt(metrics['balanced_accuracy'])} on all; {leak['within_2_bits']} test images "
            "lie within 2 bits of a train or val image.",
            "",
        ]
    lines += calibration_section(metrics)
    lines += ["## Per class", ""]
    columns = ("precision", "recall", "specificity", "f1", "roc_auc", "support")
    lines += _table(
        ["class", "precision", "recall (sensitivity)", "specificity", "F1", "ROC AUC", "support"],
        [[name, *(m[c] for c in columns)] for name, m in metrics["per_class"].items()],
    )
    if metrics["absent_classes"]:
        lines += ["", f"No test images of: {', '.join(metrics['absent_classes'])}."]
    lines += ["", "## Confusion matrix (rows: actual, columns: predicted)", ""]
    lines += _table(
        ["actual \\ predicted", *classes],
        [[a, *(metrics["confusion"][a][p] for p in classes)] for a in classes],
    )
    if charts:
        lines += ["", "## Charts", ""]
        lines += [
            "Static copies of the headline plots, readable offline (`dvc plots show` draws "
            "them interactively).",
        ]
        for title, name in charts:
            lines += ["", f"![{title}]({charts_dir}/{name})"]
    lines += ["", "## Dataset and split", ""]
    per_class = split["images_per_class"]
    rows = [
        [s, split["images"][s], split["groups"][s], *(per_class[s].get(c, 0) for c in classes)]
        for s in SPLITS
    ]
    lines += _table(["split", "images", "groups", *classes], rows)
    lines += [
        "",
        f"Layout `{split['layout']}`, classes `{split['classes']}`, split strategy "
        f"`{split['strategy']}`, leakage policy `{split['leakage']}`: "
        f"{split['groups_in_several_splits']} groups and "
        f"{split['cross_split_near_duplicate_pairs']} near-duplicate pairs cross splits, "
        f"{split['dropped']} leaked copies dropped.",
        "",
        "## Caveats",
        "",
    ]
    lines += [f"- {c}" for c in CAVEATS]
    return "\n".join(lines) + "\n"


def image_grid(
    paths: list[str],
    predictions: pd.DataFrame,
    classes: list[str],
    probabilities: np.ndarray,
    count: int,
) -> Image.Image:
    """Test images with true class, predicted class and its probability: misclassified ones
    most confident first, then the correct ones least confident first (closest to wrong)."""
    predicted = probabilities.argmax(axis=1)
    confidence = probabilities.max(axis=1)
    wrong = (predictions["actual"] != predictions["predicted"]).to_numpy()
    # Sort keys: wrong before right; wrong by -confidence, right by +confidence; then path.
    key = np.where(wrong, -confidence, 1.0 + confidence)
    order = sorted(range(len(paths)), key=lambda i: (key[i], paths[i]))[:count]
    rows = max(1, -(-len(order) // COLUMNS))
    grid = Image.new("RGB", (COLUMNS * TILE, rows * (TILE + CAPTION)), "black")
    draw = ImageDraw.Draw(grid)
    for slot, i in enumerate(order):
        x, y = (slot % COLUMNS) * TILE, (slot // COLUMNS) * (TILE + CAPTION)
        with Image.open(paths[i]) as image:
            grid.paste(image.convert("RGB").resize((TILE - 2, TILE - 2)), (x + 1, y + 1))
        colour = (255, 90, 90) if wrong[i] else (120, 220, 120)
        draw.text((x + 3, y + TILE), f"true {predictions['actual'].iloc[i]}", fill="white")
        caption = f"pred {classes[predicted[i]]} {confidence[i]:.2f}"
        draw.text((x + 3, y + TILE + 14), caption, fill=colour)
    return grid


def calibration_section(metrics: dict) -> list[str]:
    """Calibration before and after the model's temperature, and what its "uncertain"
    rule does on the test images (both fitted on the val split, never on these)."""
    calibration, uncertain = metrics["calibration"], metrics.get("uncertain")
    before = calibration.get("before")
    if before is None or uncertain is None:
        return []
    lines = ["## Calibration and uncertain answers", ""]
    lines += _table(
        ["test images", "ECE", "Brier score", "loss (cross-entropy)"],
        [
            ["before the temperature", before["ece"], before["brier"], before["loss"]],
            [
                f"after (temperature {calibration['temperature']:.4g})",
                calibration["ece"],
                calibration["brier"],
                metrics["loss"],
            ],
        ],
    )
    threshold = uncertain["threshold"]
    rule = (
        f"below a top probability of {threshold:.4g}"
        if threshold
        else "never (train.calibration answers every image)"
    )
    lines += [
        "",
        f"The temperature and the rule were fitted on the val split. Uncertain {rule}: "
        f"{100 * uncertain['coverage']:.1f} % of the test images answered, "
        f"{_fmt(uncertain['accuracy'])} accurate (all answered: {_fmt(metrics['accuracy'])}). "
        f"Area under the risk-coverage curve (AURC, lower is better): {_fmt(uncertain['aurc'])}. "
        f"A perfectly calibrated model would show an ECE of about "
        f"{_fmt(calibration['ece_if_calibrated'])} on these images (labels drawn from its own "
        "probabilities): the binned ECE of a small test set cannot go much below it.",
        "",
    ]
    return lines


def write_calibration(
    folder: Path, y_true: np.ndarray, uncalibrated: np.ndarray, probabilities: np.ndarray
) -> dict:
    """The DVC plots of calibration into ``folder``: ``reliability/before.csv`` and
    ``after.csv`` (bins: confidence, accuracy, images) and ``risk_coverage.csv`` (coverage,
    risk, threshold). Returns the same data for the static charts."""
    curves = {
        "before": reliability(y_true, uncalibrated),
        "after": reliability(y_true, probabilities),
    }
    (folder / RELIABILITY_DIR).mkdir()
    for name, rows in curves.items():
        table = pd.DataFrame(rows, columns=["confidence", "accuracy", "images", "low", "high"])
        table.round(6).to_csv(
            folder / RELIABILITY_DIR / f"{name}.csv", index=False, lineterminator="\n"
        )
    coverage, risk, threshold = risk_coverage(y_true, probabilities)
    pd.DataFrame(
        {"coverage": coverage.round(6), "risk": risk.round(6), "threshold": threshold.round(6)}
    ).to_csv(folder / RISK_COVERAGE_FILE, index=False, lineterminator="\n")
    return {"reliability": curves, "risk_coverage": (coverage, risk)}


def write_roc(folder: Path, curves: dict) -> None:
    """One CSV per class (fpr, tpr, threshold) in ``folder``: a DVC plot per class."""
    for name, (fpr, tpr, threshold) in curves.items():
        pd.DataFrame(
            {"fpr": fpr.round(6), "tpr": tpr.round(6), "threshold": threshold.round(6)}
        ).to_csv(folder / f"{name}.csv", index=False, lineterminator="\n")


def write_samples(images: pd.DataFrame, splits_dir: Path, target: Path) -> None:
    """A grid of sample training images, one row per class and one group per column, as
    the notebook projects show."""
    train = images[images["split"] == "train"]
    classes = sorted(train["class"].unique())
    label_w = SAMPLE_LABEL_WIDTH
    grid = Image.new("L", (label_w + SAMPLES_PER_CLASS * SAMPLE_TILE, len(classes) * SAMPLE_TILE))
    draw = ImageDraw.Draw(grid)
    for row, name in enumerate(classes):
        draw.text((6, row * SAMPLE_TILE + SAMPLE_TILE // 2 - 6), name, fill=255)
        # One image from each of the first groups: different patients, not one patient's slices.
        samples = train[train["class"] == name].drop_duplicates("group")["image"]
        for col, image in enumerate(samples[:SAMPLES_PER_CLASS]):
            with Image.open(splits_dir / image) as tile:
                small = tile.convert("L").resize((SAMPLE_TILE - 4,) * 2, Image.Resampling.BILINEAR)
            grid.paste(small, (label_w + col * SAMPLE_TILE + 2, row * SAMPLE_TILE + 2))
    with atomic_file(target) as tmp:
        grid.save(tmp, format="PNG")
