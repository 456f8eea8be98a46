"""The sampled anatomy of one phantom patient and the slice-level geometry derived from it.

:func:`sample_anatomy` draws an :class:`Anatomy` (body outline, tissue HU, lungs, mediastinum,
heart, aorta, spine, ribs) from the patient's rng; everything here is in mm (patient LPS
coordinates of the axial plane, +x patient left, +y posterior) or HU and does not depend on the
image size.  :func:`slice_level` gives how the lungs and heart change along z, and
:func:`spine_layout` / :func:`aorta_center` place the spine and the descending aorta.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np


class Rib(NamedTuple):
    """One rib cross-section on the chest wall (an obliquely cut oval)."""

    angle: float  # polar angle (radians) of the rib around the thorax centre
    half_length: float  # semi-axis along the chest wall (mm)
    half_thickness: float  # semi-axis across the chest wall (mm)
    hu_scale: float  # multiplies the cortical and trabecular bone HU


@dataclass
class Anatomy:
    """Per-patient anatomy; lengths in mm, densities in HU.

    The body is a superellipse centred on (0, ``center_y``); the chest-wall muscle starts
    ``fat_thickness`` inside it (the ``inner_semi_axis_*`` properties).  Heart placement and
    size are fractions of the inner semi-axes.
    """

    center_y: float  # y of the thorax centre
    semi_axis_x: float  # body outline, half width
    semi_axis_y: float  # body outline, half depth (at most 0.8 * semi_axis_x)
    body_exponent: float  # superellipse exponent of the body outline
    lung_exponent: float  # superellipse exponent of the lung envelope
    fat_thickness: float  # subcutaneous fat layer
    chest_wall_thickness: float  # muscle and ribs between the fat and the lungs
    hu_fat: float
    hu_muscle: float
    hu_mediastinal_fat: float
    hu_heart: float  # heart and aorta (blood)
    hu_csf: float  # spinal canal
    hu_trabecular: float  # trabecular (cancellous) bone
    hu_cortical: float  # cortical bone
    hu_lung: float  # lung parenchyma before gradient and texture
    lung_gravity_gradient: float  # HU from anterior to posterior (dependent) lung
    lung_texture_amplitude: float  # HU of the correlated lung texture
    noise_sigma: float  # HU of the white image noise
    lung_harmonics: np.ndarray  # rows (k, amplitude, phase) perturbing the lung outline
    lung_scale: float  # overall lung size factor
    mediastinum_half_width: float  # central strip excluded from the lungs
    mediastinum_anterior_widening: float  # added half width at the anterior wall
    mediastinum_x: float  # x of the strip centre
    heart_center_x: float  # fraction of inner_semi_axis_x
    heart_center_y: float  # fraction of inner_semi_axis_y, relative to center_y
    heart_semi_axis_x: float  # fraction of inner_semi_axis_x
    heart_semi_axis_y: float  # fraction of inner_semi_axis_y
    heart_angle: float  # radians
    aorta_radius: float
    vertebra_radius: float
    canal_radius: float
    ribs: list[Rib]
    series_level: float  # level of the series centre: 0 = lung apex, 1 = lung base
    thorax_length: float  # z extent of the lungs from apex to base

    @property
    def inner_semi_axis_x(self) -> float:
        """Half width of the muscle layer (inside the subcutaneous fat)."""
        return self.semi_axis_x - self.fat_thickness

    @property
    def inner_semi_axis_y(self) -> float:
        """Half depth of the muscle layer (inside the subcutaneous fat)."""
        return self.semi_axis_y - self.fat_thickness


def _sample_ribs(rng: np.random.Generator) -> list[Rib]:
    """5 to 7 ribs per side, right side first, spread from -65 to +70 degrees."""
    ribs: list[Rib] = []
    n_ribs = int(rng.integers(5, 8))
    base = np.linspace(math.radians(-65), math.radians(70), n_ribs)
    for side in (0, 1):
        for ang in base + rng.uniform(-0.08, 0.08, n_ribs):
            theta = float(ang) if side == 0 else math.pi - float(ang)
            ribs.append(
                Rib(theta, rng.uniform(5.0, 9.0), rng.uniform(3.0, 4.5), rng.uniform(0.85, 1.15))
            )
    return ribs


def sample_anatomy(rng: np.random.Generator) -> Anatomy:
    """Draw one patient's anatomy (the first draws from the patient's rng)."""
    a = rng.uniform(130.0, 165.0)
    b = min(rng.uniform(90.0, 120.0), 0.8 * a)
    ribs = _sample_ribs(rng)
    lung_harmonics = np.array(
        [[k, rng.normal(0.0, 0.025), rng.uniform(0.0, 2 * math.pi)] for k in (2, 3, 4, 5)]
    )
    # Keyword arguments are evaluated in order: this order is the order of the rng draws.
    return Anatomy(
        center_y=rng.uniform(-5.0, 10.0),
        semi_axis_x=a,
        semi_axis_y=b,
        body_exponent=rng.uniform(2.2, 2.6),
        lung_exponent=rng.uniform(2.0, 2.4),
        fat_thickness=rng.uniform(5.0, 20.0),
        chest_wall_thickness=rng.uniform(9.0, 14.0),
        hu_fat=rng.uniform(-120.0, -80.0),
        hu_muscle=rng.uniform(30.0, 60.0),
        hu_mediastinal_fat=rng.uniform(-100.0, -60.0),
        hu_heart=rng.uniform(35.0, 50.0),
        hu_csf=rng.uniform(5.0, 20.0),
        hu_trabecular=rng.uniform(180.0, 300.0),
        hu_cortical=rng.uniform(600.0, 1000.0),
        hu_lung=rng.uniform(-875.0, -835.0),
        lung_gravity_gradient=rng.uniform(20.0, 60.0),
        lung_texture_amplitude=rng.uniform(10.0, 25.0),
        noise_sigma=rng.uniform(10.0, 25.0),
        lung_harmonics=lung_harmonics,
        lung_scale=rng.uniform(0.96, 1.0),
        mediastinum_half_width=rng.uniform(9.0, 15.0),
        mediastinum_anterior_widening=rng.uniform(0.0, 6.0),
        mediastinum_x=rng.uniform(-4.0, 6.0),
        heart_center_x=rng.uniform(0.08, 0.18),
        heart_center_y=rng.uniform(-0.25, -0.05),
        heart_semi_axis_x=rng.uniform(0.27, 0.36),
        heart_semi_axis_y=rng.uniform(0.36, 0.46),
        heart_angle=math.radians(rng.uniform(15.0, 40.0)),
        aorta_radius=rng.uniform(10.0, 15.0),
        vertebra_radius=rng.uniform(14.0, 19.0),
        canal_radius=rng.uniform(6.0, 8.5),
        ribs=ribs,
        series_level=rng.uniform(0.4, 0.85),
        thorax_length=rng.uniform(220.0, 300.0),
    )


@dataclass
class SliceLevel:
    """How the anatomy changes at one slice level (derived from the anatomy and z)."""

    lung_scale: float  # lung envelope size factor (smaller towards apex and base)
    heart_scale: float  # heart size factor (smaller towards the apex)
    phase_shift: float  # rotates the lung outline harmonics along z


def slice_level(anatomy: Anatomy, z: float, z_center: float) -> SliceLevel:
    """Slice geometry at ``z`` for a series centred on ``z_center``."""
    level = anatomy.series_level - (z - z_center) / anatomy.thorax_length  # 0 = apex, 1 = base
    lv = min(max(level, 0.0), 1.0)
    lung_scale = anatomy.lung_scale * (0.82 + 0.18 * math.sin(math.pi * (0.15 + 0.8 * lv)))
    heart_scale = math.sqrt(min(max((level - 0.2) / 0.45, 0.3), 1.0))
    return SliceLevel(lung_scale=lung_scale, heart_scale=heart_scale, phase_shift=1.5 * level)


class SpineLayout(NamedTuple):
    """y positions (mm) of the spine, anterior to posterior."""

    vertebra_y: float  # centre of the vertebral body
    canal_y: float  # centre of the spinal canal
    spinous_tip_y: float  # posterior tip of the spinous process


def spine_layout(anatomy: Anatomy) -> SpineLayout:
    """Spine positions: the canal 35 mm in front of the back, the vertebral body before it."""
    canal_y = anatomy.center_y + anatomy.inner_semi_axis_y - 35.0
    vertebra_y = canal_y - anatomy.canal_radius - 3.0 - anatomy.vertebra_radius
    tip = anatomy.center_y + anatomy.inner_semi_axis_y - 4.0
    return SpineLayout(vertebra_y, canal_y, max(tip, canal_y + anatomy.canal_radius + 6.0))


def aorta_center(anatomy: Anatomy) -> tuple[float, float]:
    """Centre (x, y) of the descending aorta, left-anterior of the vertebral body."""
    x = anatomy.vertebra_radius + anatomy.aorta_radius * 0.6
    return x, spine_layout(anatomy).vertebra_y - anatomy.vertebra_radius * 0.55
