"""Raw files -> model-ready PNGs and manifest rows: the convert stage's work, over a pool
of processes, one *unit* at a time: a file, or (2.5-D input) a series in slice order.

Each file gives one manifest row per image (DICOM frame, MetaImage slice, exported image)
or one skipped row with a reason code. Pixels, and the rule that turns any exception on
one file into its reason (``file_problem``), come from ``lungct.io.preprocess``: a bad
file never stops the stage nor the pool; a full disk does (``lungct.errors.run_stage``).
"""

from __future__ import annotations

from collections import Counter, OrderedDict
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path, PurePosixPath

import numpy as np
import pandas as pd
from tqdm import tqdm

from lungct.annotations import SliceLabel, read_metaimage
from lungct.annotations.reasons import NOT_ANNOTATED
from lungct.contract import Preprocessing
from lungct.data.crops import crop_box, crop_hu, lung_point
from lungct.data.grouping import view_record
from lungct.data.layouts import label_from_path
from lungct.data.slice_labels import (
    ANNOTATED_LAYOUTS,
    RULE_REASONS,
    Indexed,
    index_file,
    is_metaimage,
    label_frames,
    metadata_files,
)
from lungct.data.tables import input_files
from lungct.errors import UserError
from lungct.io.dicom import CTFrame, FrameGeometry, read_ct
from lungct.io.images import fit_square, framed, phash, save_png
from lungct.io.preprocess import exported_image, file_problem, frame_channels, model_view
from lungct.io.windowing import window_channels
from lungct.names import IMAGE_LAYOUTS, Crop, Framing
from lungct.params import ConvertParams
from lungct.reasons import LOCALIZER, NOT_CT, UNLABELED


@dataclass(frozen=True)
class Job:
    """What every worker needs besides its unit: set once per process (pool initializer)."""

    raw: Path
    out: Path
    layout: str
    labels: dict[str, str] | None  # labels.csv: PatientID -> raw label
    prep: Preprocessing
    slice_labels: dict[str, SliceLabel] | None = None  # annotated layouts: frame key -> label
    seed: int = 0  # picks the lung point of a normal slice's crop


@dataclass(frozen=True)
class Unit:
    """Files converted together: one file, or a series' frames in slice order (2.5-D)."""

    order: tuple[tuple[str, int], ...]  # (file, frame); a one-file unit: (file, -1)

    @classmethod
    def file(cls, rel: str) -> Unit:
        return cls(((rel, -1),))

    @property
    def files(self) -> list[str]:
        return list(dict.fromkeys(rel for rel, _ in self.order))


_JOB: Job | None = None


def _start_worker(job: Job) -> None:
    global _JOB
    _JOB = job


def series_units(indexed: list[Indexed], files: list[str]) -> list[Unit]:
    """One unit per series, frames by position along the slice normal (then file and
    frame); every file without an indexed frame is a unit of its own."""
    series: dict[str, list[Indexed]] = {}
    for item in indexed:
        series.setdefault(item.ref.series_uid or f"file:{item.source}", []).append(item)
    units = []
    for items in series.values():
        items.sort(key=lambda i: (i.ref.position is None, i.ref.position or 0.0, i.source, i.frame))
        units.append(Unit(tuple((i.source, i.frame) for i in items)))
    seen = {item.source for item in indexed}
    units += [Unit.file(rel) for rel in files if rel not in seen]
    return units


def _read_frames(path: Path, prep: Preprocessing) -> list[CTFrame]:
    """The CT frames of a DICOM file, or of a MetaImage volume (LUNA16): one per slice, keyed
    like the index."""
    if not is_metaimage(path):
        return read_ct(path, prep.max_image_bytes, prep.image_size**2 * prep.channels)
    volume = read_metaimage(path, prep.max_image_bytes)
    refs = volume.geometry.slice_refs(patient_id=path.stem)
    return [
        CTFrame(
            hu=np.ascontiguousarray(volume.hu[k], dtype=np.float32),
            patient_id=ref.patient_id,
            series_uid=ref.series_uid,
            instance_number=k + 1,
            frame=k,
            slice_position=ref.position,
            rescale_type="HU",
            transfer_syntax="MetaImage",
            gantry_tilt=None,
            window=None,
            geometry=FrameGeometry(frame=k, **asdict(ref)),
        )
        for k, ref in enumerate(refs)
    ]


