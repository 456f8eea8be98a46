"""Reading CT DICOM files into Hounsfield units, one frame (slice) at a time.

Stored values -> HU follows PS3.3 C.11.1 (a Modality LUT Sequence, or a linear rescale),
per slice, and per frame in the enhanced multi-frame objects (C.7.6.16.2.9). Padding
(C.7.5.1.1.2) is compared with *stored* values and becomes air. Arithmetic is float32:
pydicom 3 returns int16/uint16 arrays, and under NumPy 2 ``uint16 - 1024`` wraps around
silently. MONOCHROME1 is a display instruction (C.7.6.3.1.2), so nothing inverts it.

A file that is not a CT slice we can use raises :class:`SkippedFile` with a reason code,
before anything is decoded where the header tells (docs/dicom.md, "Broken headers and
decompression bombs").
"""

from __future__ import annotations

import csv
import logging
import math
import multiprocessing
import os
import sys
import threading
import warnings
import zlib
from dataclasses import dataclass
from functools import lru_cache
from multiprocessing.connection import Connection
from pathlib import Path
from typing import BinaryIO

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.encaps import generate_frames
from pydicom.errors import InvalidDicomError
from pydicom.misc import is_dicom
from pydicom.multival import MultiValue
from pydicom.pixels import apply_modality_lut, get_decoder, pixel_array
from pydicom.uid import (
    UID,
    CTImageStorage,
    DeflatedExplicitVRLittleEndian,
    EnhancedCTImageStorage,
    JPEG2000TransferSyntaxes,
    JPEGLSTransferSyntaxes,
    JPEGTransferSyntaxes,
    LegacyConvertedEnhancedCTImageStorage,
    MediaStorageDirectoryStorage,
)
from pydicom.valuerep import EXPLICIT_VR_LENGTH_32

from lungct.errors import SkippedFile, describe, first_line
from lungct.limits import MAX_EXPANSION, MAX_IMAGE_BYTES, allowed_bytes, check_size, size_text
from lungct.reasons import (
    BAD_ATTRIBUTE,
    BAD_LUT,
    BAD_RESCALE,
    DICOMDIR,
    EMPTY_FILE,
    LOCALIZER,
    NO_DECODER,
    NO_PIXEL_DATA,
    NO_PREAMBLE,
    NOT_CT,
    NOT_DICOM,
    NOT_GRAYSCALE,
    TOO_LARGE,
    TRUNCATED_PIXEL_DATA,
    UNREADABLE,
    UNREADABLE_PIXELS,
)

AIR_HU = -1000.0
CT_SOP_CLASSES = {CTImageStorage, EnhancedCTImageStorage, LegacyConvertedEnhancedCTImageStorage}
DEFER_BYTES = 64 * 1024  # elements larger than this are read from the file only when used
CHUNK_BYTES = 2**20  # inflating a deflated file, a chunk at a time
FLOAT32_MAX = float(np.finfo(np.float32).max)
BITS_ALLOCATED = (1, 8, 16, 32, 64)  # what pixel data decoders know (PS3.5 8.1.1)
# pydicom's own warnings on odd values repeat what a reason code says, on many lines.
logging.getLogger("pydicom").setLevel(logging.ERROR)


class _LazyHU:
    """``CTFrame.hu``: the HU given when the frame was made or, given None (the reader:
    convert's windows are lookup tables on :class:`StoredPixels`), computed from
    ``CTFrame.stored`` the first time it is read (crops, annotation rules)."""

    def __get__(self, frame: CTFrame | None, owner: type | None = None) -> np.ndarray:
        if frame is None:
            raise AttributeError("hu")  # no default: the dataclass field stays required
        hu = frame.__dict__.get("hu")
        if hu is None:
            hu = frame.__dict__["hu"] = frame.stored.hu()
        return hu

    def __set__(self, frame: CTFrame, value: np.ndarray | None) -> None:
        frame.__dict__["hu"] = value


@dataclass(frozen=True)
class CTFrame:
    """One CT slice in HU with what the manifest and the series sort need."""

    hu: np.ndarray = _LazyHU()  # float32, rows x columns; None when made: from ``stored``
    patient_id: str
    series_uid: str
    instance_number: int | None
    frame: int  # 0-based frame number; 0 for single-frame files
    slice_position: float | None  # mm along the slice normal; None without geometry
    rescale_type: str  # "HU" unless the file says otherwise
    transfer_syntax: str
    gantry_tilt: float | None  # degrees, when the file records it
    # The file's first Window Center/Width (NaN where not a number): checked where used.
    window: tuple[float, float] | None
    geometry: FrameGeometry | None = None  # where the slice lies (crops, annotations)
    stored: StoredPixels | None = None  # a linear rescale's stored values (HU on demand)

    @property
    def shape(self) -> tuple[int, int]:
        """Rows and columns, without computing the HU."""
        pixels = self.stored.values if self.stored is not None else self.hu
        return int(pixels.shape[0]), int(pixels.shape[1])


