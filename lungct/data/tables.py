"""Readers of the tables and records stages hand to each other (``data/raw/labels.csv`` and
``SOURCE.json``, the manifest, ``splits.csv``, ``metrics/split.json``): a damaged or missing
one is one line naming it and the stage that writes it, not a traceback."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from lungct.artifacts import (
    CONVERTED_DIR,
    MANIFEST,
    MANIFEST_COLUMNS,
    RAW_DIR,
    RAW_LABELS,
    RAW_SOURCE,
    SPLIT_METRICS,
    SPLITS_COLUMNS,
    SPLITS_DIR,
    SPLITS_TABLE,
)
from lungct.atomic import read_json
from lungct.errors import UserError, first_line


def _read_table(path: Path, producer: str, columns: Sequence[str]) -> pd.DataFrame:
    """A table a stage wrote; empty, garbled or without its columns: one line, not a
    traceback (the file was damaged or comes from an older version)."""
    try:
        table = pd.read_csv(path, dtype=str, keep_default_na=False)
    except FileNotFoundError:
        raise UserError(f"{path}: not found (run the {producer} stage first: dvc repro)") from None
    except (pd.errors.EmptyDataError, pd.errors.ParserError, UnicodeDecodeError) as exc:
        raise UserError(
            f"{path}: not a readable table ({first_line(exc)}); rerun the {producer} stage"
        ) from None
    missing = [column for column in columns if column not in table.columns]
    if missing:
        raise UserError(
            f"{path}: missing column(s) {', '.join(missing)}; rerun the {producer} stage"
        )
    return table


def read_manifest(converted: Path = CONVERTED_DIR) -> pd.DataFrame:
    return _read_table(converted / MANIFEST, "convert", MANIFEST_COLUMNS)


def read_splits(splits_dir: Path = SPLITS_DIR) -> pd.DataFrame:
    return _read_table(splits_dir / SPLITS_TABLE, "split", SPLITS_COLUMNS)


def split_images(
    table: pd.DataFrame, split: str, classes: list[str], splits_dir: Path = SPLITS_DIR
) -> tuple[list[str], list[int]]:
    """Image paths and class indices (in ``classes`` order) of one split of ``splits.csv``."""
    return _images(table[table["split"] == split], f"the {split} split", classes, splits_dir)


def train_classes(table: pd.DataFrame, splits_dir: Path = SPLITS_DIR) -> list[str]:
    """The classes a model learns: those of the train split, sorted (the output order)."""
    classes = sorted(table.loc[table["split"] == "train", "class"].unique())
    if len(classes) < 2:
        raise UserError(
            f"{splits_dir / SPLITS_TABLE}: training needs at least two classes, got {classes}"
        )
    return classes


def fold_images(
    table: pd.DataFrame, fold: int, classes: list[str], splits_dir: Path = SPLITS_DIR
) -> tuple[tuple[list[str], list[int]], tuple[list[str], list[int]]]:
    """Cross-validation fold ``fold`` of ``splits.csv``: (train, val) as
    :func:`split_images` gives them; train is every other fold of the train and val images."""
    others, held_out = _fold_rows(table, fold)
    return (
        _images(others, f"the training images of fold {fold}", classes, splits_dir),
        _images(held_out, f"fold {fold}", classes, splits_dir),
    )


def _fold_rows(table: pd.DataFrame, fold: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(the other folds' rows, fold ``fold``'s rows) of the train and val images."""
    folds = pd.to_numeric(table["fold"], errors="coerce")
    pool = table[(table["split"] != "test") & (folds > 0)]
    held_out = folds[pool.index] == fold
    return pool[~held_out], pool[held_out]


def image_groups(table: pd.DataFrame, split: str | None = None, fold: int = 0) -> list[str]:
    """The group (patient, or likely patient) of each image of one ``split``, or of fold
    ``fold``'s held-out images, in :func:`split_images`' or :func:`fold_images`' order."""
    rows = table[table["split"] == split] if split is not None else _fold_rows(table, fold)[1]
    return rows["group"].astype(str).tolist()


def table_folds(table: pd.DataFrame, splits_dir: Path = SPLITS_DIR) -> list[int]:
    """The cross-validation folds ``splits.csv`` holds (1..k), [] when it has none."""
    folds = pd.to_numeric(table["fold"], errors="coerce")
    if folds.isna().any() or (folds < 0).any() or (folds != folds.round()).any():
        raise UserError(f"{splits_dir / SPLITS_TABLE}: column fold must hold whole numbers >= 0")
    return sorted(int(f) for f in folds.unique() if f > 0)


def _images(
    rows: pd.DataFrame, what: str, classes: list[str], splits_dir: Path
) -> tuple[list[str], list[int]]:
    source = splits_dir / SPLITS_TABLE
    if rows.empty:
        raise UserError(f"{source}: {what} is empty")
    index = {name: i for i, name in enumerate(classes)}
    unknown = sorted(set(rows["class"]) - set(index))
    if unknown:
        raise UserError(f"{source}: {what} has classes the model does not know: {unknown}")
    paths = [splits_dir / image for image in rows["image"]]
    absent = next((path for path in paths if not path.is_file()), None)
    if absent is not None:
        raise UserError(f"{source}: lists {absent}, which is not there; rerun the split stage")
    return [str(path) for path in paths], [index[c] for c in rows["class"]]


def read_split_metrics(path: Path = SPLIT_METRICS) -> dict:
    """``metrics/split.json``, which evaluate repeats in part (:data:`SPLIT_KEYS`)."""
    try:
        return read_json(path)
    except FileNotFoundError:
        raise UserError(f"{path}: not found (run the split stage first: dvc repro)") from None
    except json.JSONDecodeError as exc:
        raise UserError(f"{path}: not valid JSON ({exc.msg}); rerun the split stage") from None


def read_labels(raw: Path) -> dict[str, str]:
    path = raw / RAW_LABELS
    table = _read_table(path, "download", ["PatientID", "label"])
    duplicated = table["PatientID"][table["PatientID"].duplicated()]
    if not duplicated.empty:
        raise UserError(f"{path}: PatientID {duplicated.iloc[0]!r} is listed twice")
    return dict(zip(table["PatientID"], table["label"], strict=True))


def read_source(raw: Path = RAW_DIR) -> dict:
    """``data/raw/SOURCE.json``, the download record (where the data came from)."""
    path = raw / RAW_SOURCE
    try:
        record = read_json(path)
    except FileNotFoundError:
        raise UserError(f"{path}: not found (run the download stage first)") from None
    except (json.JSONDecodeError, UnicodeDecodeError):
        record = None
    if not isinstance(record, dict):
        raise UserError(f"{path}: not a download record (rerun download)")
    return record


def read_layout(raw: Path) -> str:
    record = read_source(raw)
    if "layout" not in record:
        raise UserError(
            f"{raw / RAW_SOURCE}: not a download record with a 'layout' (rerun download)"
        )
    return record["layout"]


def input_files(raw: Path) -> list[Path]:
    """Every file under ``raw`` except the download stage's own metadata files."""
    metadata = {raw / RAW_LABELS, raw / RAW_SOURCE}
    return sorted(p for p in raw.rglob("*") if p.is_file() and p not in metadata)
