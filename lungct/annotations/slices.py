"""What the annotation readers take (:class:`SliceRef`) and give (:class:`SliceLabel`,
:class:`Problem`), and the slice geometry they share.

Pixel coordinates are (column, row), zero-based, with integers at pixel centres (DICOM's
Image Position (Patient) is the centre of the first pixel): a world point ``P`` is at column
``i``, row ``j`` of a slice with origin ``O``, cosines ``X``, ``Y`` and Pixel Spacing
``(dr, dc)`` when ``P = O + i * dc * X + j * dr * Y`` (PS3.3 C.7.6.2.1.1).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np

from lungct.annotations.reasons import DUPLICATE_SLICE
from lungct.io.dicom import slice_position

EPS_MM = 1e-6  # distances this close to a boundary count as on it (rounding)
MOVING_MM = 1e-3  # steps between sorted positions up to this are one position


@dataclass(frozen=True)
class SliceRef:
    """One CT slice as the convert stage knows it from its DICOM header (or a volume), as
    docs/annotations.md (API) describes; ``<SOP UID>#<frame>`` keys for multi-frame files
    are up to the caller. Unknown geometry is None."""

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
        o, d, s = _finite(origin, 3), _finite(orientation, 6), _finite(spacing, 2)
        if s is not None and min(s) <= 0:
            s = None
        return cls(key, series_uid, patient_id, slice_position(o, d), o, d, s)  # type: ignore[arg-type]


@dataclass(frozen=True)
class SliceLabel:
    """The annotation outcome of one slice: a raw ``label`` or a ``reason`` code, never both
    nor neither; the other fields are described in docs/annotations.md (API)."""

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


def _finite(values: Sequence[float] | None, count: int) -> tuple[float, ...] | None:
    try:
        numbers = tuple(float(v) for v in values)  # type: ignore[union-attr]
    except (TypeError, ValueError):  # values None, or not numbers
        return None
    return numbers if len(numbers) == count and all(map(math.isfinite, numbers)) else None


def duplicate_keys(slices: Iterable[SliceRef]) -> dict[str, SliceLabel]:
    """The keys that more than one slice given has (two files with one SOPInstanceUID),
    each skipped (``duplicate_slice``): a label found by key would go to both slices."""
    counts = Counter(ref.key for ref in slices)
    return {
        key: skipped(DUPLICATE_SLICE, f"{count} slices given have the key {key}")
        for key, count in counts.items()
        if count > 1
    }


def by_series(slices: Iterable[SliceRef]) -> dict[str, list[SliceRef]]:
    """Slices grouped by series, each group in the order given."""
    groups: dict[str, list[SliceRef]] = {}
    for ref in slices:
        groups.setdefault(ref.series_uid, []).append(ref)
    return groups


def series_spacing(slices: Iterable[SliceRef]) -> float | None:
    """The median step between a series' sorted positions, leaving out steps of
    :data:`MOVING_MM` or less; None with fewer than two distinct positions."""
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
    cosines = np.asarray(ref.orientation, float)
    row_spacing, column_spacing = ref.spacing
    basis = np.column_stack([cosines[:3] * column_spacing, cosines[3:] * row_spacing, n])
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
