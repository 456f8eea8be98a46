"""What fitting gives, on one machine or several: the fitted model with its per-epoch history
(:class:`Fitted`), and DVCLive's callback logging the per-epoch curves (:func:`live_curves`)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import keras

from lungct.errors import UserError


@dataclass
class Fitted:
    """A fitted model, its per-epoch history (Keras' names: loss, accuracy, val_loss,
    val_accuracy) and the number of replicas it was trained on."""

    model: keras.Model
    history: dict[str, list[float]]
    replicas: int

    @property
    def best_epoch(self) -> int:
        """1-based epoch of the lowest validation loss (the weights kept by early stopping)."""
        losses = self.history["val_loss"]
        return min(range(len(losses)), key=losses.__getitem__) + 1


@contextlib.contextmanager
def live_curves(folder: Path) -> Iterator[Any]:
    """DVCLive's Keras callback, logging per-epoch curves into ``folder``: its own dvc.yaml
    and experiment off (dvc.yaml declares the plots), its summary file dropped at the end
    (the stage writes its own metrics). DVCLive reads the git HEAD when it starts; in a
    repository without a commit that raises, and here it is one :class:`UserError`."""
    from dvclive import Live
    from dvclive.keras import DVCLiveCallback
    from scmrepo.exceptions import SCMError  # what DVCLive lets through (dvc's git layer)

    try:
        live = Live(str(folder), dvcyaml=False, save_dvc_exp=False)
    except SCMError as exc:
        raise UserError(
            f"{Path.cwd()}: git says '{exc}': DVCLive, which logs the training curves, needs "
            "a commit to start from; commit once (git add -A && git commit) and rerun"
        ) from None
    try:
        yield DVCLiveCallback(live=live)
    finally:
        live.end()
        (Path(folder) / "metrics.json").unlink(missing_ok=True)
