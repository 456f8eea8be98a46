"""Lesion-centred crops (``convert.crop: lesion``): a square of ``crop_mm`` millimetres of
a slice, around a point, resampled to the model's input size, taken from HU (outside the
slice counts as air) before windowing. The point is the annotated lesion's centre
(docs/annotations.md); for a ``normal`` slice a point inside the lungs chosen from
``base.seed`` and the slice's key, so that normal crops show lung as nodule crops do.
"""

from __future__ import annotations

import hashlib

import numpy as np
from PIL import Image
from scipy import ndimage

from lungct.errors import SkippedFile
from lungct.io.dicom import AIR_HU
from lungct.reasons import NO_LUNG_REGION, NO_PIXEL_SPACING

BODY_HU = -500.0  # denser than this: the body (soft tissue, bone)
LUNG_HU = (-950.0, -500.0)  # lung parenchyma, inside the body


def crop_box(
    center: tuple[float, float], crop_mm: float, spacing: tuple[float, float] | None
) -> tuple[float, float, float, float]:
    """(left, top, right, bottom) in pixels of the ``crop_mm`` square around ``center``
    (column, row); ``spacing`` is Pixel Spacing (between rows, between columns) in mm."""
    if spacing is None:
        raise SkippedFile(NO_PIXEL_SPACING, "a lesion crop needs PixelSpacing")
    half_rows, half_cols = crop_mm / spacing[0] / 2, crop_mm / spacing[1] / 2
    x, y = center
    return (x - half_cols, y - half_rows, x + half_cols, y + half_rows)


def crop_hu(hu: np.ndarray, box: tuple[float, float, float, float], size: int) -> np.ndarray:
    """The HU inside ``box`` (pixel edges, fractional allowed), resampled bilinearly to
    ``size x size`` in one step; what lies outside the slice is air."""
    left, top, right, bottom = box
    # Pad so that the box lies inside the array, then let Pillow resample the box itself.
    pad = int(np.ceil(max(0.0, -left, -top, right - hu.shape[1], bottom - hu.shape[0]))) + 1
    padded = np.pad(hu.astype(np.float32), pad, constant_values=AIR_HU)
    box = (left + pad, top + pad, right + pad, bottom + pad)
    out = Image.fromarray(padded, mode="F").resize((size, size), Image.Resampling.BILINEAR, box=box)
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
