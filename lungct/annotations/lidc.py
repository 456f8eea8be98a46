"""LIDC-IDRI: the readers' XML (``LidcReadMessage``, one file per CT series, one
``readingSession`` per reader) and the slice-label rule, in full in docs/annotations.md.

A reader *marks* a slice with an included ``roi`` of a nodule with a valid malignancy. A
slice that at least ``min_readers`` mark is ``malignant``, ``benign`` or ``indeterminate``
by their median malignancy (above, below or at 3); one with no roi of any kind within
``margin_mm`` is ``normal``; any other is skipped with a reason code.
"""

from __future__ import annotations

import math
import statistics
import xml.etree.ElementTree as ET
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np

from lungct.annotations.plausible import MAX_LESION_MM, lesion_ok, parse, pixel_ok, world_ok
from lungct.annotations.reasons import (
    ANNOTATION_DUPLICATE,
    ANNOTATION_IMPLAUSIBLE,
    ANNOTATION_UNKNOWN,
    ANNOTATION_UNMATCHED,
    ANNOTATION_UNREADABLE,
    LIDC_NEAR_ANNOTATION,
    LIDC_NO_MALIGNANCY,
    LIDC_TOO_FEW_READERS,
    LIDC_UNPLACED_ANNOTATION,
    NO_POSITION,
    NOT_ANNOTATED,
    NOT_CT_ANNOTATION,
)
from lungct.annotations.slices import (
    EPS_MM,
    MOVING_MM,
    Labelled,
    Problem,
    SliceLabel,
    SliceRef,
    by_series,
    duplicate_keys,
    normal,
    series_spacing,
    skipped,
)
from lungct.annotations.xmlsafe import (
    MAX_XML_BYTES,
    AnnotationError,
    child,
    children,
    local,
    number,
    read_xml,
    text,
)

MALIGNANT, BENIGN, INDETERMINATE, NORMAL = "malignant", "benign", "indeterminate", "normal"
LIDC_LABELS = (NORMAL, BENIGN, INDETERMINATE, MALIGNANT)
INDETERMINATE_SCORE = 3.0

NODULE = "nodule"  # a nodule with characteristics (3 mm or more)
SMALL_NODULE = "small_nodule"  # a nodule without characteristics (under 3 mm)
NON_NODULE = "non_nodule"


@dataclass(frozen=True)
class Roi:
    """One roi (or non-nodule locus) of one reader, as written in the XML."""

    reader: int  # the readingSession, counted from 0 in document order
    kind: str  # NODULE, SMALL_NODULE or NON_NODULE
    nodule: int  # the nodule (or non-nodule) within its reader, from 0
    malignancy: int | None  # 1-5 for a NODULE with a valid malignancy, else None
    inclusion: bool
    sop_uid: str
    z: float | None  # imageZposition
    points: tuple[tuple[float, float], ...]  # (x, y) = (column, row) pixels


@dataclass(frozen=True)
class LidcRead:
    """An LIDC-IDRI XML file: its series and every roi of every reader."""

    path: Path
    series_uid: str
    study_uid: str
    readers: int
    rois: tuple[Roi, ...]


class LidcError(AnnotationError):
    """An LIDC-IDRI XML file that cannot be used; ``series_uid`` when the header said."""

    def __init__(self, reason: str, detail: str, series_uid: str = "") -> None:
        super().__init__(reason, detail)
        self.series_uid = series_uid


