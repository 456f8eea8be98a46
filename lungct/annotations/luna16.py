"""LUNA16: ``annotations.csv`` (seriesuid, coordX, coordY, coordZ, diameter_mm; world mm,
patient LPS) and the slice-label rule (docs/annotations.md): along the slice normal, a
slice within ``diameter_mm / 2`` of a nodule's centre is ``nodule``, one more than
``margin_mm`` from every centre (or in a series without nodules) ``normal``, and one in
between skipped (``luna16_near_nodule``).
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from lungct.annotations.plausible import MAX_LESION_MM, MAX_WORLD_MM, lesion_ok, world_ok
from lungct.annotations.reasons import (
    ANNOTATION_IMPLAUSIBLE,
    ANNOTATION_UNREADABLE,
    LUNA16_NEAR_NODULE,
    NO_POSITION,
)
from lungct.annotations.slices import (
    EPS_MM,
    Labelled,
    Problem,
    SliceLabel,
    SliceRef,
    by_series,
    duplicate_keys,
    point_position,
    skipped,
    world_to_pixel,
)
from lungct.annotations.xmlsafe import AnnotationError, read_capped
from lungct.errors import first_line

NODULE, NORMAL = "nodule", "normal"
LUNA16_LABELS = (NORMAL, NODULE)
LUNA16_COLUMNS = ("seriesuid", "coordX", "coordY", "coordZ", "diameter_mm")
MAX_CSV_BYTES = 64 * 2**20  # the real file is 70 KiB


@dataclass(frozen=True)
class Nodule:
    x: float
    y: float
    z: float
    diameter_mm: float
    line: int  # in the CSV, counting the header as line 1


def read_luna16_csv(
    path: Path, max_bytes: int = MAX_CSV_BYTES
) -> tuple[dict[str, list[Nodule]], dict[str, tuple[str, str]]]:
    """Nodules by series, and the series whose rows are bad (series -> (reason, detail)):
    ``annotation_unreadable`` for a value that is not a number, ``annotation_implausible``
    for one that is not finite or past :mod:`lungct.annotations.plausible`.

    :class:`AnnotationError` when the file as a whole cannot be used (unreadable, too
    large, no LUNA16 header). Column names are matched exactly after stripping spaces and
    a BOM; other columns are ignored."""
    data = read_capped(path, max_bytes)
    try:
        rows = list(csv.reader(io.StringIO(data.decode("utf-8-sig"), newline="")))
    except UnicodeDecodeError as exc:
        raise AnnotationError(ANNOTATION_UNREADABLE, first_line(exc)) from None
    except csv.Error as exc:
        raise AnnotationError(ANNOTATION_UNREADABLE, f"not a CSV file: {first_line(exc)}") from None
    header = [h.strip() for h in rows[0]] if rows else []
    missing = [c for c in LUNA16_COLUMNS if c not in header]
    if missing:
        raise AnnotationError(
            ANNOTATION_UNREADABLE, f"no column {', '.join(missing)} in the header"
        )
    index = {c: header.index(c) for c in LUNA16_COLUMNS}
    nodules: dict[str, list[Nodule]] = {}
    bad: dict[str, tuple[str, str]] = {}
    for line, row in enumerate(rows[1:], start=2):
        if not any(cell.strip() for cell in row):
            continue
        cells = {c: row[i].strip() if i < len(row) else "" for c, i in index.items()}
        series = cells["seriesuid"]
        if not series:
            raise AnnotationError(ANNOTATION_UNREADABLE, f"line {line}: no seriesuid")
        written = ", ".join(cells[c][:30] or "-" for c in LUNA16_COLUMNS[1:])
        try:
            x, y, z, d = (float(cells[c]) for c in LUNA16_COLUMNS[1:])
        except ValueError:
            detail = f"line {line}: coordinates and a diameter must be numbers ({written})"
            bad.setdefault(series, (ANNOTATION_UNREADABLE, detail))
            continue
        if not (all(map(world_ok, (x, y, z))) and lesion_ok(d)):
            detail = (
                f"line {line}: coordinates within {MAX_WORLD_MM:g} mm and a diameter above 0, "
                f"at most {MAX_LESION_MM:g} mm, are plausible ({written})"
            )
            bad.setdefault(series, (ANNOTATION_IMPLAUSIBLE, detail))
            continue
        nodules.setdefault(series, []).append(Nodule(x, y, z, d, line))
    return nodules, bad


def luna16_labels(
    csv_file: Path,
    slices: Sequence[SliceRef],
    margin_mm: float = 10.0,
    max_file_bytes: int = MAX_CSV_BYTES,
) -> Labelled:
    """Label every slice given from LUNA16's ``annotations.csv``.

    A CSV that cannot be used is a problem, and every slice is skipped with its reason; a
    bad row (a coordinate that is not a number, a diameter of 0 or 1e308) is a problem for
    its series only, whose slices are skipped with its reason."""
    if not (math.isfinite(margin_mm) and margin_mm >= 0):
        raise ValueError(f"margin_mm must be a finite number >= 0, not {margin_mm}")
    source = str(csv_file)
    try:
        nodules, bad = read_luna16_csv(csv_file, max_file_bytes)
    except AnnotationError as exc:
        labels = {r.key: skipped(exc.reason, exc.detail, source) for r in slices}
        return Labelled(labels, [Problem(csv_file, exc.reason, exc.detail)])
    problems = [Problem(csv_file, r, f"series {s}: {d}") for s, (r, d) in bad.items()]
    labels: dict[str, SliceLabel] = {}
    for series, refs in by_series(slices).items():
        for ref in refs:
            if series in bad:
                labels[ref.key] = skipped(*bad[series], source)
            else:
                labels[ref.key] = _label_slice(ref, nodules.get(series, []), margin_mm, source)
    labels.update(duplicate_keys(slices))
    return Labelled(labels, problems)


def _label_slice(ref: SliceRef, nodules: list[Nodule], margin_mm: float, source: str) -> SliceLabel:
    if not nodules:
        return SliceLabel(NORMAL, source=source, detail="the series has no nodule in the CSV")
    if ref.position is None:
        return skipped(NO_POSITION, "the slice has no position to compare", source)
    distances = [
        (abs(ref.position - point_position((n.x, n.y, n.z), ref)), -n.diameter_mm, n.line, n)
        for n in nodules
    ]
    inside = [d for d in distances if d[0] <= d[3].diameter_mm / 2 + EPS_MM]
    if inside:
        distance, _, _, nodule = min(inside)  # the nearest centre; the largest on a tie
        return SliceLabel(
            NODULE,
            source=source,
            center=world_to_pixel((nodule.x, nodule.y, nodule.z), ref),
            size_mm=nodule.diameter_mm,
            detail=f"{distance:.2f} mm from the centre of a {nodule.diameter_mm:g} mm nodule "
            f"(line {nodule.line})",
        )
    distance = min(d[0] for d in distances)
    if distance <= margin_mm + EPS_MM:
        return skipped(
            LUNA16_NEAR_NODULE,
            f"a nodule centre lies {distance:.2f} mm away (margin {margin_mm:g} mm)",
            source,
        )
    return SliceLabel(NORMAL, source=source, detail=f"nearest nodule centre {distance:.2f} mm away")
