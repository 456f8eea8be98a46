"""CT windowing: Hounsfield units to model-ready intensities. Pure functions on arrays.

:func:`window_uint8` is the definition; :func:`window_lookup` applies it as a lookup table
on stored values (a DICOM frame's HU are affine in them, ``lungct.io.dicom.StoredPixels``).

This is not the display VOI LUT of PS3.3 C.11.2.1.2 (which maps to a display range
and uses ``center - 0.5`` / ``width - 1``); a CNN wants a plain linear map of the
window ``[center - width/2, center + width/2]`` onto ``[0, 1]``, clipped.
"""

from __future__ import annotations

import math

import numpy as np


def is_window(center: float, width: float) -> bool:
    """A usable window: a finite center and a finite, positive width. NaN or infinity would
    turn every pixel black or white without an error."""
    return math.isfinite(center) and math.isfinite(width) and width > 0


def window_uint8(hu: np.ndarray, center: float, width: float) -> np.ndarray:
    """Window HU (any shape; integers do not wrap around) into 8-bit grayscale of that
    shape: ``center - width/2`` -> 0 and ``center + width/2`` -> 255, linear between,
    clipped, rounded half up (the middle of the window is 128); a window that is not
    :func:`is_window` is a ValueError. Computed in one float32 buffer (the convert stage's
    hot loop), so a value within float32 rounding of a .5 tie may land on either neighbour:
    at most 1 off the exact rounding, for under 0.1 % of values."""
    if not is_window(center, width):
        raise ValueError(f"window {center:g}/{width:g}: needs a finite center and a positive width")
    out = np.subtract(hu, np.float32(center - width / 2.0), dtype=np.float32)
    out *= np.float32(255.0)
    out /= np.float32(width)
    np.clip(out, 0.0, 255.0, out=out)
    out += np.float32(0.5)
    return out.astype(np.uint8)  # truncation of non-negative values is floor


def window_channels(hu: np.ndarray, windows: list[tuple[float, float]]) -> np.ndarray:
    """One 8-bit channel per (center, width) window: (rows, cols) for one window,
    (rows, cols, n) for several (for example lung, mediastinum and bone)."""
    return _channels([window_uint8(hu, c, w) for c, w in windows])


def window_lookup(codes: np.ndarray, tables: list[np.ndarray]) -> np.ndarray:
    """:func:`window_channels` as table lookups: ``codes`` are a frame's stored values as
    uint8 or uint16 indices, each table the window's uint8 for every index
    (``lungct.io.preprocess.window_table``). One gather per pixel and window instead of the
    float32 rescale and window; the same pixels."""
    return _channels([np.take(table, codes) for table in tables])


def _channels(planes: list[np.ndarray]) -> np.ndarray:
    return planes[0] if len(planes) == 1 else np.stack(planes, axis=-1)
