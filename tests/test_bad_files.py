"""Hostile and broken input files, one table: each must give its reason code everywhere.

Every entry of :data:`CASES` is one distinct bad input file (a DICOM attribute that is not
a number, missing, zero, negative or huge; a broken Modality LUT; a decompression bomb; a
non-finite rescale or window; a broken or absurdly sized PNG, JPEG, TIFF, GIF or BMP). For
each one:

* the reader (``lungct.io.preprocess.model_images``) raises :class:`SkippedFile` with the
  reason, its detail one line (bombs: without decoding, in little memory);
* predict (``lungct.serving.inference.predict_files``) gives one failure line with that reason;
* the convert stage, on a folder of good files plus every case, through a pool of two
  worker processes, completes, with the case as one skipped manifest row with that
  reason, and writes no image for it.

A case whose ``reason`` is empty is bad but harmless (``PixelSpacing`` that is not a
number: the reader does not use it) and must convert. The README counts ``len(CASES)``.
"""

from __future__ import annotations

import functools
import io
import struct
import tempfile
import time
import tracemalloc
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pydicom
import pytest
import yaml
from openjpeg import encode as j2k_encode
from PIL import Image, ImageFile
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.encaps import encapsulate, generate_frames
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset, write_file_meta_info
from pydicom.sequence import Sequence
from pydicom.tag import Tag
from pydicom.uid import DeflatedExplicitVRLittleEndian

from lungct.contract import Contract, Preprocessing
from lungct.data.series import series_order
from lungct.errors import SkippedFile, UserError
from lungct.io.preprocess import model_images
from lungct.limits import MAX_IMAGE_BYTES
from lungct.params import merge, parse_params
from lungct.serving.inference import Predictor, predict_files
from stages.convert import convert
from tests.conftest import ROOT, TINY, project_params
from tests.dicom_fixtures import BUILDERS, DEFAULT_PATIENT_ID

CLASSES = ("normal", "benign", "malignant")
BOMB_MEMORY = 32 * 2**20  # a refused bomb may not allocate more than this (tracemalloc peak)
BOMB_SECONDS = 5.0  # loose: refusing a bomb reads a header, it decodes nothing


@dataclass(frozen=True)
class Case:
    id: str
    make: Callable[[], bytes]  # the file's bytes
    reason: str  # the reason code; "" = bad but harmless, converts
    kind: str = "dicom"  # "dicom" (the dicom layout) or "image" (an exported-image layout)
    suffix: str = ".dcm"
    file_window: bool = False  # convert.file_window for this case
    bomb: bool = False  # must be refused without decoding, in little memory
    says: str = ""  # the detail names this (an attribute, a size)

    @property
    def filename(self) -> str:
        return self.id + self.suffix

    def write(self, folder: Path) -> Path:
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / self.filename
        path.write_bytes(_bytes(self))
        return path


_BUILT: dict[str, bytes] = {}


def _bytes(case: Case) -> bytes:
    if case.id not in _BUILT:
        _BUILT[case.id] = case.make()
    return _BUILT[case.id]


# --------------------------------------------------------------------------------------------
# DICOM builders: a fixture of tests/dicom_fixtures.py, one thing broken
# --------------------------------------------------------------------------------------------
@functools.cache
def _fixture_bytes(name: str) -> bytes:
    with tempfile.TemporaryDirectory() as folder:
        expect = BUILDERS[name](Path(folder))
        assert expect.path is not None
        return expect.path.read_bytes()


def _dataset(name: str = "ct_basic") -> Dataset:
    return pydicom.dcmread(io.BytesIO(_fixture_bytes(name)))


def _saved(ds: Dataset) -> bytes:
    buffer = io.BytesIO()
    ds.save_as(buffer)
    return buffer.getvalue()


def _raw(ds: Dataset, keyword: str, vr: str, value: str | bytes) -> None:
    """Set ``keyword`` to bytes written as they are, however wrong for the VR."""
    tag = Tag(keyword)
    data = value.encode("ascii") if isinstance(value, str) else value
    data += b" " if len(data) % 2 else b""
    ds[tag] = RawDataElement(tag, vr, len(data), data, 0, False, True)


Edit = Callable[[Dataset], object]


def raw(keyword: str, vr: str, value: str | bytes) -> Edit:
    return lambda ds: _raw(ds, keyword, vr, value)


def delete(keyword: str) -> Edit:
    return lambda ds: delattr(ds, keyword)


