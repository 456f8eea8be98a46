"""Where the pipeline's artifacts live, and readers of the tables stages hand to each other.

All paths are relative to the project root, where DVC runs every stage.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from lungct.errors import UserError

RAW_DIR = Path("data/raw")
RAW_LABELS = "labels.csv"  # PatientID -> label, written by download for DICOM sources
RAW_SOURCE = "SOURCE.json"  # provenance of data/raw
CONVERTED_DIR = Path("data/converted")
MANIFEST = "manifest.csv"
SPLITS_DIR = Path("data/splits")
SPLITS_TABLE = "splits.csv"
MODEL_FILE = Path("models/model.keras")
CONTRACT_FILE = Path("models/labels.json")
METRICS_DIR = Path("metrics")


def _read_table(path: Path, producer: str) -> pd.DataFrame:
    try:
        return pd.read_csv(path, dtype=str, keep_default_na=False)
    except FileNotFoundError:
        raise UserError(f"{path}: not found (run the {producer} stage first: dvc repro)") from None


def read_manifest(converted: Path = CONVERTED_DIR) -> pd.DataFrame:
    return _read_table(converted / MANIFEST, "convert")


def read_splits(splits_dir: Path = SPLITS_DIR) -> pd.DataFrame:
    return _read_table(splits_dir / SPLITS_TABLE, "split")


def split_images(
    table: pd.DataFrame, split: str, classes: list[str], splits_dir: Path = SPLITS_DIR
) -> tuple[list[str], list[int]]:
    """Image paths and class indices (in ``classes`` order) of one split of ``splits.csv``."""
    rows = table[table["split"] == split]
    source = splits_dir / SPLITS_TABLE
    if rows.empty:
        raise UserError(f"{source}: the {split} split is empty")
    index = {name: i for i, name in enumerate(classes)}
    unknown = sorted(set(rows["class"]) - set(index))
    if unknown:
        raise UserError(f"{source}: {split} split has classes the model does not know: {unknown}")
    return [str(splits_dir / image) for image in rows["image"]], [index[c] for c in rows["class"]]


def read_contract(path: Path = CONTRACT_FILE) -> dict:
    """The preprocessing contract written by train (class order, input size, windows)."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(f"{path}: not found (run the train stage first: dvc repro)") from None
