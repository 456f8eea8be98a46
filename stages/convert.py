"""convert: every raw DICOM slice -> HU -> CT window -> 8-bit PNG, accounted for in a manifest.

Writes ``data/converted/images/<raw relative path>.png`` and
``data/converted/manifest.csv`` (one row per input file, converted or skipped with a
reason code), and ``metrics/convert.json``.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pandas as pd

from lungct.artifacts import CONVERTED_DIR, MANIFEST, METRICS_DIR, RAW_DIR, RAW_LABELS, RAW_SOURCE
from lungct.atomic import atomic_dir, write_csv, write_json
from lungct.dicom import SkippedFile, read_ct_slice
from lungct.errors import UserError, run_stage
from lungct.images import fit_square, save_png
from lungct.params import ConvertParams, load_params
from lungct.windowing import window_uint8

METRICS_FILE = METRICS_DIR / "convert.json"
MANIFEST_COLUMNS = [
    "source",
    "output",
    "status",
    "reason",
    "patient_id",
    "label",
    "series_uid",
    "instance_number",
    "slice_position",
    "rows",
    "columns",
]

log = logging.getLogger("convert")


def read_labels(raw: Path) -> dict[str, str]:
    path = raw / RAW_LABELS
    try:
        table = pd.read_csv(path, dtype=str, keep_default_na=False)
    except FileNotFoundError:
        raise UserError(f"{path}: not found (run the download stage first)") from None
    missing = {"PatientID", "label"} - set(table.columns)
    if missing:
        raise UserError(f"{path}: missing column(s) {', '.join(sorted(missing))}")
    duplicated = table["PatientID"][table["PatientID"].duplicated()]
    if not duplicated.empty:
        raise UserError(f"{path}: PatientID {duplicated.iloc[0]!r} is listed twice")
    return dict(zip(table["PatientID"], table["label"], strict=True))


def input_files(raw: Path) -> list[Path]:
    """Every file under ``raw`` except the download stage's own metadata files."""
    metadata = {raw / RAW_LABELS, raw / RAW_SOURCE}
    return sorted(p for p in raw.rglob("*") if p.is_file() and p not in metadata)


def convert_file(
    path: Path, rel: str, out: Path, labels: dict[str, str], params: ConvertParams
) -> dict[str, object]:
    """Convert one file; return its manifest row (skipped files get a reason code)."""
    row: dict[str, object] = {"source": rel, "output": "", "status": "skipped", "reason": ""}
    try:
        ct = read_ct_slice(path)
    except SkippedFile as skip:
        row["reason"] = skip.reason
        return row
    row.update(
        patient_id=ct.patient_id,
        series_uid=ct.series_uid,
        instance_number=ct.instance_number,
        slice_position=ct.slice_position,
        rows=ct.hu.shape[0],
        columns=ct.hu.shape[1],
    )
    label = labels.get(ct.patient_id)
    if label is None:
        row["reason"] = "unlabeled"
        return row
    window = params.window
    image = fit_square(window_uint8(ct.hu, window.center, window.width), params.image_size)
    output = f"images/{rel}.png"
    save_png(out / output, image)
    row.update(output=output, status="converted", label=label)
    return row


def convert(params: ConvertParams, raw: Path = RAW_DIR, out: Path = CONVERTED_DIR) -> dict:
    if not raw.is_dir():
        raise UserError(f"{raw}: not found (run the download stage first)")
    labels = read_labels(raw)
    files = input_files(raw)
    with atomic_dir(out) as tmp:
        rows = [convert_file(p, p.relative_to(raw).as_posix(), tmp, labels, params) for p in files]
        manifest = pd.DataFrame(rows, columns=MANIFEST_COLUMNS)
        converted = manifest[manifest["status"] == "converted"]
        if converted.empty:
            reasons = manifest["reason"].value_counts().to_dict()
            raise UserError(
                f"{raw}: no file could be converted ({len(files)} files; skipped: {reasons})"
            )
        write_csv(tmp / MANIFEST, manifest)
    skipped = manifest[manifest["status"] == "skipped"]
    metrics = {
        "files": len(manifest),
        "converted": len(converted),
        "skipped": len(skipped),
        "skipped_by_reason": {
            k: int(v) for k, v in skipped["reason"].value_counts().sort_index().items()
        },
        "patients": int(converted["patient_id"].nunique()),
        "series": int(converted["series_uid"].nunique()),
    }
    write_json(METRICS_FILE, metrics)
    log.info(
        "convert: %d of %d files converted, %d skipped", len(converted), len(manifest), len(skipped)
    )
    return metrics


def main() -> None:
    convert(load_params().convert)


if __name__ == "__main__":
    run_stage(main)