def assign(**values: object) -> Edit:
    return lambda ds: [setattr(ds, k, v) for k, v in values.items()]


def window(center: str, width: str) -> Edit:
    return lambda ds: (_raw(ds, "WindowCenter", "DS", center), _raw(ds, "WindowWidth", "DS", width))


def dicom(id: str, reason: str, *edits: Edit, base: str = "ct_basic", says: str = "", **kw) -> Case:
    def make() -> bytes:
        ds = _dataset(base)
        for edit in edits:
            edit(ds)
        return _saved(ds)

    return Case(id, make, reason, says=says, **kw)


def per_frame_slope(value: str) -> Edit:
    def edit(ds: Dataset) -> None:
        item = ds.PerFrameFunctionalGroupsSequence[1].PixelValueTransformationSequence[0]
        _raw(item, "RescaleSlope", "DS", value)

    return edit


def lut(**changes: object) -> Edit:
    def edit(ds: Dataset) -> None:
        item = ds.ModalityLUTSequence[0]
        if "data_entries" in changes:
            item.LUTData = item.LUTData[: 2 * int(changes["data_entries"])]  # type: ignore[call-overload]
        if "descriptor" in changes:
            item.LUTDescriptor = changes["descriptor"]
        if changes.get("empty"):
            ds.ModalityLUTSequence = Sequence([])

    return edit


@functools.cache
def _j2k(rows: int, columns: int) -> bytes:
    return bytes(
        j2k_encode(
            np.zeros((rows, columns), np.int16),
            bits_stored=16,
            photometric_interpretation=2,
            use_mct=False,
        )
    )


def j2k_frames(rows: int, columns: int, frames: int, header: tuple[int, int] | None) -> Edit:
    """JPEG 2000 pixel data: ``frames`` codestreams of ``rows x columns``; the header says
    ``header`` (rows, columns), or the same."""

    def edit(ds: Dataset) -> None:
        ds.Rows, ds.Columns = header or (rows, columns)
        ds.NumberOfFrames = frames
        ds.PixelData = encapsulate([_j2k(rows, columns)] * frames)

    return edit


def rle_frames(rows: int, columns: int, frames: int) -> Edit:
    """The fixture's one small RLE frame, repeated, under a header declaring more."""

    def edit(ds: Dataset) -> None:
        [frame] = generate_frames(ds.PixelData, number_of_frames=1)
        ds.Rows, ds.Columns, ds.NumberOfFrames = rows, columns, frames
        ds.PixelData = encapsulate([frame] * frames)

    return edit


def patched(base: str, old: bytes, new: bytes) -> Callable[[], bytes]:
    """A fixture's bytes with one byte string replaced (same length: offsets hold)."""

    def make() -> bytes:
        data = _fixture_bytes(base)
        assert data.count(old) == 1 and len(old) == len(new)
        return data.replace(old, new)

    return make


def pixel_length(length: int) -> Callable[[], bytes]:
    """ct_basic whose Pixel Data element claims ``length`` bytes (the file keeps 640)."""
    head = b"\xe0\x7f\x10\x00OW\x00\x00"
    data = _fixture_bytes("ct_basic")
    at = data.rindex(head) + len(head)
    return lambda: data[:at] + struct.pack("<I", length) + data[at + 4 :]


def _deflated(ds: Dataset, tail: tuple[bytes, int] | None = None, corrupt=False) -> bytes:
    """``ds`` as Deflated Explicit VR Little Endian (PS3.5 A.5), written here so that a
    ``tail`` (an element header and that many zero bytes) streams through the compressor
    without being held in memory; ``corrupt``: the first deflate block of an invalid type."""
    body = DicomBytesIO()
    body.is_little_endian, body.is_implicit_VR = True, False
    write_dataset(body, ds)
    deflate = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    parts = [deflate.compress(body.getvalue())]
    if tail is not None:
        header, zeros = tail
        parts.append(deflate.compress(header))
        chunk = bytes(2**20)
        for start in range(0, zeros, len(chunk)):
            parts.append(deflate.compress(chunk[: min(len(chunk), zeros - start)]))
    parts.append(deflate.flush())
    if corrupt:
        parts[0] = b"\xff" + parts[0][1:]  # BFINAL 1, BTYPE 11: reserved (RFC 1951 3.2.3)
    ds.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    meta = DicomBytesIO()
    meta.is_little_endian, meta.is_implicit_VR = True, False
    write_file_meta_info(meta, ds.file_meta)
    return b"\0" * 128 + b"DICM" + meta.getvalue() + b"".join(parts)


