"""convert: every raw slice -> model-ready 8-bit PNG, accounted for in a manifest.

DICOM: stored values -> HU -> CT window. Exported images (PNG/JPG of any mode):
deliberate grayscale. Both are then resized (aspect kept, black padding). That path is
``lungct.io.preprocess``, which predict and the app run too; the per-file work and its
process pool are ``lungct.data.convert``, slice order and series flags ``lungct.data.series``.

Writes ``data/converted/images/<raw relative path>.png`` and
``data/converted/manifest.csv`` (one row per input file, converted or skipped with a
reason code), and ``metrics/convert.json``. Skips are of two kinds
(``lungct.data.convert.excluded_reasons``): slices an annotation rule excludes, and files
that are unreadable or unusable, which alone count against ``convert.max_skipped_fraction``.
"""

from __future__ import annotations

if not __package__:  # started as a file: stages/stages.py says how to start it
    import stages  # noqa: F401

import logging
import os
from pathlib import Path

import pandas as pd

from lungct.artifacts import (
    CONVERTED_DIR,
    MANIFEST,
    MANIFEST_COLUMNS,
    METRICS_DIR,
    RAW_DIR,
    RAW_LABELS,
)
from lungct.atomic import atomic_dir, write_csv, write_json
from lungct.contract import Preprocessing
from lungct.data.convert import (
    Job,
    check_skips,
    convert_all,
    convert_metrics,
    convert_summary,
    plan,
)
from lungct.data.series import series_order
from lungct.data.tables import read_labels, read_layout
from lungct.errors import UserError, run_stage
from lungct.names import Layout
from lungct.params import ConvertParams, load_params

METRICS_FILE = METRICS_DIR / "convert.json"

log = logging.getLogger("convert")


def convert(
    params: ConvertParams, raw: Path = RAW_DIR, out: Path = CONVERTED_DIR, seed: int = 0
) -> dict:
    if not raw.is_dir():
        raise UserError(f"{raw}: not found (run the download stage first)")
    layout = read_layout(raw)
    labels = read_labels(raw) if layout == Layout.DICOM and (raw / RAW_LABELS).exists() else None
    workers = params.workers or os.cpu_count() or 1
    work = plan(raw, layout, params, workers)
    with atomic_dir(out) as tmp:
        prep = Preprocessing.from_params(params)
        job = Job(raw, tmp, layout, labels, prep, work.slice_labels, seed)
        rows = sorted(convert_all(work.units, job, workers), key=_file_order)
        manifest = pd.DataFrame(rows, columns=MANIFEST_COLUMNS)
        # Nullable integers: skipped rows have no size, and "512" must not become "512.0".
        integers = ["instance_number", "frame", "rows", "columns"]
        manifest[integers] = manifest[integers].astype("Int64")
        manifest = series_order(manifest)
        manifest["slice_index"] = manifest["slice_index"].astype("Int64")
        check_skips(manifest, raw, len(work.files), params.max_skipped_fraction, layout)
        write_csv(tmp / MANIFEST, manifest[MANIFEST_COLUMNS])
    metrics = convert_metrics(manifest, layout)
    write_json(METRICS_FILE, metrics)
    log.info("%s", convert_summary(metrics))
    return metrics


def _file_order(row: dict) -> tuple:
    """Manifest rows in input-file order, frames in order (units may be whole series)."""
    frame = row.get("frame")
    return (row["source"], -1 if frame is None or pd.isna(frame) else frame)


def main() -> None:
    params = load_params()
    convert(params.convert, seed=params.base.seed)


if __name__ == "__main__":
    run_stage(main)