def _base(rel: str, job: Job) -> dict:
    base = dict(source=rel, output="", status="skipped", reason="", layout=job.layout)
    from_path = label_from_path(PurePosixPath(rel), job.layout)
    if from_path is not None:
        base["label"], base["official_split"] = from_path
        base["label_source"] = "folder"
    return base


def _slices(unit: Unit, job: Job, rows: list[dict]) -> Iterator[tuple[CTFrame, dict, int]]:
    """The unit's CT frames in order, each with its file's row fields and frame count; a
    file that cannot be read adds its one skipped row to ``rows`` instead."""
    uses = Counter(rel for rel, _ in unit.order)
    loaded: dict[str, list[CTFrame]] = {}
    for rel, frame in unit.order:
        if rel not in loaded:
            try:
                loaded[rel] = _read_frames(job.raw / rel, job.prep)
            except Exception as exc:  # any exception on this one file: its row says why
                reason, detail = file_problem(exc)
                rows.append(dict(_base(rel, job), reason=reason, detail=detail))
                loaded[rel] = []
        uses[rel] -= 1
        # Dropped after its last frame: the window below keeps what it still needs.
        frames = loaded[rel] if uses[rel] else loaded.pop(rel)
        chosen = frames if frame < 0 else [f for f in frames if f.frame == frame]
        for item in chosen:
            yield item, _base(rel, job), len(frames)


def convert_unit(unit: Unit) -> list[dict]:
    """Convert one unit; return its manifest rows (a skipped file gets one, with a reason)."""
    job = _JOB
    assert job is not None, "convert_unit runs after _start_worker"
    rows: list[dict] = []
    first = unit.order[0][0]
    if job.layout in IMAGE_LAYOUTS:  # exported images: one file, one image
        base = _base(first, job)
        try:
            image = exported_image(job.raw / first, job.prep)
        except Exception as exc:
            reason, detail = file_problem(exc)
            return [dict(base, reason=reason, detail=detail)]
        row = dict(base, rows=image.rows, columns=image.columns, mode=image.mode)
        return [_finish(row, image.pixels, image.gray, "", job)]
    k = job.prep.context_slices
    window: list[tuple[CTFrame, dict, int] | None] = []
    done = 0
    for item in _slices(unit, job, rows):
        window.append(item)
        while done + k < len(window):
            rows.append(_slice_row(window, done, k, job))
            if done - k >= 0:
                window[done - k] = None  # no longer anyone's neighbour
            done += 1
    while done < len(window):
        rows.append(_slice_row(window, done, k, job))
        done += 1
    return rows


def _slice_row(window: list, index: int, k: int, job: Job) -> dict:
    """The manifest row (and PNG) of slice ``index`` of a unit, its neighbours from
    ``window`` (the ends repeat the edge slice)."""
    frame, base, count = window[index]
    key = frame.geometry.key  # read_ct and MetaImage volumes give every frame its geometry
    row = dict(
        base,
        patient_id=frame.patient_id,
        series_uid=frame.series_uid,
        slice_key=key,
        instance_number=frame.instance_number,
        frame=frame.frame,
        slice_position=frame.slice_position,
        rows=frame.shape[0],
        columns=frame.shape[1],
        mode="HU",
        transfer_syntax=frame.transfer_syntax,
        rescale_type=frame.rescale_type,
        gantry_tilt=frame.gantry_tilt,
    )
    if job.slice_labels is not None:
        label = job.slice_labels.get(key) or SliceLabel(
            "", NOT_ANNOTATED, detail="the slice was not in the header index the rule labels"
        )
        row.update(label=label.label, readers=label.readers, score=label.score)
        row["label_source"] = _relative(label.source, job.raw)
        if not label.labelled:
            return dict(row, reason=label.reason, detail=label.detail)
    elif job.labels is not None:  # labels.csv keyed on PatientID, else class subfolders
        row["label"] = job.labels.get(frame.patient_id, "")
        row["label_source"] = "labels.csv"
    if not row.get("label"):
        return dict(row, reason=UNLABELED, detail=_no_label(row, job))
    last = len(window) - 1
    neighbours = [window[min(max(index + d, 0), last)][0] for d in range(-k, k + 1)]
    try:
        box = _crop_box(frame, job)
        if box is not None:
            row["crop_center"] = f"{(box[0] + box[2]) / 2:.1f};{(box[1] + box[3]) / 2:.1f}"
        images = []
        for neighbour in neighbours:
            slice_windows = job.prep.windows_for(neighbour)
            if box is None:
                images.append(_view(neighbour, slice_windows, job.prep, 2 * k + 1))
            else:
                hu = crop_hu(neighbour.hu, box, job.prep.image_size)
                pixels = window_channels(hu, slice_windows)
                images.append((pixels, pixels))
        windows = job.prep.windows_for(frame)  # one of the neighbours': it raises no more
    except Exception as exc:  # a crop or window this slice cannot have
        reason, detail = file_problem(exc)
        return dict(row, reason=reason, detail=detail)
    row["windows"] = ";".join(f"{c:g}/{w:g}" for c, w in windows)
    centre = images[k][1]
    gray = centre if centre.ndim == 2 else centre[..., 0]
    suffix = f".f{frame.frame + 1:04d}" if count > 1 else ""
    return _finish(row, _stack([pixels for pixels, _ in images]), gray, suffix, job)