def deflated_pixels(rows: int, columns: int, frames: int) -> Callable[[], bytes]:
    def make() -> bytes:
        ds = _dataset()
        del ds.PixelData
        ds.Rows, ds.Columns, ds.NumberOfFrames = rows, columns, frames
        n = rows * columns * frames * 2
        return _deflated(ds, (struct.pack("<HH2sHI", 0x7FE0, 0x0010, b"OW", 0, n), n))

    return make


def deflated_padding(n: int) -> Callable[[], bytes]:
    """A good small slice followed by ``n`` bytes of Data Set Trailing Padding (FFFC,FFFC)."""
    return lambda: _deflated(_dataset(), (struct.pack("<HH2sHI", 0xFFFC, 0xFFFC, b"OB", 0, n), n))


def deflated_good() -> bytes:
    return _deflated(_dataset())


def deflated_corrupt() -> bytes:
    return _deflated(_dataset(), corrupt=True)


# --------------------------------------------------------------------------------------------
# Exported image builders
# --------------------------------------------------------------------------------------------
def _chunk(tag: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + tag + body + struct.pack(">I", zlib.crc32(tag + body))


def png(width: int, height: int, rows: int = 1, depth: int = 8, color: int = 0, crc=True):
    """A PNG header declaring ``width x height`` with only ``rows`` rows of data."""

    def make() -> bytes:
        samples = {0: 1, 2: 3, 6: 4}[color]
        line = b"\0" + bytes(width * samples * depth // 8)
        header = _chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, depth, color, 0, 0, 0))
        header = header if crc else header[:-4] + b"\0\0\0\0"
        return (
            b"\x89PNG\r\n\x1a\n"
            + header
            + _chunk(b"IDAT", zlib.compress(line * rows, 9))
            + _chunk(b"IEND", b"")
        )

    return make


def encoded(image: Image.Image, fmt: str) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return buffer.getvalue()


def noise(size: int = 64) -> Image.Image:
    return Image.fromarray(np.random.default_rng(0).integers(0, 255, (size, size), np.uint8))


def jpeg_declaring(width: int, height: int) -> bytes:
    data = encoded(Image.new("RGB", (16, 16), (9, 9, 9)), "JPEG")
    sof = data.index(b"\xff\xc0")
    return data[: sof + 5] + struct.pack(">HH", height, width) + data[sof + 9 :]


def tiff_declaring(width: int, height: int) -> bytes:
    data = bytearray(encoded(Image.new("L", (4, 4)), "TIFF"))
    ifd = int.from_bytes(data[4:8], "little")
    for k in range(int.from_bytes(data[ifd : ifd + 2], "little")):
        entry = ifd + 2 + 12 * k
        tag, kind = struct.unpack("<HH", data[entry : entry + 4])
        if tag in (256, 257):
            value = width if tag == 256 else height
            fmt = "<H" if kind == 3 else "<I"
            data[entry + 8 : entry + 8 + struct.calcsize(fmt)] = struct.pack(fmt, value)
    return bytes(data)


def gif_declaring(width: int, height: int) -> bytes:
    data = bytearray(encoded(Image.new("P", (8, 8)), "GIF"))
    data[6:10] = struct.pack("<HH", width, height)  # logical screen
    image = data.index(b"\x2c")  # image descriptor
    data[image + 5 : image + 9] = struct.pack("<HH", width, height)
    return bytes(data)


def bmp_declaring(width: int, height: int) -> bytes:
    data = bytearray(encoded(Image.new("RGB", (4, 4)), "BMP"))
    data[18:26] = struct.pack("<ii", width, height)
    return bytes(data)


def image(id: str, reason: str, make: Callable[[], bytes], suffix: str, **kw) -> Case:
    return Case(id, make, reason, kind="image", suffix=suffix, **kw)


TS = b"1.2.840.10008.1.2.1\0"  # Explicit VR Little Endian, as the fixtures write it
LUT, J2K, RLE = "ct_modality_lut_sequence", "ct_jpeg2000", "ct_rle"  # fixtures broken below

