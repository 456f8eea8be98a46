"""MetaImage volumes (``.mhd`` + ``.raw``/``.zraw``, or one ``.mha``), as LUNA16 ships its
CT: HU values and the geometry of each slice.

Read with SimpleITK (``MetaImageIO``), but only after the header has been checked here
(docs/annotations.md, Safety, lists the checks and their reason codes), so that a hostile
header becomes a :class:`~lungct.errors.SkippedFile` reason and never a crash or a huge
allocation: SimpleITK follows any ``ElementDataFile`` path or pattern, allocates whatever
DimSize declares, and returns garbage for a corrupt compressed stream.
"""

from __future__ import annotations

import math
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from lungct.annotations.reasons import (
    METAIMAGE_BAD_HEADER,
    METAIMAGE_MISSING_DATA,
    METAIMAGE_SIZE_MISMATCH,
    METAIMAGE_UNREADABLE,
)
from lungct.annotations.slices import SliceRef
from lungct.errors import SkippedFile, first_line
from lungct.limits import check_size

MAX_HEADER_BYTES = 64 * 1024
CHUNK_BYTES = 2**20  # inflating compressed data, a chunk at a time
# MetaIO element type -> (bytes, dtype of the volume returned)
ELEMENT_TYPES: dict[str, tuple[int, type]] = {
    "MET_CHAR": (1, np.int16),
    "MET_UCHAR": (1, np.int16),
    "MET_SHORT": (2, np.int16),
    "MET_USHORT": (2, np.float32),
    "MET_INT": (4, np.float32),
    "MET_UINT": (4, np.float32),
    "MET_FLOAT": (4, np.float32),
    "MET_DOUBLE": (8, np.float32),
}


@dataclass(frozen=True)
class MetaGeometry:
    """A checked MetaImage header: what reading it would give, read from the header only.

    ``size`` and ``spacing`` are ITK's (x, y, z) = (columns, rows, slices); ``direction``
    is ITK's row-major 3 x 3 matrix, whose column k is the direction of index axis k."""

    path: Path
    data_file: Path
    size: tuple[int, int, int]
    origin: tuple[float, float, float]
    spacing: tuple[float, float, float]
    direction: tuple[float, ...]
    element_type: str
    compressed: bool

    def slice_refs(self, series_uid: str | None = None, patient_id: str = "") -> list[SliceRef]:
        """One :class:`SliceRef` per slice k, keyed ``<series_uid>#<k>`` (the series UID
        is the file's stem unless given, as LUNA16 names its files)."""
        series = series_uid if series_uid is not None else self.path.stem
        d = np.asarray(self.direction, float).reshape(3, 3)
        orientation = tuple(float(v) for v in (*d[:, 0], *d[:, 1]))
        spacing = (self.spacing[1], self.spacing[0])  # Pixel Spacing: (row, column)
        origin = np.asarray(self.origin, float)
        step = d[:, 2] * self.spacing[2]
        return [
            SliceRef.from_geometry(
                f"{series}#{k}", series, patient_id, tuple(origin + k * step), orientation, spacing
            )
            for k in range(self.size[2])
        ]


@dataclass(frozen=True)
class MetaVolume:
    geometry: MetaGeometry
    hu: np.ndarray  # (slices, rows, columns), int16 or float32


def _bad(detail: str) -> SkippedFile:
    return SkippedFile(METAIMAGE_BAD_HEADER, detail)


def _header(path: Path) -> tuple[dict[str, str], int]:
    """The header fields and the header's length in bytes (where LOCAL data starts)."""
    try:
        with path.open("rb") as f:
            head = f.read(MAX_HEADER_BYTES + 1)
    except OSError as exc:
        raise SkippedFile(METAIMAGE_UNREADABLE, first_line(exc)) from None
    fields: dict[str, str] = {}
    offset = 0
    while offset < len(head):
        end = head.find(b"\n", offset)
        if end < 0:
            if len(head) > MAX_HEADER_BYTES:
                raise _bad(f"no ElementDataFile in the first {MAX_HEADER_BYTES} bytes")
            end = len(head)
        line = head[offset:end].decode("latin-1").strip()
        offset = end + 1
        if not line:
            continue
        key, eq, value = line.partition("=")
        key = key.strip()
        if not eq or not key or not key.replace("_", "").isalnum():
            raise _bad(f"not a 'Key = Value' line: {line[:40]!r}")
        if key in fields:
            raise _bad(f"{key} given twice")
        fields[key] = value.strip()
        if key == "ElementDataFile":
            return fields, min(offset, len(head))
    raise _bad("no ElementDataFile")


def _ints(fields: dict[str, str], key: str, count: int) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in fields.get(key, "").split())
    except ValueError:
        values = ()
    if len(values) != count or min(values) < 1:
        raise _bad(f"{key} must be {count} positive integers, not {fields.get(key, '')[:40]!r}")
    return values


def _flag(fields: dict[str, str], key: str, default: bool) -> bool:
    value = fields.get(key, "").lower()
    if value not in ("true", "1", "false", "0", ""):
        raise _bad(f"{key} must be True or False, not {value[:20]!r}")
    return value in ("true", "1") if value else default


