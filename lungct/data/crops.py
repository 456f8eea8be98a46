"""Lesion-centred crops (``convert.crop: lesion``): a square of ``crop_mm`` millimetres of
a slice, around a point, resampled to the model's input size, taken from HU (outside the
slice counts as air) before windowing. The point is the annotated lesion's centre
(docs/annotations.md); for a ``normal`` slice a point inside the lungs chosen from
``base.seed`` and the slice's key, so that normal crops show lung as nodule crops do.
"""

from __future__ import annotations

import hashlib
import math

import numpy as np
from PIL import Image
from scipy import ndimage

from lungct.errors import SkippedFile
from lungct.io.dicom import AIR_HU
from lungct.io.images import BODY_HU
from lungct.reasons import LESION_OUTSIDE_IMAGE, NO_LUNG_REGION, NO_PIXEL_SPACING

LUNG_HU = (-950.0, -500.0)  # lung parenchyma, inside the body
# The most pixels a crop square may span on a side: 64 mm at 0.016 mm, 1000 mm at 0.25 mm
# per pixel, finer than any CT; what is resampled is at most this square (64 MiB).
MAX_CROP_PIXELS = 4096


def crop_box(
    center: tuple[float, float], crop_mm: float, spacing: tuple[float, float] | None
) -> tuple[float, float, float, float]:
    """(left, top, right, bottom) in pixels of the ``crop_mm`` square around ``center``
    (column, row); ``spacing`` is Pixel Spacing (between rows, between columns) in mm."""
    if spacing is None:
        raise SkippedFile(NO_PIXEL_SPACING, "a lesion crop needs PixelSpacing")
    half_rows, half_cols = crop_mm / spacing[0] / 2, crop_mm / spacing[1] / 2
    if not 2 * max(half_rows, half_cols) <= MAX_CROP_PIXELS:
        raise SkippedFile(
            NO_PIXEL_SPACING,
            f"PixelSpacing {spacing[0]:g}/{spacing[1]:g} mm makes a {crop_mm:g} mm crop over "
            f"{MAX_CROP_PIXELS} pixels wide: not a CT spacing",
        )
    x, y = center
    return (x - half_cols, y - half_rows, x + half_cols, y + half_rows)


def crop_hu(hu: np.ndarray, box: tuple[float, float, float, float], size: int) -> np.ndarray:
    """The HU inside ``box`` (pixel edges, fractional allowed), resampled bilinearly to
    ``size x size`` in one step; what lies outside the slice is air. A box whose centre
    lies outside the slice is :class:`SkippedFile` (``lesion_outside_image``)."""
    left, top, right, bottom = box
    rows, columns = hu.shape
    x, y = (left + right) / 2, (top + bottom) / 2
    if not (0 <= x <= columns and 0 <= y <= rows):  # NaN too
        raise SkippedFile(
            LESION_OUTSIDE_IMAGE,
            f"the lesion centre ({x:.6g}, {y:.6g}) lies outside the {columns} x {rows} image",
        )
    # Only the box (and the pixels the filter reaches past its edges) is cut out, air
    # where it leaves the slice, and Pillow resamples the box within it.
    reach = math.ceil(max(1.0, (right - left) / size, (bottom - top) / size)) + 1
    x0, y0 = math.floor(left) - reach, math.floor(top) - reach
    x1, y1 = math.ceil(right) + reach, math.ceil(bottom) + reach
    cut = np.full((y1 - y0, x1 - x0), AIR_HU, dtype=np.float32)
    r0, r1, c0, c1 = max(y0, 0), min(y1, rows), max(x0, 0), min(x1, columns)
    cut[r0 - y0 : r1 - y0, c0 - x0 : c1 - x0] = hu[r0:r1, c0:c1]
    box = (left - x0, top - y0, right - x0, bottom - y0)
    out = Image.fromarray(cut, mode="F").resize((size, size), Image.Resampling.BILINEAR, box=box)
    return np.asarray(out, dtype=np.float32)


def lung_point(hu: np.ndarray, seed: int, key: str) -> tuple[float, float]:
    """A point (column, row) inside the lungs of a slice, chosen from ``seed`` and ``key``:
    lung-density pixels enclosed by the body (the air around the patient is excluded)."""
    body = ndimage.binary_fill_holes(hu > BODY_HU)
    lungs = body & (hu > LUNG_HU[0]) & (hu < LUNG_HU[1])
    rows, cols = np.nonzero(lungs)
    if len(rows) == 0:
        raise SkippedFile(NO_LUNG_REGION, "no lung-density pixels inside the body to crop")
    digest = hashlib.sha256(f"{seed}:{key}".encode()).digest()
    pick = int.from_bytes(digest[:8], "little") % len(rows)
    return float(cols[pick]), float(rows[pick])
