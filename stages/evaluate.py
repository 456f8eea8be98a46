"""evaluate: score the trained model on ``data/splits/test``.

Writes ``metrics/eval.json`` (accuracy, loss, per-class precision/recall/F1,
confusion counts) and ``metrics/predictions.csv`` (one row per test image, the
data of the confusion-matrix plot).
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd

from lungct.artifacts import (
    METRICS_DIR,
    MODEL_FILE,
    SPLITS_DIR,
    read_contract,
    read_splits,
    split_images,
)
from lungct.atomic import write_csv, write_json
from lungct.errors import UserError, run_stage
from lungct.metrics import classification_metrics
from lungct.params import Params, load_params

METRICS_FILE = METRICS_DIR / "eval.json"
PREDICTIONS_FILE = METRICS_DIR / "predictions.csv"

log = logging.getLogger("evaluate")


def evaluate(params: Params, splits_dir: Path = SPLITS_DIR) -> dict:
    contract = read_contract()
    classes = contract["classes"]
    table = read_splits(splits_dir)
    paths, y_true = split_images(table, "test", classes, splits_dir)
    if not MODEL_FILE.exists():
        raise UserError(f"{MODEL_FILE}: not found (run the train stage first: dvc repro)")

    from lungct.model import image_dataset, load_model

    model = load_model(MODEL_FILE)
    data = image_dataset(
        paths, y_true, contract["image_size"], contract["channels"], params.evaluate.batch_size
    )
    probabilities = model.predict(data, verbose=0).astype(np.float64)
    metrics = classification_metrics(np.asarray(y_true), probabilities, classes)
    test = table[table["split"] == "test"]
    metrics["groups"] = int(test["group"].nunique())  # patients, or near-duplicate groups

    predictions = pd.DataFrame(
        {
            "image": test["image"].to_numpy(),
            "group": test["group"].to_numpy(),
            "actual": [classes[i] for i in y_true],
            "predicted": [classes[i] for i in probabilities.argmax(axis=1)],
        }
    )
    for i, name in enumerate(classes):
        predictions[f"p_{name}"] = probabilities[:, i].round(6)
    write_csv(PREDICTIONS_FILE, predictions)
    write_json(METRICS_FILE, metrics)
    log.info(
        "evaluate: test accuracy %.4f on %d images of %d groups (patients)",
        metrics["accuracy"],
        metrics["images"],
        metrics["groups"],
    )
    return metrics


def main() -> None:
    evaluate(load_params())


if __name__ == "__main__":
    run_stage(main)