@dataclass(frozen=True)
class FrameGeometry:
    """Where one frame lies in the patient, and what identifies it: what annotation files
    refer to (SOP Instance UID, positions in mm) and what pixel <-> world conversions
    need. Read from the header alone by :func:`read_geometry`."""

    key: str  # SOPInstanceUID, or "<SOPInstanceUID>#<frame>" for a frame of a multi-frame file
    series_uid: str
    patient_id: str
    frame: int
    position: float | None  # mm along the slice normal
    origin: tuple[float, float, float] | None  # ImagePositionPatient
    orientation: tuple[float, ...] | None  # ImageOrientationPatient (6)
    spacing: tuple[float, float] | None  # PixelSpacing: (between rows, between columns)


def padding_mask(
    stored: np.ndarray,
    padding_value: int | None,
    padding_limit: int | None = None,
    bits_stored: int = 16,
    signed: bool = True,
) -> np.ndarray | None:
    """Pixels that are padding (PS3.3 C.7.5.1.1.2), compared on stored values; None when
    the file declares none. A negative value encoded as unsigned (-2000 as 63536, the VR
    resolved to US) is re-interpreted for signed pixel data."""
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
    low, high = sorted((low, as_stored(padding_limit)))
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


@dataclass(frozen=True)
class StoredPixels:
    """One frame's stored values and the linear Modality LUT that makes them HU (PS3.3
    C.11.1.1.2), padding (C.7.5.1.1.2) included. HU is affine in the stored integer, so a
    CT window of it is a lookup table on 8- and 16-bit values (:func:`code_hu`,
    ``lungct.io.preprocess.frame_channels``), built by the float32 path (:meth:`hu`) itself:
    the same pixels for one table lookup each."""

    values: np.ndarray  # rows x columns, as decoded (int16, uint16, ...)
    slope: float
    intercept: float
    padding: tuple[int | None, int | None] = (None, None)  # Pixel Padding Value, Range Limit
    bits_stored: int = 16
    signed: bool = True

    def hu(self) -> np.ndarray:
        """The float32 HU: the reference path (padding mask, rescale, air)."""
        mask = padding_mask(self.values, *self.padding, self.bits_stored, self.signed)
        return stored_to_hu(self.values, self.slope, self.intercept, mask)

    def codes(self) -> np.ndarray | None:
        """The values as table indices (their bits read as uint8 or uint16; two's
        complement puts negative values in the upper half), or None when no table applies:
        wider than 16 bits, not integers, or not in this machine's byte order."""
        dtype = self.values.dtype
        if dtype.kind not in "iu" or dtype.itemsize > 2 or not dtype.isnative:
            return None
        return self.values.view(np.uint8 if dtype.itemsize == 1 else np.uint16)

    @property
    def rescale(self) -> tuple:
        """What maps a stored value to HU, hashable: dtype, slope, intercept, padding, bits."""
        dtype = self.values.dtype.str
        return (dtype, self.slope, self.intercept, self.padding, self.bits_stored, self.signed)


@lru_cache(maxsize=16)
def code_hu(rescale: tuple) -> np.ndarray:
    """The HU of every index of :meth:`StoredPixels.codes` under ``rescale``
    (:attr:`StoredPixels.rescale`), computed by :meth:`StoredPixels.hu` itself: 65 536
    float32 values for 16-bit data, 256 for 8-bit."""
    dtype, slope, intercept, padding, bits_stored, signed = rescale
    dtype = np.dtype(dtype)
    codes = np.arange(2 ** (8 * dtype.itemsize), dtype=f"u{dtype.itemsize}")
    hu = StoredPixels(codes.view(dtype), slope, intercept, padding, bits_stored, signed).hu()
    hu.flags.writeable = False  # shared by every frame with this rescale
    return hu


def slice_position(position: object, orientation: object) -> float | None:
    """Position of a slice along its normal: Image Position (Patient) projected on the
    cross product of the Image Orientation (Patient) direction cosines (PS3.3 C.7.6.2.1.1)."""
    if position is None or orientation is None or len(position) != 3 or len(orientation) != 6:
        return None
    normal = np.cross(np.asarray(orientation[:3], float), np.asarray(orientation[3:], float))
    value = float(np.dot(normal, np.asarray(position, dtype=float)))
    return value if math.isfinite(value) else None


