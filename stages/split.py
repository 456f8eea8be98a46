"""split: converted slices -> ``data/splits/{train,val,test}/<class>/``, without leakage.

Raw labels become classes (``split.classes``). A group is a patient (DICOM
PatientID) or, for images without ids, a set of near duplicates (perceptual hash
within ``split.near_duplicate_distance`` bits, chains included). ``split.strategy``:

- ``grouped`` (default): whole groups, stratified by class, seeded;
- ``official``: the dataset's own train/valid/test folders (Chest CT-Scan);
- ``random``: image by image, the seeds' protocol, leaky, for comparison only.

Then the leakage gate counts groups and near-duplicate pairs that cross splits, and
``split.leakage`` decides: ``fail``, ``warn``, or ``drop`` the later-split copies
(recorded in ``data/splits/dropped.csv``). ``metrics/split.json`` says what was found;
``metrics/split_samples.png`` shows sample training images per class.
"""

from __future__ import annotations

import hashlib
import logging
import shutil
from pathlib import Path

import pandas as pd
from PIL import Image, ImageDraw

from lungct.artifacts import CONVERTED_DIR, METRICS_DIR, SPLITS_DIR, SPLITS_TABLE, read_manifest
from lungct.atomic import atomic_dir, atomic_file, write_csv, write_json
from lungct.errors import UserError, run_stage
from lungct.layouts import class_mapping, map_labels
from lungct.params import Params, SplitParams, load_params
from lungct.splitting import (
    SPLITS,
    group_classes,
    groups_in_several_splits,
    leakage_pairs,
    near_duplicate_components,
    split_groups,
)

METRICS_FILE = METRICS_DIR / "split.json"
SAMPLES_FILE = METRICS_DIR / "split_samples.png"
DROPPED_TABLE = "dropped.csv"
OFFICIAL = {"train": "train", "valid": "val", "val": "val", "test": "test"}
SAMPLES_PER_CLASS = 6
TILE = 96

log = logging.getLogger("split")


def read_converted(converted: Path, params: SplitParams) -> tuple[pd.DataFrame, str]:
    """Converted images with their class (mapped from the raw label), group and hashes."""
    manifest = read_manifest(converted)
    rows = manifest[manifest["status"] == "converted"].sort_values("output")
    if rows.empty:
        raise UserError(f"{converted}: no converted images to split")
    layout = rows["layout"].iloc[0]
    mapping = class_mapping(layout, params.classes)
    classes = map_labels(rows["label"].tolist(), mapping)
    missing = sorted(set(mapping.values()) - set(classes))
    if missing:
        raise UserError(
            f"{converted}: no images of class(es) {missing} (split.classes: "
            f"{params.classes if isinstance(params.classes, str) else 'custom'}); "
            f"the data has {sorted(set(classes))}"
        )
    # Patients where the data has ids; near-duplicate groups where it has none.
    components = near_duplicate_components(rows["phash"].tolist(), params.near_duplicate_distance)
    groups = [
        patient if patient else f"near-duplicates-{component:05d}"
        for patient, component in zip(rows["patient_id"], components, strict=True)
    ]
    table = pd.DataFrame(
        {
            "source": rows["output"].to_numpy(),
            "class": classes,
            "group": groups,
            "has_id": (rows["patient_id"] != "").to_numpy(),
            "phash": rows["phash"].to_numpy(),
            "official": rows["official_split"].to_numpy(),
            # Identical pixels give identical PNG bytes (same encoder, no timestamps).
            "content": [
                hashlib.sha256((converted / out).read_bytes()).hexdigest() for out in rows["output"]
            ],
        }
    )
    return table, layout


def assign(images: pd.DataFrame, params: Params, layout: str) -> pd.Series:
    """The split of every image under ``split.strategy``."""
    cfg = params.split
    if cfg.strategy == "official":
        unknown = sorted(set(images["official"]) - set(OFFICIAL))
        if unknown:
            raise UserError(
                f"split.strategy: 'official' needs the dataset's own train/valid/test folders; "
                f"layout '{layout}' has images outside them ({unknown[:3]})"
            )
        return images["official"].map(OFFICIAL)
    if cfg.strategy == "random":  # every image its own group: the seeds' leaky protocol
        alone = pd.Series(images["class"].to_numpy(), index=images.index.astype(str))
        by_image = split_groups(alone, cfg.val_fraction, cfg.test_fraction, params.base.seed)
        return pd.Series(by_image[images.index.astype(str)].to_numpy(), index=images.index)
    classes, mixed = group_classes(images)
    if mixed:
        log.warning(
            "split: %d group(s) hold images of several classes, kept whole (e.g. %s)",
            len(mixed),
            mixed[0],
        )
    by_group = split_groups(classes, cfg.val_fraction, cfg.test_fraction, params.base.seed)
    return images["group"].map(by_group)


def leakage(images: pd.DataFrame, distance: int) -> tuple[list[str], pd.DataFrame]:
    return groups_in_several_splits(images), leakage_pairs(images, distance)