# 2.5-D input: the views of the last few frames, each frame being its neighbours' too.
_VIEWS: OrderedDict[int, tuple] = OrderedDict()


def _view(
    frame: CTFrame, windows: list[tuple[float, float]], prep: Preprocessing, keep: int
) -> tuple[np.ndarray, np.ndarray]:
    """A frame's (model image, unresized channels): windowed and resized once a frame,
    though with ``context_slices`` it is a channel of ``keep`` images."""
    key = (tuple(windows), prep.image_size)
    hit = _VIEWS.get(id(frame))
    if hit is not None and hit[0] is frame and hit[1] == key:
        _VIEWS.move_to_end(id(frame))
        return hit[2]
    unresized = frame_channels(frame, windows)
    view = model_view(unresized, prep, frame), unresized
    _VIEWS[id(frame)] = (frame, key, view)  # the frame itself: its id is not reused meanwhile
    while len(_VIEWS) > keep:
        _VIEWS.popitem(last=False)
    return view


def _crop_box(frame: CTFrame, job: Job) -> tuple[float, float, float, float] | None:
    if job.prep.crop != Crop.LESION:  # only in annotated layouts (plan): slice_labels are set
        return None
    key = frame.geometry.key
    center = job.slice_labels[key].center  # a labelled slice's
    if center is None:  # a normal slice (or a lesion without a centre): a lung point
        center = lung_point(frame.hu, job.seed, key)
    return crop_box(center, job.prep.crop_mm, frame.geometry.spacing)


def _stack(images: list[np.ndarray]) -> np.ndarray:
    """Slices (each one channel per window) -> one image, their channels in series order."""
    if len(images) == 1:
        return images[0]
    return np.dstack(images)


def _relative(source: str, raw: Path) -> str:
    """An annotation file as a path under data/raw (several: joined by ';')."""
    parts = []
    for part in filter(None, source.split(";")):
        path = Path(part)
        parts.append(path.relative_to(raw).as_posix() if path.is_relative_to(raw) else part)
    return ";".join(parts)


def _no_label(row: dict, job: Job) -> str:
    """An ``unlabeled`` row's detail: where the label was looked for."""
    if job.labels is not None:
        patient = row.get("patient_id", "")
        if not patient:
            return "no PatientID to look up in labels.csv"
        return f"PatientID {patient!r} has no label in labels.csv"
    return f"no class folder in the path (layout {job.layout})"