# Attributes: every value the reader uses is checked before it is used.
def _show(value: object) -> str:
    text = repr(value) if isinstance(value, (str, bytes)) else str(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _value(ds: Dataset | None, keyword: str, reason: str = BAD_ATTRIBUTE) -> object:
    """The value of ``keyword``, None when absent or empty; one that pydicom cannot convert
    (``abc`` in a decimal string) is skipped with ``reason``."""
    if ds is None or keyword not in ds:
        return None
    try:
        value = ds[keyword].value
    except Exception as exc:  # pydicom converts on access
        raise SkippedFile(reason, f"{keyword}: {first_line(exc)}") from None
    if value is None or (isinstance(value, (str, bytes, list, MultiValue)) and len(value) == 0):
        return None
    return value


def _numbers(value: object, keyword: str, count: int, reason: str = BAD_ATTRIBUTE) -> list[float]:
    """Exactly ``count`` finite numbers, or :class:`SkippedFile` naming the attribute."""
    values = list(value) if isinstance(value, (list, tuple, MultiValue)) else [value]
    try:
        numbers = [float(v) for v in values]  # type: ignore[arg-type]
    except (TypeError, ValueError, OverflowError):
        numbers = []
    if len(numbers) != count or not all(math.isfinite(n) for n in numbers):
        what = "a finite number" if count == 1 else f"{count} finite numbers"
        raise SkippedFile(reason, f"{keyword} {_show(value)} is not {what}")
    return numbers


def _number(ds: Dataset | None, keyword: str, reason: str = BAD_ATTRIBUTE) -> float | None:
    value = _value(ds, keyword, reason)
    return None if value is None else _numbers(value, keyword, 1, reason)[0]


def _integer(
    ds: Dataset,
    keyword: str,
    low: int,
    high: int | None = None,
    default: int | None = None,
    required: bool = False,
) -> int | None:
    """An integer attribute in ``[low, high]``; ``default`` when absent (unless required)."""
    value = _value(ds, keyword)
    if value is None:
        if required:
            raise SkippedFile(BAD_ATTRIBUTE, f"{keyword} is missing")
        return default
    number = _numbers(value, keyword, 1)[0]
    if number != int(number) or number < low or (high is not None and number > high):
        bounds = f"from {low} to {high}" if high is not None else f"of at least {low}"
        raise SkippedFile(BAD_ATTRIBUTE, f"{keyword} {_show(value)} is not an integer {bounds}")
    return int(number)


def _first(value: object) -> float:
    """First value of a possibly multi-valued DS element; NaN when it is not a number."""
    if isinstance(value, (list, tuple, MultiValue)):
        value = value[0]
    try:
        return float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError, OverflowError):
        return math.nan


def _window(ds: Dataset, index: int) -> tuple[float, float] | None:
    """Frame ``index``'s first Window Center/Width as found (NaN where it is not a number),
    None without one: it is checked only where it is used (``file_window``)."""
    try:
        center = _frame_value(ds, index, "FrameVOILUTSequence", "WindowCenter")
        width = _frame_value(ds, index, "FrameVOILUTSequence", "WindowWidth")
    except SkippedFile:
        return (math.nan, math.nan)
    if center is None or width is None:
        return None
    return _first(center), _first(width)


@dataclass(frozen=True)
class _Layout:
    """The pixel data a header declares (PS3.3 C.7.6.3 Image Pixel, C.7.6.6 Multi-frame)."""

    rows: int
    columns: int
    frames: int
    bits_allocated: int
    bits_stored: int
    signed: bool

    @property
    def nbytes(self) -> int:
        """Bytes of decoded pixel data: what decoding would allocate (one sample a pixel)."""
        return (self.rows * self.columns * self.frames * self.bits_allocated + 7) // 8

    def __str__(self) -> str:
        frames = f"{self.frames} frames of " if self.frames > 1 else ""
        return f"{frames}{self.rows} x {self.columns} pixels of {self.bits_allocated} bits"


def _layout(ds: Dataset) -> _Layout:
    rows = _integer(ds, "Rows", 1, required=True)
    columns = _integer(ds, "Columns", 1, required=True)
    bits = _integer(ds, "BitsAllocated", 1, 64, required=True)
    if bits not in BITS_ALLOCATED:
        raise SkippedFile(BAD_ATTRIBUTE, f"BitsAllocated {bits} is not one of 1, 8, 16, 32, 64")
    samples = _integer(ds, "SamplesPerPixel", 1, default=1)
    if samples != 1:
        raise SkippedFile(NOT_GRAYSCALE, f"SamplesPerPixel {samples}")
    frames = _integer(ds, "NumberOfFrames", 1, default=1)
    bits_stored = _integer(ds, "BitsStored", 1, bits, default=bits)
    signed = _integer(ds, "PixelRepresentation", 0, 1, default=0) == 1
    return _Layout(rows, columns, frames, bits, bits_stored, signed)


def _frame_item(ds: Dataset, index: int, sequence: str, keyword: str) -> Dataset | None:
    """Where frame ``index``'s ``keyword`` is: the data set itself in a single-frame CT file;
    in the enhanced multi-frame objects, the item of ``sequence`` in the frame's own
    functional group, else in the shared one (PS3.3 C.7.6.16); None when neither has it."""
    if ds.get("SOPClassUID") == CTImageStorage:
        return ds
    per_frame = ds.get("PerFrameFunctionalGroupsSequence") or []
    shared = ds.get("SharedFunctionalGroupsSequence") or []
    for group in [*per_frame[index : index + 1], *shared[:1]]:
        seq = group.get(sequence)
        if seq and keyword in seq[0]:
            return seq[0]
    return None


