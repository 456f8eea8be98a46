"""evaluate: score the trained model on ``data/splits/test``.

Writes, all under ``metrics/``:

- ``eval.json``: the headline figures (DVC's declared metrics: accuracy, balanced
  accuracy and its interval, macro F1, ROC AUC, loss, ECE, leaky);
- ``eval_details.json``: everything: image-level, cancer-vs-normal, calibration and
  patient-level metrics, patient-bootstrap intervals, and the split the test set came
  from (keys in docs/outputs.md);
- ``predictions.csv``: one row per test image (group, actual, predicted, class
  probabilities): the data of both confusion-matrix plots;
- ``roc/<class>.csv``: one-vs-rest ROC points per class;
- ``calibration/``: the reliability diagram's points before and after the model's
  temperature, and the risk-coverage curve of the calibrated answers;
- ``test_grid.png``: test images with true and predicted class, misclassified first;
- ``charts/*.png``: static training-curve, confusion-matrix and ROC charts for the report;
- ``report.md``: the same, readable;

and ``models/card.json``, the model card (``lungct.evaluation.card``): the headline figures with the
sha256 of the model they belong to and what it was trained on, for whoever serves it.
"""

from __future__ import annotations

if not __package__:  # started as a file: stages/stages.py says how to start it
    import stages  # noqa: F401

import logging
from pathlib import Path

import numpy as np
import pandas as pd

from lungct.artifacts import (
    CONTRACT_FILE,
    CURVES_DIR,
    METRICS_DIR,
    MODEL_FILE,
    PROBABILITY_DECIMALS,
    SPLIT_KEYS,
    SPLITS_DIR,
    is_leaky,
)
from lungct.atomic import atomic_dir, atomic_file, write_csv, write_json
from lungct.contract import Contract
from lungct.data.tables import read_split_metrics, read_splits, split_images
from lungct.errors import UserError, run_stage
from lungct.evaluation.card import CARD_FILE, write_card
from lungct.evaluation.charts import write_charts
from lungct.evaluation.metrics import (
    classification_metrics,
    eval_headline,
    image_phashes,
    leak_sensitivity,
    nearest_bits,
    roc_curves,
)
from lungct.evaluation.report import image_grid, markdown_report, write_calibration, write_roc
from lungct.params import Params, load_params

METRICS_FILE = METRICS_DIR / "eval.json"  # the headline figures: DVC's declared metrics
DETAILS_FILE = METRICS_DIR / "eval_details.json"  # everything measured, for report.md and people
PREDICTIONS_FILE = METRICS_DIR / "predictions.csv"
ROC_DIR = METRICS_DIR / "roc"
CALIBRATION_DIR = METRICS_DIR / "calibration"  # reliability and risk-coverage: DVC plots
GRID_FILE = METRICS_DIR / "test_grid.png"
REPORT_FILE = METRICS_DIR / "report.md"
CHARTS_DIR = METRICS_DIR / "charts"
log = logging.getLogger("evaluate")


def evaluate(params: Params, splits_dir: Path = SPLITS_DIR) -> dict:
    contract = Contract.read(CONTRACT_FILE)
    classes = list(contract.classes)
    table = read_splits(splits_dir)
    split = read_split_metrics()
    paths, y_true = split_images(table, "test", classes, splits_dir)
    if not MODEL_FILE.exists():
        raise UserError(f"{MODEL_FILE}: not found (run the train stage first: dvc repro)")

    from lungct.model.calibrate import before_and_after
    from lungct.model.dataset import image_dataset
    from lungct.model.network import tta_model
    from lungct.model.saving import load_model

    model = contract.check_model(load_model(MODEL_FILE), MODEL_FILE, CONTRACT_FILE)
    if params.evaluate.tta:
        model = tta_model(model)
    prep = contract.prep
    data = image_dataset(paths, y_true, prep.image_size, prep.channels, params.evaluate.batch_size)
    # the model's own (calibrated) probabilities, and those before its temperature
    raw, probabilities = (
        p.astype(np.float64) for p in before_and_after(model).predict(data, verbose=0)
    )
    y_true = np.asarray(y_true)
    test = table[table["split"] == "test"]
    groups = test["group"].to_numpy()
    metrics = classification_metrics(
        y_true,
        probabilities,
        classes,
        groups=groups,
        bootstrap=params.evaluate.bootstrap,
        seed=params.base.seed,
        uncalibrated=raw,
        uncertain_below=contract.uncertain_below,
    )
    metrics["calibration"]["temperature"] = contract.temperature
    metrics["split"] = {key: split.get(key) for key in SPLIT_KEYS}
    seen = [splits_dir / image for image in table.loc[table["split"] != "test", "image"]]
    distances = nearest_bits(image_phashes(paths), image_phashes(seen))
    metrics["leak_sensitivity"] = leak_sensitivity(y_true, probabilities, distances)

    predictions = pd.DataFrame(
        {
            "image": test["image"].to_numpy(),
            "group": groups,
            "actual": [classes[i] for i in y_true],
            "predicted": [classes[i] for i in probabilities.argmax(axis=1)],
            "answer": [contract.answer(p) for p in probabilities],  # or "uncertain"
        }
    )
    for i, name in enumerate(classes):
        predictions[f"p_{name}"] = probabilities[:, i].round(PROBABILITY_DECIMALS)

    write_csv(PREDICTIONS_FILE, predictions)
    curves = roc_curves(y_true, probabilities, classes)
    with atomic_dir(ROC_DIR) as tmp:
        write_roc(tmp, curves)
    with atomic_dir(CALIBRATION_DIR) as tmp:
        selective_plots = write_calibration(tmp, y_true, raw, probabilities)
    grid = image_grid(paths, predictions, classes, probabilities, params.evaluate.grid_images)
    with atomic_file(GRID_FILE) as tmp:
        grid.save(tmp, format="PNG")
    with atomic_dir(CHARTS_DIR) as tmp:
        charts = write_charts(tmp, CURVES_DIR, predictions, classes, curves, selective_plots)
    with atomic_file(REPORT_FILE) as tmp:
        tmp.write_text(markdown_report(metrics, split, charts, CHARTS_DIR.name), encoding="utf-8")
    write_json(DETAILS_FILE, metrics)
    figures = eval_headline(metrics)
    write_card(CARD_FILE, MODEL_FILE, contract, figures, metrics["images"], metrics["groups"])
    write_json(METRICS_FILE, figures)  # last: its presence means the rest is complete
    log.info(
        "evaluate: test accuracy %.4f, balanced %.4f on %d images of %d groups (patients)%s",
        metrics["accuracy"],
        metrics["balanced_accuracy"],
        metrics["images"],
        metrics["groups"],
        " [LEAKY SPLIT]" if is_leaky(split) else "",
    )
    return metrics


def main() -> None:
    evaluate(load_params())


if __name__ == "__main__":
    run_stage(main)