def inspect_metaimage(path: Path, limit: int) -> MetaGeometry:
    """Check a MetaImage header (and its data file's size) without reading pixels.

    ``limit`` is the most bytes a volume may declare (``convert.max_image_bytes``).
    :class:`SkippedFile` with a reason code when the volume may not be read."""
    fields, header_bytes = _header(path)
    if fields.get("ObjectType", "Image") != "Image":
        raise _bad(f"ObjectType {fields['ObjectType'][:20]!r} is not Image")
    if fields.get("NDims") != "3":
        raise _bad(f"NDims {fields.get('NDims', '')[:20]!r}: only 3-D volumes are read")
    size = _ints(fields, "DimSize", 3)
    element_type = fields.get("ElementType", "")
    if element_type not in ELEMENT_TYPES:
        raise _bad(f"ElementType {element_type[:20]!r} is not one of {', '.join(ELEMENT_TYPES)}")
    if fields.get("ElementNumberOfChannels", "1") != "1":
        raise _bad("only single-channel volumes are read")
    if not _flag(fields, "BinaryData", True):
        raise _bad("BinaryData False (ASCII data) is not read")
    if fields.get("HeaderSize", "0") != "0":
        raise _bad("HeaderSize is not supported")
    compressed = _flag(fields, "CompressedData", False)
    name = fields["ElementDataFile"]
    local = name == "LOCAL"
    if not local and (
        name in ("", ".", "..")
        or Path(name).name != name
        or "\\" in name
        or len(name.split()) != 1
        or name.startswith("LIST")
    ):
        raise _bad(f"ElementDataFile {name[:60]!r}: only LOCAL or a file name beside the header")
    data_file = path if local else path.parent / name
    if not data_file.is_file():
        raise SkippedFile(METAIMAGE_MISSING_DATA, f"no data file {name}")
    data_bytes = data_file.stat().st_size - (header_bytes if local else 0)
    declared = math.prod(size) * ELEMENT_TYPES[element_type][0]
    check_size(declared, data_bytes, limit, f"MetaImage {'x'.join(map(str, size))} {element_type}")
    if compressed:
        stated = fields.get("CompressedDataSize", str(data_bytes))
        if stated != str(data_bytes):
            raise SkippedFile(
                METAIMAGE_SIZE_MISMATCH,
                f"{data_bytes} compressed bytes where CompressedDataSize says {stated[:20]}",
            )
        _check_compressed(data_file, header_bytes if local else 0, declared)
    elif data_bytes != declared:
        raise SkippedFile(
            METAIMAGE_SIZE_MISMATCH, f"{data_bytes} data bytes where the header declares {declared}"
        )
    reader = _reader(path)
    try:
        reader.ReadImageInformation()
    except RuntimeError as exc:
        raise SkippedFile(METAIMAGE_UNREADABLE, _itk_error(exc)) from None
    if reader.GetDimension() != 3 or tuple(reader.GetSize()) != size:
        raise _bad(f"SimpleITK reads size {reader.GetSize()}, the header says {size}")
    if reader.GetNumberOfComponents() != 1:
        raise _bad("only single-channel volumes are read")
    origin, spacing, direction = reader.GetOrigin(), reader.GetSpacing(), reader.GetDirection()
    if not all(math.isfinite(v) for v in (*origin, *spacing, *direction)):
        raise _bad("Offset, ElementSpacing and TransformMatrix must be finite numbers")
    if min(spacing) <= 0:
        raise _bad(f"ElementSpacing {spacing} must be positive")
    if abs(np.linalg.det(np.asarray(direction, float).reshape(3, 3))) < 1e-6:
        raise _bad("TransformMatrix is singular")
    return MetaGeometry(path, data_file, size, origin, spacing, direction, element_type, compressed)  # type: ignore[arg-type]


def _check_compressed(data_file: Path, offset: int, declared: int) -> None:
    """Inflate a compressed data stream a chunk at a time, keeping nothing: it must be
    zlib (or gzip) data of exactly the declared size. MetaIO only prints a message for a
    corrupt stream and returns an image of garbage; a bomb stops at ``declared``."""
    inflater = zlib.decompressobj(wbits=47)  # zlib or gzip, as MetaIO's inflateInit2
    produced = 0
    try:
        with data_file.open("rb") as f:
            f.seek(offset)
            while produced <= declared and not inflater.eof and (chunk := f.read(CHUNK_BYTES)):
                while chunk and produced <= declared:
                    produced += len(inflater.decompress(chunk, CHUNK_BYTES))
                    chunk = inflater.unconsumed_tail
    except (OSError, zlib.error) as exc:
        raise SkippedFile(METAIMAGE_UNREADABLE, f"compressed data: {first_line(exc)}") from None
    if produced != declared or not inflater.eof:
        raise SkippedFile(
            METAIMAGE_SIZE_MISMATCH,
            f"compressed data inflates to {'more than ' if produced > declared else ''}"
            f"{produced} bytes where the header declares {declared}",
        )


def read_metaimage(path: Path, limit: int) -> MetaVolume:
    """A checked MetaImage volume in HU, (slices, rows, columns); see the module doc."""
    geometry = inspect_metaimage(path, limit)
    reader = _reader(path)
    try:
        image = reader.Execute()
    except RuntimeError as exc:
        raise SkippedFile(METAIMAGE_UNREADABLE, _itk_error(exc)) from None
    if tuple(image.GetSize()) != geometry.size:
        raise SkippedFile(METAIMAGE_UNREADABLE, f"read size {image.GetSize()}, not {geometry.size}")
    dtype = ELEMENT_TYPES[geometry.element_type][1]
    return MetaVolume(geometry, sitk.GetArrayViewFromImage(image).astype(dtype))


def _reader(path: Path) -> sitk.ImageFileReader:
    reader = sitk.ImageFileReader()
    reader.SetImageIO("MetaImageIO")
    reader.SetFileName(str(path))
    return reader


def _itk_error(exc: RuntimeError) -> str:
    """ITK's message without the C++ source location lines."""
    lines = [s.strip() for s in str(exc).splitlines() if s.strip()]
    useful = [s for s in lines if not s.startswith(("Exception thrown", "/")) and ".cxx" not in s]
    return (useful or lines or [type(exc).__name__])[-1][:200]