# --------------------------------------------------------------------------------------------
# The table
# --------------------------------------------------------------------------------------------
CASES: list[Case] = [
    # Image Pixel attributes: missing, not a number, zero, negative, huge
    dicom("rows_missing", "bad_attribute", delete("Rows"), says="Rows is missing"),
    dicom("rows_zero", "bad_attribute", assign(Rows=0), says="Rows"),
    dicom("rows_not_a_number", "bad_attribute", raw("Rows", "LO", "abc"), says="Rows"),
    dicom("rows_two_values", "bad_attribute", raw("Rows", "US", b"\x10\x00\x00"), says="Rows"),
    dicom("rows_negative", "bad_attribute", raw("Rows", "IS", "-16"), says="Rows"),
    dicom("columns_missing", "bad_attribute", delete("Columns"), says="Columns"),
    dicom("columns_zero", "bad_attribute", assign(Columns=0), says="Columns"),
    dicom("rows_columns_huge", "too_large", assign(Rows=65535, Columns=65535), bomb=True),
    dicom("bits_allocated_missing", "bad_attribute", delete("BitsAllocated"), says="BitsAlloc"),
    dicom("bits_allocated_zero", "bad_attribute", assign(BitsAllocated=0), says="BitsAllocated"),
    dicom("bits_allocated_12", "bad_attribute", assign(BitsAllocated=12), says="BitsAllocated"),
    dicom("bits_allocated_huge", "bad_attribute", assign(BitsAllocated=65535), says="BitsAlloc"),
    dicom("bits_stored_over_allocated", "bad_attribute", assign(BitsStored=20), says="BitsStored"),
    dicom("pixel_representation_2", "bad_attribute", assign(PixelRepresentation=2)),
    dicom("frames_not_a_number", "bad_attribute", raw("NumberOfFrames", "IS", "abc")),
    dicom("frames_zero", "bad_attribute", raw("NumberOfFrames", "IS", "0"), says="NumberOf"),
    dicom("frames_negative", "bad_attribute", raw("NumberOfFrames", "IS", "-3")),
    dicom("frames_fraction", "bad_attribute", raw("NumberOfFrames", "DS", "2.5")),
    dicom("frames_huge", "too_large", raw("NumberOfFrames", "IS", "999999999"), bomb=True),
    dicom("samples_zero", "bad_attribute", assign(SamplesPerPixel=0), says="SamplesPerPixel"),
    dicom("samples_not_a_number", "bad_attribute", raw("SamplesPerPixel", "LO", "x")),
    dicom("samples_three", "not_grayscale", assign(SamplesPerPixel=3)),
    dicom("padding_not_a_number", "bad_attribute", raw("PixelPaddingValue", "LO", "air")),
    # Values the reader uses for order and reporting
    dicom("instance_not_a_number", "bad_attribute", raw("InstanceNumber", "IS", "abc")),
    dicom("instance_huge", "bad_attribute", raw("InstanceNumber", "IS", "99999999999")),
    dicom("position_not_numbers", "bad_attribute", raw("ImagePositionPatient", "DS", "a\\b\\c")),
    dicom("position_nan", "bad_attribute", raw("ImagePositionPatient", "DS", "nan\\0\\0")),
    dicom("position_two_values", "bad_attribute", raw("ImagePositionPatient", "DS", "0\\0")),
    dicom("orientation_inf", "bad_attribute", raw("ImageOrientationPatient", "DS", "1\\0\\0\\0\\inf\\0")),
    dicom("tilt_not_a_number", "bad_attribute", raw("GantryDetectorTilt", "DS", "tilted")),
    dicom("pixel_spacing_nan", "", raw("PixelSpacing", "DS", "nan\\nan")),
    dicom("pixel_spacing_not_numbers", "", raw("PixelSpacing", "DS", "x\\y")),
    # Rescale (PS3.3 C.11.1.1.2): not a number, not finite, zero, overflowing float32
    dicom("slope_not_a_number", "bad_rescale", raw("RescaleSlope", "DS", "abc"), says="RescaleSl"),
    dicom("slope_nan", "bad_rescale", raw("RescaleSlope", "DS", "NaN"), says="RescaleSlope"),
    dicom("slope_inf", "bad_rescale", raw("RescaleSlope", "DS", "inf")),
    dicom("slope_minus_inf", "bad_rescale", raw("RescaleSlope", "DS", "-inf")),
    dicom("slope_zero", "bad_rescale", raw("RescaleSlope", "DS", "0")),
    dicom("slope_two_values", "bad_rescale", raw("RescaleSlope", "DS", "1\\2")),
    dicom("slope_overflows_float32", "bad_rescale", raw("RescaleSlope", "DS", "1e38")),
    dicom("intercept_nan", "bad_rescale", raw("RescaleIntercept", "DS", "nan"), says="Intercept"),
    dicom("intercept_not_a_number", "bad_rescale", raw("RescaleIntercept", "DS", "-1024HU")),
    dicom("enhanced_frame_slope_nan", "bad_rescale", per_frame_slope("NaN"), base="enhanced_ct"),
    # The file's own window, used with convert.file_window: true
    dicom("window_center_nan", "bad_window", window("NaN", "400"), file_window=True),
    dicom("window_width_inf", "bad_window", window("40", "inf"), file_window=True),
    dicom("window_width_zero", "bad_window", window("40", "0"), file_window=True),
    dicom("window_center_not_a_number", "bad_window", window("lung", "400"), file_window=True),
    dicom("window_nan_unused", "", window("NaN", "inf")),  # file_window off: not used
    # Modality LUT Sequence (PS3.3 C.11.1.1)
    dicom("lut_shorter_than_descriptor", "bad_lut", lut(data_entries=20), base=LUT),
    dicom("lut_12_bits", "bad_lut", lut(descriptor=[64, 100, 12]), base=LUT),
    dicom("lut_descriptor_two_values", "bad_lut", lut(descriptor=[64, 100]), base=LUT),
    dicom("lut_sequence_empty", "bad_lut", lut(empty=True), base=LUT),
    # Transfer syntax
    Case("syntax_unknown", patched("ct_basic", TS, b"1.2.840.99999.1.2.1\0"), "no_decoder"),
    # Bombs: a small file declaring a large image, in every encoding
    dicom("j2k_bomb_100_frames_1024", "too_large", j2k_frames(1024, 1024, 100, None),
          base=J2K, bomb=True, says="100 frames of 1024 x 1024"),
    dicom("j2k_codestream_larger_than_header", "unreadable_pixels",
          j2k_frames(2048, 2048, 1, (32, 40)), base=J2K, bomb=True, says="2048 x 2048"),
    dicom("j2k_not_a_codestream", "unreadable_pixels",
          assign(PixelData=encapsulate([b"\0" * 64])), base=J2K),
    dicom("rle_bomb_100_frames_1024", "too_large", rle_frames(1024, 1024, 100), base=RLE, bomb=True),
    dicom("rle_over_the_limit", "too_large", rle_frames(65535, 65535, 1), base=RLE, bomb=True),
    Case("deflate_bomb_200_frames_512", deflated_pixels(512, 512, 200), "too_large",
         bomb=True, says="deflated"),
    Case("deflate_bomb_in_padding", deflated_padding(64 * 2**20), "too_large", bomb=True),
    Case("deflate_corrupt", deflated_corrupt, "unreadable"),
    Case("deflate_good", deflated_good, ""),
    dicom("native_declares_100_frames", "truncated_pixel_data", assign(NumberOfFrames=100)),
    dicom("native_declares_4096_square", "too_large", assign(Rows=4096, Columns=4096), bomb=True),
    Case("native_element_claims_2gb", pixel_length(0x7FFFFFF0), "too_large", bomb=True),
    dicom("frames_100000_of_1_pixel", "too_large",
          assign(Rows=1, Columns=1, NumberOfFrames=100_000, PixelData=bytes(200_000)),
          bomb=True, says="100000 model images"),
    # Exported images: broken, or declaring absurd sizes
    image("png_30000_square", "too_large", png(30000, 30000), ".png", bomb=True, says="30000 x 30000"),
    image("png_10000_square_tiny_file", "too_large", png(10000, 10000), ".png", bomb=True),
    image("png_16bit_20000_square", "too_large", png(20000, 20000, depth=16), ".png", bomb=True),
    image("png_rgba_6000_square", "too_large", png(6000, 6000, color=6), ".png", bomb=True),
    image("png_zero_width", "not_image", png(0, 10), ".png"),
    image("png_bad_crc", "not_image", png(4, 4, rows=4, crc=False), ".png"),
    image("png_truncated", "unreadable_image", lambda: encoded(noise(), "PNG")[:300], ".png"),
    image("png_text", "not_image", lambda: b"scan notes, not an image\n", ".png"),
    image("jpeg_truncated", "unreadable_image", lambda: encoded(noise(), "JPEG")[:300], ".jpg"),
    image("jpeg_65000_square", "too_large", lambda: jpeg_declaring(65000, 65000), ".jpg", bomb=True),
    image("tiff_70000_square", "too_large", lambda: tiff_declaring(70000, 70000), ".tif", bomb=True),
    image("tiff_garbage", "not_image",
          lambda: encoded(Image.new("L", (4, 4)), "TIFF")[:8] + b"\xff" * 40, ".tif"),
    image("gif_65535_square", "too_large", lambda: gif_declaring(65535, 65535), ".gif", bomb=True),
    image("gif_truncated", "not_image", lambda: encoded(Image.new("P", (8, 8)), "GIF")[:20], ".gif"),
    image("bmp_100000_square", "too_large", lambda: bmp_declaring(100000, 100000), ".bmp", bomb=True),
]  # fmt: skip


