import numpy as np
import pytest

from lungct.metrics import classification_metrics


def one_hot(predicted, n, p=0.9):
    probs = np.full((len(predicted), n), (1 - p) / (n - 1))
    probs[np.arange(len(predicted)), predicted] = p
    return probs


def test_three_class_hand_computed():
    classes = ["benign", "malignant", "normal"]
    y_true = np.array([0, 0, 1, 1, 1, 2])
    y_pred = np.array([0, 1, 1, 1, 2, 2])
    m = classification_metrics(y_true, one_hot(y_pred, 3), classes)
    assert m["images"] == 6
    assert m["accuracy"] == pytest.approx(4 / 6, abs=1e-6)
    assert m["per_class"]["benign"] == {
        "precision": 1.0,
        "recall": 0.5,
        "f1": 0.666667,
        "support": 2,
    }
    assert m["per_class"]["malignant"]["precision"] == pytest.approx(2 / 3, abs=1e-6)
    assert m["per_class"]["malignant"]["recall"] == pytest.approx(2 / 3, abs=1e-6)
    assert m["per_class"]["normal"]["precision"] == 0.5
    assert m["confusion"]["malignant"] == {"benign": 0, "malignant": 2, "normal": 1}
    # Right answers at p=0.9, wrong ones at p=0.05.
    expected_loss = -(4 * np.log(0.9) + 2 * np.log(0.05)) / 6
    assert m["loss"] == pytest.approx(expected_loss, abs=1e-6)


def test_binary_perfect():
    m = classification_metrics(np.array([0, 1, 1]), one_hot(np.array([0, 1, 1]), 2), ["a", "b"])
    assert m["accuracy"] == 1.0
    assert m["per_class"]["b"]["recall"] == 1.0


def test_class_absent_from_test_is_zero_not_nan():
    m = classification_metrics(np.array([0, 0]), one_hot(np.array([0, 1]), 3), ["a", "b", "c"])
    assert m["per_class"]["c"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0}
    assert m["per_class"]["b"]["precision"] == 0.0
    assert np.isfinite(m["loss"])
