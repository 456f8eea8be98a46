"""Reading CT DICOM slices into Hounsfield units.

Stored values -> HU follows PS3.3 C.11.1 (Modality LUT: ``HU = stored * slope +
intercept``) with the padding rules of C.7.5.1.1.2 (Pixel Padding Value is
compared with *stored* values, before any rescale). Pixel arithmetic is done in
float32: pydicom 3 returns int16/uint16 arrays, and under NumPy 2 ``uint16 - 1024``
wraps around silently.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
from pydicom.errors import InvalidDicomError
from pydicom.uid import CTImageStorage

from lungct.errors import SkippedFile

AIR_HU = -1000.0


@dataclass(frozen=True)
class CTSlice:
    hu: np.ndarray  # float32, rows x columns
    patient_id: str
    series_uid: str
    instance_number: int | None
    slice_position: float | None  # mm along the slice normal; None without geometry


def padding_mask(
    stored: np.ndarray,
    padding_value: int | None,
    padding_limit: int | None = None,
    bits_stored: int = 16,
    signed: bool = True,
) -> np.ndarray | None:
    """Pixels that are padding (PS3.3 C.7.5.1.1.2), compared on stored values.

    A negative padding value may arrive encoded as unsigned (e.g. -2000 as 63536
    when the VR was resolved to US); it is re-interpreted for signed pixel data.
    Returns None when the file declares no padding.
    """
    if padding_value is None:
        return None

    def as_stored(value: int) -> int:
        value = int(value)
        if signed and value >= 2 ** (bits_stored - 1):
            value -= 2**bits_stored
        return value

    low = as_stored(padding_value)
    if padding_limit is None:
        return stored == low
    high = as_stored(padding_limit)
    low, high = min(low, high), max(low, high)
    return (stored >= low) & (stored <= high)


def stored_to_hu(
    stored: np.ndarray,
    slope: float = 1.0,
    intercept: float = 0.0,
    mask: np.ndarray | None = None,
) -> np.ndarray:
    """Apply the CT rescale (PS3.3 C.11.1.1.2) in float32; masked (padding) pixels become air."""
    hu = stored.astype(np.float32) * np.float32(slope) + np.float32(intercept)
    if mask is not None:
        hu[mask] = AIR_HU
    return hu


def slice_position(ds: pydicom.Dataset) -> float | None:
    """Position of a slice along its normal: Image Position (Patient) projected on the
    cross product of the Image Orientation (Patient) direction cosines (PS3.3 C.7.6.2.1.1)."""
    ipp = ds.get("ImagePositionPatient")
    iop = ds.get("ImageOrientationPatient")
    if ipp is None or iop is None or len(ipp) != 3 or len(iop) != 6:
        return None
    normal = np.cross(np.asarray(iop[:3], dtype=float), np.asarray(iop[3:], dtype=float))
    return float(np.dot(normal, np.asarray(ipp, dtype=float)))


def read_ct_slice(path: Path) -> CTSlice:
    """Read one CT Image Storage file into HU; raise :class:`SkippedFile` with a reason code."""
    try:
        ds = pydicom.dcmread(path)
    except InvalidDicomError as exc:
        raise SkippedFile("not_dicom", str(exc).splitlines()[0]) from None
    except Exception as exc:  # truncated or garbled headers
        raise SkippedFile("unreadable", f"{type(exc).__name__}: {exc}") from None
    sop_class = str(ds.get("SOPClassUID", ""))
    if sop_class != CTImageStorage or ds.get("Modality") != "CT":
        raise SkippedFile("not_ct", f"SOP class {sop_class or 'missing'}")
    if "PixelData" not in ds:
        raise SkippedFile("no_pixel_data")
    try:
        stored = ds.pixel_array
    except Exception as exc:
        raise SkippedFile("unreadable_pixels", f"{type(exc).__name__}: {exc}") from None
    if stored.ndim != 2:
        raise SkippedFile("not_single_frame", f"pixel array shape {stored.shape}")
    mask = padding_mask(
        stored,
        ds.get("PixelPaddingValue"),
        ds.get("PixelPaddingRangeLimit"),
        bits_stored=int(ds.get("BitsStored", 16)),
        signed=int(ds.get("PixelRepresentation", 0)) == 1,
    )
    hu = stored_to_hu(
        stored,
        float(ds.get("RescaleSlope", 1.0)),
        float(ds.get("RescaleIntercept", 0.0)),
        mask,
    )
    instance = ds.get("InstanceNumber")
    return CTSlice(
        hu=hu,
        patient_id=str(ds.get("PatientID", "")),
        series_uid=str(ds.get("SeriesInstanceUID", "")),
        instance_number=int(instance) if instance is not None else None,
        slice_position=slice_position(ds),
    )