def test_case_ids_are_distinct():
    ids = [case.id for case in CASES]
    assert len(ids) == len(set(ids)) and len(CASES) >= 45


def test_the_default_limit_is_the_params_default():
    assert project_params()["convert"]["max_image_bytes"] == MAX_IMAGE_BYTES
    assert Preprocessing(((-600.0, 1500.0),), False, 32).max_image_bytes == MAX_IMAGE_BYTES


def prep(file_window: bool = False) -> Preprocessing:
    return Preprocessing(((-600.0, 1500.0),), file_window=file_window, image_size=32)


def one_line(text: str) -> bool:
    return "\n" not in text and "Traceback" not in text


@pytest.fixture
def no_decoding(monkeypatch):
    """Every decoder fails the test if called: pixel data, images, pydicom's inflate."""
    calls: list[str] = []

    def refuse(name: str):
        def called(*args, **kwargs):
            calls.append(name)
            raise AssertionError(f"{name} decoded a bomb")

        return called

    monkeypatch.setattr(Dataset, "pixel_array", property(refuse("pixel_array")))
    monkeypatch.setattr(ImageFile.ImageFile, "load", refuse("ImageFile.load"))
    monkeypatch.setattr(Image.Image, "load", refuse("Image.load"))
    monkeypatch.setattr(zlib, "decompress", refuse("zlib.decompress"))
    return calls


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_reader_gives_the_reason(case, tmp_path, request):
    path = case.write(tmp_path)
    if case.bomb:
        calls = request.getfixturevalue("no_decoding")
        tracemalloc.start()
        start = time.perf_counter()
    try:
        if not case.reason:
            images = model_images(path, prep(case.file_window))
            assert images and all(i.pixels.shape[:2] == (32, 32) for i in images)
            return
        with pytest.raises(SkippedFile) as skip:
            model_images(path, prep(case.file_window))
    finally:
        if case.bomb:
            seconds = time.perf_counter() - start
            _, peak = tracemalloc.get_traced_memory()
            tracemalloc.stop()
    assert (skip.value.reason, case.id) == (case.reason, case.id), skip.value.detail
    assert one_line(skip.value.detail) and case.says in skip.value.detail
    if case.bomb:
        assert calls == [] and seconds < BOMB_SECONDS and peak < BOMB_MEMORY