def read_lidc(path: Path, max_bytes: int = MAX_XML_BYTES) -> LidcRead:
    """Parse one LIDC-IDRI XML file; :class:`LidcError` (a reason code) if it is unusable.
    A missing ``inclusion`` is TRUE; an edge point that is not two numbers is dropped; a
    coordinate that is not finite or past :mod:`lungct.annotations.plausible` refuses the
    file (``annotation_implausible``)."""
    try:
        root = read_xml(path, max_bytes)
    except AnnotationError as exc:
        raise LidcError(exc.reason, exc.detail) from None
    name = local(root.tag)
    if name == "idrireadmessage":
        raise LidcError(NOT_CT_ANNOTATION, "IdriReadMessage: a chest radiograph read, not CT")
    if name != "lidcreadmessage":
        raise LidcError(ANNOTATION_UNKNOWN, f"root element <{name}> is not LidcReadMessage")
    header = child(root, "ResponseHeader")
    series = text(header, "SeriesInstanceUid")
    if not series:
        raise LidcError(ANNOTATION_UNREADABLE, "no SeriesInstanceUid in the ResponseHeader")
    sessions = list(children(root, "readingSession"))
    if not sessions:
        raise LidcError(ANNOTATION_UNREADABLE, "no readingSession", series)
    rois: list[Roi] = []
    try:
        for reader, session in enumerate(sessions):
            for index, nodule in enumerate(children(session, "unblindedReadNodule")):
                characteristics = child(nodule, "characteristics")
                is_nodule = characteristics is not None and len(characteristics) > 0
                malignancy = _malignancy(characteristics) if is_nodule else None
                kind = NODULE if is_nodule else SMALL_NODULE
                for roi in children(nodule, "roi"):
                    included = text(roi, "inclusion").lower() in ("", "true")
                    where = _where(roi, "edgeMap", f"reader {reader + 1}, nodule {index + 1}")
                    rois.append(Roi(reader, kind, index, malignancy, included, *where))
            for index, non in enumerate(children(session, "nonNodule")):
                where = _where(non, "locus", f"reader {reader + 1}, non-nodule {index + 1}")
                rois.append(Roi(reader, NON_NODULE, index, None, True, *where))
    except _Implausible as exc:
        raise LidcError(ANNOTATION_IMPLAUSIBLE, str(exc), series) from None
    return LidcRead(path, series, text(header, "StudyInstanceUID"), len(sessions), tuple(rois))


class _Implausible(ValueError):
    """A coordinate past the bounds of :mod:`lungct.annotations.plausible`."""


def _malignancy(characteristics: ET.Element | None) -> int | None:
    value = number(characteristics, "malignancy")
    return int(value) if value is not None and value.is_integer() and 1 <= value <= 5 else None


def _where(element: ET.Element, point_tag: str, what: str) -> tuple[str, float | None, tuple]:
    """An roi's (or locus's) imageSOP_UID, imageZposition and the points of two numbers;
    :class:`_Implausible` for a z or a point coordinate that is a number out of bounds."""
    z = _coordinate(text(element, "imageZposition"), world_ok, what, "imageZposition")
    points = []
    for point in children(element, point_tag):
        x = _coordinate(text(point, "xCoord"), pixel_ok, what, "xCoord")
        y = _coordinate(text(point, "yCoord"), pixel_ok, what, "yCoord")
        if x is not None and y is not None:
            points.append((x, y))
    return text(element, "imageSOP_UID"), z, tuple(points)


def _coordinate(written: str, ok: Callable[[float], bool], what: str, name: str) -> float | None:
    """A coordinate as written: None when absent or not a number (its point is dropped)."""
    try:
        value = parse(written)
    except ValueError:
        return None
    if value is not None and not ok(value):
        raise _Implausible(f"{what}: {name} {written[:30]} is not a plausible coordinate")
    return value


def outline_centroid(points: Sequence[tuple[float, float]]) -> tuple[float, float, float]:
    """(area in pixels, column, row) of an outline: its polygon's centroid (shoelace
    formula, closed either way), or the mean of its distinct points, with area 0, for
    fewer than three points or no area."""
    if not points:
        raise ValueError("an outline needs points")
    xy = np.asarray(points, float)
    if len(xy) >= 3:
        x, y = xy[:, 0], xy[:, 1]
        xn, yn = np.roll(x, -1), np.roll(y, -1)
        cross = x * yn - xn * y
        area = float(cross.sum()) / 2.0
        if abs(area) > 1e-9:
            cx = float(((x + xn) * cross).sum()) / (6.0 * area)
            cy = float(((y + yn) * cross).sum()) / (6.0 * area)
            return abs(area), cx, cy
    distinct = np.unique(xy, axis=0)
    return 0.0, float(distinct[:, 0].mean()), float(distinct[:, 1].mean())


def _reader_outline(rois: list[Roi]) -> tuple[float, float, float] | None:
    """(area, column, row) of one reader's outlines on a slice: the area-weighted mean of
    its polygons' centroids, or the mean of point centroids when none has an area."""
    parts = [outline_centroid(r.points) for r in rois if r.points]
    if not parts:
        return None
    area = sum(a for a, _, _ in parts)
    if area > 0:
        return area, sum(a * x for a, x, _ in parts) / area, sum(a * y for a, _, y in parts) / area
    return 0.0, float(np.mean([x for _, x, _ in parts])), float(np.mean([y for _, _, y in parts]))


