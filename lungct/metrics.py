"""Classification metrics for the test split, from scikit-learn, as stable JSON keys."""

from __future__ import annotations

import numpy as np
from sklearn.metrics import (
    accuracy_score,
    confusion_matrix,
    log_loss,
    precision_recall_fscore_support,
)


def classification_metrics(
    y_true: np.ndarray, probabilities: np.ndarray, classes: list[str]
) -> dict:
    """Accuracy, loss, per-class precision/recall/F1/support and the confusion matrix.

    Args:
        y_true: true class indices, shape (n,).
        probabilities: predicted class probabilities, shape (n, len(classes)).
        classes: class names in model output order.

    A class absent from ``y_true`` gets support 0 and recall 0 rather than NaN.
    """
    labels = list(range(len(classes)))
    y_pred = probabilities.argmax(axis=1)
    precision, recall, f1, support = precision_recall_fscore_support(
        y_true, y_pred, labels=labels, zero_division=0
    )
    matrix = confusion_matrix(y_true, y_pred, labels=labels)
    clipped = np.clip(probabilities, 1e-7, 1.0)
    return {
        "images": int(len(y_true)),
        "accuracy": round(float(accuracy_score(y_true, y_pred)), 6),
        "loss": round(
            float(log_loss(y_true, clipped / clipped.sum(axis=1, keepdims=True), labels=labels)), 6
        ),
        "per_class": {
            name: {
                "precision": round(float(precision[i]), 6),
                "recall": round(float(recall[i]), 6),
                "f1": round(float(f1[i]), 6),
                "support": int(support[i]),
            }
            for i, name in enumerate(classes)
        },
        "confusion": {
            actual: {predicted: int(matrix[i, j]) for j, predicted in enumerate(classes)}
            for i, actual in enumerate(classes)
        },
    }
