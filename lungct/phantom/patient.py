"""Rendering one phantom patient: :func:`phantom_patient` and its result :class:`PhantomPatient`.

The steps, in the order they draw from the patient's rng: sample the anatomy, the series
(nodule diameter, slice spacing and positions), the vessels and the nodule (placed on a fixed
reference grid, so the geometry does not depend on the image size), then the per-pixel random
fields (lung texture, noise); last, each slice is rendered without further draws.

The slice spacing is fitted to the nodule by default (the series spans about one nodule
diameter, so the nodule shows in most slices); a given ``slice_spacing_mm`` (a clinical
series, e.g. 1.25 or 2.5 mm) replaces it after the same draws, so the anatomy, vessels and
nodule are those of the fitted series and only the slice positions differ.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from lungct.params import SYNTHETIC_CLASSES as CLASSES
from lungct.phantom.anatomy import Anatomy, sample_anatomy, slice_level
from lungct.phantom.geometry import FOV_MM, Grid, paint_tube, smooth_noise
from lungct.phantom.layers import StaticLayers, placement_map, render_anatomy, slice_layers
from lungct.phantom.nodules import Nodule, render_nodule, sample_diameters, sample_nodule
from lungct.phantom.vessels import Vessel, sample_vessels

MIN_IMAGE_SIZE = 32


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
    # The nodule as rendered (centre, radius, harmonics, spicules, halo): what annotations
    # need (see lungct.phantom.nodules.section_radius and nodule_outline).  None if normal.
    nodule: Nodule | None = None


@dataclass
class _Series:
    """Slice geometry of the patient's one axial series."""

    nodule_diameter: float | None  # None for normal patients
    spacing: float  # slice spacing == thickness, mm
    z_center: float  # mm
    z_positions: np.ndarray  # per slice, most superior first


@dataclass
class _RandomFields:
    """Per-pixel random fields (the only draws that depend on the image size)."""

    lung_texture: np.ndarray  # (n_slices, size, size), unit variance, spatially correlated
    lung_gradient: np.ndarray  # (size, 1) gravity gradient in HU, denser posteriorly
    noise: np.ndarray  # (n_slices, size, size) standard normal


def check_render_args(label: str, n_slices: int, size: int) -> None:
    """Raise ValueError for an unknown label, no slices or an image below MIN_IMAGE_SIZE."""
    if label not in CLASSES:
        raise ValueError(f"unknown label {label!r}; expected one of {CLASSES}")
    if int(n_slices) < 1:
        raise ValueError(f"n_slices must be >= 1, got {n_slices}")
    if int(size) < MIN_IMAGE_SIZE:
        raise ValueError(f"size must be >= {MIN_IMAGE_SIZE}, got {size}")


def check_slice_spacing(slice_spacing_mm: float | None) -> float | None:
    """None, or a finite spacing in mm of at least 0.3 (the fitted series' minimum)."""
    if slice_spacing_mm is None:
        return None
    spacing = float(slice_spacing_mm)
    if not math.isfinite(spacing) or spacing < 0.3:
        raise ValueError(f"slice_spacing_mm must be >= 0.3 mm, got {slice_spacing_mm}")
    return spacing


def _sample_series(
    rng: np.random.Generator, label: str, n_slices: int, slice_spacing_mm: float | None = None
) -> _Series:
    """Slice spacing from a reference diameter (so that a nodule spans most slices), or
    ``slice_spacing_mm`` when given (the same draws either way), and the series centre;
    slices are contiguous and z decreases from one slice to the next."""
    diameter, reference = sample_diameters(rng, label)
    spacing = round(max(reference * rng.uniform(0.95, 1.2) / n_slices, 0.3), 3)
    z_center = round(-rng.uniform(80.0, 260.0), 1)
    if slice_spacing_mm is not None:
        spacing = float(slice_spacing_mm)
    offsets = (np.arange(n_slices) - (n_slices - 1) / 2.0) * spacing
    z_pos = np.round(z_center - offsets, 4)
    return _Series(diameter, spacing, z_center, z_pos)


def _sample_fields(
    rng: np.random.Generator, anatomy: Anatomy, grid: Grid, series: _Series
) -> _RandomFields:
    n_slices, size, ps = len(series.z_positions), grid.size, grid.pixel_spacing
    corr_mm = rng.uniform(3.0, 6.0)
    tex = smooth_noise(
        rng, (n_slices, size, size), (corr_mm / series.spacing, corr_mm / ps, corr_mm / ps)
    )
    grad = anatomy.lung_gravity_gradient * np.clip(
        (grid.y - anatomy.center_y) / max(anatomy.inner_semi_axis_y, 1.0), -1.0, 1.0
    )
    noise = rng.standard_normal((n_slices, size, size))
    return _RandomFields(lung_texture=tex, lung_gradient=grad, noise=noise)


