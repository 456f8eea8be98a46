"""Occupancy layers of one patient on one image grid, and the anatomy rendering of a slice.

:class:`StaticLayers` holds what does not change along z (body, chest wall, mediastinal strip,
spine, aorta, oesophagus and the bones, the latter as a list of paint operations);
:func:`slice_layers` adds what does (lungs and heart at one :class:`SliceLevel`), and
:func:`render_anatomy` paints one slice in HU from both (vessels, nodule and noise come later).
:func:`placement_map` is the lung at the series centre on a fixed reference grid, where vessels
and the nodule are placed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from lungct.phantom.anatomy import Anatomy, SliceLevel, aorta_center, slice_level, spine_layout
from lungct.phantom.geometry import (
    FOV_MM,
    FULL,
    Grid,
    Region,
    capsule_occupancy,
    occupancy,
    paint,
    sd_radial,
    window_occupancy,
)

AIR_HU = -1000.0
PLACEMENT_SIZE = 128  # reference grid for placing vessels and nodules


def _disk(grid: Grid, cx: float, cy: float, r: float) -> tuple[Region, np.ndarray] | None:
    """(region, occupancy) of the disk of radius ``r`` around (cx, cy)."""
    return window_occupancy(
        grid, (cx - r, cx + r, cy - r, cy + r), lambda xs, ys: np.hypot(xs - cx, ys - cy) - r
    )


class StaticLayers:
    """Slice-independent layers of one patient: body, chest wall, spine, aorta, bones.

    Occupancies (0..1) are full-image arrays, except ``spine`` and ``aorta_dilated`` which are
    ``(region, occupancy)`` windows (or None when off the grid).  ``base`` is the image of air,
    fat and muscle; ``ops`` are ``(region, occupancy, HU)`` paint operations (aorta, oesophagus,
    bones) applied last, in order.
    """

    def __init__(self, anatomy: Anatomy, grid: Grid) -> None:
        an, self._grid = anatomy, grid
        x, y, ps = grid.x, grid.y, grid.pixel_spacing
        a_in, b_in = an.inner_semi_axis_x, an.inner_semi_axis_y

        def outline(a: float, b: float) -> np.ndarray:  # the body's superellipse, semi-axes a, b
            return occupancy(sd_radial(x, y, 0.0, an.center_y, a, b, p=an.body_exponent), ps)

        self.occ_body = outline(an.semi_axis_x, an.semi_axis_y)
        self.occ_inner = outline(a_in, b_in)
        base = np.full((grid.size, grid.size), AIR_HU)
        paint(base, FULL, self.occ_body, an.hu_fat)
        paint(base, FULL, self.occ_inner, an.hu_muscle)
        self.base = base
        wall = an.chest_wall_thickness * 0.5 + 5.0  # the lungs never cross the ribs
        self.occ_wall_clip = outline(a_in - wall, b_in - wall)
        # Central mediastinal strip, wider anteriorly (dilated by 3 mm against the lungs).
        ant = np.clip(-(y - an.center_y) / max(b_in, 1.0), 0.0, 1.0)
        half_width = an.mediastinum_half_width + an.mediastinum_anterior_widening * ant
        self.occ_strip = occupancy(np.abs(x - an.mediastinum_x) - half_width - 3.0, ps)
        # Vertebra with paraspinal muscles: excluded from the lungs, painted as muscle.
        self.spine_layout = sp = spine_layout(an)
        sp_cy = 0.5 * (sp.vertebra_y + sp.spinous_tip_y)
        sp_b = 0.5 * (sp.spinous_tip_y - sp.vertebra_y) + an.vertebra_radius + 3.0
        sp_a = an.vertebra_radius + 12.0
        bbox = (-sp_a, sp_a, sp_cy - sp_b, sp_cy + sp_b)
        self.spine = window_occupancy(
            grid, bbox, lambda xs, ys: sd_radial(xs, ys, 0.0, sp_cy, sp_a, sp_b)
        )
        ax, ay = aorta_center(an)
        self.aorta_dilated = _disk(grid, ax, ay, an.aorta_radius + 3.0)
        self.ops: list[tuple[Region, np.ndarray, float]] = []
        self._add(_disk(grid, ax, ay, an.aorta_radius), an.hu_heart)
        ex = an.mediastinum_x - 6.0
        ey = sp.vertebra_y - an.vertebra_radius - 9.0
        self._add(_disk(grid, ex, ey, 6.0), an.hu_muscle - 10.0)  # oesophagus
        self._add(_disk(grid, ex, ey, 1.5), -900.0)
        self._add_spine_bones(an)
        self._add_sternum(an)
        self._add_ribs(an)

    def _add(self, window: tuple[Region, np.ndarray] | None, value: float) -> None:
        if window is not None:
            self.ops.append((*window, value))

    def _ellipse(
        self, cx: float, cy: float, ea: float, eb: float, value: float, angle: float = 0.0
    ) -> None:
        big = max(ea, eb)
        bbox = (cx - big, cx + big, cy - big, cy + big)
        window = window_occupancy(
            self._grid, bbox, lambda xs, ys: sd_radial(xs, ys, cx, cy, ea, eb, angle=angle)
        )
        self._add(window, value)

    def _add_spine_bones(self, an: Anatomy) -> None:
        """Vertebral body (cortical shell, trabecular core), posterior arch, canal."""
        grid, sp = self._grid, self.spine_layout
        self._add(_disk(grid, 0.0, sp.vertebra_y, an.vertebra_radius), an.hu_cortical)
        self._add(_disk(grid, 0.0, sp.vertebra_y, an.vertebra_radius - 2.0), an.hu_trabecular)
        # Posterior arch, transverse and spinous processes, then the canal.
        self._add(_disk(grid, 0.0, sp.canal_y, an.canal_radius + 4.5), an.hu_cortical * 0.8)
        for side in (-1.0, 1.0):
            x1 = side * (an.vertebra_radius + 14.0)
            arch = capsule_occupancy(grid, side * 4.0, sp.canal_y - 2.0, x1, sp.canal_y - 6.0, 3.5)
            self._add(arch, an.hu_cortical * 0.75)
        spinous = capsule_occupancy(grid, 0.0, sp.canal_y, 0.0, sp.spinous_tip_y - 3.0, 3.5)
        self._add(spinous, an.hu_cortical * 0.85)
        self._add(_disk(grid, 0.0, sp.canal_y, an.canal_radius), an.hu_csf)

    def _add_sternum(self, an: Anatomy) -> None:
        sy = an.center_y - an.inner_semi_axis_y + an.chest_wall_thickness * 0.5
        self._ellipse(0.0, sy, 13.0, 4.5, an.hu_cortical * 0.7)
        self._ellipse(0.0, sy, 11.0, 2.5, an.hu_trabecular)

    def _add_ribs(self, an: Anatomy) -> None:
        """Ribs: obliquely cut ovals on the chest wall (cortical shell, trabecular core)."""
        ra = an.inner_semi_axis_x - an.chest_wall_thickness * 0.5
        rb = an.inner_semi_axis_y - an.chest_wall_thickness * 0.5
        p = an.body_exponent
        for theta, ta, tr, scale in an.ribs:
            ct, st = math.cos(theta), math.sin(theta)
            rad = (abs(ct / ra) ** p + abs(st / rb) ** p) ** (-1.0 / p)
            cx, cy = rad * ct, an.center_y + rad * st
            ang = theta + math.pi / 2  # long axis along the chest wall
            self._ellipse(cx, cy, ta, tr, an.hu_cortical * scale, ang)
            inner = (max(ta - 1.5, 0.5), max(tr - 1.5, 0.5))
            self._ellipse(cx, cy, *inner, an.hu_trabecular * scale, ang)


@dataclass
class SliceLayers:
    """Occupancies of one slice level (full-image arrays unless noted)."""

    occ_lung: np.ndarray  # lungs (the inner thorax less the non-lung parts)
    occ_thorax: np.ndarray  # lung envelope inside the chest wall
    nonlung: np.ndarray  # mediastinum, spine, aorta and heart, dilated against the lungs
    heart: tuple[Region, np.ndarray] | None  # (region, occupancy) window of the heart


def slice_layers(
    anatomy: Anatomy, static: StaticLayers, level: SliceLevel, grid: Grid
) -> SliceLayers:
    """Lung, inner-thorax and mediastinum occupancies plus the heart for one slice level."""
    an = anatomy
    x, y, ps = grid.x, grid.y, grid.pixel_spacing
    a_in, b_in = an.inner_semi_axis_x, an.inner_semi_axis_y
    ein_a = (a_in - an.chest_wall_thickness - 2.0) * level.lung_scale
    ein_b = (b_in - an.chest_wall_thickness - 2.0) * level.lung_scale
    harm = an.lung_harmonics.copy()
    harm[:, 2] += level.phase_shift * np.array([0.3, -0.2, 0.25, -0.15])
    sd_in = sd_radial(x, y, 0.0, an.center_y, ein_a, ein_b, p=an.lung_exponent, harmonics=harm)
    occ_in = occupancy(sd_in, ps)
    occ_in *= static.occ_wall_clip
    nonlung = static.occ_strip.copy()
    for part in (static.spine, static.aorta_dilated):
        if part is not None:
            np.maximum(nonlung[part[0]], part[1], out=nonlung[part[0]])
    hx, hy = an.heart_center_x * a_in, an.center_y + an.heart_center_y * b_in
    ha = level.heart_scale * an.heart_semi_axis_x * a_in
    hb = level.heart_scale * an.heart_semi_axis_y * b_in
    big = max(ha, hb) + 5.0
    win = grid.window(hx - big, hx + big, hy - big, hy + big)
    heart = None
    if win is not None:
        region, xs, ys = win
        sd = sd_radial(xs, ys, hx, hy, ha, hb, angle=an.heart_angle)
        np.maximum(nonlung[region], occupancy(sd - 3.0, ps), out=nonlung[region])
        heart = (region, occupancy(sd, ps))
    return SliceLayers(occ_in * (1.0 - nonlung), occ_in, nonlung, heart)


def render_anatomy(
    anatomy: Anatomy, static: StaticLayers, layers: SliceLayers, lung_field: np.ndarray
) -> np.ndarray:
    """Render the anatomy of one slice in HU (without vessels, nodule and noise).

    ``lung_field`` is the lung parenchyma HU (with gradient and texture) painted into the lungs.
    """
    img = static.base.copy()
    paint(img, FULL, layers.occ_lung, lung_field)
    # Mediastinal fat around heart and great vessels; paraspinal muscles; then the organs.
    med = layers.occ_thorax * layers.nonlung
    if static.spine is not None:
        region, occ_sp = static.spine
        med[region] *= 1.0 - occ_sp
    paint(img, FULL, med, anatomy.hu_mediastinal_fat)
    if static.spine is not None:
        paint(img, region, occ_sp * static.occ_inner[region], anatomy.hu_muscle)
    if layers.heart is not None:
        paint(img, layers.heart[0], layers.heart[1], anatomy.hu_heart)
    for region, occ, value in static.ops:
        paint(img, region, occ, value)
    return img


@dataclass
class PlacementMap:
    """Lung occupancy at the series centre on the reference grid (for vessels and nodules)."""

    grid: Grid
    occ_lung: np.ndarray  # (PLACEMENT_SIZE, PLACEMENT_SIZE) occupancy
    lung_pixels: np.ndarray  # (n, 2) row, column indices where occ_lung >= 0.99


def placement_map(
    anatomy: Anatomy, grid: Grid, static: StaticLayers, z_center: float
) -> PlacementMap:
    """Lung at the series centre, computed on a fixed reference grid so that one rng gives the
    same patient geometry at any image size (``grid`` and ``static`` are reused at that size)."""
    mid = slice_level(anatomy, z_center, z_center)
    if grid.size == PLACEMENT_SIZE:
        pgrid, pstatic = grid, static
    else:
        pgrid = Grid(PLACEMENT_SIZE, FOV_MM / PLACEMENT_SIZE)
        pstatic = StaticLayers(anatomy, pgrid)
    occ_mid = slice_layers(anatomy, pstatic, mid, pgrid).occ_lung
    return PlacementMap(grid=pgrid, occ_lung=occ_mid, lung_pixels=np.argwhere(occ_mid >= 0.99))
