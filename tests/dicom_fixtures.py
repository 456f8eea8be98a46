"""Small deterministic DICOM fixtures, each exercising one rule of the standard.

Every builder takes a ``folder`` (created if missing) and an optional ``patient_id``, writes one
or a few files with names unique across builders (so all of them can share one folder) and
returns an :class:`Expect` with the ground truth a reader test needs.

Conventions
-----------
* Images are ``ROWS`` x ``COLS`` (16 x 20, deliberately not square so that a Rows/Columns mix-up
  shows) with hand-chosen integer HU (:func:`chest_hu`), so expected HU are exact in float32.
* ``Expect.hu`` is the true HU of the pixel data wherever it is known, float32: ``(rows, cols)``
  for a single-frame file, ``(n, rows, cols)`` for a series (slice ``i`` is ``Expect.order[i]``)
  or a multi-frame file (frame ``i`` is frame number ``i + 1`` of the file).  It is also given for
  some files that must be skipped (``no_preamble``, ``ct_localizer``), so a test
  can tell what a lenient reader would have produced; ``Expect.reason`` alone says whether the
  file must convert (``""``) or be skipped with that reason code.
* Padding (PS3.3 C.7.5.1.1.2) maps to air, -1000 HU, in ``Expect.hu``; ``Expect.padding_mask``
  marks those pixels.
* Slice order: ``Expect.order`` lists a series' files by ascending position along the slice
  normal, ``dot(ImagePositionPatient, row_cosines x column_cosines)`` (PS3.3 C.7.6.2.1.1); with
  the axial orientation ``[1, 0, 0, 0, 1, 0]`` used here that is ascending z, i.e. inferior
  first.  Ties and files without geometry fall back to ascending InstanceNumber.
* UIDs are derived from the builder name, patient id and slice index, so output is
  byte-for-byte reproducible; the only randomness is ``numpy.random.default_rng(SEED + k)``.
"""

from __future__ import annotations

import math
import struct
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pydicom
from pydicom.data import get_testdata_file
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.encaps import encapsulate, generate_frames
from pydicom.fileset import FileSet
from pydicom.filewriter import dcmwrite
from pydicom.sequence import Sequence
from pydicom.tag import Tag
from pydicom.uid import (
    BasicTextSRStorage,
    CTImageStorage,
    EnhancedCTImageStorage,
    ExplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGLSLossless,
    LegacyConvertedEnhancedCTImageStorage,
    RLELossless,
    SecondaryCaptureImageStorage,
    generate_uid,
)

from lungct.phantom.dicom_writer import ct_slice_dataset, decimal_string, file_meta

__all__ = [
    "BUILDERS",
    "COLS",
    "DEFAULT_PATIENT_ID",
    "PIXEL_SPACING",
    "ROWS",
    "SEED",
    "Expect",
    "build_all",
    "chest_hu",
]

ROWS = 16
COLS = 20
PIXEL_SPACING = 2.0  # mm
SLICE_THICKNESS = 5.0  # mm
SEED = 20240101
DEFAULT_PATIENT_ID = "FIX-001"
AIR = -1000.0
PADDING = -2000  # stored value, as in lungct.phantom and GE scanners


@dataclass
class Expect:
    """Ground truth for one fixture.

    ``path`` is the file under test for single-file builders and ``None`` for builders that
    write a series (use ``order`` / ``series``).  ``paths`` lists every file the builder wrote
    that a reader walking the folder meets, in write order (files in ``extra`` excluded).
    """

    path: Path | None
    hu: np.ndarray | None
    reason: str = ""
    paths: list[Path] = field(default_factory=list)
    # stored values as pydicom's pixel_array returns them (after sign extension); same layout as hu
    stored: np.ndarray | None = None
    # series: files sorted by ascending position along the normal (InstanceNumber fallback)
    order: list[Path] | None = None
    # ImagePositionPatient per slice of ``order``, or per frame of a multi-frame file
    positions: list[tuple[float, float, float]] | None = None
    series: dict[str, list[Path]] | None = None  # SeriesInstanceUID -> paths in slice order
    series_hu: dict[str, np.ndarray] | None = None  # SeriesInstanceUID -> (n, rows, cols) HU
    padding_mask: np.ndarray | None = None  # True where the stored value is pixel padding
    duplicates: list[Path] = field(default_factory=list)  # files sharing one position
    transfer_syntax: str = ""  # TransferSyntaxUID of ``path`` ("" when not a DICOM file)
    sop_class_uid: str = ""
    rescale_type: str = "HU"  # RescaleType / ModalityLUTType the reader should report
    tilt: float = 0.0  # GantryDetectorTilt, degrees
    extra: list[Path] = field(default_factory=list)  # companion files (DICOMDIR instances)
    patient_id: str = DEFAULT_PATIENT_ID


