"""Where the pipeline's artifacts live, and the names and columns of the tables stages hand
to each other (their readers: :mod:`lungct.data.tables`).

All paths are relative to the project root, where DVC runs every stage.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

RAW_DIR = Path("data/raw")
RAW_LABELS = "labels.csv"  # PatientID -> label, written by download for DICOM sources
RAW_SOURCE = "SOURCE.json"  # provenance of data/raw
CONVERTED_DIR = Path("data/converted")
MANIFEST = "manifest.csv"
# One row per input file (converted or skipped with a reason code), written by convert.
MANIFEST_COLUMNS = [
    "source",
    "output",
    "status",
    "reason",
    "detail",
    "patient_id",
    "label",
    "label_source",
    "readers",
    "score",
    "series_uid",
    "slice_key",
    "instance_number",
    "frame",
    "slice_position",
    "slice_index",
    "position_source",
    "duplicate_position",
    "gap",
    "gantry_tilt",
    "transfer_syntax",
    "rescale_type",
    "windows",
    "rows",
    "columns",
    "mode",
    "official_split",
    "crop_center",
    "phash",
    "view_phash",  # images without a PatientID: the split's grouping evidence
    "view_thumb",
    "body_phash",
    "layout",
]
# The manifest's grouping evidence of an image without a PatientID, in the order
# lungct.data.grouping.manifest_evidence takes them.
EVIDENCE_COLUMNS = ("phash", "view_phash", "view_thumb", "body_phash")
SPLITS_DIR = Path("data/splits")
SPLITS_TABLE = "splits.csv"
SPLITS_COLUMNS = ("image", "class", "split", "group", "source", "fold")  # written by split
MODEL_FILE = Path("models/model.keras")
FOLDS_DIR = Path("models/folds")  # the cv stage's fold models (split.folds)
CONTRACT_FILE = Path("models/labels.json")
METRICS_DIR = Path("metrics")
SPLIT_METRICS = METRICS_DIR / "split.json"
TRAIN_LIVE_DIR = METRICS_DIR / "train"  # DVCLive's folder of the train stage
CURVES_DIR = TRAIN_LIVE_DIR / "plots" / "metrics"  # its per-epoch curves: <side>/<metric>.tsv

PROBABILITY_DECIMALS = 6  # in predictions.csv and predict's outputs
SPLITS = ("train", "val", "test")  # the splits of data/splits, in this order
# The flag of split.json that says patients or near duplicates cross the split (the test
# figures are optimistic); repeated in eval.json, eval_details.json and the model contract.
LEAKY = "leaky"
# What eval.json repeats from split.json, so that a leaky number cannot pass for an honest one.
SPLIT_KEYS = (
    "strategy",
    "leakage",
    LEAKY,
    "classes",
    "groups_in_several_splits",
    "cross_split_near_duplicate_pairs",
    "found_cross_split_groups",
    "found_cross_split_pairs",
    "dropped",
)


def is_leaky(record: Mapping[str, object]) -> bool:
    """Whether a record holding the split's :data:`LEAKY` flag (metrics/split.json, the
    ``split`` of eval_details.json, eval.json, the model contract's ``data.split``) says the
    split is leaky; a record without the flag (written before it existed) says no."""
    return bool(record.get(LEAKY, False))
