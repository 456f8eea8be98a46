"""Test-set metrics as stable JSON keys, computed with scikit-learn.

Every number is a finite float rounded to 6 decimals, an int, or ``null`` where it is
undefined (the recall of a class with no test image, the AUC of a class that is all or
none of the test set). Never NaN: ``dvc metrics diff`` and JSON readers trust every key.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image
from sklearn.metrics import (
    accuracy_score,
    balanced_accuracy_score,
    brier_score_loss,
    confusion_matrix,
    f1_score,
    log_loss,
    precision_recall_fscore_support,
    roc_auc_score,
    roc_curve,
)

from lungct.artifacts import LEAKY, is_leaky
from lungct.evaluation.calibration import (
    aurc,
    ece_if_calibrated,
    expected_calibration_error,
    selective,
)
from lungct.io.images import hash_values, phash

# The "no cancer" class: `normal`, or `without_cancer` in the binary presets.
NO_CANCER = ("normal", "without_cancer")


def _r(value: float | None) -> float | None:
    if value is None or not np.isfinite(value):
        return None
    return round(float(value), 6)


def _balanced_accuracy(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    # Mean recall over the classes present in y_true; sklearn warns when y_pred has others.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return float(balanced_accuracy_score(y_true, y_pred))


def _auc(positive: np.ndarray, score: np.ndarray) -> float | None:
    """ROC AUC of one class against the rest; None when the test set has one side only."""
    if positive.all() or not positive.any():
        return None
    return float(roc_auc_score(positive, score))


def group_probabilities(
    groups: np.ndarray, y_true: np.ndarray, probabilities: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(group ids, labels, mean slice probabilities) per group (patient or duplicate group);
    a group's label is its most common image label (ties: the lower class index)."""
    ids, index = np.unique(groups, return_inverse=True)
    n_classes = probabilities.shape[1]
    sums = np.zeros((len(ids), n_classes))
    np.add.at(sums, index, probabilities)
    counts = np.bincount(index, minlength=len(ids))[:, None]
    votes = np.zeros((len(ids), n_classes), dtype=int)
    np.add.at(votes, (index, y_true), 1)
    return ids, votes.argmax(axis=1), sums / counts


def bootstrap_intervals(
    groups: np.ndarray,
    y_true: np.ndarray,
    y_pred: np.ndarray,
    n_classes: int,
    resamples: int,
    seed: int,
) -> dict:
    """95 % percentile intervals for accuracy and balanced accuracy, resampling whole groups
    (patients), not images: slices of one patient are not independent, and an image-level
    bootstrap would give intervals that are too narrow."""
    ids, index = np.unique(groups, return_inverse=True)
    hits = np.zeros((len(ids), n_classes))
    totals = np.zeros((len(ids), n_classes))
    np.add.at(totals, (index, y_true), 1)
    np.add.at(hits, (index, y_true), (y_true == y_pred).astype(float))
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, len(ids), size=(resamples, len(ids)))
    weights = np.stack([np.bincount(d, minlength=len(ids)) for d in draws]).astype(float)
    hit_c, total_c = weights @ hits, weights @ totals  # (resamples, classes)
    accuracy = hit_c.sum(axis=1) / total_c.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        recall = np.where(total_c > 0, hit_c / total_c, np.nan)
    balanced = np.nanmean(recall, axis=1)

    def interval(values: np.ndarray) -> dict:
        low, high = np.percentile(values, [2.5, 97.5])
        return {"low": _r(low), "high": _r(high)}

    return {
        "resamples": int(resamples),
        "unit": "group",
        "accuracy": interval(accuracy),
        "balanced_accuracy": interval(balanced),
    }


def roc_curves(y_true: np.ndarray, probabilities: np.ndarray, classes: list[str]) -> dict:
    """One-vs-rest ROC points per class present on both sides: {class: (fpr, tpr, threshold)}."""
    curves = {}
    for k, name in enumerate(classes):
        positive = y_true == k
        if positive.all() or not positive.any():
            continue
        fpr, tpr, threshold = roc_curve(positive, probabilities[:, k], drop_intermediate=True)
        curves[name] = (fpr, tpr, np.minimum(threshold, 1.0))  # sklearn's first threshold is inf
    return curves


HEADLINE = (
    "accuracy",
    "balanced_accuracy",
    "ci_low",
    "ci_high",
    "macro_f1",
    "roc_auc",
    "loss",
    "ece",
    LEAKY,
)