def _finish(row: dict, pixels: np.ndarray, gray: np.ndarray, suffix: str, job: Job) -> dict:
    """Label check, perceptual hash and PNG write for one converted image."""
    if not row.get("label"):
        return dict(row, reason=UNLABELED, detail=_no_label(row, job))
    output = f"images/{row['source']}{suffix}.png"
    save_png(job.out / output, pixels)
    if not row.get("patient_id"):  # no id: the split groups it by this evidence
        row["view_phash"], row["view_thumb"] = view_record(evidence_view(pixels, gray, job.prep))
        # The body at full resolution, as convert.framing body shows it; cropped from the
        # small view instead, 313 of 1,470 Chest CT-Scan pairs within 2 bits were missed.
        body = fit_square(framed(gray, Framing.BODY), job.prep.image_size)
        row["body_phash"] = phash(body, reducing_gap=None)  # as view_record hashes a view
    # The whole image resized can be the first step of the hash's thumbnail; a crop cannot.
    resized = pixels if job.prep.framing == Framing.IMAGE else None
    return dict(row, phash=phash(gray, resized), output=output, status="converted")


def evidence_view(pixels: np.ndarray, gray: np.ndarray, prep: Preprocessing) -> np.ndarray:
    """What the split's likely-patient evidence looks at (:func:`lungct.data.grouping.view_record`):
    ``gray`` (the whole slice or the lesion crop, before framing, so that ``convert.framing``
    does not change the groups) resized to the model's square; with ``framing: image``, no
    crop and no 2.5-D stacking, that is the model image ``pixels`` itself, not redone."""
    if prep.framing == Framing.IMAGE and prep.crop == Crop.NONE and prep.context_slices == 0:
        return pixels if pixels.ndim == 2 else pixels[..., 0]
    return fit_square(gray, prep.image_size)


@dataclass(frozen=True)
class Plan:
    """What convert will do: the input files, the units, and the annotated layouts' labels."""

    files: list[str]
    units: list[Unit]
    slice_labels: dict[str, SliceLabel] | None


def plan(raw: Path, layout: str, params: ConvertParams, workers: int) -> Plan:
    """The input files (not the annotation files), the units (a series each for 2.5-D
    input, else a file each), and, for the annotated layouts, every slice's label."""
    annotated = layout in ANNOTATED_LAYOUTS
    if params.crop == Crop.LESION and not annotated:
        raise UserError(
            f"convert.crop: 'lesion' needs an annotated layout ({', '.join(ANNOTATED_LAYOUTS)}); "
            f"the data's layout is '{layout}'"
        )
    metadata = metadata_files(raw, layout)
    files = [p.relative_to(raw).as_posix() for p in input_files(raw) if p not in metadata]
    series = params.context_slices > 0 and layout not in IMAGE_LAYOUTS
    if not annotated and not series:
        return Plan(files, [Unit.file(rel) for rel in files], None)
    indexed = index_all(raw, files, params.max_image_bytes, workers)
    labels = label_frames(layout, raw, indexed, params.annotations) if annotated else None
    units = series_units(indexed, files) if series else [Unit.file(rel) for rel in files]
    return Plan(files, units, labels)


