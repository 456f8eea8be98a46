"""Deterministic synthetic chest-CT cohort written as genuine CT Image Storage DICOM files.

The phantom is the project's default data set: a fresh clone can run the whole pipeline offline
while still exercising the real DICOM reading path (rescale slope/intercept, pixel padding,
slice geometry).

Geometry and conventions
------------------------
* Display field of view is ``FOV_MM`` (350 mm), so the pixel spacing is ``350 / size`` mm.
  Pixels outside the inscribed reconstruction circle (:func:`fov_mask`) are stored as the pixel
  padding value (``-2000`` stored, i.e. -3024 HU with the default intercept), as GE scanners do.
* Patient coordinates follow DICOM LPS: +x is patient left (image right), +y is posterior (image
  down), +z is superior.  ``ImageOrientationPatient`` is ``[1, 0, 0, 0, 1, 0]`` and the image is
  centred on the isocentre.
* Slice index 0 / ``InstanceNumber`` 1 is the most superior slice; z decreases by the slice
  spacing from one instance to the next.  Slices are contiguous (thickness == spacing).
* Anatomy (HU): air -1000, subcutaneous fat ~-100, muscle/soft tissue 30..60, lungs ~-850 with
  texture, a gravity gradient and vessels (~+40), mediastinal fat, heart and aorta, vertebra,
  spinal canal, ribs and sternum (bone 180..1000), Gaussian noise (sigma 10..25 HU per patient).
* ``benign``: 6-12 mm smooth round nodule, calcified (200..600 HU) with probability 0.6.
  ``malignant``: 15-30 mm lobulated soft-tissue nodule with spicules (sometimes a ground-glass
  halo).  ``normal``: vessels only.  Slice spacing is chosen per patient from a (real or, for
  normal patients, fictitious) nodule diameter so that a nodule spans most slices.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    PYDICOM_IMPLEMENTATION_UID,
    CTImageStorage,
    ExplicitVRLittleEndian,
    generate_uid,
)
from pydicom.valuerep import format_number_as_ds

__all__ = [
    "CLASSES",
    "FOV_MM",
    "PADDING_VALUE",
    "PhantomPatient",
    "assign_labels",
    "ct_slice_dataset",
    "fov_mask",
    "patient_id",
    "patient_rng",
    "phantom_patient",
    "phantom_slices_hu",
    "write_cohort",
]

CLASSES: tuple[str, ...] = ("normal", "benign", "malignant")

FOV_MM = 350.0
PADDING_VALUE = -2000
MIN_IMAGE_SIZE = 32
_PLACEMENT_SIZE = 128  # reference grid for placing vessels and nodules

# Fixed dates/times: files must be byte-identical for the same seed, so no clock is read.
_STUDY_DATE = "20240101"
_STUDY_TIME = "120000"
_MANUFACTURER = "lungct phantom"

_BENIGN_DIAMETER_MM = (6.0, 12.0)
_MALIGNANT_DIAMETER_MM = (15.0, 30.0)
_CALCIFIED_PROBABILITY = 0.6

_INT16_MIN = int(np.iinfo(np.int16).min)
_INT16_MAX = int(np.iinfo(np.int16).max)


# --------------------------------------------------------------------------------------------
# Small geometry helpers (all distances in mm; negative signed distance = inside)
# --------------------------------------------------------------------------------------------
class _Grid:
    """Pixel-centre coordinates (mm) of a size x size image centred on the isocentre."""

    def __init__(self, size: int, pixel_spacing: float) -> None:
        self.size = size
        self.ps = pixel_spacing
        self.c = (size - 1) / 2.0
        coords = (np.arange(size, dtype=np.float64) - self.c) * pixel_spacing
        self.x = coords[None, :]
        self.y = coords[:, None]

    def window(
        self, x0: float, x1: float, y0: float, y1: float
    ) -> tuple[tuple[slice, slice], np.ndarray, np.ndarray] | None:
        """Sub-grid covering the mm bounding box (with a one pixel margin), or None if empty."""
        j0 = max(int(math.floor(x0 / self.ps + self.c)) - 1, 0)
        j1 = min(int(math.ceil(x1 / self.ps + self.c)) + 2, self.size)
        i0 = max(int(math.floor(y0 / self.ps + self.c)) - 1, 0)
        i1 = min(int(math.ceil(y1 / self.ps + self.c)) + 2, self.size)
        if j0 >= j1 or i0 >= i1:
            return None
        return (slice(i0, i1), slice(j0, j1)), self.x[:, j0:j1], self.y[i0:i1, :]


def _occ(sd: np.ndarray, ps: float) -> np.ndarray:
    """Anti-aliased occupancy (0..1) from a signed distance in mm (one pixel wide ramp)."""
    return np.clip(0.5 - sd / ps, 0.0, 1.0)


def _sd_radial(
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

    ``harmonics`` is an array of rows (k, amplitude, phase): the boundary radius is multiplied
    by ``1 + sum(amplitude * cos(k * theta + phase))``.  The distance is measured along the ray
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


def _sd_capsule(
    x: np.ndarray, y: np.ndarray, x0: float, y0: float, x1: float, y1: float, radius: float
) -> np.ndarray:
    """Signed distance to a 2-D capsule (segment p0-p1 thickened by radius)."""
    dx, dy = x1 - x0, y1 - y0
    len2 = dx * dx + dy * dy
    px = x - x0
    py = y - y0
    if len2 <= 1e-12:
        return np.hypot(px, py) - radius
    t = np.clip((px * dx + py * dy) / len2, 0.0, 1.0)
    return np.hypot(px - t * dx, py - t * dy) - radius


def _paint(img: np.ndarray, region, occ: np.ndarray, value) -> None:
    """Blend ``value`` (scalar or array broadcastable to the region) into img with occupancy."""
    sub = img[region]
    sub += occ * (value - sub)


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, ...], sigmas: tuple[float, ...]):
    """Unit-variance Gaussian-correlated noise (Gaussian filter applied in Fourier space)."""
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
        if z_lo <= p0[2] <= z_hi:
            return p0, p1
        return None
    ta = (z_lo - p0[2]) / dz
    tb = (z_hi - p0[2]) / dz
    t0, t1 = max(min(ta, tb), 0.0), min(max(ta, tb), 1.0)
    if t0 > t1:
        return None
    d = p1 - p0
    return p0 + t0 * d, p0 + t1 * d


def _paint_tube(
    img: np.ndarray,
    grid: _Grid,
    p0: np.ndarray,
    p1: np.ndarray,
    radius: float,
    z: float,
    thickness: float,
    value: float,
    clip_occ: np.ndarray | None = None,
    acc: np.ndarray | None = None,
) -> None:
    """Paint the cross-section of a 3-D tube within the slab of one slice."""
    seg = _segment_in_slab(p0, p1, z - thickness / 2 - radius, z + thickness / 2 + radius)
    if seg is None:
        return
    a, b = seg
    win = grid.window(
        min(a[0], b[0]) - radius,
        max(a[0], b[0]) + radius,
        min(a[1], b[1]) - radius,
        max(a[1], b[1]) + radius,
    )
    if win is None:
        return
    region, x, y = win
    occ = _occ(_sd_capsule(x, y, a[0], a[1], b[0], b[1], radius), grid.ps)
    if clip_occ is not None:
        occ = occ * clip_occ[region]
    _paint(img, region, occ, value)
    if acc is not None:
        np.maximum(acc[region], occ, out=acc[region])


# --------------------------------------------------------------------------------------------
# Per-patient anatomy
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class PhantomPatient:
    """One rendered phantom patient.

    ``hu`` is float32 (n_slices, size, size), slice 0 the most superior.  Masks are boolean of the
    same shape.  Values outside :func:`fov_mask` are plain air; the padding is applied when
    encoding to DICOM.  The geometry (anatomy, slice positions, vessels, nodule) drawn from one
    rng does not depend on the image size; only the per-pixel texture and noise do.
    """

    label: str
    hu: np.ndarray
    body_mask: np.ndarray
    lung_mask: np.ndarray
    nodule_mask: np.ndarray
    pixel_spacing_mm: float
    slice_spacing_mm: float
    z_positions_mm: np.ndarray
    nodule_diameter_mm: float | None
    nodule_center_mm: tuple[float, float, float] | None
    calcified: bool


@dataclass
class _Anatomy:
    cy: float
    a: float
    b: float
    p: float
    p_lung: float
    fat_t: float
    wall_m: float
    hu_fat: float
    hu_muscle: float
    hu_med_fat: float
    hu_heart: float
    hu_csf: float
    hu_trab: float
    hu_cortex: float
    lung_base: float
    lung_grad: float
    lung_tex_amp: float
    noise_sigma: float
    lung_harm: np.ndarray
    lung_scale: float
    strip_w: float
    strip_w_ant: float
    strip_x: float
    heart_cx: float
    heart_cy: float
    heart_a: float
    heart_b: float
    heart_angle: float
    aorta_r: float
    vb_r: float
    canal_r: float
    ribs: list[tuple[float, float, float, float]]  # angle, tangent semi-axis, radial, hu scale
    level0: float
    thorax_len: float

    @property
    def a_in(self) -> float:
        return self.a - self.fat_t

    @property
    def b_in(self) -> float:
        return self.b - self.fat_t


def _sample_anatomy(rng: np.random.Generator) -> _Anatomy:
    a = rng.uniform(130.0, 165.0)
    b = min(rng.uniform(90.0, 120.0), 0.8 * a)
    ribs: list[tuple[float, float, float, float]] = []
    n_ribs = int(rng.integers(5, 8))
    base = np.linspace(math.radians(-65), math.radians(70), n_ribs)
    for side in (0, 1):
        for ang in base + rng.uniform(-0.08, 0.08, n_ribs):
            theta = float(ang) if side == 0 else math.pi - float(ang)
            ribs.append(
                (theta, rng.uniform(5.0, 9.0), rng.uniform(3.0, 4.5), rng.uniform(0.85, 1.15))
            )
    harm = np.array(
        [[k, rng.normal(0.0, 0.025), rng.uniform(0.0, 2 * math.pi)] for k in (2, 3, 4, 5)]
    )
    return _Anatomy(
        cy=rng.uniform(-5.0, 10.0),
        a=a,
        b=b,
        p=rng.uniform(2.2, 2.6),
        p_lung=rng.uniform(2.0, 2.4),
        fat_t=rng.uniform(5.0, 20.0),
        wall_m=rng.uniform(9.0, 14.0),
        hu_fat=rng.uniform(-120.0, -80.0),
        hu_muscle=rng.uniform(30.0, 60.0),
        hu_med_fat=rng.uniform(-100.0, -60.0),
        hu_heart=rng.uniform(35.0, 50.0),
        hu_csf=rng.uniform(5.0, 20.0),
        hu_trab=rng.uniform(180.0, 300.0),
        hu_cortex=rng.uniform(600.0, 1000.0),
        lung_base=rng.uniform(-875.0, -835.0),
        lung_grad=rng.uniform(20.0, 60.0),
        lung_tex_amp=rng.uniform(10.0, 25.0),
        noise_sigma=rng.uniform(10.0, 25.0),
        lung_harm=harm,
        lung_scale=rng.uniform(0.96, 1.0),
        strip_w=rng.uniform(9.0, 15.0),
        strip_w_ant=rng.uniform(0.0, 6.0),
        strip_x=rng.uniform(-4.0, 6.0),
        heart_cx=rng.uniform(0.08, 0.18),
        heart_cy=rng.uniform(-0.25, -0.05),
        heart_a=rng.uniform(0.27, 0.36),
        heart_b=rng.uniform(0.36, 0.46),
        heart_angle=math.radians(rng.uniform(15.0, 40.0)),
        aorta_r=rng.uniform(10.0, 15.0),
        vb_r=rng.uniform(14.0, 19.0),
        canal_r=rng.uniform(6.0, 8.5),
        ribs=ribs,
        level0=rng.uniform(0.4, 0.85),
        thorax_len=rng.uniform(220.0, 300.0),
    )


@dataclass
class _Slice:
    """Geometry of one slice level (all derived deterministically from anatomy and z)."""

    lung_scale: float
    heart_scale: float
    phase_shift: float


def _slice_geometry(an: _Anatomy, z: float, z_center: float) -> _Slice:
    level = an.level0 - (z - z_center) / an.thorax_len  # 0 = apex, 1 = base
    lv = min(max(level, 0.0), 1.0)
    lung_scale = an.lung_scale * (0.82 + 0.18 * math.sin(math.pi * (0.15 + 0.8 * lv)))
    heart_scale = math.sqrt(min(max((level - 0.2) / 0.45, 0.3), 1.0))
    return _Slice(lung_scale=lung_scale, heart_scale=heart_scale, phase_shift=1.5 * level)


_Region = tuple[slice, slice]
_FULL: _Region = (slice(None), slice(None))


def _win_occ(grid: _Grid, bbox: tuple[float, float, float, float], sd_fn) -> tuple | None:
    """(region, occupancy) of a bounded shape evaluated only on its bounding-box window."""
    win = grid.window(*bbox)
    if win is None:
        return None
    region, xs, ys = win
    return region, _occ(sd_fn(xs, ys), grid.ps)


class _Static:
    """Slice-independent layers of one patient: body, chest wall, spine, aorta, bones."""

    def __init__(self, an: _Anatomy, grid: _Grid) -> None:
        x, y, ps = grid.x, grid.y, grid.ps
        self.occ_body = _occ(_sd_radial(x, y, 0.0, an.cy, an.a, an.b, p=an.p), ps)
        self.occ_inner = _occ(_sd_radial(x, y, 0.0, an.cy, an.a_in, an.b_in, p=an.p), ps)
        base = np.full((grid.size, grid.size), -1000.0)
        _paint(base, _FULL, self.occ_body, an.hu_fat)
        _paint(base, _FULL, self.occ_inner, an.hu_muscle)
        self.base = base
        wall = an.wall_m * 0.5 + 5.0  # the lungs never cross the ribs
        self.occ_wall_clip = _occ(
            _sd_radial(x, y, 0.0, an.cy, an.a_in - wall, an.b_in - wall, p=an.p), ps
        )
        # Central mediastinal strip, wider anteriorly (dilated by 3 mm against the lungs).
        ant = np.clip(-(y - an.cy) / max(an.b_in, 1.0), 0.0, 1.0)
        sd_strip = np.abs(x - an.strip_x) - (an.strip_w + an.strip_w_ant * ant) - 3.0
        self.occ_strip = _occ(sd_strip, ps)
        # Vertebra with paraspinal muscles: excluded from the lungs, painted as muscle.
        sp = _spine_layout(an)
        self.sp = sp
        sp_cy = 0.5 * (sp["y_vb"] + sp["tip"])
        sp_b = 0.5 * (sp["tip"] - sp["y_vb"]) + an.vb_r + 3.0
        sp_a = an.vb_r + 12.0
        bbox = (-sp_a, sp_a, sp_cy - sp_b, sp_cy + sp_b)
        self.spine = _win_occ(grid, bbox, lambda xs, ys: _sd_radial(xs, ys, 0.0, sp_cy, sp_a, sp_b))
        ax, ay = _aorta_center(an)
        ar = an.aorta_r + 3.0
        self.aorta_dil = _win_occ(
            grid, (ax - ar, ax + ar, ay - ar, ay + ar),
            lambda xs, ys: np.hypot(xs - ax, ys - ay) - ar,
        )  # fmt: skip
        self.ops: list[tuple[_Region, np.ndarray, float]] = []
        self._add(grid, (ax - ar, ax + ar, ay - ar, ay + ar),
                  lambda xs, ys: np.hypot(xs - ax, ys - ay) - an.aorta_r, an.hu_heart)  # fmt: skip
        ex, ey = an.strip_x - 6.0, sp["y_vb"] - an.vb_r - 9.0
        self._circle(grid, ex, ey, 6.0, an.hu_muscle - 10.0)  # oesophagus
        self._circle(grid, ex, ey, 1.5, -900.0)
        self._bones(an, grid)

    def _add(self, grid, bbox, sd_fn, value: float) -> None:
        res = _win_occ(grid, bbox, sd_fn)
        if res is not None:
            self.ops.append((res[0], res[1], value))

    def _circle(self, grid: _Grid, cx: float, cy: float, r: float, value: float) -> None:
        self._add(grid, (cx - r, cx + r, cy - r, cy + r),
                  lambda xs, ys: np.hypot(xs - cx, ys - cy) - r, value)  # fmt: skip

    def _ellipse(self, grid, cx, cy, ea, eb, value, angle=0.0) -> None:
        big = max(ea, eb)
        self._add(grid, (cx - big, cx + big, cy - big, cy + big),
                  lambda xs, ys: _sd_radial(xs, ys, cx, cy, ea, eb, angle=angle), value)  # fmt: skip

    def _capsule(self, grid, x0, y0, x1, y1, r, value) -> None:
        bbox = (min(x0, x1) - r, max(x0, x1) + r, min(y0, y1) - r, max(y0, y1) + r)
        self._add(grid, bbox, lambda xs, ys: _sd_capsule(xs, ys, x0, y0, x1, y1, r), value)

    def _bones(self, an: _Anatomy, grid: _Grid) -> None:
        sp = self.sp
        # Vertebral body: cortical shell and trabecular core.
        self._circle(grid, 0.0, sp["y_vb"], an.vb_r, an.hu_cortex)
        self._circle(grid, 0.0, sp["y_vb"], an.vb_r - 2.0, an.hu_trab)
        # Posterior arch, transverse and spinous processes, then the canal.
        self._circle(grid, 0.0, sp["y_can"], an.canal_r + 4.5, an.hu_cortex * 0.8)
        for side in (-1.0, 1.0):
            self._capsule(grid, side * 4.0, sp["y_can"] - 2.0, side * (an.vb_r + 14.0),
                          sp["y_can"] - 6.0, 3.5, an.hu_cortex * 0.75)  # fmt: skip
        self._capsule(grid, 0.0, sp["y_can"], 0.0, sp["tip"] - 3.0, 3.5, an.hu_cortex * 0.85)
        self._circle(grid, 0.0, sp["y_can"], an.canal_r, an.hu_csf)
        # Sternum.
        sy = an.cy - an.b_in + an.wall_m * 0.5
        self._ellipse(grid, 0.0, sy, 13.0, 4.5, an.hu_cortex * 0.7)
        self._ellipse(grid, 0.0, sy, 11.0, 2.5, an.hu_trab)
        # Ribs: obliquely cut ovals on the chest wall.
        ra = an.a_in - an.wall_m * 0.5
        rb = an.b_in - an.wall_m * 0.5
        for theta, ta, tr, scale in an.ribs:
            ct, st = math.cos(theta), math.sin(theta)
            rad = (abs(ct / ra) ** an.p + abs(st / rb) ** an.p) ** (-1.0 / an.p)
            cx, cy = rad * ct, an.cy + rad * st
            ang = theta + math.pi / 2  # long axis along the chest wall
            self._ellipse(grid, cx, cy, ta, tr, an.hu_cortex * scale, ang)
            self._ellipse(grid, cx, cy, max(ta - 1.5, 0.5), max(tr - 1.5, 0.5),
                          an.hu_trab * scale, ang)  # fmt: skip


def _spine_layout(an: _Anatomy) -> dict[str, float]:
    y_can = an.cy + an.b_in - 35.0
    y_vb = y_can - an.canal_r - 3.0 - an.vb_r
    tip = an.cy + an.b_in - 4.0
    return {"y_can": y_can, "y_vb": y_vb, "tip": max(tip, y_can + an.canal_r + 6.0)}


def _aorta_center(an: _Anatomy) -> tuple[float, float]:
    sp = _spine_layout(an)
    return an.vb_r + an.aorta_r * 0.6, sp["y_vb"] - an.vb_r * 0.55


@dataclass
class _SliceLayers:
    occ_lung: np.ndarray
    occ_thorax: np.ndarray
    nonlung: np.ndarray
    heart: tuple | None


def _slice_layers(an: _Anatomy, st: _Static, sl: _Slice, grid: _Grid) -> _SliceLayers:
    """Lung, inner-thorax and mediastinum occupancies plus the heart for one slice level."""
    x, y, ps = grid.x, grid.y, grid.ps
    ein_a = (an.a_in - an.wall_m - 2.0) * sl.lung_scale
    ein_b = (an.b_in - an.wall_m - 2.0) * sl.lung_scale
    harm = an.lung_harm.copy()
    harm[:, 2] += sl.phase_shift * np.array([0.3, -0.2, 0.25, -0.15])
    sd_in = _sd_radial(x, y, 0.0, an.cy, ein_a, ein_b, p=an.p_lung, harmonics=harm)
    occ_in = _occ(sd_in, ps)
    occ_in *= st.occ_wall_clip
    nonlung = st.occ_strip.copy()
    for part in (st.spine, st.aorta_dil):
        if part is not None:
            np.maximum(nonlung[part[0]], part[1], out=nonlung[part[0]])
    hx, hy = an.heart_cx * an.a_in, an.cy + an.heart_cy * an.b_in
    ha = sl.heart_scale * an.heart_a * an.a_in
    hb = sl.heart_scale * an.heart_b * an.b_in
    big = max(ha, hb) + 5.0
    win = grid.window(hx - big, hx + big, hy - big, hy + big)
    heart = None
    if win is not None:
        region, xs, ys = win
        sd = _sd_radial(xs, ys, hx, hy, ha, hb, angle=an.heart_angle)
        np.maximum(nonlung[region], _occ(sd - 3.0, ps), out=nonlung[region])
        heart = (region, _occ(sd, ps))
    return _SliceLayers(occ_in * (1.0 - nonlung), occ_in, nonlung, heart)


def _render_anatomy(
    an: _Anatomy, st: _Static, layers: _SliceLayers, lung_field: np.ndarray
) -> np.ndarray:
    """Render the anatomy of one slice (without vessels, nodule and noise)."""
    img = st.base.copy()
    _paint(img, _FULL, layers.occ_lung, lung_field)
    # Mediastinal fat around heart and great vessels; paraspinal muscles; then the organs.
    med = layers.occ_thorax * layers.nonlung
    if st.spine is not None:
        region, occ_sp = st.spine
        med[region] *= 1.0 - occ_sp
    _paint(img, _FULL, med, an.hu_med_fat)
    if st.spine is not None:
        region, occ_sp = st.spine
        _paint(img, region, occ_sp * st.occ_inner[region], an.hu_muscle)
    if layers.heart is not None:
        _paint(img, layers.heart[0], layers.heart[1], an.hu_heart)
    for region, occ, value in st.ops:
        _paint(img, region, occ, value)
    return img


# --------------------------------------------------------------------------------------------
# Public rendering API
# --------------------------------------------------------------------------------------------
def fov_mask(size: int) -> np.ndarray:
    """Boolean (size, size) mask of the circular reconstruction field of view."""
    c = (size - 1) / 2.0
    ii, jj = np.ogrid[:size, :size]
    return (ii - c) ** 2 + (jj - c) ** 2 <= (size / 2.0) ** 2


def patient_rng(seed: int, index: int) -> np.random.Generator:
    """Generator used by :func:`write_cohort` for patient ``index`` (0-based) of a cohort."""
    return np.random.default_rng([int(seed), int(index), 0x9E3779B9])


def patient_id(index: int) -> str:
    """PatientID of patient ``index`` (0-based): ``PHANTOM-0001`` for index 0."""
    return f"PHANTOM-{index + 1:04d}"


def _check_render_args(label: str, n_slices: int, size: int) -> None:
    if label not in CLASSES:
        raise ValueError(f"unknown label {label!r}; expected one of {CLASSES}")
    if int(n_slices) < 1:
        raise ValueError(f"n_slices must be >= 1, got {n_slices}")
    if int(size) < MIN_IMAGE_SIZE:
        raise ValueError(f"size must be >= {MIN_IMAGE_SIZE}, got {size}")


def phantom_patient(
    rng: np.random.Generator, label: str, n_slices: int, size: int
) -> PhantomPatient:
    """Render one patient; see :class:`PhantomPatient`. Consumes ``rng`` deterministically."""
    _check_render_args(label, n_slices, size)
    n_slices, size = int(n_slices), int(size)
    ps = FOV_MM / size
    grid = _Grid(size, ps)
    an = _sample_anatomy(rng)

    # Slice spacing follows a reference diameter: the nodule's own for benign patients (thin
    # slices, so a small nodule spans the series); for malignant and normal patients a 50/50 mix
    # of a benign-like and a malignant-like diameter (a large nodule seen through a thin series
    # still shows in every slice).  Thin series thus occur in every class.
    diameter = None
    if label == "benign":
        diameter = rng.uniform(*_BENIGN_DIAMETER_MM)
    elif label == "malignant":
        diameter = rng.uniform(*_MALIGNANT_DIAMETER_MM)
    if label == "benign":
        ref_d = diameter
    elif rng.random() < 0.5:
        ref_d = rng.uniform(*_BENIGN_DIAMETER_MM)
    elif label == "malignant":
        ref_d = diameter
    else:
        ref_d = rng.uniform(*_MALIGNANT_DIAMETER_MM)
    spacing = round(max(ref_d * rng.uniform(0.95, 1.2) / n_slices, 0.3), 3)
    z_center = round(-rng.uniform(80.0, 260.0), 1)
    offsets = (np.arange(n_slices) - (n_slices - 1) / 2.0) * spacing
    z_pos = np.round(z_center - offsets, 4)
    geoms = [_slice_geometry(an, float(z), z_center) for z in z_pos]

    # Lung occupancy at the series centre, for placing vessels and the nodule.  It is computed
    # on a fixed reference grid so that one rng gives the same patient geometry at any size.
    static = _Static(an, grid)
    mid = _slice_geometry(an, z_center, z_center)
    if size == _PLACEMENT_SIZE:
        pgrid, pstatic = grid, static
    else:
        pgrid = _Grid(_PLACEMENT_SIZE, FOV_MM / _PLACEMENT_SIZE)
        pstatic = _Static(an, pgrid)
    occ_mid = _slice_layers(an, pstatic, mid, pgrid).occ_lung
    lung_pix = np.argwhere(occ_mid >= 0.99)
    hilum_y = an.cy + an.heart_cy * an.b_in * 0.3

    # Vessels: 3-D tubes radiating from the hila, thicker centrally.
    pps = pgrid.ps
    lung_area = float(occ_mid.sum()) * pps * pps
    n_vessels = int(round(lung_area / 1000.0 * rng.uniform(0.8, 1.4)))
    vessels = []
    if len(lung_pix):
        picks = rng.integers(0, len(lung_pix), size=n_vessels)
        for i, j in lung_pix[picks]:
            px = (j - pgrid.c + rng.uniform(-0.5, 0.5)) * pps
            py = (i - pgrid.c + rng.uniform(-0.5, 0.5)) * pps
            hx = math.copysign(an.strip_w + 15.0, px - an.strip_x) + an.strip_x
            ux, uy = px - hx, py - hilum_y
            dist = math.hypot(ux, uy)
            ux, uy = (ux / dist, uy / dist) if dist > 1e-6 else (1.0, 0.0)
            radius = 0.6 + 1.6 * max(0.0, 1.0 - dist / 120.0) ** 1.2
            g = rng.uniform(0.05, 0.7)
            d = np.array([ux * g + rng.normal(0, 0.2), uy * g + rng.normal(0, 0.2), 1.0])
            d /= np.linalg.norm(d)
            if rng.random() < 0.5:
                d = -d
            c = np.array([px, py, z_center + rng.uniform(-20.0, 20.0)])
            p0 = c - d * rng.uniform(10.0, 60.0)
            p1 = c + d * rng.uniform(10.0, 60.0)
            vessels.append((p0, p1, radius, rng.uniform(30.0, 50.0)))

    # Nodule.
    nodule = None
    calcified = False
    if diameter is not None:
        r_nod = diameter / 2.0
        nz = z_center + rng.uniform(-0.08, 0.08) * diameter
        nx, ny = _place_nodule(rng, pgrid, occ_mid, lung_pix, r_nod + 2.0)
        if label == "benign":
            calcified = bool(rng.random() < _CALCIFIED_PROBABILITY)
            hu_nod = rng.uniform(200.0, 600.0) if calcified else rng.uniform(20.0, 50.0)
            harm = np.array([[k, rng.normal(0, 0.01), rng.uniform(0, 2 * math.pi)] for k in (2, 3)])
            spicules = []
            halo = None
        else:
            hu_nod = rng.uniform(20.0, 60.0)
            harm = np.array(
                [[k, rng.uniform(0.06, 0.2) / (1 + 0.3 * (k - 2)), rng.uniform(0, 2 * math.pi)]
                 for k in (2, 3, 4, 5, 6)]
            )  # fmt: skip
            spicules = []
            for _ in range(int(rng.integers(4, 11))):
                th = rng.uniform(0, 2 * math.pi)
                el = rng.normal(0.0, 0.35)
                length = r_nod + rng.uniform(0.4, 1.2) * r_nod
                tip = np.array(
                    [
                        nx + length * math.cos(th) * math.cos(el),
                        ny + length * math.sin(th) * math.cos(el),
                        nz + length * math.sin(el),
                    ]
                )
                spicules.append((tip, rng.uniform(0.5, 1.0)))
            halo = rng.uniform(-600.0, -450.0) if rng.random() < 0.3 else None
        twist = rng.uniform(-1.0, 1.0, size=len(harm))
        nodule = {
            "c": np.array([nx, ny, nz]),
            "r": r_nod,
            "hu": hu_nod,
            "harm": harm,
            "twist": twist,
            "spicules": spicules,
            "halo": halo,
        }

    # Per-pixel random fields last, so that everything above does not depend on the size.
    corr_mm = rng.uniform(3.0, 6.0)
    tex = _smooth_noise(
        rng, (n_slices, size, size), (corr_mm / spacing, corr_mm / ps, corr_mm / ps)
    )
    grad = an.lung_grad * np.clip((grid.y - an.cy) / max(an.b_in, 1.0), -1.0, 1.0)
    noise = rng.standard_normal((n_slices, size, size))
    hu = np.empty((n_slices, size, size), dtype=np.float32)
    body = np.empty((n_slices, size, size), dtype=bool)
    lung = np.empty_like(body)
    nod_mask = np.zeros_like(body)
    for k, (z, sl) in enumerate(zip(z_pos, geoms, strict=True)):
        z = float(z)
        lung_field = an.lung_base + grad + an.lung_tex_amp * tex[k]
        layers = _slice_layers(an, static, sl, grid)
        occ_lung = layers.occ_lung
        img = _render_anatomy(an, static, layers, lung_field)
        for p0, p1, radius, hu_v in vessels:
            _paint_tube(img, grid, p0, p1, radius, z, spacing, hu_v, clip_occ=occ_lung)
        if nodule is not None:
            acc = np.zeros((size, size))
            _render_nodule(img, grid, nodule, z, spacing, occ_lung, tex[k], acc)
            nod_mask[k] = acc >= 0.5
        img += an.noise_sigma * noise[k]
        hu[k] = img
        body[k] = static.occ_body >= 0.5
        lung[k] = occ_lung >= 0.5
    return PhantomPatient(
        label=label,
        hu=hu,
        body_mask=body,
        lung_mask=lung,
        nodule_mask=nod_mask,
        pixel_spacing_mm=ps,
        slice_spacing_mm=spacing,
        z_positions_mm=z_pos,
        nodule_diameter_mm=None if diameter is None else float(diameter),
        nodule_center_mm=None if nodule is None else tuple(float(v) for v in nodule["c"]),
        calcified=calcified,
    )


def _place_nodule(
    rng: np.random.Generator,
    grid: _Grid,
    occ_lung: np.ndarray,
    lung_pix: np.ndarray,
    clearance: float,
) -> tuple[float, float]:
    """Random nodule centre (mm) whose disk of radius ``clearance`` lies inside the lung."""
    ps = grid.ps
    if not len(lung_pix):
        return 0.0, 0.0
    best, best_frac = None, -1.0
    for _ in range(200):
        i, j = lung_pix[int(rng.integers(0, len(lung_pix)))]
        cx = (j - grid.c) * ps
        cy = (i - grid.c) * ps
        win = grid.window(cx - clearance, cx + clearance, cy - clearance, cy + clearance)
        if win is None:
            continue
        region, xs, ys = win
        disk = np.hypot(xs - cx, ys - cy) <= clearance
        frac = float((occ_lung[region][disk] >= 0.5).mean()) if disk.any() else 0.0
        if frac > best_frac:
            best, best_frac = (cx, cy), frac
        if frac >= 1.0:
            break
    assert best is not None
    return best


def _render_nodule(
    img: np.ndarray,
    grid: _Grid,
    nod: dict,
    z: float,
    thickness: float,
    occ_lung: np.ndarray,
    tex: np.ndarray,
    acc: np.ndarray,
) -> None:
    c, r = nod["c"], nod["r"]
    ps = grid.ps
    dz = z - c[2]
    dz_eff = max(abs(dz) - thickness / 4.0, 0.0)
    reach = r * 1.3 + 2.0
    win = grid.window(c[0] - reach, c[0] + reach, c[1] - reach, c[1] + reach)
    if win is not None and dz_eff < r * 1.25:
        region, xs, ys = win
        clip = occ_lung[region]
        if nod["halo"] is not None and dz_eff < r * 1.25:
            rh = math.sqrt((r * 1.25) ** 2 - dz_eff**2)
            occ_h = _occ(np.hypot(xs - c[0], ys - c[1]) - rh, ps) * clip
            _paint(img, region, occ_h, nod["halo"] + 30.0 * tex[region])
        if dz_eff < r:
            rz = math.sqrt(r * r - dz_eff * dz_eff)
            harm = nod["harm"].copy()
            harm[:, 2] += nod["twist"] * (dz / r) * 2.0
            sd = _sd_radial(xs, ys, c[0], c[1], rz, rz, harmonics=harm)
            occ = _occ(sd, ps) * clip
            _paint(img, region, occ, nod["hu"] + 8.0 * tex[region])
            np.maximum(acc[region], occ, out=acc[region])
    for tip, width in nod["spicules"]:
        _paint_tube(img, grid, c, tip, width, z, thickness, nod["hu"], clip_occ=occ_lung, acc=acc)


def phantom_slices_hu(rng: np.random.Generator, label: str, n_slices: int, size: int) -> np.ndarray:
    """Return float32 HU volume of shape (n_slices, size, size) for one patient.

    Slice 0 is the most superior slice.  Pixels outside the reconstruction circle hold air; see
    :func:`phantom_patient` for the masks and slice geometry drawn from the same ``rng``.
    """
    return phantom_patient(rng, label, n_slices, size).hu


# --------------------------------------------------------------------------------------------
# DICOM encoding
# --------------------------------------------------------------------------------------------
def _ds(value: float) -> str:
    """Decimal String representation (at most 16 characters, never '-0')."""
    v = round(float(value), 6) + 0.0
    if v == int(v) and abs(v) < 1e15:
        return str(int(v))
    return format_number_as_ds(v)


def ct_slice_dataset(
    hu: np.ndarray,
    *,
    patient_id: str,
    study_uid: str,
    series_uid: str,
    sop_uid: str,
    instance_number: int,
    z_mm: float,
    pixel_spacing_mm: float,
    slice_thickness_mm: float,
    rescale_intercept: float = -1024.0,
    rescale_slope: float = 1.0,
    padding_value: int | None = PADDING_VALUE,
    fov_mask: np.ndarray | None = None,
    frame_of_reference_uid: str | None = None,
    series_number: int = 1,
    patient_name: str | None = None,
    patient_sex: str | None = None,
    patient_age: str | None = None,
) -> pydicom.Dataset:
    """Encode one HU slice as a CT Image Storage dataset.

    Stored values are ``round((HU - intercept) / slope)`` as int16 (clipped to the int16 range);
    pixels where ``fov_mask`` is False are set to ``padding_value`` (a stored value).  The
    returned dataset carries file meta (Explicit VR Little Endian) and can be written with
    ``ds.save_as(path, enforce_file_format=True)``.  ``frame_of_reference_uid`` defaults to a UID
    derived from ``study_uid``.
    """
    hu = np.asarray(hu)
    if hu.ndim != 2:
        raise ValueError(f"hu must be a 2-D slice, got shape {hu.shape}")
    if rescale_slope == 0:
        raise ValueError("rescale_slope must be non-zero")
    stored = np.rint((hu.astype(np.float64) - rescale_intercept) / rescale_slope)
    stored = np.clip(stored, _INT16_MIN, _INT16_MAX).astype(np.int16)
    if fov_mask is not None:
        fov_mask = np.asarray(fov_mask, dtype=bool)
        if fov_mask.shape != hu.shape:
            raise ValueError(f"fov_mask shape {fov_mask.shape} != slice shape {hu.shape}")
        if padding_value is None:
            raise ValueError("fov_mask requires a padding_value")
    if padding_value is not None:
        padding_value = int(padding_value)
        if not _INT16_MIN <= padding_value <= _INT16_MAX:
            raise ValueError(f"padding_value {padding_value} outside the int16 range")
        if fov_mask is not None:
            stored[~fov_mask] = padding_value

    rows, cols = hu.shape
    if frame_of_reference_uid is None:
        frame_of_reference_uid = generate_uid(entropy_srcs=[str(study_uid), "frame-of-reference"])

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID

    ds = Dataset()
    ds.file_meta = meta
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = sop_uid
    ds.StudyDate = _STUDY_DATE
    ds.SeriesDate = _STUDY_DATE
    ds.ContentDate = _STUDY_DATE
    ds.StudyTime = _STUDY_TIME
    ds.SeriesTime = _STUDY_TIME
    ds.ContentTime = _STUDY_TIME
    ds.AccessionNumber = ""
    ds.Modality = "CT"
    ds.Manufacturer = _MANUFACTURER
    ds.ReferringPhysicianName = ""
    ds.StudyDescription = "CT CHEST"
    ds.SeriesDescription = "Synthetic chest CT (lungct phantom)"
    ds.PatientName = patient_name if patient_name is not None else patient_id
    ds.PatientID = patient_id
    ds.PatientBirthDate = ""
    ds.PatientSex = patient_sex if patient_sex is not None else ""
    if patient_age is not None:
        ds.PatientAge = patient_age
    ds.BodyPartExamined = "CHEST"
    ds.SliceThickness = _ds(slice_thickness_mm)
    ds.KVP = "120"
    ds.ConvolutionKernel = "STANDARD"
    ds.PatientPosition = "HFS"
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid
    ds.StudyID = "1"
    ds.SeriesNumber = int(series_number)
    ds.AcquisitionNumber = 1
    ds.InstanceNumber = int(instance_number)
    x0 = -(cols - 1) / 2.0 * pixel_spacing_mm
    y0 = -(rows - 1) / 2.0 * pixel_spacing_mm
    ds.ImagePositionPatient = [_ds(x0), _ds(y0), _ds(z_mm)]
    ds.ImageOrientationPatient = ["1", "0", "0", "0", "1", "0"]
    ds.FrameOfReferenceUID = frame_of_reference_uid
    ds.PositionReferenceIndicator = ""
    ds.SliceLocation = _ds(z_mm)
    ds.PixelSpacing = [_ds(pixel_spacing_mm), _ds(pixel_spacing_mm)]
    ds.set_pixel_data(stored, "MONOCHROME2", 16, generate_instance_uid=False)
    if padding_value is not None:
        ds.PixelPaddingValue = padding_value
    ds.WindowCenter = "-600"
    ds.WindowWidth = "1500"
    ds.RescaleIntercept = _ds(rescale_intercept)
    ds.RescaleSlope = _ds(rescale_slope)
    ds.RescaleType = "HU"
    return ds


# --------------------------------------------------------------------------------------------
# Cohort
# --------------------------------------------------------------------------------------------
def _validate_balance(class_balance: Mapping[str, float]) -> dict[str, float]:
    unknown = sorted(set(class_balance) - set(CLASSES))
    if unknown:
        raise ValueError(f"unknown classes in class_balance: {unknown}; expected {CLASSES}")
    weights = {c: float(class_balance.get(c, 0.0)) for c in CLASSES}
    if any(not math.isfinite(w) or w < 0 for w in weights.values()):
        raise ValueError(f"class_balance weights must be finite and >= 0: {dict(class_balance)}")
    if sum(weights.values()) <= 0:
        raise ValueError("class_balance needs at least one positive weight")
    return weights


def assign_labels(patients: int, class_balance: dict[str, float], seed: int) -> list[str]:
    """Deterministic per-patient labels.

    Counts are proportional to ``class_balance`` (largest-remainder rounding, ties broken in
    ``CLASSES`` order); every class with a positive weight gets at least one patient when
    ``patients`` is at least the number of such classes.  The list is then shuffled with
    ``seed``.
    """
    patients = int(patients)
    if patients < 0:
        raise ValueError(f"patients must be >= 0, got {patients}")
    weights = _validate_balance(class_balance)
    total = sum(weights.values())
    positive = [c for c in CLASSES if weights[c] > 0]
    quotas = {c: patients * weights[c] / total for c in positive}
    counts = {c: int(math.floor(quotas[c])) for c in positive}
    left = patients - sum(counts.values())
    order = sorted(positive, key=lambda c: (-(quotas[c] - counts[c]), CLASSES.index(c)))
    for c in order[:left]:
        counts[c] += 1
    if patients >= len(positive):
        for c in positive:
            if counts[c] == 0:
                donor = max(positive, key=lambda d: (counts[d], -CLASSES.index(d)))
                counts[donor] -= 1
                counts[c] += 1
    labels = [c for c in positive for _ in range(counts[c])]
    rng = np.random.default_rng([_check_seed(seed), 0x1AB31])
    order_idx = rng.permutation(len(labels))
    return [labels[i] for i in order_idx]


def _check_seed(seed: int) -> int:
    seed = int(seed)
    if seed < 0:
        raise ValueError(f"seed must be >= 0, got {seed}")
    return seed


def write_cohort(
    out_dir: Path,
    *,
    patients: int,
    slices: int,
    image_size: int,
    class_balance: dict[str, float],
    seed: int,
) -> list[tuple[str, str]]:
    """Write ``out_dir/<PatientID>/<SeriesInstanceUID>/<NNNN>.dcm`` for every patient.

    Patient ``i`` (0-based) is ``patient_id(i)``, labelled ``assign_labels(...)[i]`` and rendered
    with ``phantom_patient(patient_rng(seed, i), label, slices, image_size)``.  ``NNNN`` is the
    4-digit InstanceNumber (1 = most superior slice).  Returns ``[(patient_id, label), ...]`` in
    patient order; no labels file is written.  ``out_dir`` is created if needed and must not
    already contain files (stale patients would silently join the cohort).
    """
    seed = _check_seed(seed)
    patients = int(patients)
    if patients < 1:
        raise ValueError(f"patients must be >= 1, got {patients}")
    _check_render_args(CLASSES[0], slices, image_size)
    labels = assign_labels(patients, class_balance, seed)
    out_dir = Path(out_dir)
    if out_dir.exists() and any(out_dir.iterdir()):
        raise FileExistsError(f"{out_dir} is not empty; remove it before writing a new cohort")
    out_dir.mkdir(parents=True, exist_ok=True)
    fov = fov_mask(int(image_size))
    rows: list[tuple[str, str]] = []
    for idx, label in enumerate(labels):
        pid = patient_id(idx)
        pat = phantom_patient(patient_rng(seed, idx), label, slices, image_size)
        meta_rng = np.random.default_rng([seed, idx, 0x3E7A])
        sex = "M" if meta_rng.random() < 0.5 else "F"
        age = f"{int(meta_rng.integers(40, 86)):03d}Y"
        study_uid = generate_uid(entropy_srcs=[str(seed), pid, "study"])
        series_uid = generate_uid(entropy_srcs=[str(seed), pid, "series"])
        for_uid = generate_uid(entropy_srcs=[str(seed), pid, "frame-of-reference"])
        series_dir = out_dir / pid / series_uid
        series_dir.mkdir(parents=True, exist_ok=False)
        for k in range(pat.hu.shape[0]):
            inst = k + 1
            ds = ct_slice_dataset(
                pat.hu[k],
                patient_id=pid,
                study_uid=study_uid,
                series_uid=series_uid,
                sop_uid=generate_uid(entropy_srcs=[str(seed), pid, "sop", str(inst)]),
                instance_number=inst,
                z_mm=float(pat.z_positions_mm[k]),
                pixel_spacing_mm=pat.pixel_spacing_mm,
                slice_thickness_mm=pat.slice_spacing_mm,
                fov_mask=fov,
                frame_of_reference_uid=for_uid,
                patient_name=f"Phantom^{pid.split('-')[-1]}",
                patient_sex=sex,
                patient_age=age,
            )
            ds.save_as(series_dir / f"{inst:04d}.dcm", enforce_file_format=True)
        rows.append((pid, label))
    return rows
