"""split: converted slices -> ``data/splits/{train,val,test}/<class>/``, without leakage.

Raw labels become classes (``split.classes``); images are grouped (patients, or likely
patients or near duplicates for images without ids, ``split.grouping``), assigned to
splits by ``split.strategy``, and the leakage gate applies ``split.leakage`` (all in
``lungct.data.split``).

Writes the split images, ``data/splits/splits.csv`` (image, class, split, group,
source, and the cross-validation fold), ``data/splits/dropped.csv`` (copies the gate dropped), ``metrics/split.json``
and ``metrics/split_samples.png`` (sample training images per class). A class with too few
patients in a split gets a ``warning:`` line (``lungct.data.split.warn_few_groups``).
"""

from __future__ import annotations

if not __package__:  # started as a file: stages/stages.py says how to start it
    import stages  # noqa: F401

import logging
import shutil
from pathlib import Path

from lungct.artifacts import (
    CONVERTED_DIR,
    METRICS_DIR,
    SPLITS,
    SPLITS_COLUMNS,
    SPLITS_DIR,
    SPLITS_TABLE,
)
from lungct.atomic import atomic_dir, write_csv, write_json
from lungct.data.split import (
    apply_leakage_policy,
    assign,
    assign_folds,
    group_classes,
    read_converted,
    split_metrics,
    warn_few_groups,
    with_image_paths,
)
from lungct.errors import run_stage
from lungct.evaluation.report import write_samples
from lungct.params import Params, load_params

METRICS_FILE = METRICS_DIR / "split.json"
SAMPLES_FILE = METRICS_DIR / "split_samples.png"
DROPPED_TABLE = "dropped.csv"

log = logging.getLogger("split")


def split(params: Params, converted: Path = CONVERTED_DIR, out: Path = SPLITS_DIR) -> dict:
    cfg = params.split
    images, layout = read_converted(converted, cfg)
    images["split"] = assign(images, params, layout)
    gate = apply_leakage_policy(images, cfg)
    images = with_image_paths(gate.images)
    images["fold"] = assign_folds(images, cfg.folds, params.base.seed)
    with atomic_dir(out) as tmp:
        for src, dst in zip(images["source"], images["image"], strict=True):
            (tmp / dst).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(converted / src, tmp / dst)
        write_csv(tmp / SPLITS_TABLE, images[list(SPLITS_COLUMNS)])
        write_csv(
            tmp / DROPPED_TABLE, gate.dropped[["source", "class", "split", "group", "reason"]]
        )
    metrics = split_metrics(images)
    warn_few_groups(metrics["groups_per_class"])
    metrics.update(
        strategy=cfg.strategy,
        leakage=cfg.leakage,
        layout=layout,
        classes=cfg.classes if isinstance(cfg.classes, str) else "custom",
        grouping=cfg.grouping,
        folds=cfg.folds,
        near_duplicate_distance=cfg.near_duplicate_distance,
        groups_spanning_classes=len(group_classes(images)[1]),
        found_cross_split_groups=gate.found_groups,
        found_cross_split_pairs=gate.found_pairs,
        dropped=len(gate.dropped),
        groups_in_several_splits=len(gate.groups),
        cross_split_near_duplicate_pairs=len(gate.pairs),
        leaky=bool(gate.groups or len(gate.pairs) or cfg.strategy == "random"),
    )
    write_json(METRICS_FILE, metrics)
    write_samples(images, out, SAMPLES_FILE)
    log.info(
        "split (%s): %s images (train/val/test) from %s groups; %d groups and %d "
        "near-duplicate pairs across splits",
        cfg.strategy,
        "/".join(str(metrics["images"][s]) for s in SPLITS),
        "/".join(str(metrics["groups"][s]) for s in SPLITS),
        len(gate.groups),
        len(gate.pairs),
    )
    return metrics


def main() -> None:
    split(load_params())


if __name__ == "__main__":
    run_stage(main)
