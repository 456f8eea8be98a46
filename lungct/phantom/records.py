"""What the annotation writers know of one written series: :class:`SeriesRecord`.

:func:`~lungct.phantom.write_cohort` renders a patient, writes (or, for MetaImage volumes,
only encodes) its slices and hands the record to the writer of the annotated form; the
writers in :mod:`~lungct.phantom.lidc_xml`, :mod:`~lungct.phantom.luna16` and
:mod:`~lungct.phantom.voc` draw their own randomness from :func:`annotation_rng`, never from
the patient's rendering rng, so the pixels of a patient do not depend on the form.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lungct.phantom.dicom_writer import decimal_string
from lungct.phantom.patient import PhantomPatient

RESCALE_INTERCEPT = -1024.0  # what ct_slice_dataset writes by default (slope 1)
_ANNOTATION_STREAM = 0xA770  # rng stream of a patient's annotations


def annotation_rng(seed: int, index: int, form: str) -> np.random.Generator:
    """Generator for the annotations of patient ``index`` in ``form`` (lidc, voc, ...)."""
    tag = int.from_bytes(form.encode("ascii")[:8].ljust(8, b"\0"), "little")
    return np.random.default_rng([int(seed), int(index), _ANNOTATION_STREAM, tag])


@dataclass(frozen=True)
class SeriesRecord:
    """One patient's series as written: identifiers, geometry, stored values, the rendering.

    ``stored`` is the int16 stored values of every slice (padding applied, slice 0 the most
    superior), as in the DICOM files; HU = stored + ``RESCALE_INTERCEPT``.  ``series_dir`` is
    the folder of the DICOM files, None when none were written (MetaImage volumes).
    """

    index: int
    patient_id: str
    label: str
    study_uid: str
    series_uid: str
    sop_uids: tuple[str, ...]
    patient: PhantomPatient
    stored: np.ndarray
    series_dir: Path | None

    @property
    def size(self) -> int:
        return int(self.stored.shape[-1])

    @property
    def pixel_spacing_mm(self) -> float:
        """The PixelSpacing as the files say it (6 decimals)."""
        return float(decimal_string(self.patient.pixel_spacing_mm))

    @property
    def origin_mm(self) -> tuple[float, float]:
        """(x, y) of the first pixel's centre, as ImagePositionPatient says it."""
        x0 = -(self.size - 1) / 2.0 * self.patient.pixel_spacing_mm
        return float(decimal_string(x0)), float(decimal_string(x0))

    @property
    def z_positions_mm(self) -> np.ndarray:
        """z of each slice (most superior first) as ImagePositionPatient says it."""
        return np.array([float(decimal_string(z)) for z in self.patient.z_positions_mm])

    def to_pixel(self, x_mm: float, y_mm: float) -> tuple[float, float]:
        """(column, row) of a point of the axial plane (fractional pixel indices)."""
        x0, y0 = self.origin_mm
        ps = self.pixel_spacing_mm
        return (x_mm - x0) / ps, (y_mm - y0) / ps

    def to_world(self, column: float, row: float) -> tuple[float, float]:
        """(x, y) mm of a (fractional) pixel position."""
        x0, y0 = self.origin_mm
        ps = self.pixel_spacing_mm
        return x0 + column * ps, y0 + row * ps
