"""Reading CT DICOM files into Hounsfield units, one frame (slice) at a time.

Stored values -> HU follows PS3.3 C.11.1 (Modality LUT: a Modality LUT Sequence, or
``HU = stored * slope + intercept``), per slice, and per frame for the enhanced
multi-frame objects (C.7.6.16.2.9, Pixel Value Transformation in the functional
groups). Pixel Padding Value and Pixel Padding Range Limit (C.7.5.1.1.2) are compared
with *stored* values, before any rescale, and padded pixels become air. Arithmetic is
done in float32: pydicom 3 returns int16/uint16 arrays, and under NumPy 2
``uint16 - 1024`` wraps around silently. MONOCHROME1 only says how to *display*
values (C.7.6.3.1.2); it never changes HU, so nothing here inverts it.

A file that is not a CT slice we can use raises :class:`SkippedFile` with a reason code.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.pixels import apply_modality_lut, get_decoder
from pydicom.uid import (
    CTImageStorage,
    EnhancedCTImageStorage,
    LegacyConvertedEnhancedCTImageStorage,
    MediaStorageDirectoryStorage,
)

from lungct.errors import SkippedFile, first_line

AIR_HU = -1000.0
CT_SOP_CLASSES = {CTImageStorage, EnhancedCTImageStorage, LegacyConvertedEnhancedCTImageStorage}
PREAMBLE = 128
PREFIX = b"DICM"  # after the preamble, in every Part 10 file


@dataclass(frozen=True)
class CTFrame:
    """One CT slice in HU with what the manifest and the series sort need."""

    hu: np.ndarray  # float32, rows x columns
    patient_id: str
    series_uid: str
    instance_number: int | None
    frame: int  # 0-based frame number; 0 for single-frame files
    slice_position: float | None  # mm along the slice normal; None without geometry
    rescale_type: str  # "HU" unless the file says otherwise
    transfer_syntax: str
    gantry_tilt: float | None  # degrees, when the file records it
    window: tuple[float, float] | None  # the file's own first Window Center/Width


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
    hu = stored.astype(np.float32)  # one image-sized buffer, rescaled in place
    hu *= np.float32(slope)
    hu += np.float32(intercept)
    if mask is not None:
        hu[mask] = AIR_HU
    return hu


def slice_position(position: object, orientation: object) -> float | None:
    """Position of a slice along its normal: Image Position (Patient) projected on the
    cross product of the Image Orientation (Patient) direction cosines (PS3.3 C.7.6.2.1.1)."""
    if position is None or orientation is None or len(position) != 3 or len(orientation) != 6:
        return None
    normal = np.cross(np.asarray(orientation[:3], float), np.asarray(orientation[3:], float))
    return float(np.dot(normal, np.asarray(position, dtype=float)))


def _first(value: object) -> float | None:
    """First value of a possibly multi-valued DS element."""
    if value is None or value == "":
        return None
    if isinstance(value, (list, tuple, pydicom.multival.MultiValue)):
        return float(value[0]) if len(value) else None
    return float(value)


def _item(ds: Dataset | None, sequence: str) -> Dataset | None:
    seq = ds.get(sequence) if ds is not None else None
    return seq[0] if seq else None


def _frame_attribute(ds: Dataset, index: int, sequence: str, keyword: str) -> object:
    """An attribute of an enhanced multi-frame object: per-frame group first, then shared."""
    per_frame = ds.get("PerFrameFunctionalGroupsSequence")
    groups = [per_frame[index] if per_frame and index < len(per_frame) else None]
    groups.append(_item(ds, "SharedFunctionalGroupsSequence"))
    for group in groups:
        item = _item(group, sequence)
        if item is not None and keyword in item:
            return item.get(keyword)
    return None


def has_dicom_prefix(path: Path) -> bool:
    """A DICOM Part 10 file: a 128-byte preamble, then ``DICM`` (PS3.10 7.1)."""
    with Path(path).open("rb") as stream:
        return stream.read(PREAMBLE + len(PREFIX))[PREAMBLE:] == PREFIX


def _check_preamble(path: Path) -> None:
    if path.stat().st_size == 0:
        raise SkippedFile("empty_file")
    if has_dicom_prefix(path):
        return
    try:  # a dataset without the Part 10 header, or not DICOM at all?
        with warnings.catch_warnings():  # forced reads of non-DICOM bytes warn at length
            warnings.simplefilter("ignore")
            ds = pydicom.dcmread(path, force=True, stop_before_pixels=True)
            looks_dicom = "SOPClassUID" in ds or "Modality" in ds
    except Exception:
        looks_dicom = False
    if looks_dicom:
        raise SkippedFile("no_preamble", "no 128-byte preamble and DICM prefix (PS3.10 7.1)")
    raise SkippedFile("not_dicom")


def _decoder_problem(ds: Dataset) -> str | None:
    """Why this file's pixel data cannot be decoded here, naming what would decode it."""
    syntax = ds.file_meta.get("TransferSyntaxUID")
    if syntax is None or not syntax.is_compressed:
        return None
    try:
        decoder = get_decoder(syntax)
    except NotImplementedError:
        return f"{syntax.name} ({syntax}): no decoder exists in pydicom for it"
    if decoder.is_available:
        return None
    needs = "; ".join(decoder.missing_dependencies) or "a decoder plugin"
    return f"{syntax.name} ({syntax}) needs {needs}"