def eval_headline(metrics: dict) -> dict:
    """The figures compared across experiments (``metrics/eval.json``, DVC's declared metrics,
    so that ``dvc metrics show`` fits 120 columns) from :func:`classification_metrics`' record,
    with the ``split`` evaluate adds; ``ci_low``/``ci_high``: the 95 % group-bootstrap interval
    of ``balanced_accuracy`` (None without bootstrap)."""
    interval = metrics.get("ci95", {}).get("balanced_accuracy", {})
    figures = {
        "accuracy": metrics["accuracy"],
        "balanced_accuracy": metrics["balanced_accuracy"],
        "ci_low": interval.get("low"),
        "ci_high": interval.get("high"),
        "macro_f1": metrics["macro_f1"],
        "roc_auc": metrics["roc_auc"],
        "loss": metrics["loss"],
        "ece": metrics["calibration"]["ece"],
        LEAKY: is_leaky(metrics.get("split", {})),
    }
    assert tuple(figures) == HEADLINE
    return figures


def classification_metrics(
    y_true: np.ndarray,
    probabilities: np.ndarray,
    classes: list[str],
    groups: np.ndarray | None = None,
    bootstrap: int = 0,
    seed: int = 0,
    uncalibrated: np.ndarray | None = None,
    uncertain_below: float | None = None,
) -> dict:
    """Image-level, cancer-vs-normal, calibration and group-level metrics of one test set.

    ``y_true``: class indices (n,); ``probabilities``: (n, len(classes)), in model output
    order; ``groups``: patient or duplicate-group id per image (None: each image its own);
    ``bootstrap``: group resamples for the 95 % intervals (0: none), seeded by ``seed``;
    ``uncalibrated``: the probabilities before the model's temperature, for the calibration
    figures before it; ``uncertain_below``: the contract's "uncertain" threshold, for the
    figures of the answers it leaves (``uncertain``).
    Averages (balanced accuracy, macro F1, macro AUC) run over the classes present
    in ``y_true``; the others are listed in ``absent_classes``.
    """
    y_true = np.asarray(y_true)
    n_classes = len(classes)
    labels = list(range(n_classes))
    present = [k for k in labels if np.any(y_true == k)]
    y_pred = probabilities.argmax(axis=1)
    groups = np.arange(len(y_true)) if groups is None else np.asarray(groups)

    precision, recall, f1, support = precision_recall_fscore_support(
        y_true, y_pred, labels=labels, zero_division=0
    )
    matrix = confusion_matrix(y_true, y_pred, labels=labels)
    n = matrix.sum()
    calibration = _calibration(y_true, probabilities, labels)
    calibration["ece_if_calibrated"] = _r(ece_if_calibrated(probabilities))

    per_class, aucs = {}, {}
    for k, name in enumerate(classes):
        negatives = n - matrix[k, :].sum()
        false_positives = matrix[:, k].sum() - matrix[k, k]
        aucs[name] = _auc(y_true == k, probabilities[:, k])
        per_class[name] = {
            "precision": _r(precision[k]),
            "recall": _r(recall[k]) if support[k] else None,
            "specificity": _r((negatives - false_positives) / negatives) if negatives else None,
            "f1": _r(f1[k]) if support[k] else None,
            "support": int(support[k]),
            "roc_auc": _r(aucs[name]),
        }
    defined = [a for a in aucs.values() if a is not None]

    metrics = {
        "images": int(len(y_true)),
        "groups": int(len(np.unique(groups))),
        "accuracy": _r(accuracy_score(y_true, y_pred)),
        "balanced_accuracy": _r(_balanced_accuracy(y_true, y_pred)),
        "macro_f1": _r(f1_score(y_true, y_pred, labels=present, average="macro", zero_division=0)),
        "loss": calibration["loss"],
        "roc_auc": _r(np.mean(defined)) if defined else None,
        "calibration": {key: calibration[key] for key in ("ece", "ece_if_calibrated", "brier")},
        "absent_classes": [classes[k] for k in labels if k not in present],
        "per_class": per_class,
        "confusion": {
            actual: {predicted: int(matrix[i, j]) for j, predicted in enumerate(classes)}
            for i, actual in enumerate(classes)
        },
    }

    if uncalibrated is not None:
        metrics["calibration"]["before"] = _calibration(y_true, uncalibrated, labels)
    if uncertain_below is not None:
        rule = selective(y_true, probabilities, uncertain_below)
        metrics["uncertain"] = {**rule.to_dict(), "aurc": _r(aurc(y_true, probabilities))}

    normal = next((classes.index(c) for c in NO_CANCER if c in classes), None)
    if normal is not None:
        cancer, called = y_true != normal, y_pred != normal  # truth, prediction
        metrics["cancer_vs_normal"] = {
            "sensitivity": _r(called[cancer].mean()) if cancer.any() else None,
            "specificity": _r((~called[~cancer]).mean()) if (~cancer).any() else None,
            "roc_auc": _r(_auc(cancer, 1.0 - probabilities[:, normal])),
        }

    _, group_true, group_probs = group_probabilities(groups, y_true, probabilities)
    group_pred = group_probs.argmax(axis=1)
    metrics["group_level"] = {
        "groups": int(len(group_true)),
        "accuracy": _r(accuracy_score(group_true, group_pred)),
        "balanced_accuracy": _r(_balanced_accuracy(group_true, group_pred)),
    }
    if bootstrap:
        metrics["ci95"] = bootstrap_intervals(groups, y_true, y_pred, n_classes, bootstrap, seed)
    return metrics


