"""Fitting one model by the recipe of ``train`` in params, on lists of PNG files: one home
for the input pipeline, class weights, early stopping and the distribution strategy, shared
by the train stage (:func:`fit_seed_ensemble`) and cross-validation (:mod:`lungct.model.cv`).
Importing this module imports TensorFlow.
"""

from __future__ import annotations

import contextlib
import logging
import tempfile
from collections.abc import Callable
from pathlib import Path

import keras

from lungct.contract import Contract
from lungct.model.dataset import image_dataset
from lungct.model.history import Fitted, live_curves
from lungct.model.network import build_cnn, class_weights, ensemble
from lungct.model.runtime import distribution_strategy, seed_everything
from lungct.params import TrainParams

log = logging.getLogger("train")


def fit_model(
    cfg: TrainParams,
    contract: Contract,
    seed: int,
    train: tuple[list[str], list[int]],
    val: tuple[list[str], list[int]],
    live_dir: Path | None = None,
    name: str = "train",
) -> Fitted:
    """Fit ``build_cnn`` on ``train`` (paths, class indices), validating (and stopping
    early) on ``val``; everything seeded from ``seed``, so the same inputs give the same
    weights on one machine. ``live_dir``: per-epoch curves written there by DVCLive.
    ``train.strategy: multi_worker``: the cluster's own loop (:mod:`lungct.model.distributed`)."""
    if cfg.strategy == "multi_worker":
        from lungct.model.distributed import fit_multi_worker

        return fit_multi_worker(cfg, contract, seed, train, val, live_dir, name)
    seed_everything(seed)
    size, channels = contract.prep.image_size, contract.prep.channels
    (train_x, train_y), (val_x, val_y) = train, val
    strategy = distribution_strategy(cfg.strategy)
    batch = cfg.batch_size * strategy.num_replicas_in_sync  # train.batch_size is per replica
    with contextlib.ExitStack() as stack:
        cache_dir = stack.enter_context(tempfile.TemporaryDirectory(prefix="lungct-cache-"))
        cache = {"cache": cfg.cache, "cache_dir": cache_dir}
        train_data = image_dataset(train_x, train_y, size, channels, batch, seed, **cache)
        val_data = image_dataset(val_x, val_y, size, channels, batch, **cache)
        with strategy.scope():
            steps = -(-len(train_x) // batch)
            model = build_cnn(size, channels, len(contract.classes), cfg, seed, steps)
        weights = class_weights(train_y) if cfg.class_weight == "auto" else None
        shown = {contract.classes[i]: round(w, 3) for i, w in (weights or {}).items()} or "none"
        log.info(
            f"{name}: {len(train_x)} train / {len(val_x)} val images, classes "
            f"{list(contract.classes)}, {model.count_params()} weights, "
            f"{strategy.num_replicas_in_sync} replica(s), class weights {shown}"
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
        if live_dir is not None:
            callbacks.append(stack.enter_context(live_curves(live_dir)))
        history = model.fit(
            train_data,
            validation_data=val_data,
            epochs=cfg.epochs,
            shuffle=False,  # train_data is already shuffled, from the seed
            class_weight=weights,
            callbacks=callbacks,
            verbose=2,
        ).history
    return Fitted(model, history, int(strategy.num_replicas_in_sync))


def fit_seed_ensemble(
    cfg: TrainParams,
    contract: Contract,
    seed: int,
    train: tuple[list[str], list[int]],
    val: tuple[list[str], list[int]],
    live_dir: Path | None = None,
    fit: Callable[..., Fitted] = fit_model,
) -> tuple[keras.Model, list[Fitted]]:
    """The model train saves: ``train.seeds`` models fitted from seeds ``seed``, ``seed + 1``,
    ... (the curves in ``live_dir`` are the first's), averaged by
    :func:`lungct.model.network.ensemble` when there are several; and the fitted members.
    ``fit``: how one member is made, with :func:`fit_model`'s arguments (a benchmark
    builds untrained ones)."""
    members = [fit(cfg, contract, seed, train, val, live_dir=live_dir)]
    for offset in range(1, cfg.seeds):
        name = f"train, seed {seed + offset} ({offset + 1}/{cfg.seeds})"
        members.append(fit(cfg, contract, seed + offset, train, val, name=name))
    if len(members) == 1:
        return members[0].model, members
    return ensemble([member.model for member in members]), members
