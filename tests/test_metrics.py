"""Known predictions give known metrics: every expected value below is computed by hand."""

import json

import numpy as np
import pytest

from lungct.evaluation.calibration import expected_calibration_error
from lungct.evaluation.metrics import (
    bootstrap_intervals,
    classification_metrics,
    group_probabilities,
    roc_curves,
)

approx = lambda x: pytest.approx(x, abs=1e-6)  # noqa: E731 - the JSON keeps 6 decimals


def one_hot(predicted, n, p=0.9):
    probs = np.full((len(predicted), n), (1 - p) / (n - 1))
    probs[np.arange(len(predicted)), predicted] = p
    return probs


THREE = ["benign", "malignant", "normal"]
Y3 = np.array([0, 0, 1, 1, 1, 2])
P3 = one_hot(np.array([0, 1, 1, 1, 2, 2]), 3)  # right at p=0.9, others 0.05
G3 = np.array(["p1", "p2", "p3", "p3", "p3", "p4"])


def test_three_class_hand_computed():
    m = classification_metrics(Y3, P3, THREE, groups=G3)
    assert m["images"] == 6
    assert m["groups"] == 4
    assert m["accuracy"] == approx(4 / 6)
    # Recalls 1/2, 2/3, 1/1.
    assert m["balanced_accuracy"] == approx((1 / 2 + 2 / 3 + 1) / 3)
    # F1 is 2/3 for each class.
    assert m["macro_f1"] == approx(2 / 3)
    assert m["per_class"]["benign"] == {
        "precision": 1.0,
        "recall": 0.5,
        "specificity": 1.0,
        "f1": 0.666667,
        "support": 2,
        # Positives score 0.9 and 0.05, negatives all 0.05: (4 + 4 * 0.5) / 8.
        "roc_auc": 0.75,
    }
    assert m["per_class"]["malignant"]["precision"] == approx(2 / 3)
    assert m["per_class"]["malignant"]["specificity"] == approx(2 / 3)  # 1 FP of 3 negatives
    assert m["per_class"]["normal"]["precision"] == 0.5
    assert m["per_class"]["normal"]["specificity"] == approx(4 / 5)
    assert m["confusion"]["malignant"] == {"benign": 0, "malignant": 2, "normal": 1}
    expected_loss = -(4 * np.log(0.9) + 2 * np.log(0.05)) / 6
    assert m["loss"] == approx(expected_loss)
    # Benign and malignant collapse to "not normal": 4 of 5 caught, the 1 normal kept.
    assert m["cancer_vs_normal"]["sensitivity"] == approx(0.8)
    assert m["cancer_vs_normal"]["specificity"] == 1.0
    # Every confidence is 0.9, one bin: |4/6 - 0.9|.
    assert m["calibration"]["ece"] == approx(0.9 - 4 / 6)
    # Right rows: 0.1^2 + 2 * 0.05^2; wrong rows: 0.95^2 + 0.9^2 + 0.05^2.
    assert m["calibration"]["brier"] == approx((4 * 0.015 + 2 * 1.715) / 6)
    assert m["absent_classes"] == []
    # p3 averages two malignant votes and one normal one: malignant. p2 is wrong.
    assert m["group_level"] == {"groups": 4, "accuracy": 0.75, "balanced_accuracy": 0.833333}


def test_binary_hand_computed():
    classes = ["with_cancer", "without_cancer"]
    y = np.array([0, 0, 1, 1])
    p1 = np.array([0.1, 0.6, 0.4, 0.8])
    m = classification_metrics(y, np.stack([1 - p1, p1], axis=1), classes)
    assert m["accuracy"] == 0.5
    # Positives (class 1) score 0.4 and 0.8, negatives 0.1 and 0.6: 3 of 4 pairs ordered.
    assert m["roc_auc"] == 0.75
    assert m["per_class"]["with_cancer"]["roc_auc"] == 0.75
    assert m["cancer_vs_normal"] == {"sensitivity": 0.5, "specificity": 0.5, "roc_auc": 0.75}
    assert m["calibration"]["brier"] == approx((0.01 + 0.36 + 0.36 + 0.04) / 4)
    assert m["groups"] == 4  # no groups given: each image is its own


