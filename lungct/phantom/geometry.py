"""Image grid, signed-distance shapes and painting helpers of the phantom (all lengths in mm).

Shapes are described by signed distances (negative inside) and turned into an anti-aliased
occupancy in 0..1 with a one pixel wide ramp (:func:`occupancy`); :func:`paint` blends a value
into an image with such an occupancy.  Small shapes are evaluated only on the window of the grid
that covers their bounding box (:meth:`Grid.window`).  :func:`fov_mask` is the circular
reconstruction field of view.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

FOV_MM = 350.0  # display field of view; the pixel spacing is FOV_MM / image size

Region = tuple[slice, slice]  # rows, columns of a window of the grid
FULL: Region = (slice(None), slice(None))
BoundingBox = tuple[float, float, float, float]  # x_min, x_max, y_min, y_max (mm)
SignedDistance = Callable[[np.ndarray, np.ndarray], np.ndarray]  # (x, y) mm -> distance mm


def fov_mask(size: int) -> np.ndarray:
    """Boolean (size, size) mask of the circular reconstruction field of view."""
    c = (size - 1) / 2.0
    ii, jj = np.ogrid[:size, :size]
    return (ii - c) ** 2 + (jj - c) ** 2 <= (size / 2.0) ** 2


class Grid:
    """Pixel-centre coordinates (mm) of a size x size image centred on the isocentre.

    ``x`` is a (1, size) row of column coordinates (+x = patient left), ``y`` a (size, 1) column
    of row coordinates (+y = posterior); ``center`` is the (fractional) index of the isocentre.
    """

    def __init__(self, size: int, pixel_spacing: float) -> None:
        self.size = size
        self.pixel_spacing = pixel_spacing
        self.center = (size - 1) / 2.0
        coords = (np.arange(size, dtype=np.float64) - self.center) * pixel_spacing
        self.x = coords[None, :]
        self.y = coords[:, None]

    def window(
        self, x0: float, x1: float, y0: float, y1: float
    ) -> tuple[Region, np.ndarray, np.ndarray] | None:
        """Sub-grid covering the mm bounding box (with a one pixel margin), or None if empty.

        Returns the region of the image and the x and y coordinates of that region.
        """
        ps, c = self.pixel_spacing, self.center
        j0 = max(int(math.floor(x0 / ps + c)) - 1, 0)
        j1 = min(int(math.ceil(x1 / ps + c)) + 2, self.size)
        i0 = max(int(math.floor(y0 / ps + c)) - 1, 0)
        i1 = min(int(math.ceil(y1 / ps + c)) + 2, self.size)
        if j0 >= j1 or i0 >= i1:
            return None
        return (slice(i0, i1), slice(j0, j1)), self.x[:, j0:j1], self.y[i0:i1, :]


def occupancy(signed_distance: np.ndarray, pixel_spacing: float) -> np.ndarray:
    """Anti-aliased occupancy (0..1) from a signed distance in mm (one pixel wide ramp)."""
    return np.clip(0.5 - signed_distance / pixel_spacing, 0.0, 1.0)


def sd_radial(
    x: np.ndarray,
    y: np.ndarray,
    cx: float,
    cy: float,
    a: float,
    b: float,
    *,
    p: float = 2.0,
    angle: float = 0.0,
    harmonics: np.ndarray | None = None,
) -> np.ndarray:
    """Approximate signed distance to a (super)ellipse with an optional radial perturbation.

    The shape is centred on (cx, cy) with semi-axes ``a`` (along x) and ``b`` (along y),
    exponent ``p`` (2 = ellipse) and rotated by ``angle`` radians.  ``harmonics`` is an array of
    rows (k, amplitude, phase): the boundary radius is multiplied by
    ``1 + sum(amplitude * cos(k * theta + phase))``.  The distance is measured along the ray
    from the centre, which is accurate enough for anti-aliasing (and needs no trigonometry).
    """
    u = x - cx + 1e-7  # never exactly at the centre
    v = y - cy
    if angle:
        ca, sa = math.cos(angle), math.sin(angle)
        u, v = u * ca + v * sa, -u * sa + v * ca
    r = np.hypot(u, v)
    if p == 2.0:
        rho = np.hypot(u / a, v / b)
    else:
        rho = (np.abs(u / a) ** p + np.abs(v / b) ** p) ** (1.0 / p)
    boundary = r / rho
    if harmonics is not None and len(harmonics):
        unit = (u + 1j * v) / r
        pert = np.ones_like(r)
        for k, amp, phase in harmonics:
            pert += amp * (unit ** int(k) * complex(math.cos(phase), math.sin(phase))).real
        boundary = boundary * pert
    return r - boundary


def sd_capsule(
    x: np.ndarray, y: np.ndarray, x0: float, y0: float, x1: float, y1: float, radius: float
) -> np.ndarray:
    """Signed distance to a 2-D capsule (segment p0-p1 thickened by radius)."""
    dx, dy = x1 - x0, y1 - y0
    len2 = dx * dx + dy * dy
    px, py = x - x0, y - y0
    if len2 <= 1e-12:
        return np.hypot(px, py) - radius
    t = np.clip((px * dx + py * dy) / len2, 0.0, 1.0)
    return np.hypot(px - t * dx, py - t * dy) - radius


def paint(img: np.ndarray, region: Region, occ: np.ndarray, value) -> None:
    """Blend ``value`` (scalar or array broadcastable to the region) into img with occupancy."""
    sub = img[region]
    sub += occ * (value - sub)


def window_occupancy(
    grid: Grid, bbox: BoundingBox, sd_fn: SignedDistance
) -> tuple[Region, np.ndarray] | None:
    """(region, occupancy) of a bounded shape evaluated only on its bounding-box window."""
    win = grid.window(*bbox)
    if win is None:
        return None
    region, xs, ys = win
    return region, occupancy(sd_fn(xs, ys), grid.pixel_spacing)


def capsule_occupancy(
    grid: Grid, x0: float, y0: float, x1: float, y1: float, r: float
) -> tuple[Region, np.ndarray] | None:
    """(region, occupancy) of the capsule p0-p1 of radius ``r`` on its bounding-box window."""
    bbox = (min(x0, x1) - r, max(x0, x1) + r, min(y0, y1) - r, max(y0, y1) + r)
    return window_occupancy(grid, bbox, lambda xs, ys: sd_capsule(xs, ys, x0, y0, x1, y1, r))


def smooth_noise(
    rng: np.random.Generator, shape: tuple[int, ...], sigmas: tuple[float, ...]
) -> np.ndarray:
    """Unit-variance Gaussian-correlated noise (Gaussian filter applied in Fourier space).

    ``sigmas`` are the correlation lengths in pixels, one per axis of ``shape``.
    """
    white = rng.standard_normal(shape)
    spec = np.fft.rfftn(white)
    transfer = np.ones(spec.shape)
    for axis, (n, sigma) in enumerate(zip(shape, sigmas, strict=True)):
        freqs = np.fft.rfftfreq(n) if axis == len(shape) - 1 else np.fft.fftfreq(n)
        t = np.exp(-2.0 * (math.pi * sigma * freqs) ** 2)
        bshape = [1] * len(shape)
        bshape[axis] = t.size
        transfer = transfer * t.reshape(bshape)
    field = np.fft.irfftn(spec * transfer, s=shape, axes=tuple(range(len(shape))))
    std = float(field.std())
    return field / std if std > 0 else field


def _segment_in_slab(
    p0: np.ndarray, p1: np.ndarray, z_lo: float, z_hi: float
) -> tuple[np.ndarray, np.ndarray] | None:
    """Part of the 3-D segment p0-p1 whose z lies in [z_lo, z_hi] (None when empty)."""
    dz = p1[2] - p0[2]
    if abs(dz) < 1e-9:
        return (p0, p1) if z_lo <= p0[2] <= z_hi else None
    ta = (z_lo - p0[2]) / dz
    tb = (z_hi - p0[2]) / dz
    t0, t1 = max(min(ta, tb), 0.0), min(max(ta, tb), 1.0)
    if t0 > t1:
        return None
    d = p1 - p0
    return p0 + t0 * d, p0 + t1 * d


def paint_tube(
    img: np.ndarray,
    grid: Grid,
    p0: np.ndarray,
    p1: np.ndarray,
    radius: float,
    z: float,
    thickness: float,
    value: float,
    clip_occ: np.ndarray | None = None,
    acc: np.ndarray | None = None,
) -> None:
    """Paint the cross-section of the 3-D tube p0-p1 within the slab of the slice at ``z``.

    The occupancy is multiplied by ``clip_occ`` (a full-image occupancy) when given, and
    accumulated into ``acc`` (pixel-wise maximum) when given.
    """
    seg = _segment_in_slab(p0, p1, z - thickness / 2 - radius, z + thickness / 2 + radius)
    if seg is None:
        return
    a, b = seg
    win = capsule_occupancy(grid, a[0], a[1], b[0], b[1], radius)
    if win is None:
        return
    region, occ = win
    if clip_occ is not None:
        occ = occ * clip_occ[region]
    paint(img, region, occ, value)
    if acc is not None:
        np.maximum(acc[region], occ, out=acc[region])