def _render_slice(
    anatomy: Anatomy,
    grid: Grid,
    static: StaticLayers,
    series: _Series,
    k: int,
    vessels: list[Vessel],
    nodule: Nodule | None,
    fields: _RandomFields,
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Slice ``k`` in HU (float64), its lung occupancy and its nodule occupancy (or None)."""
    z = float(series.z_positions[k])
    spacing = series.spacing
    level = slice_level(anatomy, z, series.z_center)
    tex = fields.lung_texture[k]
    lung_field = anatomy.hu_lung + fields.lung_gradient + anatomy.lung_texture_amplitude * tex
    layers = slice_layers(anatomy, static, level, grid)
    occ_lung = layers.occ_lung
    img = render_anatomy(anatomy, static, layers, lung_field)
    for start, end, radius, hu in vessels:
        paint_tube(img, grid, start, end, radius, z, spacing, hu, clip_occ=occ_lung)
    occ_nodule = None
    if nodule is not None:
        occ_nodule = np.zeros((grid.size, grid.size))
        render_nodule(img, grid, nodule, z, spacing, occ_lung, tex, occ_nodule)
    img += anatomy.noise_sigma * fields.noise[k]
    return img, occ_lung, occ_nodule


def phantom_patient(
    rng: np.random.Generator,
    label: str,
    n_slices: int,
    size: int,
    slice_spacing_mm: float | None = None,
) -> PhantomPatient:
    """Render one patient; see :class:`PhantomPatient`. Consumes ``rng`` deterministically.

    ``slice_spacing_mm``: None fits the spacing to the nodule (the default series); a value
    gives a clinical series of that spacing around the same anatomy and nodule."""
    check_render_args(label, n_slices, size)
    slice_spacing_mm = check_slice_spacing(slice_spacing_mm)
    n_slices, size = int(n_slices), int(size)
    ps = FOV_MM / size
    grid = Grid(size, ps)
    anatomy = sample_anatomy(rng)
    series = _sample_series(rng, label, n_slices, slice_spacing_mm)
    static = StaticLayers(anatomy, grid)
    placement = placement_map(anatomy, grid, static, series.z_center)
    vessels = sample_vessels(rng, anatomy, placement, series.z_center)
    nodule = None
    if series.nodule_diameter is not None:
        nodule = sample_nodule(rng, label, series.nodule_diameter, series.z_center, placement)
    # Per-pixel random fields last, so that everything above does not depend on the size.
    fields = _sample_fields(rng, anatomy, grid, series)

    hu = np.empty((n_slices, size, size), dtype=np.float32)
    body = np.empty((n_slices, size, size), dtype=bool)
    lung = np.empty_like(body)
    nodule_mask = np.zeros_like(body)
    for k in range(n_slices):
        img, occ_lung, occ_nodule = _render_slice(
            anatomy, grid, static, series, k, vessels, nodule, fields
        )
        if occ_nodule is not None:
            nodule_mask[k] = occ_nodule >= 0.5
        hu[k] = img
        body[k] = static.occ_body >= 0.5
        lung[k] = occ_lung >= 0.5
    return PhantomPatient(
        label=label,
        hu=hu,
        body_mask=body,
        lung_mask=lung,
        nodule_mask=nodule_mask,
        pixel_spacing_mm=ps,
        slice_spacing_mm=series.spacing,
        z_positions_mm=series.z_positions,
        nodule_diameter_mm=(
            None if series.nodule_diameter is None else float(series.nodule_diameter)
        ),
        nodule_center_mm=None if nodule is None else tuple(float(v) for v in nodule.center),
        calcified=False if nodule is None else nodule.calcified,
        nodule=nodule,
    )


def phantom_slices_hu(rng: np.random.Generator, label: str, n_slices: int, size: int) -> np.ndarray:
    """Return float32 HU volume of shape (n_slices, size, size) for one patient.

    Slice 0 is the most superior slice.  Pixels outside the reconstruction circle hold air; see
    :func:`phantom_patient` for the masks and slice geometry drawn from the same ``rng``.
    """
    return phantom_patient(rng, label, n_slices, size).hu
