"""convert: every raw slice -> model-ready 8-bit PNG, accounted for in a manifest.

DICOM: stored values -> HU -> CT window. Exported images (PNG/JPG of any mode):
deliberate grayscale. Both are then resized (aspect kept, black padding).

Writes ``data/converted/images/<raw relative path>.png`` and
``data/converted/manifest.csv`` (one row per input file, converted or skipped with a
reason code), and ``metrics/convert.json``.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path, PurePosixPath

import imagehash
import numpy as np
import pandas as pd
from PIL import Image
from tqdm import tqdm

from lungct.artifacts import CONVERTED_DIR, MANIFEST, METRICS_DIR, RAW_DIR, RAW_LABELS, RAW_SOURCE
from lungct.atomic import atomic_dir, write_csv, write_json
from lungct.dicom import read_ct_slice
from lungct.errors import SkippedFile, UserError, run_stage
from lungct.images import fit_square, read_image, save_png
from lungct.layouts import label_from_path
from lungct.params import ConvertParams, WindowParams, load_params
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
    "mode",
    "official_split",
    "phash",
    "layout",
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


def read_layout(raw: Path) -> str:
    path = raw / RAW_SOURCE
    try:
        return json.loads(path.read_text(encoding="utf-8"))["layout"]
    except FileNotFoundError:
        raise UserError(f"{path}: not found (run the download stage first)") from None
    except (json.JSONDecodeError, KeyError, TypeError):
        raise UserError(f"{path}: not a download record with a 'layout' (rerun download)") from None


def convert_dicom(
    path: Path, row: dict, labels: dict[str, str] | None, window: WindowParams
) -> np.ndarray:
    """One CT slice -> windowed 8-bit image; fills the DICOM columns of ``row``."""
    ct = read_ct_slice(path)
    row.update(
        patient_id=ct.patient_id,
        series_uid=ct.series_uid,
        instance_number=ct.instance_number,
        slice_position=ct.slice_position,
        rows=ct.hu.shape[0],
        columns=ct.hu.shape[1],
        mode="HU",
    )
    if labels is not None:  # labels.csv keyed on PatientID, else class subfolders
        row["label"] = labels.get(ct.patient_id, "")
    return window_uint8(ct.hu, window.center, window.width)


def convert_image(path: Path, row: dict) -> np.ndarray:
    """One exported PNG/JPG slice -> 8-bit grayscale; fills the image columns of ``row``."""
    image, mode = read_image(path)
    row.update(rows=image.shape[0], columns=image.shape[1], mode=mode)
    return image


def convert_file(
    path: Path,
    rel: str,
    out: Path,
    layout: str,
    labels: dict[str, str] | None,
    params: ConvertParams,
) -> dict[str, object]:
    """Convert one file; return its manifest row (skipped files get a reason code)."""
    row: dict[str, object] = {
        "source": rel,
        "output": "",
        "status": "skipped",
        "reason": "",
        "layout": layout,
    }
    from_path = label_from_path(PurePosixPath(rel), layout)
    if from_path is not None:
        row["label"], row["official_split"] = from_path
    try:
        if layout == "dicom":
            image = convert_dicom(path, row, labels, params.window)
        else:
            image = convert_image(path, row)
    except SkippedFile as skip:
        row["reason"] = skip.reason
        return row
    if not row.get("label"):
        row["reason"] = "unlabeled"
        return row
    # Near duplicates are found on what the model sees, before resizing (split stage).
    row["phash"] = str(imagehash.phash(Image.fromarray(image)))
    output = f"images/{rel}.png"
    save_png(out / output, fit_square(image, params.image_size))
    row.update(output=output, status="converted")
    return row


def convert(params: ConvertParams, raw: Path = RAW_DIR, out: Path = CONVERTED_DIR) -> dict:
    if not raw.is_dir():
        raise UserError(f"{raw}: not found (run the download stage first)")
    layout = read_layout(raw)
    labels = read_labels(raw) if layout == "dicom" and (raw / RAW_LABELS).exists() else None
    files = input_files(raw)
    with atomic_dir(out) as tmp:
        rows = [
            convert_file(p, p.relative_to(raw).as_posix(), tmp, layout, labels, params)
            for p in tqdm(files, desc="convert", unit="file", disable=None)
        ]
        manifest = pd.DataFrame(rows, columns=MANIFEST_COLUMNS)
        # Nullable integers: skipped rows have no size, and "512" must not become "512.0".
        integers = ["instance_number", "rows", "columns"]
        manifest[integers] = manifest[integers].astype("Int64")
        converted = manifest[manifest["status"] == "converted"]
        if converted.empty:
            reasons = manifest["reason"].value_counts().to_dict()
            raise UserError(
                f"{raw}: no file could be converted ({len(files)} files; skipped: {reasons})"
            )
        write_csv(tmp / MANIFEST, manifest)
    skipped = manifest[manifest["status"] == "skipped"]
    patients = converted["patient_id"].replace("", np.nan).dropna()
    metrics = {
        "layout": layout,
        "files": len(manifest),
        "converted": len(converted),
        "skipped": len(skipped),
        "skipped_by_reason": {
            k: int(v) for k, v in skipped["reason"].value_counts().sort_index().items()
        },
        "patients": int(patients.nunique()),
        "series": int(converted["series_uid"].replace("", np.nan).dropna().nunique()),
        "images_by_label": {
            k: int(v) for k, v in converted["label"].value_counts().sort_index().items()
        },
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
