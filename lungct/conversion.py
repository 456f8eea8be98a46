"""Raw files -> model-ready PNGs and manifest rows: the convert stage's work, one file at a
time, over a pool of processes.

Each file gives one manifest row per image (a frame of a DICOM file, or an exported
image), or one skipped row with a reason code. The pixels come from
``lungct.preprocess``, the path predict and the app run too.
"""

from __future__ import annotations

import logging
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import imagehash
import pandas as pd
from PIL import Image
from tqdm import tqdm

from lungct.contract import Preprocessing
from lungct.errors import SkippedFile, UserError
from lungct.images import save_png
from lungct.layouts import label_from_path
from lungct.preprocess import ModelImage, dicom_images, exported_image

log = logging.getLogger("convert")


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