def index_all(raw: Path, files: list[str], max_image_bytes: int, workers: int) -> list[Indexed]:
    """Every file's frames from its header, over ``workers`` processes."""
    task = partial(index_file, raw, max_image_bytes=max_image_bytes)
    if workers <= 1 or len(files) < 2:
        return [item for rel in files for item in task(rel)]
    chunk = max(1, min(256, len(files) // (workers * 8)))
    with ProcessPoolExecutor(workers) as pool:
        return [item for items in pool.map(task, files, chunksize=chunk) for item in items]


def convert_all(units: list[Unit], job: Job, workers: int) -> list[dict]:
    """All units over ``workers`` processes (1: in this process); rows in unit order."""
    progress = {"desc": "convert", "unit": "file", "total": len(units), "disable": None}
    if workers <= 1 or len(units) < 2:
        _start_worker(job)
        return [row for unit in tqdm(units, **progress) for row in convert_unit(unit)]
    chunk = max(1, min(64, len(units) // (workers * 8)))
    # Workers get the job once; results stream back in input order, so memory holds
    # only the (small) manifest rows, never images.
    try:
        with ProcessPoolExecutor(workers, initializer=_start_worker, initargs=(job,)) as pool:
            results = pool.map(convert_unit, units, chunksize=chunk)
            return [row for rows in tqdm(results, **progress) for row in rows]
    except BrokenProcessPool:  # a worker killed (out of memory) or crashed in a decoder
        raise UserError(
            f"{job.raw}: a convert worker process died (killed for lack of memory, or "
            "crashed in an image decoder); try fewer convert.workers"
        ) from None


def excluded_reasons(layout: str) -> frozenset[str]:
    """Skip reasons that exclude a slice by rule rather than say the data is unusable: in
    the annotated layouts, what the slice-label rule decides (``RULE_REASONS``), and the
    images that are not CT slices the datasets ship beside them (Lung-PET-CT-Dx's PET
    series, LIDC-IDRI's radiographs, localizers). Every other skip is unreadable or
    unusable, and counts against ``convert.max_skipped_fraction``."""
    if layout in ANNOTATED_LAYOUTS:
        return RULE_REASONS | {NOT_CT, LOCALIZER}
    return frozenset()


def excluded(manifest: pd.DataFrame, layout: str) -> pd.Series:
    """Per manifest row: skipped, by a reason of :func:`excluded_reasons`."""
    return (manifest["status"] == "skipped") & manifest["reason"].isin(excluded_reasons(layout))


def unusable(manifest: pd.DataFrame, layout: str) -> pd.Series:
    """Per manifest row: skipped as unreadable or unusable (any other skip reason)."""
    return (manifest["status"] == "skipped") & ~excluded(manifest, layout)


def check_skips(
    manifest: pd.DataFrame, raw: Path, files: int, max_fraction: float, layout: str = ""
) -> None:
    """Fail when nothing converted, or when more than ``max_fraction`` of the files were
    skipped as unreadable or unusable (:func:`unusable`; what a rule excludes does not
    count)."""
    converted = manifest["status"] == "converted"
    if not converted.any():
        reasons = manifest.loc[~converted, "reason"].value_counts().to_dict()
        raise UserError(f"{raw}: no file could be converted ({files} files; skipped: {reasons})")
    failed = unusable(manifest, layout)
    skipped = manifest.loc[failed, "source"].nunique()
    if skipped > max_fraction * files:
        reasons = manifest.loc[failed, "reason"].value_counts().to_dict()
        ruled = int(excluded(manifest, layout).sum())
        first = manifest[failed].iloc[0]
        raise UserError(
            f"{raw}: {skipped} of {files} files skipped as unreadable or unusable, more than "
            f"convert.max_skipped_fraction ({max_fraction:g}); reasons {reasons}"
            + (f" ({ruled} excluded by rule, not counted)" if ruled else "")
            + f"; first: {first['source']} ({first['reason']}"
            f"{': ' + first['detail'] if first['detail'] else ''})"
        )


def convert_metrics(manifest: pd.DataFrame, layout: str) -> dict:
    converted = manifest[manifest["status"] == "converted"]
    skipped = manifest[manifest["status"] == "skipped"]
    ruled = manifest[excluded(manifest, layout)]
    failed = manifest[unusable(manifest, layout)]

    def counts(column: pd.Series) -> dict[str, int]:
        return {str(k): int(v) for k, v in column.value_counts().sort_index().items()}

    return {
        "layout": layout,
        "files": int(manifest["source"].nunique()),
        "converted": len(converted),
        "skipped": len(skipped),
        "skipped_by_reason": counts(skipped["reason"]),
        "excluded": len(ruled),
        "excluded_by_reason": counts(ruled["reason"]),
        "unusable": len(failed),
        "unusable_by_reason": counts(failed["reason"]),
        "unusable_files": int(failed["source"].nunique()),
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


def convert_summary(metrics: dict) -> str:
    """The stage's log line: images, and skips told apart: slices excluded by rule (by
    reason), files skipped as unreadable or unusable (what convert.max_skipped_fraction
    is checked against)."""

    def by_reason(counts: dict[str, int]) -> str:
        return f" ({', '.join(f'{k} {v}' for k, v in counts.items())})" if counts else ""

    return (
        f"convert: {metrics['converted']} images from {metrics['files']} files; "
        f"{metrics['excluded']} slices excluded by rule{by_reason(metrics['excluded_by_reason'])}; "
        f"{metrics['unusable_files']} files skipped as unreadable or unusable"
        f"{by_reason(metrics['unusable_by_reason'])}"
    )
