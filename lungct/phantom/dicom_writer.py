"""Encoding HU slices as CT Image Storage DICOM datasets (Explicit VR Little Endian).

:func:`ct_slice_dataset` builds one single-frame CT slice with file meta, ready for
``ds.save_as(path, enforce_file_format=True)``; :func:`file_meta` and :func:`decimal_string`
are its building blocks.  Dates and times are fixed, so the same inputs always give the same
bytes.
"""

from __future__ import annotations

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

PADDING_VALUE = -2000  # stored value (-3024 HU with the default intercept), as GE scanners do

# Fixed dates/times: files must be byte-identical for the same seed, so no clock is read.
STUDY_DATE = "20240101"
STUDY_TIME = "120000"
MANUFACTURER = "lungct phantom"

_INT16 = np.iinfo(np.int16)


def decimal_string(value: float) -> str:
    """Decimal String representation (at most 16 characters, never '-0').

    Rounded to 6 decimals; integral values are written without a decimal point.
    """
    v = round(float(value), 6) + 0.0
    if v == int(v) and abs(v) < 1e15:
        return str(int(v))
    return format_number_as_ds(v)


def file_meta(sop_class_uid: str, sop_instance_uid: str) -> FileMetaDataset:
    """File Meta Information for an Explicit VR Little Endian file of one SOP instance."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class_uid
    meta.MediaStorageSOPInstanceUID = sop_instance_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    return meta


def _stored_values(
    hu: np.ndarray,
    rescale_intercept: float,
    rescale_slope: float,
    padding_value: int | None,
    fov_mask: np.ndarray | None,
) -> np.ndarray:
    """int16 stored values of a 2-D HU slice, padding applied (after checking the arguments)."""
    if hu.ndim != 2:
        raise ValueError(f"hu must be a 2-D slice, got shape {hu.shape}")
    if rescale_slope == 0:
        raise ValueError("rescale_slope must be non-zero")
    stored = np.rint((hu.astype(np.float64) - rescale_intercept) / rescale_slope)
    stored = np.clip(stored, _INT16.min, _INT16.max).astype(np.int16)
    if padding_value is not None and not _INT16.min <= padding_value <= _INT16.max:
        raise ValueError(f"padding_value {padding_value} outside the int16 range")
    if fov_mask is not None:
        fov_mask = np.asarray(fov_mask, dtype=bool)
        if fov_mask.shape != hu.shape:
            raise ValueError(f"fov_mask shape {fov_mask.shape} != slice shape {hu.shape}")
        if padding_value is None:
            raise ValueError("fov_mask requires a padding_value")
        stored[~fov_mask] = padding_value
    return stored


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
    padding_value = None if padding_value is None else int(padding_value)
    stored = _stored_values(hu, rescale_intercept, rescale_slope, padding_value, fov_mask)
    rows, cols = hu.shape
    if frame_of_reference_uid is None:
        frame_of_reference_uid = generate_uid(entropy_srcs=[str(study_uid), "frame-of-reference"])

    ds = Dataset()
    ds.file_meta = file_meta(CTImageStorage, sop_uid)
    # SOP Common, study, series and equipment
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = sop_uid
    ds.StudyDate = ds.SeriesDate = ds.ContentDate = STUDY_DATE
    ds.StudyTime = ds.SeriesTime = ds.ContentTime = STUDY_TIME
    ds.AccessionNumber = ""
    ds.Modality = "CT"
    ds.Manufacturer = MANUFACTURER
    ds.ReferringPhysicianName = ""
    ds.StudyDescription = "CT CHEST"
    ds.SeriesDescription = "Synthetic chest CT (lungct phantom)"
    ds.PatientName = patient_name if patient_name is not None else patient_id
    ds.PatientID = patient_id
    ds.PatientBirthDate = ""
    ds.PatientSex = patient_sex or ""
    if patient_age is not None:
        ds.PatientAge = patient_age
    ds.BodyPartExamined = "CHEST"
    ds.SliceThickness = decimal_string(slice_thickness_mm)
    ds.KVP = "120"
    ds.ConvolutionKernel = "STANDARD"
    ds.PatientPosition = "HFS"
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid
    ds.StudyID = "1"
    ds.SeriesNumber = 1
    ds.AcquisitionNumber = 1
    ds.InstanceNumber = int(instance_number)
    # Image plane: axial, centred on the isocentre
    x0 = -(cols - 1) / 2.0 * pixel_spacing_mm
    y0 = -(rows - 1) / 2.0 * pixel_spacing_mm
    ds.ImagePositionPatient = [decimal_string(x0), decimal_string(y0), decimal_string(z_mm)]
    ds.ImageOrientationPatient = ["1", "0", "0", "0", "1", "0"]
    ds.FrameOfReferenceUID = frame_of_reference_uid
    ds.PositionReferenceIndicator = ""
    ds.SliceLocation = decimal_string(z_mm)
    ds.PixelSpacing = [decimal_string(pixel_spacing_mm), decimal_string(pixel_spacing_mm)]
    ds.set_pixel_data(stored, "MONOCHROME2", 16, generate_instance_uid=False)
    if padding_value is not None:
        ds.PixelPaddingValue = padding_value
    ds.WindowCenter = "-600"
    ds.WindowWidth = "1500"
    ds.RescaleIntercept = decimal_string(rescale_intercept)
    ds.RescaleSlope = decimal_string(rescale_slope)
    ds.RescaleType = "HU"
    return ds