# --------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------
def chest_hu(variant: int = 0, rows: int = ROWS, cols: int = COLS) -> np.ndarray:
    """A hand-made integer HU slice: air -1000 around an elliptical body (fat rim -100, soft
    tissue 40), two unequal lungs (-850) with a 2 x 2 nodule whose place and density depend on
    ``variant``, a vertebra (700) with a spinal canal (20), and -4..+4 HU of seeded noise inside
    the body.  Geometry is laid out on the 16 x 20 grid and scaled to ``rows`` x ``cols``.
    Returns int32 within [-1000, 704]; different variants give different slices."""
    r, c = np.mgrid[0:rows, 0:cols].astype(np.float64)
    sy, sx = rows / 16.0, cols / 20.0
    cy, cx = (rows - 1) / 2.0, (cols - 1) / 2.0
    ay, ax = rows * 0.47, cols * 0.48
    hu = np.full((rows, cols), -1000, dtype=np.int32)
    body = ((r - cy) / ay) ** 2 + ((c - cx) / ax) ** 2 <= 1.0
    inner = ((r - cy) / (ay - 1.2 * sy)) ** 2 + ((c - cx) / (ax - 1.2 * sx)) ** 2 <= 1.0
    hu[body] = -100
    hu[inner] = 40
    # patient right lung (image left) is the larger one
    right = ((r - (cy - sy)) / (4.6 * sy)) ** 2 + ((c - (cx - 4.6 * sx)) / (3.4 * sx)) ** 2 <= 1
    left = ((r - (cy - 1.5 * sy)) / (3.8 * sy)) ** 2 + (
        (c - (cx + 4.8 * sx)) / (2.8 * sx)
    ) ** 2 <= 1
    hu[right & inner] = -850
    hu[left & inner] = -850
    k = max(3, round(3 * sy))
    y0, x0 = int(cy + 4 * sy), int(cx - sx)
    hu[y0 : y0 + k, x0 : x0 + k] = 700
    hu[y0, x0 + k // 2] = 20
    ny, nx = int(cy - 2 * sy) + variant % 3, int(cx - 6 * sx) + variant % 4
    hu[ny : ny + 2, nx : nx + 2] = 30 + 10 * (variant % 20)
    rng = np.random.default_rng(SEED + variant)
    noise = rng.integers(-4, 5, size=(rows, cols))
    hu[body] += noise[body]
    return hu


def _uid(*parts: object) -> str:
    return generate_uid(entropy_srcs=["lungct-tests-dicom-fixtures", *map(str, parts)])


def _folder(folder: Path) -> Path:
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def _f32(values: np.ndarray) -> np.ndarray:
    return np.asarray(values, dtype=np.float64).astype(np.float32)


def _ct(
    stored: np.ndarray,
    *,
    key: str,
    patient_id: str,
    index: int = 0,
    instance: int = 1,
    z: float = 0.0,
    intercept: float = -1024.0,
    slope: float = 1.0,
    bits_stored: int = 16,
    series: str = "",
    thickness: float = SLICE_THICKNESS,
) -> Dataset:
    """A CT Image Storage dataset (via :func:`lungct.phantom.dicom_writer.ct_slice_dataset`)
    holding exactly the integer ``stored`` values (int16 or uint16) and the given rescale."""
    rows, cols = stored.shape
    ds = ct_slice_dataset(
        np.zeros((rows, cols), dtype=np.float32),
        patient_id=patient_id,
        study_uid=_uid(key, patient_id, "study"),
        series_uid=_uid(key, patient_id, "series", series),
        sop_uid=_uid(key, patient_id, "instance", series, index),
        instance_number=instance,
        z_mm=z,
        pixel_spacing_mm=PIXEL_SPACING,
        slice_thickness_mm=thickness,
        rescale_intercept=intercept,
        rescale_slope=slope,
        padding_value=None,
    )
    ds.set_pixel_data(stored, "MONOCHROME2", bits_stored, generate_instance_uid=False)
    ds.SeriesDescription = f"lungct fixture {key}{(' ' + series) if series else ''}"
    return ds


def _save(ds: Dataset, path: Path) -> Path:
    ds.save_as(path, enforce_file_format=True)
    return path


def _position(ds: Dataset) -> tuple[float, float, float]:
    x, y, z = (float(v) for v in ds.ImagePositionPatient)
    return (x, y, z)


def _single(
    ds: Dataset, path: Path, stored: np.ndarray, hu: np.ndarray | None, patient_id: str, **kw
) -> Expect:
    _save(ds, path)
    return Expect(
        path=path,
        hu=None if hu is None else _f32(hu),
        paths=[path],
        stored=stored,
        transfer_syntax=str(ds.file_meta.TransferSyntaxUID),
        sop_class_uid=str(ds.SOPClassUID),
        patient_id=patient_id,
        **kw,
    )


def _stored_from_hu(hu: np.ndarray, intercept: float, slope: float = 1.0) -> np.ndarray:
    stored = (hu.astype(np.float64) - intercept) / slope
    assert np.array_equal(stored, np.rint(stored)), "hand-chosen values must be exact"
    return stored.astype(np.int16)


def _padding_corners(rows: int = ROWS, cols: int = COLS) -> np.ndarray:
    """Pixels outside the reconstruction circle (the corners), as scanners pad them."""
    r, c = np.mgrid[0:rows, 0:cols].astype(np.float64)
    cy, cx = (rows - 1) / 2.0, (cols - 1) / 2.0
    return ((r - cy) / (rows / 2.0)) ** 2 + ((c - cx) / (cols / 2.0)) ** 2 > 1.0


# --------------------------------------------------------------------------------------------
# Single CT slices: pixel encoding and the Modality LUT
# --------------------------------------------------------------------------------------------
def ct_basic(folder: Path, patient_id: str = DEFAULT_PATIENT_ID) -> Expect:
    """Plain CT Image Storage slice: signed int16 (PixelRepresentation 1), Rescale Intercept
    -1024, Slope 1 (PS3.3 C.8.2.1 CT Image, C.11.1 Modality LUT: HU = stored * m + b)."""
    folder = _folder(folder)
    hu = chest_hu(0)
    stored = _stored_from_hu(hu, -1024.0)
    ds = _ct(stored, key="ct_basic", patient_id=patient_id)
    return _single(ds, folder / "ct_basic.dcm", stored, hu, patient_id)


def ct_padding_signed(folder: Path, patient_id: str = DEFAULT_PATIENT_ID) -> Expect:
    """Pixel Padding Value -2000 (VR SS, signed pixel data) on the corners outside the
    reconstruction circle (PS3.3 C.7.5.1.1.2 Pixel Padding Value).  Padding is compared on stored
    values, before rescale; padded pixels are air (-1000 HU), not -2000 - 1024 = -3024."""
    folder = _folder(folder)
    hu = chest_hu(1)
    mask = _padding_corners()
    stored = _stored_from_hu(hu, -1024.0)
    stored[mask] = PADDING
    hu = hu.astype(np.float64)
    hu[mask] = AIR
    ds = _ct(stored, key="ct_padding_signed", patient_id=patient_id)
    ds.add(DataElement(Tag("PixelPaddingValue"), "SS", PADDING))
    return _single(ds, folder / "ct_padding_signed.dcm", stored, hu, patient_id, padding_mask=mask)


def ct_padding_unsigned_encoded(folder: Path, patient_id: str = DEFAULT_PATIENT_ID) -> Expect:
    """Signed pixel data (PixelRepresentation 1) whose Pixel Padding Value is written with VR US
    as 63536, the unsigned reading of the 16-bit pattern of -2000 (0xF830).  PS3.3 C.7.5.1.1.2
    says the VR follows Pixel Representation, so a reader must reinterpret 63536 as -2000 (or
    compare bit patterns); padded pixels are air."""
    folder = _folder(folder)
    hu = chest_hu(2)
    mask = _padding_corners()
    stored = _stored_from_hu(hu, -1024.0)
    stored[mask] = PADDING
    hu = hu.astype(np.float64)
    hu[mask] = AIR
    ds = _ct(stored, key="ct_padding_unsigned_encoded", patient_id=patient_id)
    ds.add(DataElement(Tag("PixelPaddingValue"), "US", PADDING & 0xFFFF))
    return _single(
        ds, folder / "ct_padding_unsigned_encoded.dcm", stored, hu, patient_id, padding_mask=mask
    )


def ct_padding_range(folder: Path, patient_id: str = DEFAULT_PATIENT_ID) -> Expect:
    """Pixel Padding Value -2000 with Pixel Padding Range Limit -1500 (PS3.3 C.7.5.1.1.2 and
    C.7.6.3 Image Pixel): every stored value in the closed range [-2000, -1500] is padding.
    Padded pixels cycle through -2000, -1750, -1500, -1999 and -1501 (both ends and just
    inside them); all are air.  Unpadded stored values are all above -1500."""
    folder = _folder(folder)
    hu = chest_hu(3)
    mask = _padding_corners()
    stored = _stored_from_hu(hu, -1024.0)
    pad_values = np.array([-2000, -1750, -1500, -1999, -1501], dtype=np.int16)
    stored[mask] = pad_values[np.arange(int(mask.sum())) % pad_values.size]
    hu = hu.astype(np.float64)
    hu[mask] = AIR
    ds = _ct(stored, key="ct_padding_range", patient_id=patient_id)
    ds.add(DataElement(Tag("PixelPaddingValue"), "SS", -2000))
    ds.add(DataElement(Tag("PixelPaddingRangeLimit"), "SS", -1500))
    return _single(ds, folder / "ct_padding_range.dcm", stored, hu, patient_id, padding_mask=mask)


def ct_monochrome1(folder: Path, patient_id: str = DEFAULT_PATIENT_ID) -> Expect:
    """Photometric Interpretation MONOCHROME1 (PS3.3 C.7.6.3.1.2): it only says how to *display*
    the values (minimum is white).  The Modality LUT still gives HU from stored values, so HU is
    the plain rescale, never inverted."""
    folder = _folder(folder)
    hu = chest_hu(4)
    stored = _stored_from_hu(hu, -1024.0)
    ds = _ct(stored, key="ct_monochrome1", patient_id=patient_id)
    ds.PhotometricInterpretation = "MONOCHROME1"
    return _single(ds, folder / "ct_monochrome1.dcm", stored, hu, patient_id)


def ct_slope_half(folder: Path, patient_id: str = DEFAULT_PATIENT_ID) -> Expect:
    """Rescale Slope 0.5, Rescale Intercept -1000 (PS3.3 C.11.1.1.2): HU = 0.5 * stored - 1000;
    odd stored values give half-HU values (exact in float32)."""
    folder = _folder(folder)
    base = chest_hu(5)
    stored = (2 * (base + 1000) + (np.indices(base.shape).sum(axis=0) % 2)).astype(np.int16)
    hu = stored.astype(np.float64) * 0.5 - 1000.0
    ds = _ct(stored, key="ct_slope_half", patient_id=patient_id, intercept=-1000.0, slope=0.5)
    return _single(ds, folder / "ct_slope_half.dcm", stored, hu, patient_id)


def ct_12bit_unsigned(folder: Path, patient_id: str = DEFAULT_PATIENT_ID) -> Expect:
    """Bits Allocated 16, Bits Stored 12, High Bit 11, Pixel Representation 0 (PS3.3 C.7.6.3.1,
    PS3.5 8.1.1): uint16 stored values 0..4095 (both ends present), intercept -1024."""
    folder = _folder(folder)
    hu = chest_hu(6)
    stored = (hu + 1024).astype(np.uint16)
    stored[0, 0], stored[0, 1] = 0, 4095  # the extremes of 12 bits
    hu = stored.astype(np.float64) - 1024.0
    ds = _ct(stored, key="ct_12bit_unsigned", patient_id=patient_id, bits_stored=12)
    return _single(ds, folder / "ct_12bit_unsigned.dcm", stored, hu, patient_id)


def ct_12bit_signed(folder: Path, patient_id: str = DEFAULT_PATIENT_ID) -> Expect:
    """Bits Stored 12, High Bit 11, Pixel Representation 1, intercept 0 (PS3.5 8.1.1): stored
    values are 12-bit two's complement and the 4 unused high bits of each 16-bit word are written
    as ZERO (not sign-extended), e.g. -1000 is stored as 0x0C18.  Reading the words as int16
    gives 3096; the reader must sign-extend from bit 11 (pydicom's pixel_array does).  Range
    -2048..2047, both ends present."""
    folder = _folder(folder)
    hu = chest_hu(7)
    stored = hu.astype(np.int16)
    stored[0, 0], stored[0, 1] = -2048, 2047
    hu = stored.astype(np.float64)
    ds = _ct(stored, key="ct_12bit_signed", patient_id=patient_id, intercept=0.0, bits_stored=12)
    ds.PixelData = (stored.view(np.uint16) & 0x0FFF).astype("<u2").tobytes()
    return _single(ds, folder / "ct_12bit_signed.dcm", stored, hu, patient_id)


def ct_modality_lut_sequence(folder: Path, patient_id: str = DEFAULT_PATIENT_ID) -> Expect:
    """Modality LUT Sequence instead of Rescale Slope/Intercept (PS3.3 C.11.1, C.11.1.1): LUT
    Descriptor [64 entries, first mapped 100, 16 bits], LUT Data a non-linear table (entry k is
    k * k), Modality LUT Type "HU".  Stored values below 100 map to the first entry, values above
    163 to the last (C.11.1.1 LUT Descriptor).  The LUT output is unsigned, so HU are 0..3969.
    The CT Image module makes Rescale Intercept/Slope type 1, so this file is deliberately
    non-conformant on that point; it has none of them."""
    folder = _folder(folder)
    entries, first = 64, 100
    lut = (np.arange(entries) ** 2).astype(np.uint16)
    r, c = np.indices((ROWS, COLS))
    stored = (first + (r * COLS + c) % entries).astype(np.uint16)
    stored[0, :4] = [0, 50, 99, 100]  # below or at the first mapped value
    stored[-1, -4:] = [163, 164, 500, 4095]  # at or above the last mapped value
    hu = lut[np.clip(stored.astype(np.int64) - first, 0, entries - 1)].astype(np.float64)
    ds = _ct(stored, key="ct_modality_lut_sequence", patient_id=patient_id)
    for keyword in ("RescaleIntercept", "RescaleSlope", "RescaleType"):
        delattr(ds, keyword)
    ds.WindowCenter, ds.WindowWidth = "1000", "2000"
    item = Dataset()
    item.add(DataElement(Tag("LUTDescriptor"), "US", [entries, first, 16]))
    item.ModalityLUTType = "HU"
    item.add(DataElement(Tag("LUTData"), "OW", lut.astype("<u2").tobytes()))
    ds.ModalityLUTSequence = Sequence([item])
    return _single(ds, folder / "ct_modality_lut_sequence.dcm", stored, hu, patient_id)


def ct_rescale_type_not_hu(folder: Path, patient_id: str = DEFAULT_PATIENT_ID) -> Expect:
    """Rescale Type "US" (unspecified) instead of "HU" (PS3.3 C.11.1.1.2): the rescale still
    applies and the file converts, but the output units are not declared HU, so the reader
    should report ``rescale_type == "US"`` for the manifest to flag."""
    folder = _folder(folder)
    hu = chest_hu(8)
    stored = _stored_from_hu(hu, -1024.0)
    ds = _ct(stored, key="ct_rescale_type_not_hu", patient_id=patient_id)
    ds.RescaleType = "US"
    return _single(
        ds, folder / "ct_rescale_type_not_hu.dcm", stored, hu, patient_id, rescale_type="US"
    )


# --------------------------------------------------------------------------------------------
# Series: per-slice rescale and slice geometry
# --------------------------------------------------------------------------------------------
def _series(
    folder: Path,
    key: str,
    patient_id: str,
    slices: list[dict],
    *,
    thickness: float = SLICE_THICKNESS,
) -> tuple[list[Path], list[Dataset], list[np.ndarray], list[np.ndarray]]:
    """Write one CT per ``slices`` entry (keys: name, z, instance, variant, intercept, series,
    y_shift); return paths, datasets, stored arrays and HU arrays in write order."""
    paths, dss, stored_all, hu_all = [], [], [], []
    for i, s in enumerate(slices):
        hu = chest_hu(s.get("variant", i))
        intercept = s.get("intercept", -1024.0)
        stored = _stored_from_hu(hu, intercept)
        ds = _ct(
            stored,
            key=key,
            patient_id=patient_id,
            index=i,
            instance=s["instance"],
            z=s.get("z", 0.0),
            intercept=intercept,
            series=s.get("series", ""),
            thickness=thickness,
        )
        if "y_shift" in s:
            x, y, z = _position(ds)
            ds.ImagePositionPatient = [
                decimal_string(x),
                decimal_string(y + s["y_shift"]),
                decimal_string(z),
            ]
        path = _save(ds, folder / s["name"])
        paths.append(path)
        dss.append(ds)
        stored_all.append(stored)
        hu_all.append(hu)
    return paths, dss, stored_all, hu_all


def _sort_key(ds: Dataset) -> tuple[float, int]:
    if "ImagePositionPatient" in ds and "ImageOrientationPatient" in ds:
        iop = np.asarray([float(v) for v in ds.ImageOrientationPatient])
        normal = np.cross(iop[:3], iop[3:])
        return (float(np.dot(normal, np.asarray(_position(ds)))), int(ds.InstanceNumber))
    return (0.0, int(ds.InstanceNumber))


def _series_expect(
    paths: list[Path],
    dss: list[Dataset],
    stored: list[np.ndarray],
    hu: list[np.ndarray],
    patient_id: str,
    **kw,
) -> Expect:
    idx = sorted(range(len(paths)), key=lambda i: _sort_key(dss[i]))
    has_geometry = all("ImagePositionPatient" in d for d in dss)
    return Expect(
        path=None,
        hu=_f32(np.stack([hu[i] for i in idx])),
        paths=list(paths),
        stored=np.stack([stored[i] for i in idx]),
        order=[paths[i] for i in idx],
        positions=[_position(dss[i]) for i in idx] if has_geometry else None,
        transfer_syntax=ExplicitVRLittleEndian,
        sop_class_uid=CTImageStorage,
        patient_id=patient_id,
        **kw,
    )


def series_per_slice_intercept(folder: Path, patient_id: str = DEFAULT_PATIENT_ID) -> Expect:
    """One series of 3 slices whose Rescale Intercept differs per slice (-1024, -1000, 0) with
    stored values chosen so all three hold the same HU: the Modality LUT (PS3.3 C.11.1) is a
    per-instance attribute and must be read from each file, not once per series."""
    folder = _folder(folder)
    slices = [
        {"name": "intercept_0.dcm", "z": 10.0, "instance": 1, "variant": 9, "intercept": -1024.0},
        {"name": "intercept_1.dcm", "z": 5.0, "instance": 2, "variant": 9, "intercept": -1000.0},
        {"name": "intercept_2.dcm", "z": 0.0, "instance": 3, "variant": 9, "intercept": 0.0},
    ]
    return _series_expect(
        *_series(folder, "series_per_slice_intercept", patient_id, slices), patient_id
    )


def series_shuffled_instances(folder: Path, patient_id: str = DEFAULT_PATIENT_ID) -> Expect:
    """4 slices whose Instance Number order (and file name order) disagrees with their Image
    Position (Patient) order: slices are ordered by position along the normal (PS3.3
    C.7.6.2.1.1), not by Instance Number (C.7.6.1, which carries no spatial meaning).  Each slice
    has different HU so the order can be checked from pixels."""
    folder = _folder(folder)
    slices = [
        {"name": "shuffled_00.dcm", "z": 7.5, "instance": 3, "variant": 10},
        {"name": "shuffled_01.dcm", "z": 0.0, "instance": 1, "variant": 11},
        {"name": "shuffled_02.dcm", "z": 5.0, "instance": 4, "variant": 12},
        {"name": "shuffled_03.dcm", "z": 2.5, "instance": 2, "variant": 13},
    ]
    return _series_expect(
        *_series(folder, "series_shuffled_instances", patient_id, slices, thickness=2.5),
        patient_id,
    )


def series_no_position(folder: Path, patient_id: str = DEFAULT_PATIENT_ID) -> Expect:
    """3 slices without Image Position/Orientation (Patient) and without Slice Location (the
    Image Plane module is absent, PS3.3 C.7.6.2): the only order left is Instance Number
    (C.7.6.1), ascending; file names disagree with it.  ``positions`` is None."""
    folder = _folder(folder)
    slices = [
        {"name": "noposition_a.dcm", "instance": 2, "variant": 14},
        {"name": "noposition_b.dcm", "instance": 3, "variant": 15},
        {"name": "noposition_c.dcm", "instance": 1, "variant": 16},
    ]
    key = "series_no_position"
    paths, dss, stored, hu = _series(folder, key, patient_id, slices)
    for ds, path in zip(dss, paths, strict=True):
        for keyword in ("ImagePositionPatient", "ImageOrientationPatient", "SliceLocation"):
            delattr(ds, keyword)
        _save(ds, path)
    return _series_expect(paths, dss, stored, hu, patient_id)


def two_series_one_folder(folder: Path, patient_id: str = DEFAULT_PATIENT_ID) -> Expect:
    """Two series of one study and patient (different Series Instance UID, PS3.3 C.7.3.1) with 2
    slices each, files interleaved in one folder: grouping must use Series Instance UID, not the
    folder.  ``series`` maps each UID to its paths in slice order, ``series_hu`` to its HU."""
    folder = _folder(folder)
    slices = [
        {"name": "twoseries_0.dcm", "z": 0.0, "instance": 1, "variant": 17, "series": "A"},
        {"name": "twoseries_1.dcm", "z": 0.0, "instance": 1, "variant": 18, "series": "B"},
        {"name": "twoseries_2.dcm", "z": 5.0, "instance": 2, "variant": 19, "series": "A"},
        {"name": "twoseries_3.dcm", "z": 2.0, "instance": 2, "variant": 20, "series": "B"},
    ]
    paths, dss, stored, hu = _series(folder, "two_series_one_folder", patient_id, slices)
    dss[1].SeriesNumber = dss[3].SeriesNumber = 2
    dss[1].SliceThickness = dss[3].SliceThickness = "2"
    for i in (1, 3):
        _save(dss[i], paths[i])
    series: dict[str, list[Path]] = {}
    series_hu: dict[str, np.ndarray] = {}
    for uid in dict.fromkeys(str(d.SeriesInstanceUID) for d in dss):
        members = [i for i, d in enumerate(dss) if d.SeriesInstanceUID == uid]
        sub = _series_expect(
            [paths[i] for i in members],
            [dss[i] for i in members],
            [stored[i] for i in members],
            [hu[i] for i in members],
            patient_id,
        )
        series[uid] = sub.order or []
        series_hu[uid] = sub.hu
    return Expect(
        path=None,
        hu=None,
        paths=paths,
        series=series,
        series_hu=series_hu,
        transfer_syntax=ExplicitVRLittleEndian,
        sop_class_uid=CTImageStorage,
        patient_id=patient_id,
    )


def series_duplicate_position(folder: Path, patient_id: str = DEFAULT_PATIENT_ID) -> Expect:
    """3 slices, two of them at the same Image Position (Patient) (PS3.3 C.7.6.2.1.1) with
    identical pixels but distinct SOP Instance UIDs and Instance Numbers (a duplicated
    instance): a volume needs unique positions.  ``duplicates`` names the two files; ``order``
    breaks the tie by Instance Number."""
    folder = _folder(folder)
    slices = [
        {"name": "duplicate_0.dcm", "z": 5.0, "instance": 1, "variant": 21},
        {"name": "duplicate_1.dcm", "z": 0.0, "instance": 2, "variant": 22},
        {"name": "duplicate_2.dcm", "z": 5.0, "instance": 3, "variant": 21},
    ]
    paths, dss, stored, hu = _series(folder, "series_duplicate_position", patient_id, slices)
    return _series_expect(paths, dss, stored, hu, patient_id, duplicates=[paths[0], paths[2]])


def series_gap(folder: Path, patient_id: str = DEFAULT_PATIENT_ID) -> Expect:
    """4 slices of thickness 2 mm at z = 0, 2, 4, 10: the spacing between positions along the
    normal (PS3.3 C.7.6.2.1.1) is 2 mm except one 6 mm gap (two missing slices between z 4 and
    z 10)."""
    folder = _folder(folder)
    slices = [
        {"name": "gap_0.dcm", "z": 10.0, "instance": 1, "variant": 23},
        {"name": "gap_1.dcm", "z": 4.0, "instance": 2, "variant": 24},
        {"name": "gap_2.dcm", "z": 2.0, "instance": 3, "variant": 25},
        {"name": "gap_3.dcm", "z": 0.0, "instance": 4, "variant": 26},
    ]
    return _series_expect(
        *_series(folder, "series_gap", patient_id, slices, thickness=2.0), patient_id
    )


GANTRY_TILT = 15.0


def series_gantry_tilt(folder: Path, patient_id: str = DEFAULT_PATIENT_ID) -> Expect:
    """3 slices with Gantry/Detector Tilt 15 degrees (PS3.3 C.8.2.1): the orientation stays
    axial ``[1, 0, 0, 0, 1, 0]`` but each slice's Image Position (Patient) moves in y by
    ``dz * tan(15 deg)`` as the table advances 5 mm in z, so the vector between consecutive
    positions is 15 degrees off the slice normal (a sheared volume, C.7.6.2.1.1).  Sorting along
    the normal still works (ascending z); ``tilt`` is 15.0."""
    folder = _folder(folder)
    shift = math.tan(math.radians(GANTRY_TILT))
    slices = [
        {
            "name": f"tilt_{i}.dcm",
            "z": z,
            "instance": i + 1,
            "variant": 27 + i,
            "y_shift": z * shift,
        }
        for i, z in enumerate((10.0, 5.0, 0.0))
    ]
    paths, dss, stored, hu = _series(folder, "series_gantry_tilt", patient_id, slices)
    for ds, path in zip(dss, paths, strict=True):
        ds.GantryDetectorTilt = decimal_string(GANTRY_TILT)
        _save(ds, path)
    return _series_expect(paths, dss, stored, hu, patient_id, tilt=GANTRY_TILT)


# --------------------------------------------------------------------------------------------
# Files that must be skipped
# --------------------------------------------------------------------------------------------
def ct_localizer(folder: Path, patient_id: str = DEFAULT_PATIENT_ID) -> Expect:
    """A CT localizer (scout): Image Type ORIGINAL\\PRIMARY\\LOCALIZER (PS3.3 C.8.2.1.1.1, value 3
    LOCALIZER).  It is a projection radiograph, not a slice: reason "localizer".  ``hu`` is what
    its pixels would give."""
    folder = _folder(folder)
    hu = chest_hu(30)
    stored = _stored_from_hu(hu, -1024.0)
    ds = _ct(stored, key="ct_localizer", patient_id=patient_id)
    ds.ImageType = ["ORIGINAL", "PRIMARY", "LOCALIZER"]
    ds.ImageOrientationPatient = ["1", "0", "0", "0", "0", "-1"]  # coronal projection
    return _single(ds, folder / "ct_localizer.dcm", stored, hu, patient_id, reason="localizer")


def _patient_study(ds: Dataset, key: str, patient_id: str) -> None:
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.PatientName = patient_id
    ds.PatientID = patient_id
    ds.PatientBirthDate = ""
    ds.PatientSex = ""
    ds.StudyInstanceUID = _uid(key, patient_id, "study")
    ds.StudyDate = "20240101"
    ds.StudyTime = "120000"
    ds.ReferringPhysicianName = ""
    ds.StudyID = "1"
    ds.AccessionNumber = ""
    ds.SeriesInstanceUID = _uid(key, patient_id, "series")
    ds.SeriesNumber = 1
    ds.InstanceNumber = 1
    ds.Manufacturer = "lungct fixtures"


def sr_document(folder: Path, patient_id: str = DEFAULT_PATIENT_ID) -> Expect:
    """A Basic Text SR document (SOP Class 1.2.840.10008.5.1.4.1.1.88.11, PS3.3 A.35.1): a
    CONTAINER with one TEXT item and no Pixel Data.  Not an image: reason "not_ct"."""
    folder = _folder(folder)
    key = "sr_document"
    sop = _uid(key, patient_id, "instance")
    ds = Dataset()
    ds.file_meta = file_meta(BasicTextSRStorage, sop)
    _patient_study(ds, key, patient_id)
    ds.SOPClassUID = BasicTextSRStorage
    ds.SOPInstanceUID = sop
    ds.Modality = "SR"
    ds.ContentDate = "20240101"
    ds.ContentTime = "120000"
    ds.ValueType = "CONTAINER"
    ds.ContinuityOfContent = "SEPARATE"
    ds.CompletionFlag = "COMPLETE"
    ds.VerificationFlag = "UNVERIFIED"
    title = Dataset()
    title.CodeValue, title.CodingSchemeDesignator = "18748-4", "LN"
    title.CodeMeaning = "Diagnostic Imaging Report"
    ds.ConceptNameCodeSequence = Sequence([title])
    finding_name = Dataset()
    finding_name.CodeValue, finding_name.CodingSchemeDesignator = "121071", "DCM"
    finding_name.CodeMeaning = "Finding"
    text = Dataset()
    text.RelationshipType = "CONTAINS"
    text.ValueType = "TEXT"
    text.ConceptNameCodeSequence = Sequence([finding_name])
    text.TextValue = "No pulmonary nodule. Synthetic report for lungct tests."
    ds.ContentSequence = Sequence([text])
    path = _save(ds, folder / "sr_document.dcm")
    return Expect(
        path=path,
        hu=None,
        reason="not_ct",
        paths=[path],
        transfer_syntax=ExplicitVRLittleEndian,
        sop_class_uid=BasicTextSRStorage,
        patient_id=patient_id,
    )


def secondary_capture(folder: Path, patient_id: str = DEFAULT_PATIENT_ID) -> Expect:
    """Secondary Capture Image Storage (1.2.840.10008.5.1.4.1.1.7, PS3.3 A.8.1), Modality OT,
    8-bit MONOCHROME2 (a screenshot of a CT): pixels are not HU, reason "not_ct"."""
    folder = _folder(folder)
    key = "secondary_capture"
    sop = _uid(key, patient_id, "instance")
    ds = Dataset()
    ds.file_meta = file_meta(SecondaryCaptureImageStorage, sop)
    _patient_study(ds, key, patient_id)
    ds.SOPClassUID = SecondaryCaptureImageStorage
    ds.SOPInstanceUID = sop
    ds.Modality = "OT"
    ds.ConversionType = "WSD"
    ds.ImageType = ["DERIVED", "SECONDARY"]
    pixels = np.clip((chest_hu(31) + 1000) // 8, 0, 255).astype(np.uint8)
    ds.set_pixel_data(pixels, "MONOCHROME2", 8, generate_instance_uid=False)
    path = _save(ds, folder / "secondary_capture.dcm")
    return Expect(
        path=path,
        hu=None,
        reason="not_ct",
        paths=[path],
        stored=pixels,
        transfer_syntax=ExplicitVRLittleEndian,
        sop_class_uid=SecondaryCaptureImageStorage,
        patient_id=patient_id,
    )


def mr_image(folder: Path, patient_id: str = DEFAULT_PATIENT_ID) -> Expect:
    """pydicom's bundled MR example (``pydicom.examples.mr``, MR Image Storage, PS3.3 A.4) with
    Patient ID replaced: an image, but not CT, so reason "not_ct"."""
    folder = _folder(folder)
    ds = pydicom.examples.mr
    ds.PatientID = patient_id
    path = _save(ds, folder / "mr_image.dcm")
    return Expect(
        path=path,
        hu=None,
        reason="not_ct",
        paths=[path],
        stored=ds.pixel_array,
        transfer_syntax=str(ds.file_meta.TransferSyntaxUID),
        sop_class_uid=str(ds.SOPClassUID),
        patient_id=patient_id,
    )


def dicomdir(folder: Path, patient_id: str = DEFAULT_PATIENT_ID) -> Expect:
    """A DICOMDIR (Media Storage Directory Storage 1.2.840.10008.1.3.10, PS3.3 F.2 Basic
    Directory IOD; PS3.10 8) written by :class:`pydicom.fileset.FileSet` with one CT instance.
    ``path`` is ``folder/DICOMDIR`` (the name PS3.10 requires; reason "dicomdir"); the instance
    it references, a valid CT like :func:`ct_basic` stored as ``PT000000/ST000000/SE000000/
    IM000000`` under ``folder``, is in ``extra`` (not in ``paths``).  The File-set ID and UID are
    fixed so the output is reproducible."""
    folder = _folder(folder)
    hu = chest_hu(32)
    stored = _stored_from_hu(hu, -1024.0)
    ds = _ct(stored, key="dicomdir", patient_id=patient_id)
    fs = FileSet()
    fs.ID = "LUNGCTFIX"
    fs.UID = _uid("dicomdir", patient_id, "fileset")
    fs.add(ds)
    fs.write(folder)
    path = folder / "DICOMDIR"
    instances = [Path(instance.path) for instance in FileSet(path)]
    return Expect(
        path=path,
        hu=None,
        reason="dicomdir",
        paths=[path],
        transfer_syntax=ExplicitVRLittleEndian,
        sop_class_uid="1.2.840.10008.1.3.10",
        extra=instances,
        patient_id=patient_id,
    )


def no_preamble(folder: Path, patient_id: str = DEFAULT_PATIENT_ID) -> Expect:
    """A CT dataset written without the 128-byte preamble, 'DICM' prefix and File Meta
    Information (PS3.10 7.1 requires all three), encoded Implicit VR Little Endian as old
    ACR-NEMA style files are: reason "no_preamble".  ``hu`` is what ``dcmread(force=True)``
    gives."""
    folder = _folder(folder)
    hu = chest_hu(33)
    stored = _stored_from_hu(hu, -1024.0)
    ds = _ct(stored, key="no_preamble", patient_id=patient_id)
    del ds.file_meta
    path = folder / "no_preamble.dcm"
    dcmwrite(path, ds, implicit_vr=True, little_endian=True, enforce_file_format=False)
    assert path.read_bytes()[128:132] != b"DICM"
    return Expect(
        path=path,
        hu=_f32(hu),
        reason="no_preamble",
        paths=[path],
        stored=stored,
        transfer_syntax="",
        sop_class_uid=CTImageStorage,
        patient_id=patient_id,
    )


TRUNCATED_BYTES = 200


def truncated_pixel_data(folder: Path, patient_id: str = DEFAULT_PATIENT_ID) -> Expect:
    """A valid CT file with its last ``TRUNCATED_BYTES`` (200) bytes cut off, inside Pixel Data
    (the last element): the element's length says 640 bytes but only 440 remain (PS3.5 7.1).
    Reason "truncated_pixel_data"."""
    folder = _folder(folder)
    hu = chest_hu(34)
    stored = _stored_from_hu(hu, -1024.0)
    ds = _ct(stored, key="truncated_pixel_data", patient_id=patient_id)
    path = _save(ds, folder / "truncated_pixel_data.dcm")
    data = path.read_bytes()
    path.write_bytes(data[:-TRUNCATED_BYTES])
    return Expect(
        path=path,
        hu=None,
        reason="truncated_pixel_data",
        paths=[path],
        transfer_syntax=ExplicitVRLittleEndian,
        sop_class_uid=CTImageStorage,
        patient_id=patient_id,
    )


def zero_byte(folder: Path, patient_id: str = DEFAULT_PATIENT_ID) -> Expect:
    """An empty file ``empty.dcm`` (0 bytes): reason "empty_file"."""
    folder = _folder(folder)
    path = folder / "empty.dcm"
    path.write_bytes(b"")
    return Expect(path=path, hu=None, reason="empty_file", paths=[path], patient_id=patient_id)


def _png(pixels: np.ndarray) -> bytes:
    """A minimal 8-bit greyscale PNG (no external library)."""

    def chunk(tag: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + tag + body + struct.pack(">I", zlib.crc32(tag + body))

    rows, cols = pixels.shape
    raw = b"".join(b"\x00" + pixels[r].astype(np.uint8).tobytes() for r in range(rows))
    header = struct.pack(">IIBBBBB", cols, rows, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(raw, 9))
        + chunk(b"IEND", b"")
    )


def not_dicom(folder: Path, patient_id: str = DEFAULT_PATIENT_ID) -> Expect:
    """Two non-DICOM files with a .dcm extension: a text note and a PNG (PS3.10 7.1: no
    preamble/'DICM', and no parseable data set).  Reason "not_dicom" for both ``paths``;
    ``path`` is the text file."""
    folder = _folder(folder)
    text = folder / "not_dicom_note.dcm"
    text.write_text(f"Patient {patient_id}: scan notes, not a DICOM file.\n", encoding="ascii")
    png = folder / "not_dicom_image.dcm"
    png.write_bytes(_png(np.clip((chest_hu(35) + 1000) // 8, 0, 255)))
    return Expect(path=text, hu=None, reason="not_dicom", paths=[text, png], patient_id=patient_id)


# --------------------------------------------------------------------------------------------
# Compressed transfer syntaxes
# --------------------------------------------------------------------------------------------
def _compressed(
    folder: Path, key: str, syntax: str, variant: int, patient_id: str, shape: tuple[int, int]
) -> Expect:
    folder = _folder(folder)
    hu = chest_hu(variant, *shape)
    stored = _stored_from_hu(hu, -1024.0)
    ds = _ct(stored, key=key, patient_id=patient_id)
    ds.compress(syntax, generate_instance_uid=False)
    return _single(ds, folder / f"{key}.dcm", stored, hu, patient_id)


def ct_rle(folder: Path, patient_id: str = DEFAULT_PATIENT_ID) -> Expect:
    """CT compressed with RLE Lossless (1.2.840.10008.1.2.5, PS3.5 A.4.2 and G): encapsulated
    pixel data, HU exact after decoding."""
    return _compressed(folder, "ct_rle", RLELossless, 36, patient_id, (ROWS, COLS))


def ct_jpeg2000(folder: Path, patient_id: str = DEFAULT_PATIENT_ID) -> Expect:
    """CT compressed with JPEG 2000 Image Compression (Lossless Only) (1.2.840.10008.1.2.4.90,
    PS3.5 A.4.4), signed 16-bit: HU exact after decoding (needs pylibjpeg-openjpeg).  The image
    is 32 x 40, not 16 x 20: OpenJPEG's encoder (default 6 resolution levels) refuses images
    smaller than 32 pixels on a side."""
    return _compressed(folder, "ct_jpeg2000", JPEG2000Lossless, 37, patient_id, (32, 40))


def ct_jpeg_ls(folder: Path, patient_id: str = DEFAULT_PATIENT_ID) -> Expect:
    """CT with Transfer Syntax JPEG-LS Lossless (1.2.840.10008.1.2.4.80, PS3.5 A.4.3) holding a
    genuine JPEG-LS codestream: the 64 x 64 signed 16-bit frame of pydicom's bundled
    ``MR_small_jpeg_ls_lossless.dcm``, the lossless encoding of ``MR_small.dcm``, re-wrapped in
    a CT dataset with intercept -1024.  The pinned decoders (pyjpegls, python-gdcm) read it
    exactly: ``hu`` is ``MR_small``'s pixels - 1024."""
    folder = _folder(folder)
    jls = pydicom.dcmread(get_testdata_file("MR_small_jpeg_ls_lossless.dcm"))
    source = pydicom.dcmread(get_testdata_file("MR_small.dcm"))
    [frame] = generate_frames(jls.PixelData, number_of_frames=1)
    stored = source.pixel_array.astype(np.int16)
    ds = _ct(stored, key="ct_jpeg_ls", patient_id=patient_id)
    ds.file_meta.TransferSyntaxUID = JPEGLSLossless
    ds.PixelData = encapsulate([frame])
    ds["PixelData"].VR = "OB"
    ds["PixelData"].is_undefined_length = True
    return _single(
        ds,
        folder / "ct_jpeg_ls.dcm",
        stored,
        stored.astype(np.float64) - 1024.0,
        patient_id,
    )


# --------------------------------------------------------------------------------------------
# Multi-frame: Enhanced CT and Legacy Converted Enhanced CT
# --------------------------------------------------------------------------------------------
ENHANCED_Z = (10.0, 5.0, 0.0)  # frame order: superior first
ENHANCED_INTERCEPTS = (-1024.0, -1000.0, -512.0)


def _item(**attrs: object) -> Dataset:
    item = Dataset()
    for keyword, value in attrs.items():
        setattr(item, keyword, value)
    return item


def _enhanced(
    folder: Path, key: str, sop_class: str, patient_id: str, intercepts: tuple[float, ...]
) -> Expect:
    """Shared body of :func:`enhanced_ct` and :func:`legacy_enhanced_ct`; ``intercepts`` has one
    value per frame (Enhanced CT) or a single value in the Shared group (Legacy)."""
    folder = _folder(folder)
    per_frame_rescale = len(intercepts) == len(ENHANCED_Z)
    hu = np.stack([chest_hu(40 + i) for i in range(len(ENHANCED_Z))])
    frame_intercepts = intercepts if per_frame_rescale else intercepts * len(ENHANCED_Z)
    stored = np.stack([_stored_from_hu(hu[i], b) for i, b in enumerate(frame_intercepts)])
    sop = _uid(key, patient_id, "instance")
    ds = Dataset()
    ds.file_meta = file_meta(sop_class, sop)
    _patient_study(ds, key, patient_id)
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = sop
    ds.Modality = "CT"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL", "NONE"]
    ds.ContentDate = "20240101"
    ds.ContentTime = "120000"
    ds.AcquisitionNumber = 1
    ds.AcquisitionDateTime = "20240101120000"
    ds.ContentQualification = "PRODUCT"
    ds.BurnedInAnnotation = "NO"
    ds.LossyImageCompression = "00"
    ds.PresentationLUTShape = "IDENTITY"
    ds.ManufacturerModelName = "fixture"
    ds.DeviceSerialNumber = "0"
    ds.SoftwareVersions = "1"
    ds.SeriesDescription = f"lungct fixture {key}"
    ds.FrameOfReferenceUID = _uid(key, patient_id, "frame-of-reference")
    ds.PositionReferenceIndicator = ""
    ds.set_pixel_data(stored, "MONOCHROME2", 16, generate_instance_uid=False)
    ds.NumberOfFrames = len(ENHANCED_Z)  # set_pixel_data sets it; explicit for clarity

    dim_org = _uid(key, patient_id, "dimension-organization")
    ds.DimensionOrganizationSequence = Sequence([_item(DimensionOrganizationUID=dim_org)])
    ds.DimensionIndexSequence = Sequence(
        [
            _item(
                DimensionOrganizationUID=dim_org,
                DimensionIndexPointer=Tag("StackID"),
                FunctionalGroupPointer=Tag("FrameContentSequence"),
            ),
            _item(
                DimensionOrganizationUID=dim_org,
                DimensionIndexPointer=Tag("InStackPositionNumber"),
                FunctionalGroupPointer=Tag("FrameContentSequence"),
            ),
        ]
    )

    shared = Dataset()
    shared.PixelMeasuresSequence = Sequence(
        [
            _item(
                PixelSpacing=[decimal_string(PIXEL_SPACING), decimal_string(PIXEL_SPACING)],
                SliceThickness=decimal_string(SLICE_THICKNESS),
            )
        ]
    )
    shared.PlaneOrientationSequence = Sequence(
        [_item(ImageOrientationPatient=["1", "0", "0", "0", "1", "0"])]
    )
    if not per_frame_rescale:
        shared.PixelValueTransformationSequence = Sequence(
            [
                _item(
                    RescaleIntercept=decimal_string(intercepts[0]),
                    RescaleSlope="1",
                    RescaleType="HU",
                )
            ]
        )
    ds.SharedFunctionalGroupsSequence = Sequence([shared])

    x0 = -(COLS - 1) / 2.0 * PIXEL_SPACING
    y0 = -(ROWS - 1) / 2.0 * PIXEL_SPACING
    positions = [(x0, y0, z) for z in ENHANCED_Z]
    frames = []
    for i, (x, y, z) in enumerate(positions):
        frame = Dataset()
        frame.FrameContentSequence = Sequence(
            [
                _item(
                    StackID="1",
                    InStackPositionNumber=i + 1,
                    DimensionIndexValues=[1, i + 1],
                    FrameAcquisitionNumber=1,
                )
            ]
        )
        frame.PlanePositionSequence = Sequence(
            [_item(ImagePositionPatient=[decimal_string(x), decimal_string(y), decimal_string(z)])]
        )
        if per_frame_rescale:
            frame.PixelValueTransformationSequence = Sequence(
                [
                    _item(
                        RescaleIntercept=decimal_string(intercepts[i]),
                        RescaleSlope="1",
                        RescaleType="HU",
                    )
                ]
            )
            frame.CTImageFrameTypeSequence = Sequence(
                [_item(FrameType=["ORIGINAL", "PRIMARY", "AXIAL", "NONE"])]
            )
        else:
            frame.ConversionSourceAttributesSequence = Sequence(
                [
                    _item(
                        ReferencedSOPClassUID=CTImageStorage,
                        ReferencedSOPInstanceUID=_uid(key, patient_id, "source", i),
                    )
                ]
            )
        frames.append(frame)
    ds.PerFrameFunctionalGroupsSequence = Sequence(frames)
    path = _save(ds, folder / f"{key}.dcm")
    return Expect(
        path=path,
        hu=_f32(hu),
        paths=[path],
        stored=stored,
        positions=positions,
        transfer_syntax=ExplicitVRLittleEndian,
        sop_class_uid=sop_class,
        patient_id=patient_id,
    )


def enhanced_ct(folder: Path, patient_id: str = DEFAULT_PATIENT_ID) -> Expect:
    """Enhanced CT Image Storage (1.2.840.10008.5.1.4.1.1.2.1, PS3.3 A.38.1, C.8.15), one file of
    3 frames (Number of Frames 3, C.7.6.6).  Geometry and rescale live only in functional groups
    (C.7.6.16): Shared holds Pixel Measures (PixelSpacing, SliceThickness) and Plane Orientation;
    each Per-Frame item holds Plane Position (Image Position (Patient), z = 10, 5, 0) and Pixel
    Value Transformation with its own intercept (-1024, -1000, -512), slope 1, type HU.  There is
    no top-level Rescale Intercept.  ``hu[i]`` / ``positions[i]`` are for frame ``i + 1``."""
    return _enhanced(folder, "enhanced_ct", EnhancedCTImageStorage, patient_id, ENHANCED_INTERCEPTS)


def legacy_enhanced_ct(folder: Path, patient_id: str = DEFAULT_PATIENT_ID) -> Expect:
    """Legacy Converted Enhanced CT Image Storage (1.2.840.10008.5.1.4.1.1.2.2, PS3.3 A.70), 3
    frames laid out like :func:`enhanced_ct` but with one Pixel Value Transformation (intercept
    -1024) in the Shared Functional Groups (C.7.6.16.2.9) and a Conversion Source Attributes
    item per frame; positions z = 10, 5, 0 per frame."""
    return _enhanced(
        folder, "legacy_enhanced_ct", LegacyConvertedEnhancedCTImageStorage, patient_id, (-1024.0,)
    )


# --------------------------------------------------------------------------------------------
# Registry
# --------------------------------------------------------------------------------------------
BUILDERS: dict[str, Callable[..., Expect]] = {
    f.__name__: f
    for f in (
        ct_basic,
        ct_padding_signed,
        ct_padding_unsigned_encoded,
        ct_padding_range,
        ct_monochrome1,
        ct_slope_half,
        ct_12bit_unsigned,
        ct_12bit_signed,
        series_per_slice_intercept,
        series_shuffled_instances,
        series_no_position,
        two_series_one_folder,
        series_duplicate_position,
        series_gap,
        series_gantry_tilt,
        ct_localizer,
        sr_document,
        secondary_capture,
        mr_image,
        dicomdir,
        no_preamble,
        truncated_pixel_data,
        zero_byte,
        not_dicom,
        ct_rle,
        ct_jpeg2000,
        ct_jpeg_ls,
        enhanced_ct,
        legacy_enhanced_ct,
        ct_modality_lut_sequence,
        ct_rescale_type_not_hu,
    )
}


def build_all(folder: Path, patient_id: str = DEFAULT_PATIENT_ID) -> dict[str, Expect]:
    """Run every builder into one ``folder``; file names never collide."""
    return {name: build(folder, patient_id) for name, build in BUILDERS.items()}
