"""Lung nodules of the phantom: sizes, the :class:`Nodule` description, placement, rendering.

``benign``: 6-12 mm smooth round nodule, calcified (200..600 HU) with probability 0.6, else soft
tissue (20..50 HU).  ``malignant``: 15-30 mm lobulated soft-tissue nodule (20..60 HU) with 4-10
spicules and, with probability 0.3, a ground-glass halo.  ``normal`` patients have none.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np

from lungct.phantom.geometry import Grid, occupancy, paint, paint_tube, sd_radial
from lungct.phantom.layers import PlacementMap

BENIGN_DIAMETER_MM = (6.0, 12.0)
MALIGNANT_DIAMETER_MM = (15.0, 30.0)
CALCIFIED_PROBABILITY = 0.6


class Spicule(NamedTuple):
    """A thin tube from the nodule centre to ``tip`` (x, y, z mm)."""

    tip: np.ndarray
    width: float  # tube radius, mm


@dataclass
class Nodule:
    """One nodule in patient coordinates (mm) and HU.

    The outline at each slice is a disk of the sphere's radius at that z, perturbed by
    ``harmonics`` (rows k, amplitude, phase) whose phases turn by ``twist`` along z.
    """

    center: np.ndarray  # (x, y, z)
    radius: float
    hu: float
    harmonics: np.ndarray
    twist: np.ndarray  # one value per harmonic
    spicules: list[Spicule] = field(default_factory=list)
    halo_hu: float | None = None  # ground-glass halo out to 1.25 radius
    calcified: bool = False


def sample_diameters(rng: np.random.Generator, label: str) -> tuple[float | None, float]:
    """``(nodule diameter or None, reference diameter)``; the reference sets the slice spacing.

    The reference is the nodule's own diameter for benign patients (thin slices, so a small
    nodule spans the series); for malignant and normal patients a 50/50 mix of a benign-like
    and a malignant-like diameter (a large nodule seen through a thin series still shows in
    every slice).  Thin series thus occur in every class.
    """
    if label == "benign":
        diameter = rng.uniform(*BENIGN_DIAMETER_MM)
        return diameter, diameter
    diameter = rng.uniform(*MALIGNANT_DIAMETER_MM) if label == "malignant" else None
    if rng.random() < 0.5:
        return diameter, rng.uniform(*BENIGN_DIAMETER_MM)
    return diameter, (diameter if label == "malignant" else rng.uniform(*MALIGNANT_DIAMETER_MM))


def place_nodule(
    rng: np.random.Generator, placement: PlacementMap, clearance: float
) -> tuple[float, float]:
    """Random nodule centre (mm) whose disk of radius ``clearance`` lies inside the lung.

    Up to 200 lung pixels are tried; the first fully inside wins, else the best one.
    """
    grid, occ_lung, lung_pix = placement.grid, placement.occ_lung, placement.lung_pixels
    ps = grid.pixel_spacing
    if not len(lung_pix):
        return 0.0, 0.0
    best, best_frac = None, -1.0
    for _ in range(200):
        i, j = lung_pix[int(rng.integers(0, len(lung_pix)))]
        cx = (j - grid.center) * ps
        cy = (i - grid.center) * ps
        region, xs, ys = grid.window(cx - clearance, cx + clearance, cy - clearance, cy + clearance)
        disk = np.hypot(xs - cx, ys - cy) <= clearance
        frac = float((occ_lung[region][disk] >= 0.5).mean()) if disk.any() else 0.0
        if frac > best_frac:
            best, best_frac = (cx, cy), frac
        if frac >= 1.0:
            break
    return best


def _malignant_spicules(
    rng: np.random.Generator, nx: float, ny: float, nz: float, radius: float
) -> list[Spicule]:
    spicules = []
    for _ in range(int(rng.integers(4, 11))):
        th = rng.uniform(0, 2 * math.pi)
        el = rng.normal(0.0, 0.35)
        length = radius + rng.uniform(0.4, 1.2) * radius
        tip = np.array(
            [
                nx + length * math.cos(th) * math.cos(el),
                ny + length * math.sin(th) * math.cos(el),
                nz + length * math.sin(el),
            ]
        )
        spicules.append(Spicule(tip, rng.uniform(0.5, 1.0)))
    return spicules


def sample_nodule(
    rng: np.random.Generator, label: str, diameter: float, z_center: float, placement: PlacementMap
) -> Nodule:
    """Draw the nodule of a ``benign`` or ``malignant`` patient near the series centre."""
    radius = diameter / 2.0
    nz = z_center + rng.uniform(-0.08, 0.08) * diameter
    nx, ny = place_nodule(rng, placement, radius + 2.0)
    calcified = False
    spicules: list[Spicule] = []
    halo = None
    if label == "benign":
        calcified = bool(rng.random() < CALCIFIED_PROBABILITY)
        hu = rng.uniform(200.0, 600.0) if calcified else rng.uniform(20.0, 50.0)
        harm = np.array([[k, rng.normal(0, 0.01), rng.uniform(0, 2 * math.pi)] for k in (2, 3)])
    else:
        hu = rng.uniform(20.0, 60.0)
        harm = np.array(
            [[k, rng.uniform(0.06, 0.2) / (1 + 0.3 * (k - 2)), rng.uniform(0, 2 * math.pi)]
             for k in (2, 3, 4, 5, 6)]
        )  # fmt: skip
        spicules = _malignant_spicules(rng, nx, ny, nz, radius)
        halo = rng.uniform(-600.0, -450.0) if rng.random() < 0.3 else None
    twist = rng.uniform(-1.0, 1.0, size=len(harm))
    return Nodule(np.array([nx, ny, nz]), radius, hu, harm, twist, spicules, halo, calcified)


def _effective_dz(nodule: Nodule, z: float, thickness: float) -> tuple[float, float]:
    """``(dz, dz_eff)``: the slice centre's offset from the nodule centre along z, and the
    offset used for the cut (a slice of ``thickness`` sees the nodule a quarter thickness
    nearer its centre)."""
    dz = z - nodule.center[2]
    return dz, max(abs(dz) - thickness / 4.0, 0.0)


def section_radius(nodule: Nodule, z: float, thickness: float) -> float | None:
    """Radius (mm) of the nodule body's cut by the slice at ``z``, before the lobulating
    harmonics; None where the slice misses the body (spicules and halo aside).  Exactly
    the radius :func:`render_nodule` paints."""
    r = nodule.radius
    _, dz_eff = _effective_dz(nodule, z, thickness)
    if dz_eff >= r:
        return None
    return math.sqrt(r * r - dz_eff * dz_eff)


def _section_harmonics(nodule: Nodule, dz: float) -> np.ndarray:
    """The harmonics (k, amplitude, phase) of the cut ``dz`` from the centre: the phases
    turn by ``twist`` along z."""
    harm = nodule.harmonics.copy()
    harm[:, 2] += nodule.twist * (dz / nodule.radius) * 2.0
    return harm


def nodule_outline(
    nodule: Nodule, z: float, thickness: float, n_points: int = 64
) -> np.ndarray | None:
    """Boundary of the nodule body (halo and spicules aside) in the slice at ``z``: an
    ``(n_points, 2)`` array of (x, y) mm at angles from +x towards +y (clockwise as the image is
    displayed), starting at +x; None where the slice misses the body.  It is the zero level of
    the signed distance that :func:`render_nodule` paints (before clipping to the lungs)."""
    rz = section_radius(nodule, z, thickness)
    if rz is None:
        return None
    dz, _ = _effective_dz(nodule, z, thickness)
    theta = np.linspace(0.0, 2.0 * math.pi, int(n_points), endpoint=False)
    pert = np.ones_like(theta)
    for k, amp, phase in _section_harmonics(nodule, dz):
        pert += amp * np.cos(int(k) * theta + phase)
    radius = rz * pert
    c = nodule.center
    return np.stack([c[0] + radius * np.cos(theta), c[1] + radius * np.sin(theta)], axis=1)


def render_nodule(
    img: np.ndarray,
    grid: Grid,
    nodule: Nodule,
    z: float,
    thickness: float,
    occ_lung: np.ndarray,
    tex: np.ndarray,
    acc: np.ndarray,
) -> None:
    """Paint the nodule (halo, body, spicules) into the slice at ``z``, clipped to the lungs.

    ``tex`` is the slice's unit lung texture; ``acc`` accumulates the nodule occupancy (halo
    excluded) for the nodule mask.
    """
    c, r = nodule.center, nodule.radius
    ps = grid.pixel_spacing
    dz, dz_eff = _effective_dz(nodule, z, thickness)
    reach = r * 1.3 + 2.0
    win = grid.window(c[0] - reach, c[0] + reach, c[1] - reach, c[1] + reach)
    if win is not None and dz_eff < r * 1.25:
        region, xs, ys = win
        clip = occ_lung[region]
        if nodule.halo_hu is not None:
            rh = math.sqrt((r * 1.25) ** 2 - dz_eff**2)
            occ_h = occupancy(np.hypot(xs - c[0], ys - c[1]) - rh, ps) * clip
            paint(img, region, occ_h, nodule.halo_hu + 30.0 * tex[region])
        rz = section_radius(nodule, z, thickness)
        if rz is not None:
            harm = _section_harmonics(nodule, dz)
            sd = sd_radial(xs, ys, c[0], c[1], rz, rz, harmonics=harm)
            occ = occupancy(sd, ps) * clip
            paint(img, region, occ, nodule.hu + 8.0 * tex[region])
            np.maximum(acc[region], occ, out=acc[region])
    for tip, width in nodule.spicules:
        paint_tube(img, grid, c, tip, width, z, thickness, nodule.hu, clip_occ=occ_lung, acc=acc)