def drop_leaks(images: pd.DataFrame, distance: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Remove the later-split side of every leak (val after train, test after both)."""
    kept = images
    dropped = []
    for later in ("val", "test"):
        earlier = kept[kept["split"].map(SPLITS.index) < SPLITS.index(later)]
        shared = kept.index[(kept["split"] == later) & kept["group"].isin(earlier["group"])]
        _, pairs = leakage(kept, distance)
        paired = [
            b
            for a, b in zip(pairs["a"], pairs["b"], strict=True)
            if kept.at[b, "split"] == later and a in earlier.index
        ]
        gone = sorted(set(shared) | set(paired))
        dropped.append(kept.loc[gone].assign(reason="near_duplicate_in_earlier_split"))
        kept = kept.drop(index=gone)
    return kept, pd.concat(dropped)


def split(params: Params, converted: Path = CONVERTED_DIR, out: Path = SPLITS_DIR) -> dict:
    cfg = params.split
    images, layout = read_converted(converted, cfg)
    images["split"] = assign(images, params, layout)
    shared, pairs = leakage(images, cfg.near_duplicate_distance)
    found = {"groups": len(shared), "pairs": len(pairs)}
    dropped = images.iloc[:0].assign(reason="")
    if shared or len(pairs):
        summary = (
            f"split: {len(pairs)} near-duplicate pair(s) and {len(shared)} group(s) cross "
            f"splits under strategy '{cfg.strategy}'"
        )
        if cfg.leakage == "fail":
            raise UserError(f"{summary}; set split.leakage to 'drop' or 'warn' to go on")
        if cfg.leakage == "warn":
            log.warning("%s; the test numbers will be optimistic", summary)
        else:
            images, dropped = drop_leaks(images, cfg.near_duplicate_distance)
            log.warning("%s; dropped %d later-split copies", summary, len(dropped))
    shared, pairs = leakage(images, cfg.near_duplicate_distance)
    images = with_image_paths(images)
    with atomic_dir(out) as tmp:
        for src, dst in zip(images["source"], images["image"], strict=True):
            (tmp / dst).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(converted / src, tmp / dst)
        write_csv(tmp / SPLITS_TABLE, images[["image", "class", "split", "group", "source"]])
        write_csv(tmp / DROPPED_TABLE, dropped[["source", "class", "split", "group", "reason"]])
    metrics = split_metrics(images)
    metrics.update(
        strategy=cfg.strategy,
        leakage=cfg.leakage,
        layout=layout,
        classes=cfg.classes if isinstance(cfg.classes, str) else "custom",
        near_duplicate_distance=cfg.near_duplicate_distance,
        groups_spanning_classes=len(group_classes(images)[1]),
        found_cross_split_groups=found["groups"],
        found_cross_split_pairs=found["pairs"],
        dropped=len(dropped),
        groups_in_several_splits=len(shared),
        cross_split_near_duplicate_pairs=len(pairs),
        leaky=bool(shared or len(pairs) or cfg.strategy == "random"),
    )
    write_json(METRICS_FILE, metrics)
    write_samples(images, out)
    log.info(
        "split (%s): %s images (train/val/test) from %s groups; %d groups and %d "
        "near-duplicate pairs across splits",
        cfg.strategy,
        "/".join(str(metrics["images"][s]) for s in SPLITS),
        "/".join(str(metrics["groups"][s]) for s in SPLITS),
        len(shared),
        len(pairs),
    )
    return metrics


def with_image_paths(images: pd.DataFrame) -> pd.DataFrame:
    """One flat folder per split and class; the source path keeps names unique."""
    images = images.assign(
        image=[
            f"{s}/{c}/{src.removeprefix('images/').replace('/', '__')}"
            for s, c, src in zip(images["split"], images["class"], images["source"], strict=True)
        ],
        order=images["split"].map(SPLITS.index),
    )
    return images.sort_values(["order", "class", "image"]).reset_index(drop=True)


def split_metrics(images: pd.DataFrame) -> dict:
    per_class = images.groupby(["split", "class"]).size()
    class_counts = images.groupby("class").size()
    group_sizes = images.groupby("group").size()
    return {
        "images": {s: int((images["split"] == s).sum()) for s in SPLITS},
        "groups": {s: int(images.loc[images["split"] == s, "group"].nunique()) for s in SPLITS},
        "images_per_class": {
            s: {c: int(per_class.get((s, c), 0)) for c in sorted(class_counts.index)}
            for s in SPLITS
        },
        "images_with_near_duplicates": int(group_sizes[group_sizes > 1].sum())
        if not images["has_id"].all()
        else 0,
        "class_imbalance_ratio": round(float(class_counts.max() / class_counts.min()), 4),
    }


def write_samples(images: pd.DataFrame, splits_dir: Path) -> None:
    """A grid of sample training images, one row per class and one group per column, as
    the seed notebook shows."""
    train = images[images["split"] == "train"]
    classes = sorted(train["class"].unique())
    label_w = 110
    grid = Image.new("L", (label_w + SAMPLES_PER_CLASS * TILE, len(classes) * TILE), 0)
    draw = ImageDraw.Draw(grid)
    for row, name in enumerate(classes):
        draw.text((6, row * TILE + TILE // 2 - 6), name, fill=255)
        # One image from each of the first groups: different patients, not one patient's slices.
        samples = train[train["class"] == name].drop_duplicates("group")["image"]
        for col, image in enumerate(samples[:SAMPLES_PER_CLASS]):
            with Image.open(splits_dir / image) as tile:
                small = tile.convert("L").resize((TILE - 4, TILE - 4), Image.Resampling.BILINEAR)
            grid.paste(small, (label_w + col * TILE + 2, row * TILE + 2))
    with atomic_file(SAMPLES_FILE) as tmp:
        grid.save(tmp, format="PNG")


def main() -> None:
    split(load_params())


if __name__ == "__main__":
    run_stage(main)
