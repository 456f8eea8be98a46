"""What the annotation readers take (:class:`SliceRef`) and give (:class:`SliceLabel`,
:class:`Problem`), and the slice geometry they share.

Pixel coordinates are (column, row), zero-based, with integers at pixel centres: the
convention of DICOM Image Position (Patient), which is the centre of the first pixel, and
of the LIDC-IDRI outlines. A world point ``P`` lies at column ``i`` and row ``j`` of a slice
with origin ``O``, row cosine ``X``, column cosine ``Y`` (Image Orientation (Patient)) and
Pixel Spacing ``(dr, dc)`` when ``P = O + i * dc * X + j * dr * Y`` (PS3.3 C.7.6.2.1.1).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np

from lungct.io.dicom import slice_position

EPS_MM = 1e-6  # distances this close to a boundary count as on it (rounding)
MOVING_MM = 1e-3  # steps between sorted positions up to this are one position


@dataclass(frozen=True)
class SliceRef:
    """One CT slice as the convert stage knows it from its DICOM header (or a volume).

    ``key`` is the SOPInstanceUID (``<SOP UID>#<frame>`` is up to the caller for
    multi-frame files), or ``<seriesuid>#<index>`` for slice ``index`` of a MetaImage
    volume. ``position`` is in mm along the slice normal (Image Position (Patient) on the
    cross product of the Image Orientation (Patient) cosines), None when unknown.
    ``spacing`` is Pixel Spacing: (row spacing, column spacing) in mm.
    """

    key: str
    series_uid: str
    patient_id: str = ""
    position: float | None = None
    origin: tuple[float, float, float] | None = None
    orientation: tuple[float, ...] | None = None
    spacing: tuple[float, float] | None = None

    @classmethod
    def from_geometry(
        cls,
        key: str,
        series_uid: str,
        patient_id: str = "",
        origin: Sequence[float] | None = None,
        orientation: Sequence[float] | None = None,
        spacing: Sequence[float] | None = None,
    ) -> SliceRef:
        """A slice whose position is computed from its origin and orientation (the same
        way as :func:`lungct.io.dicom.slice_position`); malformed geometry becomes None."""
        o = _finite(origin, 3)
        d = _finite(orientation, 6)
        s = _finite(spacing, 2)
        if s is not None and min(s) <= 0:
            s = None
        position = slice_position(o, d) if o is not None and d is not None else None
        return cls(key, series_uid, patient_id, position, o, d, s)  # type: ignore[arg-type]


@dataclass(frozen=True)
class SliceLabel:
    """The annotation outcome of one slice.

    ``label`` is the raw label ("" when skipped) and ``reason`` the reason code when
    skipped ("" when labelled); ``detail`` says more, for a person. ``readers`` is the
    number of readers who mark the slice (LIDC-IDRI; None elsewhere), ``score`` their
    median malignancy. ``source`` is the annotation file the outcome comes from ("" when
    none). ``center`` is the lesion centre in (column, row) pixels of this slice and
    ``size_mm`` its size (see docs/annotations.md for each dataset), None when unknown.
    """

    label: str
    reason: str = ""
    readers: int | None = None
    score: float | None = None
    source: str = ""
    center: tuple[float, float] | None = None
    size_mm: float | None = None
    detail: str = ""

    @property
    def labelled(self) -> bool:
        return bool(self.label)


def skipped(reason: str, detail: str = "", source: str = "", **fields: object) -> SliceLabel:
    return SliceLabel("", reason, source=source, detail=detail, **fields)  # type: ignore[arg-type]


class Problem(NamedTuple):
    """An annotation file that was not used (or not wholly): the caller logs or records it."""

    file: Path
    reason: str
    detail: str = ""


class Labelled(NamedTuple):
    """Every slice given, by key, and the problems met on the way."""

    labels: dict[str, SliceLabel]
    problems: list[Problem]


# --------------------------------------------------------------------------------------------
# Geometry
# --------------------------------------------------------------------------------------------
def _finite(values: Sequence[float] | None, count: int) -> tuple[float, ...] | None:
    if values is None:
        return None
    try:
        numbers = tuple(float(v) for v in values)
    except (TypeError, ValueError):
        return None
    if len(numbers) != count or not all(math.isfinite(n) for n in numbers):
        return None
    return numbers


def by_series(slices: Iterable[SliceRef]) -> dict[str, list[SliceRef]]:
    """Slices grouped by series, each group in the order given."""
    groups: dict[str, list[SliceRef]] = {}
    for ref in slices:
        groups.setdefault(ref.series_uid, []).append(ref)
    return groups


def series_spacing(slices: Iterable[SliceRef]) -> float | None:
    """The slice spacing of a series: the median step between its sorted positions.

    Steps of :data:`MOVING_MM` or less (two slices at one position) are left out; a
    series with fewer than two distinct positions (one slice) has no spacing (None).
    """
    values = np.sort([s.position for s in slices if s.position is not None])
    steps = np.diff(values)
    steps = steps[steps > MOVING_MM]
    return float(np.median(steps)) if len(steps) else None


def normal(orientation: Sequence[float] | None) -> np.ndarray | None:
    """The unit slice normal (row cosine x column cosine), None when degenerate."""
    if orientation is None or len(orientation) != 6:
        return None
    n = np.cross(np.asarray(orientation[:3], float), np.asarray(orientation[3:], float))
    length = float(np.linalg.norm(n))
    return n / length if length > 1e-6 and math.isfinite(length) else None


def world_to_pixel(point: Sequence[float], ref: SliceRef) -> tuple[float, float] | None:
    """A world point (mm, patient LPS) as (column, row) pixels of a slice, projected along
    the slice normal; None when the slice lacks origin, orientation or spacing.

    Solves ``P - O = i * dc * X + j * dr * Y + t * N`` for (i, j, t), exact for any
    orientation (and for cosines that are not quite orthogonal)."""
    n = normal(ref.orientation)
    if ref.origin is None or ref.spacing is None or n is None:
        return None
    x = np.asarray(ref.orientation[:3], float)  # type: ignore[index]
    y = np.asarray(ref.orientation[3:], float)  # type: ignore[index]
    row_spacing, column_spacing = ref.spacing
    basis = np.column_stack([x * column_spacing, y * row_spacing, n])
    offset = np.asarray(point, float) - np.asarray(ref.origin, float)
    try:
        i, j, _ = np.linalg.solve(basis, offset)
    except np.linalg.LinAlgError:
        return None
    if not (math.isfinite(i) and math.isfinite(j)):
        return None
    return float(i), float(j)


def point_position(point: Sequence[float], ref: SliceRef) -> float:
    """A world point's position along the slice normal of ``ref`` (its z without one)."""
    n = normal(ref.orientation)
    if n is None:
        return float(point[2])
    return float(np.dot(n, np.asarray(point, float)))