def lidc_labels(
    xml_files: Sequence[Path],
    slices: Sequence[SliceRef],
    min_readers: int = 2,
    margin_mm: float = 10.0,
    max_file_bytes: int = MAX_XML_BYTES,
) -> Labelled:
    """Label every slice given from the LIDC-IDRI XML files (matched to series by the
    header's SeriesInstanceUid). Files that cannot be used are returned as problems."""
    if min_readers < 1:
        raise ValueError(f"min_readers must be at least 1, not {min_readers}")
    if not (math.isfinite(margin_mm) and margin_mm >= 0):
        raise ValueError(f"margin_mm must be a finite number >= 0, not {margin_mm}")
    groups = by_series(slices)
    problems: list[Problem] = []
    reads: dict[str, LidcRead] = {}
    failed: dict[str, tuple[str, str, str]] = {}  # series -> (reason, detail, source)
    for path in sorted(xml_files, key=str):
        try:
            read = read_lidc(path, max_file_bytes)
        except LidcError as exc:
            problems.append(Problem(path, exc.reason, exc.detail))
            if exc.series_uid in groups:  # a broken read of the series: trust none
                failed.setdefault(exc.series_uid, (exc.reason, exc.detail, str(path)))
            continue
        series = read.series_uid
        if series not in groups:
            problems.append(
                Problem(path, ANNOTATION_UNMATCHED, f"series {series} has no slice given")
            )
        elif series in reads:
            first = reads[series]
            if (first.readers, first.rois) == (read.readers, read.rois):
                continue  # the same reads twice (a copy): used once
            detail = f"series {series} also annotated, differently, by {first.path}"
            problems.append(Problem(path, ANNOTATION_DUPLICATE, detail))
            failed[series] = (ANNOTATION_DUPLICATE, detail, f"{first.path};{path}")
        else:
            reads[series] = read
    labels: dict[str, SliceLabel] = {}
    duplicates = duplicate_keys(slices)
    for series, refs in groups.items():
        if series in failed:
            reason, detail, source = failed[series]
            labels.update({r.key: skipped(reason, detail, source) for r in refs})
        elif series in reads:
            labels.update(_label_series(reads[series], refs, min_readers, margin_mm, duplicates))
        else:
            detail = f"no LIDC-IDRI XML for series {series}"
            labels.update({r.key: skipped(NOT_ANNOTATED, detail) for r in refs})
    labels.update(duplicates)
    return Labelled(labels, problems)


def _z_mapper(refs: Sequence[SliceRef]) -> Callable[[float], float] | None:
    """imageZposition (the z of Image Position (Patient)) -> position along the normal, by
    a line fitted to the series' (z, position) pairs (docs/annotations.md); None when the
    series has no geometry to place a z on."""
    pairs = [(r.origin[2], r.position) for r in refs if r.origin and r.position is not None]
    if pairs:
        zs, ps = np.asarray(pairs, float).T
        if np.allclose(ps, zs, rtol=0, atol=1e-9):
            return lambda z: z  # axial slices, normal +z: exact, no fitting noise
        if float(np.ptp(zs)) > MOVING_MM:
            slope, intercept = np.polyfit(zs, ps, 1)
            return lambda z: float(slope * z + intercept)
        n = next((normal(r.orientation) for r in refs if normal(r.orientation) is not None), None)
        if n is None or abs(n[2]) < 0.5:
            return None
        z0, p0, nz = float(zs[0]), float(ps[0]), float(n[2])
        return lambda z: p0 + nz * (z - z0)
    if any(r.position is not None for r in refs):
        return lambda z: z
    return None


