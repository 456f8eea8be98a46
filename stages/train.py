"""train: fit the CNN on ``data/splits/{train,val}`` and save it with its preprocessing contract.

Writes ``models/model.keras``, ``models/labels.json`` (class order, input size,
channels, window, preprocessing, and what the data was: ``data/raw/SOURCE.json`` and
``metrics/split.json``), ``metrics/train.json`` and per-epoch curves in
``metrics/train/plots/metrics/`` (DVCLive). With ``train.seeds`` > 1 the saved model
averages that many models fitted from consecutive seeds (the curves and the figures of
``metrics/train.json`` are the first's); with ``train.ensemble``, it is instead the cv
stage's fold models averaged (``models/folds/``). With ``train.strategy:
multi_worker`` every worker of ``TF_CONFIG`` runs this stage and only the chief writes.
"""

from __future__ import annotations

if not __package__:  # started as a file: stages/stages.py says how to start it
    import stages  # noqa: F401

if __name__ == "__main__":  # before any import starts a thread: see hold_stop_signals
    from lungct.model.distributed import hold_stop_signals

    hold_stop_signals()

import logging
from dataclasses import replace
from pathlib import Path

from lungct.artifacts import (
    CONTRACT_FILE,
    CURVES_DIR,
    FOLDS_DIR,
    METRICS_DIR,
    MODEL_FILE,
    RAW_DIR,
    RAW_SOURCE,
    SPLIT_METRICS,
    SPLITS_DIR,
    TRAIN_LIVE_DIR,
)
from lungct.atomic import atomic_file, write_json
from lungct.contract import Contract, TrainingData
from lungct.data.tables import (
    image_groups,
    read_source,
    read_split_metrics,
    read_splits,
    split_images,
    train_classes,
)
from lungct.errors import run_stage
from lungct.model.distributed import writes_outputs
from lungct.params import Params, load_params

METRICS_FILE = METRICS_DIR / "train.json"
ENSEMBLE_CURVES = "An ensemble of the cv stage's fold models: per-fold curves in metrics/cv/.\n"

log = logging.getLogger("train")


def train(params: Params, splits_dir: Path = SPLITS_DIR, folds_dir: Path = FOLDS_DIR) -> dict:
    # train.strategy multi_worker: every worker trains, only the chief writes outputs
    chief = writes_outputs(params.train.strategy)
    table = read_splits(splits_dir)
    classes = train_classes(table, splits_dir)

    from lungct.model.saving import save_model

    # what the model will take, and say it was trained on
    contract = Contract.from_params(params, classes, training_data(splits_dir))
    if params.train.ensemble:
        return train_ensemble(contract, params, folds_dir)

    from lungct.model.train import fit_seed_ensemble

    train_set = split_images(table, "train", classes, splits_dir)
    val_set = split_images(table, "val", classes, splits_dir)
    live_dir = TRAIN_LIVE_DIR if chief else None
    model, members = fit_seed_ensemble(
        params.train, contract, params.base.seed, train_set, val_set, live_dir=live_dir
    )
    fitted = members[0]  # the curves and figures are the first member's
    history = fitted.history
    best = fitted.best_epoch - 1
    metrics = {
        "members": len(members),
        "restored_best_weights": bool(params.train.early_stopping_patience),
        "replicas": fitted.replicas,
        "epochs": len(history["loss"]),
        "loss": round(history["loss"][-1], 6),
        "accuracy": round(history["accuracy"][-1], 6),
        "val_loss": round(history["val_loss"][-1], 6),
        "val_accuracy": round(history["val_accuracy"][-1], 6),
        "best_epoch": best + 1,
        "best_val_loss": round(history["val_loss"][best], 6),
        "parameters": int(model.count_params()),
        "train_images": len(train_set[0]),
        "val_images": len(val_set[0]),
    }
    if len(members) > 1:
        metrics["member_best_val_loss"] = [
            round(m.history["val_loss"][m.best_epoch - 1], 6) for m in members
        ]
    from lungct.model.cv import predict_images
    from lungct.model.saving import inference_model

    raw = predict_images(inference_model(model), contract, val_set[0], params)
    groups = image_groups(table, "val")
    model, contract, metrics["calibration"] = calibrated(
        model, contract, raw, val_set[1], groups, params
    )
    if not chief:
        log.info("train: done; the chief writes the model and metrics, this worker nothing")
        return metrics
    with atomic_file(MODEL_FILE) as tmp:
        save_model(model, tmp)
    contract.write(CONTRACT_FILE)
    write_json(METRICS_FILE, metrics)
    return metrics