class _Model:
    """Stands in for Keras: the same probabilities for every image."""

    def predict_on_batch(self, x: np.ndarray) -> np.ndarray:
        return np.full((len(x), len(CLASSES)), 1 / len(CLASSES), np.float32)


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_predict_gives_one_failure_line_with_the_reason(case, tmp_path):
    path = case.write(tmp_path)
    predictor = Predictor(_Model(), Contract(CLASSES, prep(case.file_window)))
    rows, failures = predict_files(predictor, [path])
    if not case.reason:
        assert rows and not failures
        return
    [failure] = failures
    assert not rows and failure.reason == case.reason
    line = str(failure)
    assert line.startswith(f"{path}: {case.reason}") and one_line(line)


# --------------------------------------------------------------------------------------------
# The convert stage: good files and every case, through a pool of two workers
# --------------------------------------------------------------------------------------------
GOOD_DICOM = ("ct_basic", "ct_slope_half", "enhanced_ct")
IMAGE_FOLDER = "Data/train/normal"  # the chest-ctscan layout: labels from folders


def _source(case: Case) -> str:
    return f"{IMAGE_FOLDER}/{case.filename}" if case.kind == "image" else f"cases/{case.filename}"


@pytest.fixture(scope="module")
def converted(tmp_path_factory) -> dict[tuple[str, bool], tuple[Path, pd.DataFrame]]:
    """One convert run per (kind, file_window) group of cases, each in its own project."""
    base = parse_params(merge(project_params(), TINY)).convert
    runs = {}
    for kind, file_window in sorted({(c.kind, c.file_window) for c in CASES}):
        root = tmp_path_factory.mktemp(f"convert-{kind}-{file_window}")
        raw = root / "data/raw"
        if kind == "dicom":
            for name in GOOD_DICOM:
                (raw / "good").mkdir(parents=True, exist_ok=True)
                (raw / "good" / f"{name}.dcm").write_bytes(_fixture_bytes(name))
            (raw / "labels.csv").write_text(f"PatientID,label\n{DEFAULT_PATIENT_ID},malignant\n")
            (raw / "SOURCE.json").write_text('{"layout": "dicom"}')
        else:
            for i in range(2):
                good = encoded(Image.new("L", (24, 24), 40 + 50 * i), "PNG")
                (raw / IMAGE_FOLDER).mkdir(parents=True, exist_ok=True)
                (raw / IMAGE_FOLDER / f"good_{i}.png").write_bytes(good)
            (raw / "SOURCE.json").write_text('{"layout": "chest-ctscan"}')
        for case in CASES:
            if (case.kind, case.file_window) == (kind, file_window):
                case.write(raw / Path(_source(case)).parent)
        params = base.model_copy(
            update={"workers": 2, "max_skipped_fraction": 1.0, "file_window": file_window}
        )
        with pytest.MonkeyPatch.context() as patch:
            patch.chdir(root)
            convert(params, raw=raw, out=root / "data/converted")
        manifest = pd.read_csv(
            root / "data/converted/manifest.csv", dtype=str, keep_default_na=False
        )
        runs[(kind, file_window)] = (root, manifest)
    return runs


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_convert_skips_the_file_with_its_reason_and_goes_on(case, converted):
    root, manifest = converted[(case.kind, case.file_window)]
    rows = manifest[manifest["source"] == _source(case)]
    if not case.reason:
        assert len(rows) and set(rows["status"]) == {"converted"}
        assert all((root / "data/converted" / out).is_file() for out in rows["output"])
        return
    [row] = rows.to_dict("records")
    assert (row["status"], row["reason"], row["output"]) == ("skipped", case.reason, "")
    assert one_line(row["detail"]) and case.says in row["detail"]