def _label_series(
    read: LidcRead,
    refs: Sequence[SliceRef],
    min_readers: int,
    margin_mm: float,
    duplicates: Mapping[str, SliceLabel],
) -> dict[str, SliceLabel]:
    """Every slice's label; an roi on a key that several slices share marks none of them
    (nor, by its z, a neighbour), but still keeps slices near it from being normal."""
    spacing = series_spacing(refs)
    by_key = {r.key: r for r in refs}
    placed = [r for r in refs if r.position is not None]
    z_to_position = _z_mapper(refs)
    positions: list[float | None] = []  # of every roi, any kind; None when not placed
    marks: dict[str, dict[int, list[Roi]]] = {}  # slice -> reader -> marking rois
    unscored: dict[str, set[int]] = {}  # slice -> readers outlining without a malignancy
    for roi in read.rois:
        target = by_key.get(roi.sop_uid) if roi.sop_uid else None
        position = target.position if target is not None else None
        if position is None and roi.z is not None and z_to_position is not None:
            position = z_to_position(roi.z)
        positions.append(position)
        if roi.sop_uid in duplicates:
            continue
        if target is None and position is not None and spacing is not None and placed:
            nearest = min(placed, key=lambda r: abs(r.position - position))  # type: ignore[operator]
            if abs(nearest.position - position) < spacing / 2 - EPS_MM:  # type: ignore[operator]
                target = nearest
        if roi.kind != NODULE or not roi.inclusion or target is None:
            continue
        if roi.malignancy is None:
            unscored.setdefault(target.key, set()).add(roi.reader)
        else:
            marks.setdefault(target.key, {}).setdefault(roi.reader, []).append(roi)
    unplaced = positions.count(None)
    roi_positions = np.asarray([p for p in positions if p is not None], float)
    return {
        r.key: _label_slice(
            r, marks, unscored, roi_positions, unplaced, read, min_readers, margin_mm
        )
        for r in refs
    }


def _label_slice(
    ref: SliceRef,
    series_marks: dict[str, dict[int, list[Roi]]],
    series_unscored: dict[str, set[int]],
    roi_positions: np.ndarray,
    unplaced: int,
    read: LidcRead,
    min_readers: int,
    margin_mm: float,
) -> SliceLabel:
    source, readers = str(read.path), read.readers
    marks, unscored = series_marks.get(ref.key, {}), series_unscored.get(ref.key, set())
    unmarked = partial(skipped, source=source, readers=0)
    if marks:
        scores, outlines = [], []
        for rois in marks.values():
            best = max(r.malignancy for r in rois)  # type: ignore[type-var]
            nodule = min(r.nodule for r in rois if r.malignancy == best)
            scores.append(best)
            outline = _reader_outline([r for r in rois if r.nodule == nodule])
            if outline is not None:
                outlines.append(outline)
        score = float(statistics.median(scores))
        center = size = None
        if outlines:
            center = (
                float(np.mean([x for _, x, _ in outlines])),
                float(np.mean([y for _, _, y in outlines])),
            )
            areas = [a for a, _, _ in outlines if a > 0]
            if areas and ref.spacing is not None:
                pixel_mm2 = ref.spacing[0] * ref.spacing[1]
                size = float(np.mean([2 * math.sqrt(a * pixel_mm2 / math.pi) for a in areas]))
        n = len(marks)
        said = f"{n} of {readers} readers mark it, malignancy {sorted(scores)} -> median {score:g}"
        fields = {"readers": n, "score": score, "source": source, "center": center, "size_mm": size}
        if size is not None and not lesion_ok(size):
            return skipped(
                ANNOTATION_IMPLAUSIBLE,
                f"{said}; outlines {size:.4g} mm across, over {MAX_LESION_MM:g} mm",
                **fields,
            )
        if n >= min_readers:
            if score > INDETERMINATE_SCORE:
                label = MALIGNANT
            elif score < INDETERMINATE_SCORE:
                label = BENIGN
            else:
                label = INDETERMINATE
            return SliceLabel(label, detail=said, **fields)  # type: ignore[arg-type]
        if unscored - marks.keys():
            return skipped(
                LIDC_NO_MALIGNANCY, f"{said}; another outlines it without a malignancy", **fields
            )
        return skipped(LIDC_TOO_FEW_READERS, f"{said}; {min_readers} needed", **fields)
    if unscored:
        return unmarked(
            LIDC_NO_MALIGNANCY,
            f"{len(unscored)} reader(s) outline it on a nodule without a valid malignancy",
        )
    if ref.position is None:
        return unmarked(NO_POSITION, "the slice has no position to compare")
    if len(roi_positions):
        distance = float(np.abs(roi_positions - ref.position).min())
        if distance <= margin_mm + EPS_MM:
            return unmarked(
                LIDC_NEAR_ANNOTATION,
                f"an annotation lies {distance:.2f} mm away (margin {margin_mm:g} mm)",
            )
        nearest = f"nearest annotation {distance:.2f} mm away"
    else:
        nearest = "no annotation in the series"
    if unplaced:
        return unmarked(
            LIDC_UNPLACED_ANNOTATION,
            f"{unplaced} annotation(s) of the series match no slice and have no usable "
            "imageZposition",
        )
    return SliceLabel(
        NORMAL, readers=0, source=source, detail=f"{nearest}; margin {margin_mm:g} mm"
    )
