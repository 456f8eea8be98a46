"""split: converted slices -> ``data/splits/{train,val,test}/<class>/`` by group.

Raw labels become classes (``split.classes``). A group is a patient (DICOM
PatientID) or, for images without ids, a set of near duplicates (perceptual hash
within ``split.near_duplicate_distance`` bits). Every image of a group lands in one
split (stratified by class, seeded), and the stage proves it:
``metrics/split.json`` records the number of groups found in more than one split,
which must be 0. ``data/splits/splits.csv`` lists image, class, split and group.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import pandas as pd

from lungct.artifacts import CONVERTED_DIR, METRICS_DIR, SPLITS_DIR, SPLITS_TABLE, read_manifest
from lungct.atomic import atomic_dir, write_csv, write_json
from lungct.errors import UserError, run_stage
from lungct.layouts import class_mapping, map_labels
from lungct.params import Params, SplitParams, load_params
from lungct.splitting import (
    SPLITS,
    group_classes,
    groups_in_several_splits,
    near_duplicate_components,
    split_groups,
)

METRICS_FILE = METRICS_DIR / "split.json"

log = logging.getLogger("split")


def read_converted(converted: Path, params: SplitParams) -> tuple[pd.DataFrame, str]:
    """Converted images with their class (mapped from the raw label) and group."""
    manifest = read_manifest(converted)
    rows = manifest[manifest["status"] == "converted"].sort_values("output")
    if rows.empty:
        raise UserError(f"{converted}: no converted images to split")
    layout = rows["layout"].iloc[0]
    classes = map_labels(rows["label"].tolist(), class_mapping(layout, params.classes))
    # Patients where the data has ids; near-duplicate groups where it has none.
    components = near_duplicate_components(rows["phash"].tolist(), params.near_duplicate_distance)
    groups = [
        patient if patient else f"near-duplicates-{component:05d}"
        for patient, component in zip(rows["patient_id"], components, strict=True)
    ]
    table = pd.DataFrame({"source": rows["output"].to_numpy(), "class": classes, "group": groups})
    return table, layout


def split(params: Params, converted: Path = CONVERTED_DIR, out: Path = SPLITS_DIR) -> dict:
    images, layout = read_converted(converted, params.split)
    classes, mixed = group_classes(images)
    if mixed:
        log.warning(
            "split: %d group(s) hold images of several classes, kept whole (e.g. %s)",
            len(mixed),
            mixed[0],
        )
    assignment = split_groups(
        classes,
        params.split.val_fraction,
        params.split.test_fraction,
        params.base.seed,
    )
    images["split"] = images["group"].map(assignment)
    leaked = groups_in_several_splits(images)
    if leaked:  # split_groups assigns whole groups; this would be a bug
        raise RuntimeError(f"groups in several splits: {leaked[:5]}")
    # One flat folder per split and class; the source path keeps names unique.
    images["image"] = [
        f"{s}/{c}/{src.removeprefix('images/').replace('/', '__')}"
        for s, c, src in zip(images["split"], images["class"], images["source"], strict=True)
    ]
    images = images.sort_values(["split", "class", "image"], key=_split_order).reset_index(
        drop=True
    )
    with atomic_dir(out) as tmp:
        for src, dst in zip(images["source"], images["image"], strict=True):
            (tmp / dst).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(converted / src, tmp / dst)
        write_csv(tmp / SPLITS_TABLE, images[["image", "class", "split", "group", "source"]])
    metrics = split_metrics(images, leaked)
    metrics.update(
        layout=layout,
        classes=params.split.classes if isinstance(params.split.classes, str) else "custom",
        near_duplicate_distance=params.split.near_duplicate_distance,
        groups_spanning_classes=len(mixed),
    )
    write_json(METRICS_FILE, metrics)
    log.info(
        "split: %s images (train/val/test) from %s groups; 0 groups in two splits",
        "/".join(str(metrics["images"][s]) for s in SPLITS),
        "/".join(str(metrics["groups"][s]) for s in SPLITS),
    )
    return metrics


def _split_order(column: pd.Series) -> pd.Series:
    return (
        column.map({name: i for i, name in enumerate(SPLITS)}) if column.name == "split" else column
    )


def split_metrics(images: pd.DataFrame, leaked: list[str]) -> dict:
    per_class = images.groupby(["split", "class"]).size()
    class_counts = images.groupby("class").size()
    return {
        "strategy": "grouped",
        "images": {s: int((images["split"] == s).sum()) for s in SPLITS},
        "groups": {s: int(images.loc[images["split"] == s, "group"].nunique()) for s in SPLITS},
        "images_per_class": {
            s: {c: int(per_class.get((s, c), 0)) for c in sorted(class_counts.index)}
            for s in SPLITS
        },
        "groups_in_several_splits": len(leaked),
        "class_imbalance_ratio": round(float(class_counts.max() / class_counts.min()), 4),
    }


def main() -> None:
    split(load_params())


if __name__ == "__main__":
    run_stage(main)