def train_ensemble(contract: Contract, params: Params, folds_dir: Path) -> dict:
    """The cv stage's fold models averaged into the saved model (``train.ensemble``); their
    curves and scores are the cv stage's (metrics/cv/, metrics/cv_details.json)."""
    from lungct.model.cv import fold_ensemble, out_of_fold
    from lungct.model.saving import save_model

    model = fold_ensemble(contract, folds_dir)
    members = len(model.layers) - 2
    # every val image trained most fold models: each fold model's own held-out images instead
    raw, truth, groups = out_of_fold(contract, params, folds_dir)
    model, contract, calibration = calibrated(model, contract, raw, truth, groups, params)
    with atomic_file(MODEL_FILE) as tmp:
        save_model(model, tmp)
    contract.write(CONTRACT_FILE)
    CURVES_DIR.mkdir(parents=True, exist_ok=True)
    (CURVES_DIR / "README.md").write_text(ENSEMBLE_CURVES, encoding="utf-8")
    metrics = {
        "members": members,
        "parameters": int(model.count_params()),
        "calibration": calibration,
    }
    write_json(METRICS_FILE, metrics)
    log.info("train: an ensemble of %d fold models from %s", metrics["members"], folds_dir)
    return metrics


def calibrated(model, contract: Contract, raw, truth, groups, params: Params):
    """``(model, contract, record)`` calibrated by ``train.calibration`` on held-out images
    (``raw``: their probabilities before calibration, ``truth``: their classes, ``groups``:
    their patients): the model
    with its temperature layer, the contract with its temperature and "uncertain"
    threshold, the record for ``metrics/train.json``."""
    from lungct.model.calibrate import calibrate

    model, temperature, below, record = calibrate(
        model, raw, truth, groups, params.train.calibration, params.base.seed
    )
    crossfit = record["choice"].get("crossfit")
    if crossfit:
        log.info(
            "train: temperature auto: the loss of val patients %.4f without one, %.4f with "
            "one fitted on the others (%d halvings): %s",
            crossfit["none"],
            crossfit["temperature"],
            crossfit["draws"],
            "kept" if temperature != 1.0 else "none",
        )
    log.info(
        "train: temperature %.4g (val NLL %.4f -> %.4f, ECE %.4f -> %.4f); uncertain below a "
        "top probability of %.4g (val: %.0f %% answered)",
        temperature,
        record["nll"]["before"],
        record["nll"]["after"],
        record["ece"]["before"],
        record["ece"]["after"],
        below,
        100 * record["uncertain"]["coverage"],
    )
    return model, replace(contract, temperature=temperature, uncertain_below=below), record


def training_data(splits_dir: Path) -> TrainingData | None:
    """What the data was, from the download record and the split summary (dvc.yaml deps of
    train); None, with a log line, where a scratch run has neither (the contract then says
    its training data was not recorded)."""
    if splits_dir != SPLITS_DIR or not (RAW_DIR / RAW_SOURCE).is_file():
        log.warning("train: no data/raw/SOURCE.json: the contract records no training data")
        return None
    split = read_split_metrics() if SPLIT_METRICS.is_file() else {}
    return TrainingData.from_records(read_source(RAW_DIR), split)


def main() -> None:
    train(load_params())


if __name__ == "__main__":
    run_stage(main)
