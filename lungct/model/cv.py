"""Cross-validation (``split.folds``) and the fold ensemble (``train.ensemble``).

One model per fold of the split stage (:func:`lungct.data.split.assign_folds`), fitted on
the other folds by the train stage's recipe (:func:`lungct.model.train.fit_model`) and
scored on its own fold: the validation figures by which recipes are compared, never the
test split. ``train.ensemble`` averages the fold models (:func:`fold_ensemble`).
TensorFlow is imported only where a model is fitted or loaded.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pandas as pd

from lungct.artifacts import FOLDS_DIR, SPLITS_DIR
from lungct.atomic import read_json
from lungct.contract import Contract
from lungct.data.tables import (
    fold_images,
    image_groups,
    read_splits,
    table_folds,
    train_classes,
)
from lungct.errors import UserError
from lungct.evaluation.metrics import classification_metrics
from lungct.io.images import REFRAME_MARGINS, model_input, reframe
from lungct.params import Params

log = logging.getLogger("cv")

FOLDS_FILE = "folds.json"  # in FOLDS_DIR: the folds, their classes and model files
SCORES = ("balanced_accuracy", "macro_f1", "loss")  # per fold; their means are metrics/cv.json


def cross_validate(
    params: Params,
    table: pd.DataFrame,
    out: Path = FOLDS_DIR,
    live_dir: Path | None = None,
    splits_dir: Path = SPLITS_DIR,
) -> dict:
    """Fit and score one model per fold of ``table`` (``splits.csv``), saving each into
    ``out`` (written by the caller's atomic folder). Returns ``metrics/cv_details.json``'s
    content: per-fold scores, their mean and standard deviation. No folds: ``{"folds": 0}``."""
    folds = table_folds(table, splits_dir)
    record: dict = {"folds": len(folds), "classes": [], "models": []}
    if not folds:
        (out / FOLDS_FILE).write_text(json.dumps(record, indent=2) + "\n")
        return {"folds": 0}
    if folds != list(range(1, len(folds) + 1)) or len(folds) != params.split.folds:
        raise UserError(
            f"{splits_dir}: splits.csv has folds {folds}, params split.folds is "
            f"{params.split.folds}; rerun the split stage"
        )

    from lungct.model.network import tta_model
    from lungct.model.saving import inference_model, save_model
    from lungct.model.train import fit_model

    classes = train_classes(table, splits_dir)
    contract = Contract.from_params(params, classes)
    rows = []
    fold_of = pd.to_numeric(table["fold"], errors="coerce")
    for fold in folds:
        train, val = fold_images(table, fold, classes, splits_dir)
        curves = None if live_dir is None else live_dir / f"fold{fold}"
        name = f"cv fold {fold}/{len(folds)}"
        fitted = fit_model(params.train, contract, params.base.seed, train, val, curves, name)
        model_file = out / f"fold{fold}.keras"
        save_model(fitted.model, model_file)
        model = inference_model(fitted.model)
        scores, shifted = [  # as it is, and with test-time augmentation
            classification_metrics(
                np.asarray(val[1]), predict_images(m, contract, val[0], params), classes
            )
            for m in (model, tta_model(model))
        ]
        row = {
            "fold": fold,
            "train_images": len(train[0]),
            "val_images": len(val[0]),
            "val_groups": int(table.loc[fold_of == fold, "group"].nunique()),
            **{key: scores[key] for key in SCORES},
            "accuracy": scores["accuracy"],
            "epochs": len(fitted.history["loss"]),
            "best_epoch": fitted.best_epoch,
            "recall": {name: scores["per_class"][name]["recall"] for name in classes},
            "tta": {key: shifted[key] for key in SCORES},
            "reframed": reframed_scores(model, contract, val, classes, params),
        }
        log.info(
            f"{name}: balanced accuracy {row['balanced_accuracy']:.3f}, "
            f"macro F1 {row['macro_f1']:.3f}, loss {row['loss']:.4f} ({len(val[0])} images)"
        )
        rows.append(row)
        record["models"].append(model_file.name)
    record["classes"] = classes
    (out / FOLDS_FILE).write_text(json.dumps(record, indent=2) + "\n")
    return summary(rows)


def summary(rows: list[dict]) -> dict:
    """Per-fold rows with the mean and (population) standard deviation of each score, and
    of each score with test-time augmentation (``tta``) and under the framing shift
    (``reframed``)."""

    def spread(values: list) -> dict:
        array = np.array(values, dtype=float)
        return {"mean": round(float(array.mean()), 6), "std": round(float(array.std()), 6)}

    details: dict = {"folds": len(rows), "per_fold": rows}
    for key in (*SCORES, "accuracy"):
        details[key] = spread([row[key] for row in rows])
    for view in ("tta", "reframed"):
        details[view] = {key: spread([row[view][key] for row in rows]) for key in SCORES}
    classes = rows[0]["recall"] if rows else {}
    details["recall"] = {
        name: spread([row["recall"][name] for row in rows if row["recall"][name] is not None])
        for name in classes
    }
    return details


def cv_headline(details: dict) -> dict:
    """``metrics/cv.json``, the declared metric: the mean of each fold score (the same key
    names as ``metrics/eval.json``, so ``dvc metrics show`` stays one narrow table);
    empty without cross-validation."""
    return {key: details[key]["mean"] for key in SCORES} if details.get("folds") else {}


def predict_images(model, contract: Contract, paths: list[str], params: Params) -> np.ndarray:
    """``model``'s class probabilities (float64) for the split PNGs at ``paths``."""
    from lungct.model.dataset import image_dataset

    prep = contract.prep
    labels = [0] * len(paths)
    data = image_dataset(paths, labels, prep.image_size, prep.channels, params.evaluate.batch_size)
    return model.predict(data, verbose=0).astype(np.float64)


def reframed_scores(
    model, contract: Contract, val: tuple[list[str], list[int]], classes: list[str], params: Params
) -> dict:
    """A fold model's scores on its held-out images shown as exports with wider margins
    would show them (:func:`lungct.io.images.reframe`, each of
    :data:`lungct.io.images.REFRAME_MARGINS`, through the recipe's own ``convert.framing``):
    each score the mean over the margins. Exports of one dataset frame the chest
    differently, and folds drawn from the same exports cannot see a model that reads the
    framing instead of the chest; these scores can (docs/benchmarks.md, "A framing-robust
    choice")."""
    from PIL import Image

    images = []
    for path in val[0]:
        with Image.open(path) as image:
            images.append(np.asarray(image))
    truth = np.asarray(val[1])
    per_margin = []
    for margin in REFRAME_MARGINS:
        batch = model_input([reframe(image, margin, contract.prep.framing) for image in images])
        probabilities = model.predict(batch, batch_size=params.evaluate.batch_size, verbose=0)
        scores = classification_metrics(truth, probabilities.astype(np.float64), classes)
        per_margin.append([scores[key] for key in SCORES])
    return {
        key: round(float(v), 6) for key, v in zip(SCORES, np.mean(per_margin, axis=0), strict=True)
    }


def out_of_fold(
    contract: Contract, params: Params, folds_dir: Path = FOLDS_DIR, splits_dir: Path = SPLITS_DIR
) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """``(probabilities, classes, groups)`` of every train and val image by the fold model
    that did not see it (``folds_dir``, the cv stage's): the held-out images a fold ensemble
    is calibrated on, since each of them trained the other fold models."""
    from lungct.model.saving import load_model

    table = read_splits(splits_dir)
    names = _fold_models(contract, folds_dir)
    probabilities, truth, groups = [], [], []
    for fold, name in enumerate(names, start=1):
        _, (paths, labels) = fold_images(table, fold, list(contract.classes), splits_dir)
        model = contract.check_model(load_model(folds_dir / name), folds_dir / name)
        probabilities.append(predict_images(model, contract, paths, params))
        truth.append(np.asarray(labels, dtype=int))
        groups += image_groups(table, fold=fold)
    return np.concatenate(probabilities), np.concatenate(truth), groups


def _fold_models(contract: Contract, folds_dir: Path) -> list[str]:
    """The fold model files of ``folds_dir``'s record, in fold order; a :class:`UserError`
    naming the record when they are missing or were trained on other classes."""
    path = folds_dir / FOLDS_FILE
    try:
        record = read_json(path)
        names, classes = list(record["models"]), list(record["classes"])
    except FileNotFoundError:
        raise UserError(f"{path}: not found (run the cv stage first: dvc repro)") from None
    except (ValueError, KeyError, TypeError) as exc:
        raise UserError(f"{path}: not a folds record ({exc}); rerun the cv stage") from None
    if not names:
        raise UserError(f"{path}: no fold models; train.ensemble needs split.folds >= 2")
    if classes != list(contract.classes):
        raise UserError(
            f"{path}: fold models were trained on classes {classes}, the split has "
            f"{list(contract.classes)}; rerun the cv stage"
        )
    return names


def fold_ensemble(contract: Contract, folds_dir: Path = FOLDS_DIR):
    """The fold models of ``folds_dir`` averaged into one Keras model; a
    :class:`UserError` naming the folder when they are missing or were trained on
    other classes than ``contract``."""
    from lungct.model.network import ensemble
    from lungct.model.saving import load_model

    names = _fold_models(contract, folds_dir)
    path = folds_dir / FOLDS_FILE
    members = [load_model(folds_dir / name, for_inference=False) for name in names]
    for name, member in zip(names, members, strict=True):
        contract.check_model(member, folds_dir / name, path)
    return ensemble(members)
