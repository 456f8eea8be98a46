"""LUNA16 form of the phantom cohort: ``annotations.csv`` and MetaImage volumes.

* ``annotations.csv``: ``seriesuid,coordX,coordY,coordZ,diameter_mm``, one row per nodule
  (the benign and the malignant patients' nodules; normal patients have none), the centre in
  world mm (DICOM patient coordinates, LPS, as LUNA16 has them) and the nodule's diameter;
  numbers with ten significant digits, rows in patient order.
* Volumes (``luna16-mhd``): ``subset0/<seriesuid>.mhd`` + ``.raw`` written with SimpleITK, as
  LUNA16 has them: int16 HU (stored value + intercept, so the padding outside the field of
  view is -3024 HU, not air), z ascending (the most inferior slice first), ``Offset`` the
  first voxel's centre, ``ElementSpacing`` (column, row, slice) mm, an identity
  ``TransformMatrix``.  Otherwise (``luna16``) the images are the DICOM series.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import numpy as np

from lungct.phantom.records import RESCALE_INTERCEPT, SeriesRecord

ANNOTATIONS_CSV = "annotations.csv"
ANNOTATION_COLUMNS = ("seriesuid", "coordX", "coordY", "coordZ", "diameter_mm")
SUBSET = "subset0"


def annotation_rows(record: SeriesRecord) -> list[tuple[str, float, float, float, float]]:
    """The series' nodule as a LUNA16 annotation row (none for a normal patient)."""
    nodule = record.patient.nodule
    if nodule is None:
        return []
    x, y, z = (float(v) for v in nodule.center)
    return [(record.series_uid, x, y, z, 2.0 * float(nodule.radius))]


def write_annotations_csv(path: Path, rows: Iterable[tuple]) -> Path:
    """Write ``annotations.csv`` (header, then one line per row; ``\\n`` line ends)."""
    lines = [",".join(ANNOTATION_COLUMNS)]
    for uid, *numbers in rows:  # + 0.0: never "-0"
        lines.append(",".join([str(uid), *(format(float(v) + 0.0, ".10g") for v in numbers)]))
    path.write_text("\n".join(lines) + "\n", encoding="ascii", newline="")
    return path


def metaimage_volume(record: SeriesRecord) -> np.ndarray:
    """int16 HU volume (z ascending, rows, columns) of the series, as LUNA16 stores it."""
    hu = record.stored[::-1].astype(np.int32) + int(RESCALE_INTERCEPT)
    return hu.astype(np.int16)


def write_metaimage(directory: Path, record: SeriesRecord) -> Path:
    """Write ``<directory>/<seriesuid>.mhd`` and ``.raw``; return the ``.mhd`` path."""
    import SimpleITK as sitk  # only this form needs it

    image = sitk.GetImageFromArray(metaimage_volume(record))  # identity direction
    ps = record.pixel_spacing_mm
    image.SetOrigin((*record.origin_mm, float(record.z_positions_mm.min())))
    image.SetSpacing((ps, ps, float(record.patient.slice_spacing_mm)))
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{record.series_uid}.mhd"
    sitk.WriteImage(image, str(path), useCompression=False)
    return path
