"""The bounds an annotation's coordinates and sizes must keep, in one place
(docs/annotations.md, Plausibility): a value outside them, or not finite, is a lie of the
file (``annotation_implausible``), never a label.
"""

from __future__ import annotations

import math

MAX_PIXEL = 65535.0  # a pixel coordinate: DICOM Rows and Columns are at most 65535
MAX_WORLD_MM = 10_000.0  # |a patient coordinate|, mm: 10 m, past any scanner's table
MAX_LESION_MM = 300.0  # a nodule's diameter or a tumour box's longer side, mm


def pixel_ok(value: float) -> bool:
    """A pixel coordinate (column or row) in [0, MAX_PIXEL]."""
    return math.isfinite(value) and 0.0 <= value <= MAX_PIXEL


def world_ok(value: float) -> bool:
    """A patient coordinate in mm within MAX_WORLD_MM of the origin."""
    return math.isfinite(value) and abs(value) <= MAX_WORLD_MM


def lesion_ok(size_mm: float) -> bool:
    """A lesion size in mm above 0 and at most MAX_LESION_MM."""
    return math.isfinite(size_mm) and 0.0 < size_mm <= MAX_LESION_MM


def parse(text: str) -> float | None:
    """A number as written: None when ``text`` is empty; ``ValueError`` when it is not a
    number; ``nan``, ``inf`` and ``1e999`` parse (the bounds above then refuse them)."""
    return float(text) if text else None
