"""cv: cross-validation of the train recipe on the train and val images (``split.folds``).

One model per fold of ``data/splits/splits.csv``, fitted on the other folds with the
``train`` params, early stopping on its own fold, and scored on it (``lungct.model.cv``):
the figures by which recipes are compared, never the test split.

Writes ``models/folds/`` (the fold models and ``folds.json``, which ``train.ensemble``
averages), ``metrics/cv.json`` (the declared metric: mean validation balanced accuracy,
macro F1 and loss over the folds; empty with ``split.folds: 0``),
``metrics/cv_details.json`` (per fold, mean and standard deviation) and per-fold
curves in ``metrics/cv/fold<k>/`` (DVCLive). With ``split.folds: 0`` it trains nothing.
"""

from __future__ import annotations

if not __package__:  # started as a file: stages/stages.py says how to start it
    import stages  # noqa: F401

import logging
import shutil

from lungct.artifacts import FOLDS_DIR, METRICS_DIR, SPLITS_DIR
from lungct.atomic import atomic_dir, write_json
from lungct.data.tables import read_splits
from lungct.errors import run_stage
from lungct.params import Params, load_params

CV_METRICS = METRICS_DIR / "cv.json"
CV_DETAILS = METRICS_DIR / "cv_details.json"
CV_LIVE_DIR = METRICS_DIR / "cv"
# Always there, so that git keeps the folder (a DVC output) even without folds.
CV_LIVE_NOTE = (
    "Per-epoch curves of each cross-validation fold (DVCLive): "
    "fold<k>/plots/metrics/{train,eval}/<metric>.tsv; none with split.folds: 0.\n"
)

log = logging.getLogger("cv")


def cv(params: Params) -> dict:
    from lungct.model.cv import cross_validate, cv_headline

    table = read_splits(SPLITS_DIR)
    shutil.rmtree(CV_LIVE_DIR, ignore_errors=True)
    CV_LIVE_DIR.mkdir(parents=True)
    (CV_LIVE_DIR / "README.md").write_text(CV_LIVE_NOTE, encoding="utf-8")
    with atomic_dir(FOLDS_DIR) as tmp:
        details = cross_validate(params, table, tmp, live_dir=CV_LIVE_DIR)
    write_json(CV_DETAILS, details)
    write_json(CV_METRICS, cv_headline(details))
    if details["folds"]:
        log.info(
            "cv: %d folds, validation balanced accuracy %.3f +- %.3f, macro F1 %.3f +- %.3f",
            details["folds"],
            details["balanced_accuracy"]["mean"],
            details["balanced_accuracy"]["std"],
            details["macro_f1"]["mean"],
            details["macro_f1"]["std"],
        )
    else:
        log.info("cv: split.folds is 0, nothing to cross-validate")
    return details


def main() -> None:
    cv(load_params())


if __name__ == "__main__":
    run_stage(main)