def _native_length_short(ds: Dataset) -> bool:
    """Native (uncompressed) pixel data shorter than Rows x Columns x frames x bytes."""
    syntax = ds.file_meta.get("TransferSyntaxUID")
    if syntax is not None and syntax.is_compressed:
        return False
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    expected = (
        int(ds.Rows)
        * int(ds.Columns)
        * frames
        * int(ds.get("SamplesPerPixel", 1))
        * int(ds.BitsAllocated)
        // 8
    )
    return len(ds.PixelData) < expected


def read_ct(path: Path) -> list[CTFrame]:
    """Read one CT file (single-frame, Enhanced CT or Legacy Converted Enhanced CT)
    into HU frames; raise :class:`SkippedFile` with a reason code otherwise."""
    _check_preamble(path)
    try:
        ds = pydicom.dcmread(path)
    except InvalidDicomError as exc:
        raise SkippedFile("not_dicom", first_line(exc)) from None
    except Exception as exc:  # a header cut short or garbled
        try:
            pydicom.dcmread(path, stop_before_pixels=True)
        except Exception:
            raise SkippedFile("unreadable", f"{type(exc).__name__}: {exc}") from None
        raise SkippedFile("truncated_pixel_data", f"{type(exc).__name__}: {exc}") from None
    media = str(ds.file_meta.get("MediaStorageSOPClassUID", ""))
    if media == MediaStorageDirectoryStorage or "DirectoryRecordSequence" in ds:
        raise SkippedFile("dicomdir")
    sop_class = ds.get("SOPClassUID")
    if sop_class not in CT_SOP_CLASSES:
        name = getattr(sop_class, "name", None) or str(sop_class or "missing")
        raise SkippedFile("not_ct", f"SOP class {name}")
    if "LOCALIZER" in [str(v).upper() for v in ds.get("ImageType", [])]:
        raise SkippedFile("localizer")
    if "PixelData" not in ds:
        raise SkippedFile("no_pixel_data")
    problem = _decoder_problem(ds)
    if problem:
        raise SkippedFile("no_decoder", problem)
    if _native_length_short(ds):
        raise SkippedFile("truncated_pixel_data", f"{len(ds.PixelData)} bytes of pixel data")
    if int(ds.get("SamplesPerPixel", 1)) != 1:
        raise SkippedFile("not_grayscale", f"SamplesPerPixel {ds.SamplesPerPixel}")
    try:
        stored = ds.pixel_array
    except Exception as exc:
        raise SkippedFile("unreadable_pixels", f"{type(exc).__name__}: {exc}") from None
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    stored = stored.reshape(frames, int(ds.Rows), int(ds.Columns))
    return [_frame(ds, stored[i], i) for i in range(frames)]


def _frame(ds: Dataset, stored: np.ndarray, index: int) -> CTFrame:
    mask = padding_mask(
        stored,
        ds.get("PixelPaddingValue"),
        ds.get("PixelPaddingRangeLimit"),
        bits_stored=int(ds.get("BitsStored", 16)),
        signed=int(ds.get("PixelRepresentation", 0)) == 1,
    )
    if ds.SOPClassUID != CTImageStorage:  # enhanced objects: functional groups
        slope = _frame_attribute(ds, index, "PixelValueTransformationSequence", "RescaleSlope")
        intercept = _frame_attribute(
            ds, index, "PixelValueTransformationSequence", "RescaleIntercept"
        )
        rescale_type = _frame_attribute(
            ds, index, "PixelValueTransformationSequence", "RescaleType"
        )
        position = _frame_attribute(ds, index, "PlanePositionSequence", "ImagePositionPatient")
        orientation = _frame_attribute(
            ds, index, "PlaneOrientationSequence", "ImageOrientationPatient"
        )
        center = _frame_attribute(ds, index, "FrameVOILUTSequence", "WindowCenter")
        width = _frame_attribute(ds, index, "FrameVOILUTSequence", "WindowWidth")
        if slope is None and intercept is None:  # some writers keep the top-level module
            slope, intercept = ds.get("RescaleSlope"), ds.get("RescaleIntercept")
    else:
        slope, intercept = ds.get("RescaleSlope"), ds.get("RescaleIntercept")
        rescale_type = ds.get("RescaleType")
        position = ds.get("ImagePositionPatient")
        orientation = ds.get("ImageOrientationPatient")
        center, width = ds.get("WindowCenter"), ds.get("WindowWidth")
    if "ModalityLUTSequence" in ds and slope is None:
        # A lookup table instead of a linear rescale (PS3.3 C.11.1); pydicom applies it.
        hu = apply_modality_lut(stored, ds).astype(np.float32)
        if mask is not None:
            hu[mask] = AIR_HU
        rescale_type = rescale_type or ds.ModalityLUTSequence[0].get("ModalityLUTType")
    else:
        hu = stored_to_hu(
            stored,
            float(slope) if slope is not None else 1.0,
            float(intercept) if intercept is not None else 0.0,
            mask,
        )
    instance = ds.get("InstanceNumber")
    tilt = ds.get("GantryDetectorTilt")
    c, w = _first(center), _first(width)
    return CTFrame(
        hu=hu,
        patient_id=str(ds.get("PatientID", "")),
        series_uid=str(ds.get("SeriesInstanceUID", "")),
        instance_number=int(instance) if instance not in (None, "") else None,
        frame=index,
        slice_position=slice_position(position, orientation),
        rescale_type=str(rescale_type) if rescale_type else "HU",
        transfer_syntax=str(ds.file_meta.get("TransferSyntaxUID", "")),
        gantry_tilt=float(tilt) if tilt not in (None, "") else None,
        window=(c, w) if c is not None and w is not None and w > 0 else None,
    )
