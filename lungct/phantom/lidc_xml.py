"""LIDC-IDRI reading messages for a phantom series: four radiologists who disagree.

One XML file per series (``<series folder>/<NNN>.xml``, beside the DICOM files, as in the
LIDC-IDRI download): root ``LidcReadMessage`` in namespace ``http://www.nih.gov``, a
``ResponseHeader`` (``SeriesInstanceUid``, ``StudyInstanceUID``, ...), then one
``readingSession`` per reader (``annotationVersion``, ``servicingRadiologistID``) holding
``unblindedReadNodule`` and ``nonNodule`` marks, as the LIDC's unblinded second read does.

What the readers do (:func:`read_series`), drawn from the patient's annotation rng:

* Sessions: four readers (three in one series out of ten) from a pool of twelve
  radiologists per cohort (:func:`reader_pool`).
* The phantom's nodule (benign and malignant patients): marked by every reader but, in a
  four-reader series, sometimes one (a quarter of benign, a tenth of malignant series); that
  reader may instead record it as a nodule under 3 mm (benign only) or as a non-nodule.  A
  mark has ``characteristics`` (subtlety, internalStructure, calcification, sphericity,
  margin, lobulation, spiculation, texture, malignancy, derived from the true nodule with
  per-reader noise) and one ``roi`` per slice where the body's cut is at least a pixel wide
  (a reader may leave out the first or last of them): the outline of the true cut
  (:func:`~lungct.phantom.nodules.nodule_outline`) in pixel coordinates, scaled (0.92-1.18),
  shifted (0.6 mm) and wobbled (up to 0.8 mm) per reader, drawn half a pixel outside the
  body, closed (last point = first).  A reader may add an ``inclusion`` FALSE roi (a hole).
* Malignancy (1-5): malignant mostly 4-5, benign mostly 1-2, some 3s; redrawn until the
  mean and the median of the readers who marked it are on the side of 3 of the true class,
  so a consensus rule (mean or median above / below 3) recovers the class.
* Small nodules (< 3 mm: no characteristics, one roi with one point) and non-nodules
  (``locus``) at lung points away from the nodule, each seen by some readers only, in every
  class (a normal patient's readers may mark some).
* A fifth of the sessions reference slices by ``imageZposition`` only: their
  ``imageSOP_UID`` matches no file (as when a series was re-exported).
* ``noduleID``, ``nonNoduleID`` and ``imageZposition`` are written in the reader's own style
  ("Nodule 001", "0", "IL057_123456"; ``-125.000000``, ``-125``, ``-125.000000 ``).

Pixel coordinates: ``xCoord`` is the column, ``yCoord`` the row (0-based) of the slice's
pixel matrix.  The file is deterministic: attributes in a fixed order, two-space indentation,
no clock.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from pydicom.uid import generate_uid

from lungct.names import AnnotationForm
from lungct.phantom.dicom_writer import STUDY_DATE, STUDY_TIME, decimal_string
from lungct.phantom.nodules import nodule_outline, section_radius
from lungct.phantom.records import SeriesRecord, annotation_rng
from lungct.phantom.xml_text import Element, leaves, xml_text

NAMESPACE = "http://www.nih.gov"
XSI = "http://www.w3.org/2001/XMLSchema-instance"
SCHEMA_LOCATION = "http://www.nih.gov http://troll.rad.med.umich.edu/lidc/LidcReadMessage.xsd"
ANNOTATION_VERSION = "3.12"
CHARACTERISTICS = (
    "subtlety",
    "internalStructure",
    "calcification",
    "sphericity",
    "margin",
    "lobulation",
    "spiculation",
    "texture",
    "malignancy",
)
POOL_SIZE = 12  # radiologists per cohort
_READER_STREAM = 0x11D0
_MALIGNANCY = {  # rating -> probability per reader, before the consensus check
    "malignant": ((2, 3, 4, 5), (0.05, 0.15, 0.35, 0.45)),
    "benign": ((1, 2, 3, 4), (0.35, 0.40, 0.20, 0.05)),
}
_STALE_SESSION = 0.2  # sessions whose SOP UIDs match no file
_OUTLINE_MARGIN_PX = 0.5  # outlines are drawn just outside the nodule


@dataclass(frozen=True)
class Roi:
    """One outline (or point) on one slice; ``points`` are (column, row) pixels."""

    z: float
    sop_uid: str
    inclusion: bool
    points: tuple[tuple[int, int], ...]


@dataclass(frozen=True)
class NoduleMark:
    """An ``unblindedReadNodule``: characteristics None for a nodule under 3 mm."""

    nodule_id: str
    characteristics: dict[str, int] | None
    rois: tuple[Roi, ...]
    true_nodule: bool  # the phantom's nodule (not written; for tests)


@dataclass(frozen=True)
class NonNoduleMark:
    non_nodule_id: str
    z: float
    sop_uid: str
    point: tuple[int, int]


@dataclass
class Reading:
    """One ``readingSession``."""

    reader_id: str
    style: int
    nodules: list[NoduleMark] = field(default_factory=list)
    non_nodules: list[NonNoduleMark] = field(default_factory=list)


def reader_pool(seed: int) -> tuple[str, ...]:
    """The cohort's radiologists: ``POOL_SIZE`` distinct nine-digit ids."""
    rng = np.random.default_rng([int(seed), _READER_STREAM])
    ids: list[str] = []
    while len(ids) < POOL_SIZE:
        reader = str(int(rng.integers(100_000_000, 1_000_000_000)))
        if reader not in ids:
            ids.append(reader)
    return tuple(ids)


