"""convert: every raw slice -> model-ready 8-bit PNG, accounted for in a manifest.

DICOM: stored values -> HU -> CT window. Exported images (PNG/JPG of any mode):
deliberate grayscale. Both are then resized (aspect kept, black padding). That path is
``lungct.preprocess``, which predict and the app run too.

Writes ``data/converted/images/<raw relative path>.png`` and
``data/converted/manifest.csv`` (one row per input file, converted or skipped with a
reason code), and ``metrics/convert.json``.
"""

from __future__ import annotations

import json
import logging
import os
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import imagehash
import numpy as np
import pandas as pd
from PIL import Image
from tqdm import tqdm

from lungct.artifacts import CONVERTED_DIR, MANIFEST, METRICS_DIR, RAW_DIR, RAW_LABELS, RAW_SOURCE
from lungct.atomic import atomic_dir, write_csv, write_json
from lungct.errors import SkippedFile, UserError, run_stage
from lungct.images import save_png
from lungct.layouts import label_from_path
from lungct.params import ConvertParams, load_params
from lungct.preprocess import ModelImage, Preprocessing, dicom_images, exported_image

METRICS_FILE = METRICS_DIR / "convert.json"
MANIFEST_COLUMNS = [
    "source",
    "output",
    "status",
    "reason",
    "detail",
    "patient_id",
    "label",
    "series_uid",
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


@dataclass(frozen=True)
class Job:
    """What every worker needs besides the file: set once per process (pool initializer)."""

    raw: Path
    out: Path
    layout: str
    labels: dict[str, str] | None
    prep: Preprocessing


_JOB: Job | None = None


def _start_worker(job: Job) -> None:
    global _JOB
    _JOB = job


def dicom_rows(path: Path, base: dict, job: Job) -> list[dict]:
    """One row (and PNG) per frame of a CT file."""
    images = dicom_images(path, job.prep)
    rows = []
    for image in images:
        frame = image.frame
        assert frame is not None
        row = dict(base)
        row.update(
            patient_id=frame.patient_id,
            series_uid=frame.series_uid,
            instance_number=frame.instance_number,
            frame=frame.frame,
            slice_position=frame.slice_position,
            rows=image.rows,
            columns=image.columns,
            mode=image.mode,
            transfer_syntax=frame.transfer_syntax,
            rescale_type=frame.rescale_type,
            gantry_tilt=frame.gantry_tilt,
            windows=";".join(f"{c:g}/{w:g}" for c, w in image.windows),
        )
        if job.labels is not None:  # labels.csv keyed on PatientID, else class subfolders
            row["label"] = job.labels.get(frame.patient_id, "")
        suffix = f".f{frame.frame + 1:04d}" if len(images) > 1 else ""
        rows.append(finish(row, image, suffix, job))
    return rows


def image_rows(path: Path, base: dict, job: Job) -> list[dict]:
    """An exported PNG/JPG slice: deliberate grayscale, repeated once per window channel."""
    image = exported_image(path, job.prep)
    row = dict(base, rows=image.rows, columns=image.columns, mode=image.mode)
    return [finish(row, image, "", job)]


def finish(row: dict, image: ModelImage, suffix: str, job: Job) -> dict:
    """Label check, perceptual hash and PNG write for one converted image."""
    if not row.get("label"):
        return dict(row, reason="unlabeled")
    # Near duplicates are found (split stage) on what the model sees, before resizing.
    output = f"images/{row['source']}{suffix}.png"
    save_png(job.out / output, image.pixels)
    return dict(
        row,
        phash=str(imagehash.phash(Image.fromarray(image.gray))),
        output=output,
        status="converted",
    )


def convert_file(rel: str) -> list[dict]:
    """Convert one file; return its manifest rows (a skipped file gets one, with a reason)."""
    job = _JOB
    assert job is not None, "convert_file runs after _start_worker"
    base: dict = {
        "source": rel,
        "output": "",
        "status": "skipped",
        "reason": "",
        "layout": job.layout,
    }
    from_path = label_from_path(PurePosixPath(rel), job.layout)
    if from_path is not None:
        base["label"], base["official_split"] = from_path
    try:
        if job.layout == "dicom":
            return dicom_rows(job.raw / rel, base, job)
        return image_rows(job.raw / rel, base, job)
    except SkippedFile as skip:
        return [dict(base, reason=skip.reason, detail=skip.detail)]


def convert_all(files: list[str], job: Job, workers: int) -> list[dict]:
    """All files, in order, over ``workers`` processes (1: in this process)."""
    progress = {"desc": "convert", "unit": "file", "total": len(files), "disable": None}
    if workers <= 1 or len(files) < 2:
        _start_worker(job)
        return [row for rel in tqdm(files, **progress) for row in convert_file(rel)]
    chunk = max(1, min(64, len(files) // (workers * 8)))
    # Workers get the job once; results stream back in input order, so memory holds
    # only the (small) manifest rows, never images.
    with ProcessPoolExecutor(workers, initializer=_start_worker, initargs=(job,)) as pool:
        results = pool.map(convert_file, files, chunksize=chunk)
        return [row for rows in tqdm(results, **progress) for row in rows]


def series_order(manifest: pd.DataFrame) -> pd.DataFrame:
    """Order slices within each series and flag what a radiologist would want to know.

    Slices are sorted by position along the slice normal; InstanceNumber is only a
    fallback (with a warning) for series without geometry. Flags: two slices at one
    position, a gap (a spacing over 1.5 times the series' median), a tilted gantry.
    """
    manifest = manifest.copy()
    manifest[["slice_index", "position_source"]] = [pd.NA, ""]
    manifest[["duplicate_position", "gap"]] = False
    done = manifest[
        (manifest["status"] == "converted")
        & (manifest["series_uid"].astype(object).fillna("") != "")
    ]
    for series, rows in done.groupby("series_uid"):
        positions = rows["slice_position"]
        if positions.notna().all():
            order = rows.sort_values(["slice_position", "instance_number", "frame"]).index
            manifest.loc[rows.index, "position_source"] = "position"
            values = np.sort(positions.to_numpy(dtype=float))
            steps = np.diff(values)
            duplicate = (
                np.isclose(positions.to_numpy(dtype=float)[:, None], values[None]).sum(1) > 1
            )
            manifest.loc[rows.index, "duplicate_position"] = duplicate
            moving = steps[steps > 1e-3]
            if len(moving):
                median = float(np.median(moving))
                gap_after = values[1:][steps > 1.5 * median]
                manifest.loc[rows.index, "gap"] = positions.isin(gap_after).to_numpy()
        else:
            log.warning(
                "convert: series %s has no slice geometry; sorted by InstanceNumber", series
            )
            order = rows.sort_values(["instance_number", "frame", "source"]).index
            manifest.loc[rows.index, "position_source"] = "instance_number"
        manifest.loc[order, "slice_index"] = range(len(order))
    return manifest


def convert(params: ConvertParams, raw: Path = RAW_DIR, out: Path = CONVERTED_DIR) -> dict:
    if not raw.is_dir():
        raise UserError(f"{raw}: not found (run the download stage first)")
    layout = read_layout(raw)
    labels = read_labels(raw) if layout == "dicom" and (raw / RAW_LABELS).exists() else None
    files = [p.relative_to(raw).as_posix() for p in input_files(raw)]
    workers = params.workers or os.cpu_count() or 1
    with atomic_dir(out) as tmp:
        job = Job(raw, tmp, layout, labels, Preprocessing.from_params(params))
        rows = convert_all(files, job, workers)
        manifest = pd.DataFrame(rows, columns=MANIFEST_COLUMNS)
        # Nullable integers: skipped rows have no size, and "512" must not become "512.0".
        integers = ["instance_number", "frame", "rows", "columns"]
        manifest[integers] = manifest[integers].astype("Int64")
        manifest = series_order(manifest)
        manifest["slice_index"] = manifest["slice_index"].astype("Int64")
        check_skips(manifest, raw, len(files), params.max_skipped_fraction)
        write_csv(tmp / MANIFEST, manifest[MANIFEST_COLUMNS])
    metrics = convert_metrics(manifest, layout)
    write_json(METRICS_FILE, metrics)
    log.info(
        "convert: %d images from %d files, %d files skipped",
        metrics["converted"],
        metrics["files"],
        metrics["skipped"],
    )
    return metrics


def check_skips(manifest: pd.DataFrame, raw: Path, files: int, max_fraction: float) -> None:
    converted = manifest["status"] == "converted"
    reasons = manifest.loc[~converted, "reason"].value_counts().to_dict()
    if not converted.any():
        raise UserError(f"{raw}: no file could be converted ({files} files; skipped: {reasons})")
    skipped = manifest.loc[~converted, "source"].nunique()
    if skipped > max_fraction * files:
        first = manifest[~converted].iloc[0]
        raise UserError(
            f"{raw}: {skipped} of {files} files skipped, more than "
            f"convert.max_skipped_fraction ({max_fraction:g}); reasons {reasons}; "
            f"first: {first['source']} ({first['reason']}{': ' + first['detail'] if first['detail'] else ''})"
        )


def convert_metrics(manifest: pd.DataFrame, layout: str) -> dict:
    converted = manifest[manifest["status"] == "converted"]
    skipped = manifest[manifest["status"] == "skipped"]

    def counts(column: pd.Series) -> dict[str, int]:
        return {str(k): int(v) for k, v in column.value_counts().sort_index().items()}

    return {
        "layout": layout,
        "files": int(manifest["source"].nunique()),
        "converted": len(converted),
        "skipped": len(skipped),
        "skipped_by_reason": counts(skipped["reason"]),
        "patients": int(converted["patient_id"].replace("", pd.NA).dropna().nunique()),
        "series": int(converted["series_uid"].replace("", pd.NA).dropna().nunique()),
        "images_by_label": counts(converted["label"]),
        "rescale_type_not_hu": int(
            (converted["rescale_type"].astype(object).fillna("HU") != "HU").sum()
        ),
        "duplicate_positions": int(converted["duplicate_position"].sum()),
        "gaps": int(converted["gap"].sum()),
        "tilted": int((converted["gantry_tilt"].fillna(0).astype(float) != 0).sum()),
    }


def main() -> None:
    convert(load_params().convert)


if __name__ == "__main__":
    run_stage(main)
