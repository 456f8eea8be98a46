"""train: fit the CNN on ``data/splits/{train,val}`` and save it with its preprocessing contract.

Writes ``models/model.keras``, ``models/labels.json`` (class order, input size,
channels, window, preprocessing, and what the data was: ``data/raw/SOURCE.json`` and
``metrics/split.json``), ``metrics/train.json`` and per-epoch curves in
``metrics/train/plots/metrics/`` (DVCLive).
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path

from lungct.artifacts import (
    CONTRACT_FILE,
    METRICS_DIR,
    MODEL_FILE,
    RAW_DIR,
    RAW_SOURCE,
    SPLIT_METRICS,
    SPLITS_DIR,
    SPLITS_TABLE,
    TRAIN_LIVE_DIR,
    read_source,
    read_split_metrics,
    read_splits,
    split_images,
)
from lungct.atomic import atomic_file, write_json
from lungct.contract import Contract, TrainingData
from lungct.errors import UserError, run_stage
from lungct.params import Params, load_params

METRICS_FILE = METRICS_DIR / "train.json"

log = logging.getLogger("train")


def train(params: Params, splits_dir: Path = SPLITS_DIR) -> dict:
    table = read_splits(splits_dir)
    classes = sorted(table.loc[table["split"] == "train", "class"].unique())
    if len(classes) < 2:
        raise UserError(
            f"{splits_dir / SPLITS_TABLE}: training needs at least two classes, got {classes}"
        )

    import keras

    from lungct.model import (
        build_cnn,
        class_weights,
        distribution_strategy,
        image_dataset,
        save_model,
        seed_everything,
    )

    seed_everything(params.base.seed)
    # what the model will take, and say it was trained on
    contract = Contract.from_params(params, classes, training_data(splits_dir))
    size, cfg, channels = contract.prep.image_size, params.train, contract.prep.channels
    train_x, train_y = split_images(table, "train", classes, splits_dir)
    val_x, val_y = split_images(table, "val", classes, splits_dir)
    strategy = distribution_strategy(cfg.strategy)
    batch = cfg.batch_size * strategy.num_replicas_in_sync  # train.batch_size is per replica
    with tempfile.TemporaryDirectory(prefix="lungct-cache-") as cache_dir:
        cache = {"cache": cfg.cache, "cache_dir": cache_dir}
        train_data = image_dataset(
            train_x, train_y, size, channels, batch, params.base.seed, **cache
        )
        val_data = image_dataset(val_x, val_y, size, channels, batch, **cache)
        with strategy.scope():
            steps = -(-len(train_x) // batch)
            model = build_cnn(size, channels, len(classes), cfg, params.base.seed, steps)
        weights = class_weights(train_y, len(classes)) if cfg.class_weight == "auto" else None
        log.info(
            "train: %d train / %d val images, classes %s, %d weights, %d replica(s), "
            "class weights %s",
            len(train_x),
            len(val_x),
            classes,
            model.count_params(),
            strategy.num_replicas_in_sync,
            {classes[i]: round(w, 3) for i, w in (weights or {}).items()} or "none",
        )
        callbacks: list = []
        if cfg.early_stopping_patience:
            callbacks.append(
                keras.callbacks.EarlyStopping(
                    monitor="val_loss",
                    patience=cfg.early_stopping_patience,
                    restore_best_weights=True,
                )
            )
        history = fit(model, train_data, val_data, cfg.epochs, weights, callbacks)

    with atomic_file(MODEL_FILE) as tmp:
        save_model(model, tmp)
    contract.write(CONTRACT_FILE)
    best = min(range(len(history["val_loss"])), key=history["val_loss"].__getitem__)
    metrics = {
        "restored_best_weights": bool(cfg.early_stopping_patience),
        "replicas": int(strategy.num_replicas_in_sync),
        "epochs": len(history["loss"]),
        "loss": round(history["loss"][-1], 6),
        "accuracy": round(history["accuracy"][-1], 6),
        "val_loss": round(history["val_loss"][-1], 6),
        "val_accuracy": round(history["val_accuracy"][-1], 6),
        "best_epoch": best + 1,
        "best_val_loss": round(history["val_loss"][best], 6),
        "parameters": int(model.count_params()),
        "train_images": len(train_x),
        "val_images": len(val_x),
    }
    write_json(METRICS_FILE, metrics)
    return metrics


def training_data(splits_dir: Path) -> TrainingData | None:
    """What the data was, from the download record and the split summary (dvc.yaml deps of
    train); None, with a log line, where a scratch run has neither (the contract then says
    its training data was not recorded)."""
    if splits_dir != SPLITS_DIR or not (RAW_DIR / RAW_SOURCE).is_file():
        log.warning("train: no data/raw/SOURCE.json: the contract records no training data")
        return None
    split = read_split_metrics() if SPLIT_METRICS.is_file() else {}
    return TrainingData.from_records(read_source(RAW_DIR), split)


def fit(model, train_data, val_data, epochs: int, weights, callbacks: list) -> dict:
    """Fit with per-epoch curves logged by DVCLive; one log line per epoch."""
    from dvclive import Live
    from dvclive.keras import DVCLiveCallback

    # dvcyaml=False: the plots are declared in dvc.yaml; Live's own summary file is
    # dropped below because metrics/train.json is the stage's metrics file.
    with Live(str(TRAIN_LIVE_DIR), dvcyaml=False, save_dvc_exp=False) as live:
        history = model.fit(
            train_data,
            validation_data=val_data,
            epochs=epochs,
            shuffle=False,  # train_data is already shuffled, from the seed
            class_weight=weights,
            callbacks=[*callbacks, DVCLiveCallback(live=live)],
            verbose=2,
        ).history
    (TRAIN_LIVE_DIR / "metrics.json").unlink(missing_ok=True)
    return history


def main() -> None:
    train(load_params())


if __name__ == "__main__":
    run_stage(main)