def _mark_id(style: int, number: int, rng: np.random.Generator, nodule: bool) -> str:
    """``noduleID`` (or ``nonNoduleID``) of the reader's ``number``-th mark of that kind."""
    if style == 2:
        return f"IL057_{int(rng.integers(100000, 1000000))}"
    if nodule:
        return f"Nodule {number:03d}" if style == 0 else str(number - 1)
    return f"Non-nodule {number:03d}" if style == 0 else f"Non-nodule {number}"


def _z_text(style: int, z: float) -> str:
    if style == 0:
        return f"{z:.6f}"
    if style == 1:
        return decimal_string(z)
    return f"{z:.6f} "


def _malignancy(rng: np.random.Generator, label: str, n: int) -> list[int]:
    """Ratings of ``n`` readers that disagree but whose mean and median are on the side of 3
    of the true class."""
    values, weights = _MALIGNANCY[label]
    for _ in range(100):
        ratings = rng.choice(values, size=n, p=weights)
        mean, median = float(ratings.mean()), float(np.median(ratings))
        agree = min(mean, median) > 3 if label == "malignant" else max(mean, median) < 3
        if agree:  # with the true class
            return [int(v) for v in ratings]
    return [4 if label == "malignant" else 2] * n


def _characteristics(rng: np.random.Generator, record: SeriesRecord, rating: int) -> dict:
    nodule = record.patient.nodule
    malignant = record.label == "malignant"

    def noisy(base: int) -> int:
        step = int(rng.integers(-1, 2)) if rng.random() < 0.5 else 0
        return int(min(max(base + step, 1), 5))

    lobulation = float(np.sum(nodule.harmonics[:, 1]))
    calcification = 6  # absent
    if nodule.calcified and rng.random() < 0.9:  # a reader may miss it
        calcification = int(rng.choice([3, 3, 3, 5, 1, 2]))
    texture = noisy(3) if nodule.halo_hu is not None else (5 if rng.random() < 0.85 else 4)
    return {  # in CHARACTERISTICS order
        "subtlety": noisy(5 if nodule.radius * 2 >= 15 else 4),
        "internalStructure": 1 if rng.random() < 0.95 else 2,
        "calcification": calcification,
        "sphericity": noisy(3 if malignant else 5),
        "margin": noisy(2 if malignant else 5),
        "lobulation": noisy(min(5, 2 + round(lobulation * 4)) if malignant else 1),
        "spiculation": noisy(min(5, 1 + len(nodule.spicules) // 2) if malignant else 1),
        "texture": texture,
        "malignancy": int(rating),
    }


def _closed_chain(columns: np.ndarray, rows: np.ndarray, size: int) -> tuple:
    """Rounded, clipped pixel points without consecutive repeats, closed (last = first)."""
    cols = np.clip(np.rint(columns), 0, size - 1).astype(int)
    rws = np.clip(np.rint(rows), 0, size - 1).astype(int)
    points: list[tuple[int, int]] = []
    for point in zip(cols.tolist(), rws.tolist(), strict=True):
        if not points or points[-1] != point:
            points.append(point)
    while len(points) > 1 and points[-1] == points[0]:
        points.pop()
    points.append(points[0])
    return tuple(points)


def _visible_slices(record: SeriesRecord) -> list[int]:
    """Slices where the nodule body's cut is at least one pixel wide."""
    patient, nodule = record.patient, record.patient.nodule
    out = []
    for k, z in enumerate(patient.z_positions_mm):
        rz = section_radius(nodule, float(z), patient.slice_spacing_mm)
        if rz is not None and 2 * rz >= patient.pixel_spacing_mm:
            out.append(k)
    return out


def _outline_rois(
    rng: np.random.Generator, record: SeriesRecord, slices: list[int], uid_of
) -> list[Roi]:
    """One reader's outlines of the true nodule on ``slices``."""
    patient, nodule = record.patient, record.patient.nodule
    ps = patient.pixel_spacing_mm
    scale = rng.uniform(0.92, 1.18)
    shift = rng.normal(0.0, 0.6, size=2) / ps  # mm -> pixels
    ccol, crow = record.to_pixel(float(nodule.center[0]), float(nodule.center[1]))
    rois = []
    for k in slices:
        z = float(patient.z_positions_mm[k])
        rz = section_radius(nodule, z, patient.slice_spacing_mm)
        n_points = max(16, math.ceil(2 * math.pi * rz / ps * 2.5))
        outline = nodule_outline(nodule, z, patient.slice_spacing_mm, n_points)
        cols, rows = record.to_pixel(outline[:, 0], outline[:, 1])
        dx, dy = cols - ccol, rows - crow
        radius = np.hypot(dx, dy)
        theta = np.arctan2(dy, dx)
        wobble = rng.uniform(0.0, 0.8) / ps * np.cos(2 * theta + rng.uniform(0, 2 * math.pi))
        drawn = np.maximum(radius * scale + _OUTLINE_MARGIN_PX + wobble, 1.0)
        points = _closed_chain(
            ccol + shift[0] + drawn * np.cos(theta),
            crow + shift[1] + drawn * np.sin(theta),
            record.size,
        )
        rois.append(Roi(float(record.z_positions_mm[k]), uid_of(k), True, points))
    return rois


def _hole(rng: np.random.Generator, record: SeriesRecord, k: int, uid_of) -> Roi:
    """An ``inclusion`` FALSE roi: a small ring inside the nodule on (visible) slice ``k``."""
    patient, nodule = record.patient, record.patient.nodule
    rz = section_radius(nodule, float(patient.z_positions_mm[k]), patient.slice_spacing_mm)
    ps = patient.pixel_spacing_mm
    ccol, crow = record.to_pixel(float(nodule.center[0]), float(nodule.center[1]))
    angle = rng.uniform(0, 2 * math.pi)
    reach = 0.4 * rz / ps
    hole_r = max(0.2 * rz / ps, 1.0)
    theta = np.linspace(0, 2 * math.pi, 16, endpoint=False)
    points = _closed_chain(
        ccol + reach * math.cos(angle) + hole_r * np.cos(theta),
        crow + reach * math.sin(angle) + hole_r * np.sin(theta),
        record.size,
    )
    return Roi(float(record.z_positions_mm[k]), uid_of(k), False, points)


def _lung_point(rng: np.random.Generator, record: SeriesRecord) -> tuple[int, float, float] | None:
    """(slice, column, row) of a lung pixel at least 10 mm beyond the nodule, or None."""
    patient = record.patient
    nodule = patient.nodule
    for _ in range(50):
        k = int(rng.integers(0, len(patient.z_positions_mm)))
        lung = np.argwhere(patient.lung_mask[k])
        if not len(lung):
            continue
        row, col = lung[int(rng.integers(0, len(lung)))]
        if nodule is not None:
            x, y = record.to_world(float(col), float(row))
            z = float(patient.z_positions_mm[k])
            if math.dist((x, y, z), tuple(nodule.center)) < nodule.radius * 1.6 + 10.0:
                continue
        return k, float(col), float(row)
    return None


def _point_roi(rng, record: SeriesRecord, k: int, col: float, row: float, uid_of) -> Roi:
    jitter = rng.integers(-1, 2, size=2)
    size = record.size
    point = (int(min(max(round(col) + jitter[0], 0), size - 1)),
             int(min(max(round(row) + jitter[1], 0), size - 1)))  # fmt: skip
    return Roi(float(record.z_positions_mm[k]), uid_of(k), True, (point,))


def read_series(record: SeriesRecord, seed: int) -> tuple[int, list[Reading]]:
    """The message id and the reading sessions of one series (see the module docstring)."""
    rng = annotation_rng(seed, record.index, AnnotationForm.LIDC)
    message_id = int(rng.integers(10**8, 10**9))
    pool = reader_pool(seed)
    n_sessions = 4 if rng.random() < 0.9 else 3
    readers = rng.choice(len(pool), size=n_sessions, replace=False)
    stale = rng.random(n_sessions) < _STALE_SESSION
    nodule, label = record.patient.nodule, record.label
    marks = np.ones(n_sessions, dtype=bool)
    miss = 0.25 if label == "benign" else 0.1
    if nodule is not None and n_sessions == 4 and rng.random() < miss:
        marks[int(rng.integers(0, n_sessions))] = False
    ratings = iter(_malignancy(rng, label, int(marks.sum())) if nodule is not None else [])
    visible = _visible_slices(record) if nodule is not None else []
    centre_k = 0
    if nodule is not None:
        centre_k = int(np.argmin(np.abs(record.patient.z_positions_mm - float(nodule.center[2]))))
    micro = [_lung_point(rng, record) for _ in range(int(rng.integers(0, 3)))]
    others = [_lung_point(rng, record) for _ in range(int(rng.integers(0, 3)))]

    readings = []
    for s in range(n_sessions):
        style = int(readers[s]) % 3
        reading = Reading(pool[int(readers[s])], style)

        def uid_of(k: int, s: int = s) -> str:
            if stale[s]:
                return generate_uid(
                    entropy_srcs=[str(seed), record.patient_id, "lidc-stale", str(s), str(k)]
                )
            return record.sop_uids[k]

        def add_nodule(characteristics, rois, true_nodule, reading=reading) -> None:
            mark_id = _mark_id(reading.style, len(reading.nodules) + 1, rng, nodule=True)
            reading.nodules.append(NoduleMark(mark_id, characteristics, rois, true_nodule))

        def add_non_nodule(k: int, col: float, row: float, reading=reading, uid_of=uid_of):
            roi = _point_roi(rng, record, k, col, row, uid_of)
            mark_id = _mark_id(reading.style, len(reading.non_nodules) + 1, rng, nodule=False)
            reading.non_nodules.append(NonNoduleMark(mark_id, roi.z, roi.sop_uid, roi.points[0]))

        if nodule is not None:
            ccol, crow = record.to_pixel(float(nodule.center[0]), float(nodule.center[1]))
            if marks[s]:
                slices = list(visible)
                if len(slices) > 2 and rng.random() < 0.3:
                    slices = slices[1:]
                if len(slices) > 2 and rng.random() < 0.3:
                    slices = slices[:-1]
                rois = _outline_rois(rng, record, slices, uid_of)
                if rois and rng.random() < 0.1:
                    rois.append(_hole(rng, record, slices[len(slices) // 2], uid_of))
                add_nodule(_characteristics(rng, record, next(ratings)), tuple(rois), True)
            else:
                draw = rng.random()
                if label == "benign" and draw < 0.4:
                    roi = _point_roi(rng, record, centre_k, ccol, crow, uid_of)
                    add_nodule(None, (roi,), True)
                elif draw < 0.7:
                    add_non_nodule(centre_k, ccol, crow)
        for point in micro:
            if point is not None and rng.random() < 0.5:
                add_nodule(None, (_point_roi(rng, record, *point, uid_of),), False)
        for point in others:
            if point is not None and rng.random() < 0.4:
                add_non_nodule(*point)
        readings.append(reading)
    return message_id, readings


def _place(style: int, z: float, sop_uid: str) -> list[Element]:
    return [("imageZposition", (), _z_text(style, z)), ("imageSOP_UID", (), sop_uid)]


def _roi_element(roi: Roi, style: int) -> Element:
    children = _place(style, roi.z, roi.sop_uid)
    children.append(("inclusion", (), "TRUE" if roi.inclusion else "FALSE"))
    children.extend(("edgeMap", (), leaves(xCoord=col, yCoord=row)) for col, row in roi.points)
    return ("roi", (), children)


def _session_element(reading: Reading) -> Element:
    children: list[Element] = [
        ("annotationVersion", (), ANNOTATION_VERSION),
        ("servicingRadiologistID", (), reading.reader_id),
    ]
    for mark in reading.nodules:
        content: list[Element] = [("noduleID", (), mark.nodule_id)]
        if mark.characteristics is not None:
            content.append(("characteristics", (), leaves(**mark.characteristics)))
        content.extend(_roi_element(roi, reading.style) for roi in mark.rois)
        children.append(("unblindedReadNodule", (), content))
    for mark in reading.non_nodules:
        content = [
            ("nonNoduleID", (), mark.non_nodule_id),
            *_place(reading.style, mark.z, mark.sop_uid),
            ("locus", (), leaves(xCoord=mark.point[0], yCoord=mark.point[1])),
        ]
        children.append(("nonNodule", (), content))
    return ("readingSession", (), children)


def lidc_xml(record: SeriesRecord, seed: int) -> bytes:
    """The LIDC reading message of one series (UTF-8 XML bytes)."""
    message_id, readings = read_series(record, seed)
    date = f"{STUDY_DATE[:4]}-{STUDY_DATE[4:6]}-{STUDY_DATE[6:]}"
    time = f"{STUDY_TIME[:2]}:{STUDY_TIME[2:4]}:{STUDY_TIME[4:]}"
    header: list[Element] = [
        ("Version", (), "1.8.1"),
        ("MessageId", (), str(message_id)),
        ("DateRequest", (), date),
        ("TimeRequest", (), time),
        ("RequestingSite", (), "removed"),
        ("ServicingSite", (), "removed"),
        ("TaskDescription", (), "Second unblinded read"),
        ("CtImageFile", (), "removed"),
        ("SeriesInstanceUid", (), record.series_uid),
        ("DateService", (), date),
        ("TimeService", (), time),
        ("ResponseDescription", (), "1 - Reading complete"),
        ("StudyInstanceUID", (), record.study_uid),
    ]
    uid = generate_uid(entropy_srcs=[str(seed), record.patient_id, "lidc-read-message"])
    root: Element = (
        "LidcReadMessage",
        (
            ("uid", uid),
            ("xmlns", NAMESPACE),
            ("xmlns:xsi", XSI),
            ("xsi:schemaLocation", SCHEMA_LOCATION),
        ),
        [("ResponseHeader", (), header), *(_session_element(r) for r in readings)],
    )
    return xml_text(root)


def write_lidc_xml(record: SeriesRecord, seed: int) -> Path:
    """Write the series' reading message as ``<series folder>/<NNN>.xml`` (NNN: 1-based
    patient number) and return its path."""
    path = record.series_dir / f"{record.index + 1:03d}.xml"
    path.write_bytes(lidc_xml(record, seed))
    return path
