"""Deterministic synthetic chest-CT cohort written as genuine CT Image Storage DICOM files.

The phantom is the project's default data set: a fresh clone can run the whole pipeline offline
while still exercising the real DICOM reading path (rescale slope/intercept, pixel padding,
slice geometry).

Modules
-------
* :mod:`~lungct.phantom.geometry`: image grid, signed-distance shapes, painting, FOV mask.
* :mod:`~lungct.phantom.anatomy`: the sampled anatomy of a patient and its slice-level geometry.
* :mod:`~lungct.phantom.layers`: body, lung and mediastinum occupancies; one slice's anatomy.
* :mod:`~lungct.phantom.vessels` and :mod:`~lungct.phantom.nodules`: vessels and nodules.
* :mod:`~lungct.phantom.patient`: :func:`phantom_patient`, rendering one patient step by step.
* :mod:`~lungct.phantom.dicom_writer`: :func:`ct_slice_dataset`, one slice as CT DICOM.
* :mod:`~lungct.phantom.cohort`: labels, patient ids and rngs, :func:`write_cohort`.

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
* Anatomy (HU): air -1000, subcutaneous fat ~-100, muscle/soft tissue between 30 and 60, lungs ~-850 with
  texture, a gravity gradient and vessels (~+40), mediastinal fat, heart and aorta, vertebra,
  spinal canal, ribs and sternum (bone 180..1000), Gaussian noise (sigma 10..25 HU per patient).
* Classes: ``benign`` and ``malignant`` patients have one nodule
  (:mod:`~lungct.phantom.nodules`), ``normal`` ones vessels only.
* Annotated forms (``write_cohort(annotations=...)``, :mod:`~lungct.phantom.cohort`) and any
  lossless transfer syntax (:mod:`~lungct.phantom.transfer_syntaxes`).
* Determinism: the same seed gives byte-identical files.  Every draw from a patient's rng
  happens in a fixed order (see :mod:`~lungct.phantom.patient`), so any change to the order of
  draws or of floating-point operations changes the cohort.
"""

from __future__ import annotations

from lungct.names import FORM_LAYOUTS
from lungct.params import SYNTHETIC_CLASSES as CLASSES
from lungct.phantom.cohort import (
    ANNOTATION_FORMS,
    assign_labels,
    patient_id,
    patient_rng,
    write_cohort,
)
from lungct.phantom.dicom_writer import PADDING_VALUE, ct_slice_dataset
from lungct.phantom.geometry import FOV_MM, fov_mask
from lungct.phantom.patient import PhantomPatient, phantom_patient, phantom_slices_hu

__all__ = [
    "ANNOTATION_FORMS",
    "CLASSES",
    "FORM_LAYOUTS",
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