def _frame_value(ds: Dataset, index: int, sequence: str, keyword: str) -> object:
    """:func:`_value` of frame ``index``'s ``keyword`` (:func:`_frame_item`)."""
    return _value(_frame_item(ds, index, sequence, keyword), keyword)


def _check_lut(ds: Dataset) -> None:
    """A Modality LUT Sequence pydicom can apply: a descriptor of 3 integers (entries, first
    mapped value, 8 or 16 bits) and at least as many entries of LUT Data (PS3.3 C.11.1.1)."""
    seq = ds.get("ModalityLUTSequence")
    item = seq[0] if seq else None
    if item is None:
        raise SkippedFile(BAD_LUT, "empty Modality LUT Sequence")
    descriptor = _value(item, "LUTDescriptor", BAD_LUT)
    data = _value(item, "LUTData", BAD_LUT)
    entries, _, bits = (int(v) for v in _numbers(descriptor, "LUTDescriptor", 3, BAD_LUT))
    entries = entries or 2**16
    if bits not in (8, 16):
        raise SkippedFile(BAD_LUT, f"LUTDescriptor: {bits} bits (8 or 16)")
    if data is None:
        raise SkippedFile(BAD_LUT, "no LUT Data")
    length = len(data) // 2 if isinstance(data, bytes) else len(data)  # type: ignore[arg-type]
    if length < entries:
        raise SkippedFile(BAD_LUT, f"LUT Data has {length} entries, LUTDescriptor says {entries}")


# Reading
def has_dicom_prefix(path: Path) -> bool:
    """A DICOM Part 10 file: a 128-byte preamble, then ``DICM`` (PS3.10 7.1)."""
    return is_dicom(path)


def _check_preamble(path: Path) -> None:
    if path.stat().st_size == 0:
        raise SkippedFile(EMPTY_FILE)
    if has_dicom_prefix(path):
        return
    try:  # a dataset without the Part 10 header, or not DICOM at all?
        ds = pydicom.dcmread(path, force=True, stop_before_pixels=True, defer_size=DEFER_BYTES)
        looks_dicom = "SOPClassUID" in ds or "Modality" in ds
    except MemoryError:
        raise
    except Exception:
        looks_dicom = False
    if looks_dicom:
        raise SkippedFile(NO_PREAMBLE, "no 128-byte preamble and DICM prefix (PS3.10 7.1)")
    raise SkippedFile(NOT_DICOM, f"no DICOM preamble or data set: {_looks_like(path)}")


# What a file that is not DICOM is, by its first bytes: a not_dicom row's detail.
_SIGNATURES = (
    (b"\x89PNG\r\n\x1a\n", "a PNG image"),
    (b"\xff\xd8\xff", "a JPEG image"),
    (b"GIF8", "a GIF image"),
    (b"II*\x00", "a TIFF image"),
    (b"MM\x00*", "a TIFF image"),
    (b"BM", "a BMP image"),
    (b"PK\x03\x04", "a zip archive"),
    (b"\x1f\x8b", "a gzip file"),
    (b"%PDF", "a PDF document"),
)
_SNIFF_BYTES = 4096


def _looks_like(path: Path) -> str:
    """A file that is not DICOM in a few words: a known format by its signature, a text
    file (CSV, JSON, XML or plain) by its first bytes, or binary data."""
    try:
        with path.open("rb") as stream:
            head = stream.read(_SNIFF_BYTES)
    except OSError as exc:
        return f"its first bytes cannot be read ({exc.strerror or type(exc).__name__})"
    for signature, name in _SIGNATURES:
        if head.startswith(signature):
            return name
    controls = sum(byte < 32 and byte not in b"\t\n\r\f" for byte in head)
    if not head or controls > len(head) // 100:  # text has (almost) no control bytes
        return f"binary data (first bytes {head[:8].hex(' ')})"
    start = head.decode("utf-8-sig", errors="replace").lstrip()
    if start.startswith("<"):
        return "a text file (XML)"
    if start.startswith(("{", "[")):
        return "a text file (JSON)"
    lines = start.splitlines()
    if len(head) == _SNIFF_BYTES:  # the last line may be cut
        lines = lines[:-1]
    rows = [row for row in csv.reader(lines[:5]) if row]
    if len(rows) > 1 and len(rows[0]) > 1 and all(len(row) == len(rows[0]) for row in rows):
        return "a text file (CSV)"
    return "a text file"


