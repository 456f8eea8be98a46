"""Pulmonary vessels of the phantom: straight 3-D tubes radiating from the hila.

Vessels are placed inside the lung of the :class:`PlacementMap` (so their geometry does not
depend on the image size), are thicker near the hila, and are painted per slice, clipped to
the lungs, with :func:`lungct.phantom.geometry.paint_tube`.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np

from lungct.phantom.anatomy import Anatomy
from lungct.phantom.layers import PlacementMap


class Vessel(NamedTuple):
    """A straight vessel segment (patient coordinates, mm) of constant radius and density."""

    start: np.ndarray  # (x, y, z)
    end: np.ndarray  # (x, y, z)
    radius: float
    hu: float


def sample_vessels(
    rng: np.random.Generator, anatomy: Anatomy, placement: PlacementMap, z_center: float
) -> list[Vessel]:
    """About one vessel per 10 cm^2 of lung at the series centre, each through a random lung
    pixel, pointing mostly along z and away from the hilum on its side."""
    an = anatomy
    pgrid, lung_pix = placement.grid, placement.lung_pixels
    hilum_y = an.center_y + an.heart_center_y * an.inner_semi_axis_y * 0.3
    pps = pgrid.pixel_spacing
    lung_area = float(placement.occ_lung.sum()) * pps * pps
    n_vessels = int(round(lung_area / 1000.0 * rng.uniform(0.8, 1.4)))
    vessels: list[Vessel] = []
    if not len(lung_pix):
        return vessels
    picks = rng.integers(0, len(lung_pix), size=n_vessels)
    for i, j in lung_pix[picks]:
        px = (j - pgrid.center + rng.uniform(-0.5, 0.5)) * pps
        py = (i - pgrid.center + rng.uniform(-0.5, 0.5)) * pps
        hx = math.copysign(an.mediastinum_half_width + 15.0, px - an.mediastinum_x)
        hx = hx + an.mediastinum_x
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
        vessels.append(Vessel(p0, p1, radius, rng.uniform(30.0, 50.0)))
    return vessels