def test_class_absent_from_test_is_null_not_nan():
    m = classification_metrics(np.array([0, 0]), one_hot(np.array([0, 1]), 3), ["a", "b", "c"])
    assert m["absent_classes"] == ["b", "c"]
    assert m["per_class"]["c"] == {
        "precision": 0.0,
        "recall": None,
        "specificity": 1.0,
        "f1": None,
        "support": 0,
        "roc_auc": None,
    }
    assert m["per_class"]["b"]["precision"] == 0.0
    assert m["per_class"]["b"]["specificity"] == 0.5
    assert m["roc_auc"] is None  # no class has both positives and negatives
    assert m["balanced_accuracy"] == 0.5  # over the classes present
    assert "cancer_vs_normal" not in m  # no normal class
    json.dumps(m, allow_nan=False)  # raises on NaN or inf anywhere


def test_cancer_vs_normal_without_normal_images_is_null():
    m = classification_metrics(np.array([0, 1]), one_hot(np.array([0, 2]), 3), THREE)
    assert m["cancer_vs_normal"]["specificity"] is None
    assert m["cancer_vs_normal"]["sensitivity"] == 0.5
    json.dumps(m, allow_nan=False)


def test_ece_is_zero_when_confidence_matches_accuracy():
    # Two bins: confidence 0.5 with half right, 1.0 with all right.
    y = np.array([0, 1, 0, 1])
    p = np.array([[0.5, 0.5], [0.5, 0.5], [1.0, 0.0], [0.0, 1.0]])
    assert expected_calibration_error(y, p) == pytest.approx(0.0)
    assert expected_calibration_error(np.array([1]), np.array([[0.8, 0.2]])) == pytest.approx(0.8)


def test_group_probabilities_average_slices():
    ids, labels, probs = group_probabilities(G3, Y3, P3)
    assert list(ids) == ["p1", "p2", "p3", "p4"]
    assert list(labels) == [0, 0, 1, 2]
    assert probs[2] == pytest.approx([0.05, (0.9 + 0.9 + 0.05) / 3, (0.05 + 0.05 + 0.9) / 3])


def test_bootstrap_resamples_patients_and_is_seeded():
    y_pred = P3.argmax(axis=1)
    a = bootstrap_intervals(G3, Y3, y_pred, 3, resamples=500, seed=1)
    assert a == bootstrap_intervals(G3, Y3, y_pred, 3, resamples=500, seed=1)
    rng = np.random.default_rng(0)
    groups, y = np.repeat(np.arange(40), 3), np.repeat(rng.integers(0, 3, 40), 3)
    noisy = np.where(rng.random(120) < 0.3, (y + 1) % 3, y)
    b1 = bootstrap_intervals(groups, y, noisy, 3, resamples=300, seed=1)
    assert b1 != bootstrap_intervals(groups, y, noisy, 3, resamples=300, seed=2)
    assert a["resamples"] == 500 and a["unit"] == "group"
    for key in ("accuracy", "balanced_accuracy"):
        assert 0.0 <= a[key]["low"] <= a[key]["high"] <= 1.0
    # Resampling patients: the accuracy can only take values made of whole patients
    # (p1 and p4 one right slice, p2 one wrong, p3 two of three right); all-p2 gives 0.
    assert a["accuracy"]["low"] < 4 / 6 < a["accuracy"]["high"]
    perfect = bootstrap_intervals(G3, Y3, Y3, 3, resamples=200, seed=0)
    assert perfect["accuracy"] == {"low": 1.0, "high": 1.0}
    assert perfect["balanced_accuracy"] == {"low": 1.0, "high": 1.0}


def test_bootstrap_in_metrics_only_when_asked():
    assert "ci95" not in classification_metrics(Y3, P3, THREE, groups=G3)
    m = classification_metrics(Y3, P3, THREE, groups=G3, bootstrap=100, seed=0)
    assert m["ci95"]["resamples"] == 100


def test_roc_curves_skip_classes_without_both_sides():
    curves = roc_curves(np.array([0, 0, 1]), one_hot(np.array([0, 1, 1]), 3), ["a", "b", "c"])
    assert set(curves) == {"a", "b"}
    fpr, tpr, threshold = curves["a"]
    assert fpr[0] == 0 and tpr[-1] == 1 and fpr[-1] == 1
    assert np.isfinite(threshold).all()