def _file_meta(stream: BinaryIO) -> tuple[int, str]:
    """Where the data set starts, after the File Meta group (explicit VR little endian,
    PS3.10 7.1), and the Transfer Syntax UID the group names ("" without one)."""
    stream.seek(128 + 4)  # the preamble and "DICM"
    syntax = ""
    while True:
        start = stream.tell()
        head = stream.read(8)  # tag, VR, and a 2-byte length or 2 reserved bytes
        if len(head) < 8 or head[:2] != b"\x02\x00":
            return start, syntax
        if head[4:6].decode("latin-1") in EXPLICIT_VR_LENGTH_32:  # PS3.5 7.1.2
            length = int.from_bytes(stream.read(4), "little")
        else:
            length = int.from_bytes(head[6:8], "little")
        if head[2:4] == b"\x10\x00":  # (0002,0010) Transfer Syntax UID
            syntax = stream.read(min(length, 64)).rstrip(b"\0 ").decode("ascii", "replace")
            length -= min(length, 64)
        stream.seek(length, 1)


def _check_deflated(path: Path, file_bytes: int, limit: int) -> bool:
    """Whether the file is Deflated Explicit VR Little Endian, having checked what it
    inflates to: pydicom inflates the whole data set at once, even to read the header, so
    it is inflated here first a chunk at a time, counting, and refused past the limits."""
    with path.open("rb") as stream:
        start, syntax = _file_meta(stream)
        if syntax != DeflatedExplicitVRLittleEndian:
            return False
        allowed = allowed_bytes(file_bytes, limit)
        inflate = zlib.decompressobj(-zlib.MAX_WBITS)
        inflated = 0
        stream.seek(start)
        while (chunk := stream.read(CHUNK_BYTES)) and not inflate.eof:
            while chunk:
                try:
                    inflated += len(inflate.decompress(chunk, CHUNK_BYTES))
                except zlib.error as exc:
                    raise SkippedFile(UNREADABLE, f"deflated data set: {first_line(exc)}") from None
                if inflated > allowed:
                    raise SkippedFile(
                        TOO_LARGE,
                        f"the deflated data set inflates to over {size_text(allowed)} from a "
                        f"file of {size_text(file_bytes)} (convert.max_image_bytes, or "
                        f"{MAX_EXPANSION} times the file: a decompression bomb)",
                    )
                chunk = inflate.unconsumed_tail
    return True


def _read(path: Path, deflated: bool) -> Dataset:
    """The data set, large elements left in the file until used (a deflated one is in
    memory already, and checked)."""
    try:
        return pydicom.dcmread(path, defer_size=None if deflated else DEFER_BYTES)
    except InvalidDicomError as exc:
        raise SkippedFile(NOT_DICOM, first_line(exc)) from None
    except MemoryError:
        raise
    except Exception as exc:  # a header cut short or garbled
        try:
            pydicom.dcmread(path, stop_before_pixels=True)
        except MemoryError:
            raise
        except Exception:
            raise SkippedFile(UNREADABLE, describe(exc)) from None
        raise SkippedFile(TRUNCATED_PIXEL_DATA, describe(exc)) from None


def _decoder_problem(syntax: UID | None) -> str | None:
    """Why this file's pixel data cannot be decoded here, naming what would decode it."""
    if syntax is None:
        return None
    try:
        known, compressed = syntax.is_transfer_syntax, syntax.is_compressed
    except ValueError:  # a private or made-up UID
        known, compressed = False, False
    if not known:
        return f"{syntax}: not a transfer syntax pydicom knows"
    if not compressed:
        return None
    try:
        decoder = get_decoder(syntax)
    except NotImplementedError:
        return f"{syntax.name} ({syntax}): no decoder exists in pydicom for it"
    if decoder.is_available:
        return None
    needs = "; ".join(decoder.missing_dependencies) or "a decoder plugin"
    return f"{syntax.name} ({syntax}) needs {needs}"


def _check_native(ds: Dataset, layout: _Layout, file_bytes: int, limit: int) -> None:
    """Native (uncompressed) pixel data holds what the header declares, and no more than
    the limit (a deferred element is read whole when used)."""
    elem = ds.get_item("PixelData", keep_deferred=True)
    if elem.value is None and hasattr(elem, "value_tell"):  # deferred: still in the file
        length = int(elem.length)
        present = max(0, min(length, file_bytes - int(elem.value_tell)))
    else:
        length = present = len(elem.value or b"")
    check_size(length, length, limit, f"a pixel data element of {length} bytes")
    if present < layout.nbytes:
        raise SkippedFile(
            TRUNCATED_PIXEL_DATA,
            f"{present} bytes of pixel data for {layout} ({layout.nbytes} bytes)",
        )


def _j2k_shape(frame: bytes) -> tuple[int, int, int] | None:
    """Rows, columns and components of a JPEG 2000 codestream (SIZ, ISO 15444-1 A.5.1)."""
    start = frame.find(b"\xff\x4f\xff\x51")  # SOC, then SIZ
    siz = frame[start + 4 : start + 42] if start >= 0 else b""
    if len(siz) < 38:
        return None
    x, y, x0, y0 = (int.from_bytes(siz[i : i + 4], "big") for i in (4, 8, 12, 16))
    return y - y0, x - x0, int.from_bytes(siz[36:38], "big")