def test_convert_writes_only_the_converted_images(converted):
    """Nothing half-written: the output is the manifest and one PNG per converted row, and
    the good files all converted."""
    for root, manifest in converted.values():
        out = root / "data/converted"
        files = {p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()}
        done = manifest[manifest["status"] == "converted"]
        assert files == {"manifest.csv", *done["output"]}
        assert sorted(p.name for p in (root / "data").iterdir()) == ["converted", "raw"]
        good = manifest[manifest["source"].str.contains("good")]
        assert len(good) and set(good["status"]) == {"converted"}


def test_non_finite_positions_do_not_break_series_order():
    """Geometry that is not finite (should a reader let it through) is no geometry: the
    series falls back to InstanceNumber order, without an error."""
    manifest = pd.DataFrame(
        {
            "source": ["a", "b", "c"],
            "status": "converted",
            "series_uid": "1.2.3",
            "slice_position": [np.nan, np.inf, 5.0],
            "instance_number": [3, 1, 2],
            "frame": 0,
        }
    )
    ordered = series_order(manifest)
    assert ordered["slice_index"].tolist() == [2, 0, 1]
    assert set(ordered["position_source"]) == {"instance_number"}


@pytest.mark.parametrize(
    ("window", "key"),
    [
        ("{center: .nan, width: 1500}", "convert.windows.0.center"),
        ("{center: -.inf, width: 1500}", "convert.windows.0.center"),
        ("{center: -600, width: .inf}", "convert.windows.0.width"),
        ("{center: -600, width: .nan}", "convert.windows.0.width"),
    ],
)
def test_params_window_must_be_finite(window, key):
    text = (ROOT / "params.yaml").read_text()
    assert text.count("{center: -600, width: 1500}") == 1
    raw = yaml.safe_load(text.replace("{center: -600, width: 1500}", window))
    with pytest.raises(UserError, match=rf"^params.yaml: {key}: input should be a finite number"):
        parse_params(raw)