def _calibration(y_true: np.ndarray, probabilities: np.ndarray, labels: list[int]) -> dict:
    """ECE, Brier score and loss (the mean negative log-likelihood) of ``probabilities``."""
    clipped = np.clip(probabilities, 1e-7, 1.0)
    clipped = clipped / clipped.sum(axis=1, keepdims=True)
    return {
        "ece": _r(expected_calibration_error(y_true, probabilities)),
        "brier": _r(brier_score_loss(y_true, clipped, labels=labels)),
        "loss": _r(log_loss(y_true, clipped, labels=labels)),
    }


def image_phashes(paths: Sequence[str | Path]) -> np.ndarray:
    """The uint64 pHashes (ImageHash's, bit for bit) of image files in grayscale: an
    independent look at what the model reads, for :func:`leak_sensitivity`."""
    hashes = []
    for path in paths:
        with Image.open(path) as image:
            hashes.append(phash(np.asarray(image.convert("L")), reducing_gap=None))
    return hash_values(hashes)


def nearest_bits(test: np.ndarray, reference: np.ndarray, chunk: int = 1024) -> np.ndarray:
    """Per test image, the Hamming distance (bits) from its 64-bit perceptual hash to the
    nearest of ``reference`` (uint64 arrays; compared a chunk of rows at a time)."""
    nearest = np.full(len(test), 64, dtype=np.int64)  # no reference: as far as it gets
    if len(reference):
        for i in range(0, len(test), chunk):
            bits = np.bitwise_count(test[i : i + chunk, None] ^ reference[None, :])
            nearest[i : i + chunk] = bits.min(axis=1)
    return nearest


def leak_sensitivity(y_true: np.ndarray, probabilities: np.ndarray, distances: np.ndarray) -> dict:
    """How much near neighbours in train/val lift the test score: accuracy and balanced
    accuracy on the half of the test images farthest from any train/val image (by
    ``distances``, pHash bits to the nearest; ties in test order, the odd image in the far
    half), on the nearer half, and the count of test images within 2 bits. A far-half score
    well below the full-test score says the test set is partly remembered."""
    y_true, distances = np.asarray(y_true), np.asarray(distances)
    y_pred = probabilities.argmax(axis=1)
    order = np.lexsort((np.arange(len(distances)), -distances))  # farthest first, stable
    cut = (len(order) + 1) // 2

    def half(index: np.ndarray, bound: str) -> dict:
        if len(index) == 0:
            return {"images": 0, bound: None, "accuracy": None, "balanced_accuracy": None}
        edge = distances[index].min() if bound == "min_bits" else distances[index].max()
        return {
            "images": int(len(index)),
            bound: int(edge),
            "accuracy": _r(accuracy_score(y_true[index], y_pred[index])),
            "balanced_accuracy": _r(_balanced_accuracy(y_true[index], y_pred[index])),
        }

    return {
        "distance": "pHash bits to the nearest train/val image (ImageHash, split PNGs)",
        "median_bits": _r(np.median(distances)) if len(distances) else None,
        "within_2_bits": int((distances <= 2).sum()),
        "far_half": half(order[:cut], "min_bits"),
        "near_half": half(order[cut:], "max_bits"),
    }