_JPEG_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF, 0xF7}


def _jpeg_shape(frame: bytes) -> tuple[int, int, int] | None:
    """Rows, columns and components of a JPEG or JPEG-LS frame (its SOF marker segment)."""
    if frame[:2] != b"\xff\xd8":
        return None
    i = 2
    while i + 4 <= len(frame) and frame[i] == 0xFF:
        marker = frame[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if marker in _JPEG_SOF:
            sof = frame[i + 4 : i + 10]  # precision, height, width, components
            if len(sof) < 6:
                return None
            return int.from_bytes(sof[1:3], "big"), int.from_bytes(sof[3:5], "big"), sof[5]
        i += 2 + int.from_bytes(frame[i + 2 : i + 4], "big")
    return None


def _check_codestreams(ds: Dataset, syntax: UID, layout: _Layout) -> None:
    """Each compressed frame declares the Rows x Columns of the header: decoders allocate
    what the codestream says, whatever the header says."""
    if syntax in JPEG2000TransferSyntaxes:
        shape_of, name = _j2k_shape, "JPEG 2000"
    elif syntax in JPEGTransferSyntaxes or syntax in JPEGLSTransferSyntaxes:
        shape_of, name = _jpeg_shape, "JPEG"
    else:
        return  # RLE decodes into Rows x Columns
    want = (layout.rows, layout.columns, 1)
    try:
        frames = generate_frames(ds.PixelData, number_of_frames=layout.frames)
        for number, frame in enumerate(frames, 1):
            shape = shape_of(frame)
            if shape != want:
                found = " x ".join(map(str, shape)) if shape else f"no {name} header"
                raise SkippedFile(
                    UNREADABLE_PIXELS,
                    f"frame {number}: {found}, but Rows x Columns x Samples say "
                    f"{' x '.join(map(str, want))}",
                )
    except (SkippedFile, MemoryError):
        raise
    except Exception as exc:  # fragments that do not parse
        raise SkippedFile(UNREADABLE_PIXELS, describe(exc)) from None


# Decoder plugins, in order of preference (pydicom's own, less GDCM): they report a damaged
# codestream as a Python exception (pylibjpeg's Rust RLE decoder as a panic, caught as
# well). GDCM aborts the process on some (an uncaught C++ exception, a segmentation
# fault on a JPEG SOF of over 16 bits), which no ``except`` catches: it decodes only a
# syntax no other plugin has (JPEG Lossless), and then in a child process.
SAFE_PLUGINS = ("pylibjpeg", "pyjpegls", "pillow", "pydicom")
ISOLATED_PLUGIN = "gdcm"
_isolated: tuple[int, multiprocessing.Process, Connection] | None = None  # (owner pid, ...)
_isolated_lock = threading.Lock()  # one file at a time through the pipe (the app's threads)


def decoding_plugin(syntax: UID) -> str | None:
    """The plugin that decodes compressed ``syntax`` here: the first of
    :data:`SAFE_PLUGINS` installed for it, or None when only GDCM is (:func:`decode_isolated`)."""
    available = get_decoder(syntax).available_plugins
    return next((name for name in SAFE_PLUGINS if name in available), None)


def _decode(ds: Dataset, path: Path, syntax: UID | None) -> np.ndarray:
    if syntax is None or not syntax.is_compressed:
        return ds.pixel_array
    plugin = decoding_plugin(syntax)
    if plugin is None:
        return decode_isolated(path)
    ds.pixel_array_options(decoding_plugin=plugin)
    return ds.pixel_array


def _gdcm_child(connection: Connection) -> None:
    """The GDCM child: a path in, (stored values, None) or (None, why not) out, until the
    pipe closes."""
    while True:
        try:
            path = connection.recv()
        except (EOFError, OSError):
            return
        try:
            connection.send((pixel_array(path, decoding_plugin=ISOLATED_PLUGIN), None))
        except Exception as exc:
            connection.send((None, describe(exc)))


def decode_isolated(path: Path) -> np.ndarray:
    """The pixel data of ``path`` decoded by GDCM in a child process (one per process, kept,
    a daemon: it ends with this process): a crash there skips the file
    (``unreadable_pixels``) and the next file gets a fresh child. Forked from a process of
    one thread without TensorFlow, else spawned (a fork copies no other thread's locks); a process that inherited another's child starts its own. A daemonic
    process, which may have no children, decodes here."""
    global _isolated
    if multiprocessing.current_process().daemon:
        return pixel_array(str(path), decoding_plugin=ISOLATED_PLUGIN)
    with _isolated_lock:
        if _isolated is None or _isolated[0] != os.getpid() or not _isolated[1].is_alive():
            alone = threading.active_count() == 1 and "tensorflow" not in sys.modules
            # Not a fork server: one a parent started is not this process's child to wait on.
            context = multiprocessing.get_context("fork" if alone else "spawn")
            ours, theirs = context.Pipe()
            child = context.Process(target=_gdcm_child, args=(theirs,), daemon=True)
            child.start()
            theirs.close()
            _isolated = (os.getpid(), child, ours)
        _, child, connection = _isolated
        try:
            connection.send(str(path))
            stored, problem = connection.recv()
        except (EOFError, OSError):  # the child died: killed by the decoder
            child.join(timeout=5)
            connection.close()
            _isolated = None
            raise SkippedFile(
                UNREADABLE_PIXELS, "the JPEG decoder (GDCM) crashed on the pixel data"
            ) from None
    if problem is not None:
        raise SkippedFile(UNREADABLE_PIXELS, problem)
    return stored


def read_ct(path: Path, max_bytes: int = MAX_IMAGE_BYTES, frame_bytes: int = 0) -> list[CTFrame]:
    """Read one CT file (single-frame, Enhanced CT or Legacy Converted Enhanced CT)
    into HU frames; raise :class:`SkippedFile` with a reason code otherwise.
    ``max_bytes``: the largest declared image to decode (``convert.max_image_bytes``);
    ``frame_bytes``: what each frame becomes besides its pixels (a model image)."""
    path = Path(path)
    with warnings.catch_warnings(action="ignore"):  # the reason says once what pydicom warns
        _check_preamble(path)
        return _read_ct(path, max_bytes, frame_bytes)


def _read_ct(path: Path, max_bytes: int, frame_bytes: int) -> list[CTFrame]:
    file_bytes = path.stat().st_size
    ds = _read(path, _check_deflated(path, file_bytes, max_bytes))
    media = str(ds.file_meta.get("MediaStorageSOPClassUID", ""))
    if media == MediaStorageDirectoryStorage or "DirectoryRecordSequence" in ds:
        raise SkippedFile(DICOMDIR)
    sop_class = ds.get("SOPClassUID")
    if sop_class not in CT_SOP_CLASSES:
        name = getattr(sop_class, "name", None) or str(sop_class or "missing")
        raise SkippedFile(NOT_CT, f"SOP class {name}")
    image_type = ds.get("ImageType") or []
    image_type = [image_type] if isinstance(image_type, str) else image_type
    if "LOCALIZER" in [str(v).upper() for v in image_type]:
        raise SkippedFile(LOCALIZER)
    if "PixelData" not in ds:
        # Float Pixel Data (parametric maps) is never decoded: it may hold NaN and infinity,
        # and a CT image stores integers, which a finite rescale keeps finite.
        floats = [k for k in ("FloatPixelData", "DoubleFloatPixelData") if k in ds]
        raise SkippedFile(
            NO_PIXEL_DATA, f"only {floats[0]}, not integer Pixel Data" if floats else ""
        )
    layout = _layout(ds)
    syntax = ds.file_meta.get("TransferSyntaxUID")
    if problem := _decoder_problem(syntax):
        raise SkippedFile(NO_DECODER, problem)
    if layout.frames * frame_bytes > layout.nbytes:
        what = f"{layout} ({layout.frames} model images of {size_text(frame_bytes)})"
        check_size(layout.frames * frame_bytes, file_bytes, max_bytes, what)
    check_size(layout.nbytes, file_bytes, max_bytes, str(layout))
    if syntax is not None and syntax.is_compressed:
        _check_codestreams(ds, syntax, layout)
    else:
        _check_native(ds, layout, file_bytes, max_bytes)
    try:
        stored = _decode(ds, path, syntax)
    except (MemoryError, SkippedFile):
        raise
    except Exception as exc:
        raise SkippedFile(UNREADABLE_PIXELS, describe(exc)) from None
    except BaseException as exc:  # a Rust decoder's panic (pyo3 PanicException) is one
        if isinstance(exc, KeyboardInterrupt | SystemExit | GeneratorExit):
            raise
        raise SkippedFile(UNREADABLE_PIXELS, describe(exc)) from None
    if stored.size != layout.frames * layout.rows * layout.columns:
        raise SkippedFile(UNREADABLE_PIXELS, f"decoded {stored.shape}, expected {layout}")
    stored = stored.reshape(layout.frames, layout.rows, layout.columns)
    padding = (
        _integer(ds, "PixelPaddingValue", -(2**31), 2**32 - 1),
        _integer(ds, "PixelPaddingRangeLimit", -(2**31), 2**32 - 1),
    )
    return [_frame(ds, stored[i], i, layout, padding) for i in range(layout.frames)]


def _frame(
    ds: Dataset,
    stored: np.ndarray,
    index: int,
    layout: _Layout,
    padding: tuple[int | None, int | None],
) -> CTFrame:
    transform = "PixelValueTransformationSequence"
    slope_in = _frame_item(ds, index, transform, "RescaleSlope")
    intercept_in = _frame_item(ds, index, transform, "RescaleIntercept")
    if slope_in is None and intercept_in is None:  # some writers keep the top-level module
        slope_in = intercept_in = ds
    slope = _number(slope_in, "RescaleSlope", BAD_RESCALE)
    intercept = _number(intercept_in, "RescaleIntercept", BAD_RESCALE)
    rescale_type = _frame_value(ds, index, transform, "RescaleType")
    geometry = _geometry(ds, index, layout.frames)
    window = _window(ds, index)
    if "ModalityLUTSequence" in ds and slope is None:
        # A lookup table instead of a linear rescale (PS3.3 C.11.1); pydicom applies it.
        _check_lut(ds)
        mask = padding_mask(stored, *padding, layout.bits_stored, layout.signed)
        hu = stored_to_hu(apply_modality_lut(stored, ds), mask=mask)
        rescale_type = rescale_type or ds.ModalityLUTSequence[0].get("ModalityLUTType")
        pixels = None
    else:
        slope = 1.0 if slope is None else slope
        intercept = 0.0 if intercept is None else intercept
        if slope == 0:
            raise SkippedFile(BAD_RESCALE, "RescaleSlope 0 maps every pixel to one value")
        # Stored values fit in BitsAllocated bits: past float32 the HU would be infinite.
        if abs(slope) * 2.0**layout.bits_allocated + abs(intercept) >= FLOAT32_MAX:
            raise SkippedFile(
                BAD_RESCALE,
                f"RescaleSlope {slope:g}, RescaleIntercept {intercept:g}: HU overflow",
            )
        # HU on demand (CTFrame.hu): a window is a lookup table on the stored values.
        hu = None
        pixels = StoredPixels(stored, slope, intercept, padding, layout.bits_stored, layout.signed)
    return CTFrame(
        hu=hu,
        patient_id=str(ds.get("PatientID", "")),
        series_uid=str(ds.get("SeriesInstanceUID", "")),
        instance_number=_integer(ds, "InstanceNumber", -(2**31), 2**31 - 1),
        frame=index,
        slice_position=geometry.position,
        rescale_type=str(rescale_type) if rescale_type else "HU",
        transfer_syntax=str(ds.file_meta.get("TransferSyntaxUID", "")),
        gantry_tilt=_number(ds, "GantryDetectorTilt"),
        window=window,
        geometry=geometry,
        stored=pixels,
    )


def _geometry(ds: Dataset, index: int, frames: int) -> FrameGeometry:
    """Frame ``index``'s identity and geometry, from the top level or, in the enhanced
    objects, its functional groups; a malformed value is ``bad_attribute``."""
    position = _frame_value(ds, index, "PlanePositionSequence", "ImagePositionPatient")
    orientation = _frame_value(ds, index, "PlaneOrientationSequence", "ImageOrientationPatient")
    spacing = _frame_value(ds, index, "PixelMeasuresSequence", "PixelSpacing")
    if position is not None:
        position = tuple(_numbers(position, "ImagePositionPatient", 3))
    if orientation is not None:
        orientation = tuple(_numbers(orientation, "ImageOrientationPatient", 6))
    try:
        spacing = tuple(_numbers(spacing, "PixelSpacing", 2)) if spacing is not None else None
    except SkippedFile:  # the reader does not need it; crops and annotations say so
        spacing = None
    if spacing is not None and not all(0 < s < 1e4 for s in spacing):
        spacing = None
    sop = str(ds.get("SOPInstanceUID", ""))
    return FrameGeometry(
        key=f"{sop}#{index}" if frames > 1 else sop,
        series_uid=str(ds.get("SeriesInstanceUID", "")),
        patient_id=str(ds.get("PatientID", "")),
        frame=index,
        position=slice_position(position, orientation),
        origin=position,
        orientation=orientation,
        spacing=spacing,
    )


def read_geometry(path: Path) -> list[FrameGeometry]:
    """The geometry of every frame of a CT file, from its header alone (no pixel data is
    read or decoded); :class:`SkippedFile` when it is not a CT file with a usable header
    (the full read, :func:`read_ct`, then says exactly why)."""
    path = Path(path)
    with warnings.catch_warnings(action="ignore"):
        _check_preamble(path)
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True, defer_size=DEFER_BYTES)
        except MemoryError:
            raise
        except Exception as exc:
            raise SkippedFile(UNREADABLE, describe(exc)) from None
        if ds.get("SOPClassUID") not in CT_SOP_CLASSES:
            raise SkippedFile(NOT_CT)
        frames = _integer(ds, "NumberOfFrames", 1, 2**31 - 1) or 1
        return [_geometry(ds, i, frames) for i in range(frames)]
