"""The DICOM fixtures are what they claim, checked with pydicom alone (not the project's reader).

Where pixel data is decodable and padding is not involved, pydicom's own ``apply_modality_lut``
on ``pixel_array`` must reproduce ``Expect.hu`` exactly.
"""

from __future__ import annotations

import filecmp
import math
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pydicom.encaps import generate_frames
from pydicom.errors import InvalidDicomError
from pydicom.pixels import apply_modality_lut
from pydicom.uid import (
    BasicTextSRStorage,
    CTImageStorage,
    EnhancedCTImageStorage,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGLSLossless,
    LegacyConvertedEnhancedCTImageStorage,
    MRImageStorage,
    RLELossless,
    SecondaryCaptureImageStorage,
)

from tests import dicom_fixtures as fx
from tests.dicom_fixtures import Expect

PATIENT = "FIX-042"


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Expect]:
    """Every builder run once into one shared folder (names must not collide)."""
    return fx.build_all(tmp_path_factory.mktemp("fixtures"), PATIENT)


def read(path: Path) -> pydicom.FileDataset:
    return pydicom.dcmread(path)


def hu_of(ds: Dataset, modality_lut: Dataset | None = None) -> np.ndarray:
    """pydicom's own HU: the Modality LUT / rescale of ``modality_lut`` (default ``ds``) applied
    to ``pixel_array``, cast to float first unless a LUT sequence needs integer indices."""
    arr = ds.pixel_array
    lut = ds if modality_lut is None else modality_lut
    if "ModalityLUTSequence" not in lut:
        arr = arr.astype(np.float64)
    return np.asarray(apply_modality_lut(arr, lut), dtype=np.float64)


def normal(ds: Dataset) -> np.ndarray:
    iop = np.asarray([float(v) for v in ds.ImageOrientationPatient])
    return np.cross(iop[:3], iop[3:])


def position(ds: Dataset) -> np.ndarray:
    return np.asarray([float(v) for v in ds.ImagePositionPatient])


# --------------------------------------------------------------------------------------------
# Whole set
# --------------------------------------------------------------------------------------------
def test_every_builder_is_registered_and_names_do_not_collide(built: dict[str, Expect]) -> None:
    assert len(built) == 31
    written = [p for e in built.values() for p in [*e.paths, *e.extra]]
    assert len(written) == len(set(written))
    assert all(p.is_file() for p in written)
    folder = next(iter(built.values())).paths[0].parent
    assert sorted(p for p in folder.rglob("*") if p.is_file()) == sorted(written)


def test_expect_shapes_and_reasons(built: dict[str, Expect]) -> None:
    for name, e in built.items():
        assert e.patient_id == PATIENT, name
        if e.hu is not None:
            assert e.hu.dtype == np.float32, name
            stacked = e.path is None or name in {"enhanced_ct", "legacy_enhanced_ct"}
            assert e.hu.ndim == (3 if stacked else 2), name
            assert e.stored is not None and e.stored.shape == e.hu.shape, name
        if e.order is not None:
            assert sorted(e.order) == sorted(e.paths) and e.hu is not None
            assert e.hu.shape[0] == len(e.order), name
    skipped = {n: e.reason for n, e in built.items() if e.reason}
    assert skipped == {
        "ct_localizer": "localizer",
        "sr_document": "not_ct",
        "secondary_capture": "not_ct",
        "mr_image": "not_ct",
        "dicomdir": "dicomdir",
        "no_preamble": "no_preamble",
        "truncated_pixel_data": "truncated_pixel_data",
        "zero_byte": "empty_file",
        "not_dicom": "not_dicom",
    }


def test_builders_are_deterministic(tmp_path: Path) -> None:
    for name in ("ct_basic", "series_shuffled_instances", "dicomdir", "enhanced_ct", "ct_rle"):
        a = fx.BUILDERS[name](tmp_path / "a")
        b = fx.BUILDERS[name](tmp_path / "b")
        for pa, pb in zip([*a.paths, *a.extra], [*b.paths, *b.extra], strict=True):
            assert filecmp.cmp(pa, pb, shallow=False), (name, pa)
        if a.hu is not None:
            assert np.array_equal(a.hu, b.hu)


def test_patient_id_is_written(built: dict[str, Expect]) -> None:
    for name, e in built.items():
        if e.reason in {"empty_file", "not_dicom"}:
            continue
        for path in [*e.paths, *e.extra]:
            if path.name == "DICOMDIR":
                records = read(path).DirectoryRecordSequence
                assert records[0].PatientID == PATIENT
                continue
            assert pydicom.dcmread(path, force=True).PatientID == PATIENT, name


def test_default_patient_id(tmp_path: Path) -> None:
    e = fx.ct_basic(tmp_path)
    assert e.patient_id == "FIX-001" and read(e.path).PatientID == "FIX-001"


# --------------------------------------------------------------------------------------------
# Single slices that convert: pydicom reproduces Expect.hu
# --------------------------------------------------------------------------------------------
PLAIN = [
    "ct_basic",
    "ct_monochrome1",
    "ct_slope_half",
    "ct_12bit_unsigned",
    "ct_12bit_signed",
    "ct_rle",
    "ct_jpeg2000",
    "ct_modality_lut_sequence",
    "ct_rescale_type_not_hu",
    "ct_localizer",
]


@pytest.mark.parametrize("name", PLAIN)
def test_pydicom_modality_lut_reproduces_expected_hu(built: dict[str, Expect], name: str) -> None:
    e = built[name]
    ds = read(e.path)
    assert ds.SOPClassUID == CTImageStorage and ds.Modality == "CT"
    assert str(ds.file_meta.TransferSyntaxUID) == e.transfer_syntax
    assert np.array_equal(ds.pixel_array, e.stored)
    np.testing.assert_array_equal(hu_of(ds), e.hu)
    assert (ds.Rows, ds.Columns) == e.hu.shape


def test_ct_basic(built: dict[str, Expect]) -> None:
    ds = read(built["ct_basic"].path)
    assert ds.PixelRepresentation == 1 and ds.BitsStored == 16
    assert float(ds.RescaleIntercept) == -1024.0 and float(ds.RescaleSlope) == 1.0
    assert ds.RescaleType == "HU" and "PixelPaddingValue" not in ds
    assert ds.pixel_array.dtype == np.int16
    assert (ds.Rows, ds.Columns) == (fx.ROWS, fx.COLS)


def test_monochrome1_is_not_inverted(built: dict[str, Expect]) -> None:
    e = built["ct_monochrome1"]
    ds = read(e.path)
    assert ds.PhotometricInterpretation == "MONOCHROME1"
    # air is the lowest HU, as in MONOCHROME2: nothing is inverted in HU
    assert e.hu.min() == -1000.0 and e.hu.max() > 600.0


def test_slope_half(built: dict[str, Expect]) -> None:
    e = built["ct_slope_half"]
    ds = read(e.path)
    assert float(ds.RescaleSlope) == 0.5 and float(ds.RescaleIntercept) == -1000.0
    assert np.any(e.hu % 1 == 0.5)  # half-HU values present


def test_12bit_unsigned(built: dict[str, Expect]) -> None:
    e = built["ct_12bit_unsigned"]
    ds = read(e.path)
    assert (ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation) == (16, 12, 11, 0)
    assert ds.pixel_array.dtype == np.uint16
    assert e.stored.min() == 0 and e.stored.max() == 4095
    assert float(ds.RescaleIntercept) == -1024.0


def test_12bit_signed_high_bits_are_zero(built: dict[str, Expect]) -> None:
    e = built["ct_12bit_signed"]
    ds = read(e.path)
    assert (ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation) == (16, 12, 11, 1)
    raw = np.frombuffer(ds.PixelData, dtype="<u2")
    assert np.all(raw >> 12 == 0)  # 12-bit two's complement, unused bits zero
    assert e.stored.min() == -2048 and e.stored.max() == 2047
    # naive int16 view is wrong; pydicom sign-extends
    assert not np.array_equal(raw.view("<i2").reshape(e.stored.shape), e.stored)
    assert np.array_equal(ds.pixel_array, e.stored)
    assert float(ds.RescaleIntercept) == 0.0


def test_modality_lut_sequence(built: dict[str, Expect]) -> None:
    e = built["ct_modality_lut_sequence"]
    ds = read(e.path)
    assert "RescaleIntercept" not in ds and "RescaleSlope" not in ds
    [item] = ds.ModalityLUTSequence
    assert list(item.LUTDescriptor) == [64, 100, 16] and item.ModalityLUTType == "HU"
    lut = np.frombuffer(item.LUTData, dtype="<u2")
    assert lut.size == 64
    # below the first mapped value -> first entry; above the last -> last entry
    assert e.hu[0, 0] == e.hu[0, 2] == lut[0] and e.hu[-1, -1] == e.hu[-1, -3] == lut[-1]
    assert e.stored[0, 0] < 100 and e.stored[-1, -1] > 163


def test_rescale_type_not_hu(built: dict[str, Expect]) -> None:
    e = built["ct_rescale_type_not_hu"]
    assert read(e.path).RescaleType == "US" and e.rescale_type == "US" and e.reason == ""


def test_compressed_transfer_syntaxes(built: dict[str, Expect]) -> None:
    assert built["ct_rle"].transfer_syntax == RLELossless
    assert built["ct_jpeg2000"].transfer_syntax == JPEG2000Lossless
    for name in ("ct_rle", "ct_jpeg2000"):
        ds = read(built[name].path)
        assert ds["PixelData"].is_undefined_length  # encapsulated


# --------------------------------------------------------------------------------------------
# Pixel padding
# --------------------------------------------------------------------------------------------
PADDED = ["ct_padding_signed", "ct_padding_unsigned_encoded", "ct_padding_range"]


@pytest.mark.parametrize("name", PADDED)
def test_padding_outside_mask_matches_pydicom(built: dict[str, Expect], name: str) -> None:
    e = built[name]
    ds = read(e.path)
    assert ds.PixelRepresentation == 1
    mask = e.padding_mask
    assert mask is not None and mask.any() and (~mask).any()
    assert np.array_equal(ds.pixel_array, e.stored)
    np.testing.assert_array_equal(hu_of(ds)[~mask], e.hu[~mask])
    assert np.all(e.hu[mask] == -1000.0)
    # the padded stored values would give far below air with a plain rescale
    assert np.all(hu_of(ds)[mask] <= -1500 - 1024)


def test_padding_signed_vr(built: dict[str, Expect]) -> None:
    e = built["ct_padding_signed"]
    elem = read(e.path)["PixelPaddingValue"]
    assert elem.VR == "SS" and elem.value == -2000
    assert np.all(e.stored[e.padding_mask] == -2000)


def test_padding_unsigned_encoded_vr(built: dict[str, Expect]) -> None:
    e = built["ct_padding_unsigned_encoded"]
    elem = read(e.path)["PixelPaddingValue"]
    assert elem.VR == "US" and elem.value == 63536
    assert np.int16(np.uint16(elem.value)) == -2000
    assert np.all(e.stored[e.padding_mask] == -2000)


def test_padding_range(built: dict[str, Expect]) -> None:
    e = built["ct_padding_range"]
    ds = read(e.path)
    assert ds["PixelPaddingValue"].VR == "SS" and ds.PixelPaddingValue == -2000
    assert ds["PixelPaddingRangeLimit"].VR == "SS" and ds.PixelPaddingRangeLimit == -1500
    padded = e.stored[e.padding_mask]
    assert padded.min() == -2000 and padded.max() == -1500
    assert len(set(padded.tolist())) > 2  # not only the padding value itself
    assert np.all(e.stored[~e.padding_mask] > -1500)


# --------------------------------------------------------------------------------------------
# Series
# --------------------------------------------------------------------------------------------
def check_series(e: Expect) -> list[pydicom.FileDataset]:
    """Slices in ``order`` give ``hu`` with pydicom and ascend along the normal."""
    dss = [read(p) for p in e.order]
    assert len({d.SeriesInstanceUID for d in dss}) == 1
    assert len({d.SOPInstanceUID for d in dss}) == len(dss)
    for i, d in enumerate(dss):
        np.testing.assert_array_equal(hu_of(d), e.hu[i])
    if e.positions is not None:
        along = [float(normal(d) @ position(d)) for d in dss]
        assert along == sorted(along)
        assert [tuple(position(d)) for d in dss] == [tuple(p) for p in e.positions]
    return dss


def test_series_per_slice_intercept(built: dict[str, Expect]) -> None:
    e = built["series_per_slice_intercept"]
    dss = check_series(e)
    assert sorted(float(d.RescaleIntercept) for d in dss) == [-1024.0, -1000.0, 0.0]
    assert np.array_equal(e.hu[0], e.hu[1]) and np.array_equal(e.hu[1], e.hu[2])
    assert not np.array_equal(e.stored[0], e.stored[1])


def test_series_shuffled_instances(built: dict[str, Expect]) -> None:
    e = built["series_shuffled_instances"]
    dss = check_series(e)
    instances = [int(d.InstanceNumber) for d in dss]
    assert instances != sorted(instances) and instances != sorted(instances, reverse=True)
    assert e.order != sorted(e.order)  # file names disagree too
    assert len({tuple(map(tuple, h)) for h in e.hu.tolist()}) == 4  # slices distinguishable


def test_series_no_position(built: dict[str, Expect]) -> None:
    e = built["series_no_position"]
    dss = check_series(e)
    for d in dss:
        assert "ImagePositionPatient" not in d and "ImageOrientationPatient" not in d
        assert "SliceLocation" not in d
    assert [int(d.InstanceNumber) for d in dss] == [1, 2, 3]
    assert e.positions is None and e.order != sorted(e.order)


def test_two_series_one_folder(built: dict[str, Expect]) -> None:
    e = built["two_series_one_folder"]
    assert e.series is not None and e.series_hu is not None and len(e.series) == 2
    assert len({p.parent for p in e.paths}) == 1
    written = [str(read(p).SeriesInstanceUID) for p in e.paths]
    assert written[0] != written[1] and written[0] == written[2]  # interleaved
    studies = set()
    for uid, paths in e.series.items():
        assert len(paths) == 2
        dss = [read(p) for p in paths]
        assert {str(d.SeriesInstanceUID) for d in dss} == {uid}
        studies |= {d.StudyInstanceUID for d in dss}
        assert {d.PatientID for d in dss} == {PATIENT}
        along = [float(normal(d) @ position(d)) for d in dss]
        assert along == sorted(along)
        for d, hu in zip(dss, e.series_hu[uid], strict=True):
            np.testing.assert_array_equal(hu_of(d), hu)
    assert len(studies) == 1


def test_series_duplicate_position(built: dict[str, Expect]) -> None:
    e = built["series_duplicate_position"]
    dss = check_series(e)
    assert len(e.duplicates) == 2
    a, b = (read(p) for p in e.duplicates)
    assert tuple(position(a)) == tuple(position(b))
    assert a.SOPInstanceUID != b.SOPInstanceUID
    assert np.array_equal(a.pixel_array, b.pixel_array)
    assert len({tuple(position(d)) for d in dss}) == 2


def test_series_gap(built: dict[str, Expect]) -> None:
    e = built["series_gap"]
    dss = check_series(e)
    z = [float(position(d)[2]) for d in dss]
    assert z == [0.0, 2.0, 4.0, 10.0]
    assert np.diff(z).tolist() == [2.0, 2.0, 6.0]
    assert {float(d.SliceThickness) for d in dss} == {2.0}


def test_series_gantry_tilt(built: dict[str, Expect]) -> None:
    e = built["series_gantry_tilt"]
    dss = check_series(e)
    assert e.tilt == 15.0
    assert {float(d.GantryDetectorTilt) for d in dss} == {15.0}
    assert {tuple(float(v) for v in d.ImageOrientationPatient) for d in dss} == {
        (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)
    }
    steps = np.diff([position(d) for d in dss], axis=0)
    assert np.all(steps[:, 0] == 0) and np.all(steps[:, 1] != 0)
    for step in steps:
        cos = float(step @ normal(dss[0])) / float(np.linalg.norm(step))
        assert math.degrees(math.acos(cos)) == pytest.approx(15.0, abs=1e-4)


# --------------------------------------------------------------------------------------------
# Files that must be skipped
# --------------------------------------------------------------------------------------------
def test_localizer(built: dict[str, Expect]) -> None:
    ds = read(built["ct_localizer"].path)
    assert list(ds.ImageType) == ["ORIGINAL", "PRIMARY", "LOCALIZER"]


def test_sr_document(built: dict[str, Expect]) -> None:
    e = built["sr_document"]
    ds = read(e.path)
    assert ds.SOPClassUID == BasicTextSRStorage == e.sop_class_uid
    assert ds.file_meta.MediaStorageSOPClassUID == BasicTextSRStorage
    assert ds.Modality == "SR" and "PixelData" not in ds
    assert ds.ContentSequence[0].ValueType == "TEXT"
    with pytest.raises(AttributeError, match="no pixel data to decode"):
        _ = ds.pixel_array


def test_secondary_capture(built: dict[str, Expect]) -> None:
    e = built["secondary_capture"]
    ds = read(e.path)
    assert ds.SOPClassUID == SecondaryCaptureImageStorage and ds.Modality == "OT"
    assert "RescaleIntercept" not in ds
    assert np.array_equal(ds.pixel_array, e.stored)


def test_mr_image(built: dict[str, Expect]) -> None:
    e = built["mr_image"]
    ds = read(e.path)
    assert ds.SOPClassUID == MRImageStorage and ds.Modality == "MR"
    reference = pydicom.dcmread(pydicom.examples.get_path("mr"))
    assert ds.SOPInstanceUID == reference.SOPInstanceUID
    assert np.array_equal(ds.pixel_array, reference.pixel_array)


def test_dicomdir(built: dict[str, Expect]) -> None:
    e = built["dicomdir"]
    assert e.path.name == "DICOMDIR"
    ds = read(e.path)
    assert ds.file_meta.MediaStorageSOPClassUID == "1.2.840.10008.1.3.10"
    assert "PixelData" not in ds
    types = [r.DirectoryRecordType for r in ds.DirectoryRecordSequence]
    assert types == ["PATIENT", "STUDY", "SERIES", "IMAGE"]
    [instance] = e.extra
    assert instance.relative_to(e.path.parent).parts[-1] == "IM000000"
    member = read(instance)
    assert member.SOPClassUID == CTImageStorage
    assert ds.DirectoryRecordSequence[-1].ReferencedSOPInstanceUIDInFile == member.SOPInstanceUID


def test_no_preamble(built: dict[str, Expect]) -> None:
    e = built["no_preamble"]
    head = e.path.read_bytes()[:132]
    assert head[128:] != b"DICM" and head[:4] == b"\x08\x00\x05\x00"  # starts at (0008,0005)
    with pytest.raises(InvalidDicomError, match="File is missing DICOM File Meta Information"):
        pydicom.dcmread(e.path)
    ds = pydicom.dcmread(e.path, force=True)
    assert ds.preamble is None and "TransferSyntaxUID" not in ds.file_meta
    assert ds.SOPClassUID == CTImageStorage
    with pytest.raises(AttributeError, match="has no \\(0002,0010\\) 'Transfer Syntax UID'"):
        _ = ds.pixel_array
    ds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian
    np.testing.assert_array_equal(hu_of(ds), e.hu)


def test_truncated_pixel_data(built: dict[str, Expect]) -> None:
    e = built["truncated_pixel_data"]
    ds = read(e.path)  # reads without error: the short value is kept as is
    expected = ds.Rows * ds.Columns * 2
    assert len(ds.PixelData) == expected - fx.TRUNCATED_BYTES
    with pytest.raises(ValueError, match="The number of bytes of pixel data is less than expected"):
        _ = ds.pixel_array


def test_zero_byte(built: dict[str, Expect]) -> None:
    e = built["zero_byte"]
    assert e.path.name == "empty.dcm" and e.path.stat().st_size == 0
    with pytest.raises(InvalidDicomError):
        pydicom.dcmread(e.path)
    assert len(pydicom.dcmread(e.path, force=True)) == 0


def test_not_dicom(built: dict[str, Expect]) -> None:
    e = built["not_dicom"]
    text, png = e.paths
    assert text.suffix == png.suffix == ".dcm"
    assert text.read_text(encoding="ascii").startswith("Patient")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    for path in e.paths:
        assert path.read_bytes()[128:132] != b"DICM"
        with pytest.raises(InvalidDicomError):
            pydicom.dcmread(path)


def test_jpeg_ls_is_a_genuine_codestream(built: dict[str, Expect]) -> None:
    e = built["ct_jpeg_ls"]
    ds = read(e.path)
    assert ds.file_meta.TransferSyntaxUID == JPEGLSLossless == e.transfer_syntax
    assert ds.SOPClassUID == CTImageStorage
    [frame] = generate_frames(ds.PixelData, number_of_frames=1)
    assert frame[:4] == b"\xff\xd8\xff\xf7"  # SOI, then SOF55 (JPEG-LS)
    source = pydicom.dcmread(get_testdata_file("MR_small_jpeg_ls_lossless.dcm"))
    assert frame == next(generate_frames(source.PixelData, number_of_frames=1))
    assert e.hu.shape == (ds.Rows, ds.Columns)
    np.testing.assert_array_equal(ds.pixel_array, e.stored)  # the pinned decoders read it


# --------------------------------------------------------------------------------------------
# Multi-frame
# --------------------------------------------------------------------------------------------
def check_multiframe(e: Expect, sop_class: str) -> pydicom.FileDataset:
    ds = read(e.path)
    assert ds.SOPClassUID == sop_class and ds.Modality == "CT"
    assert ds.NumberOfFrames == 3 and ds.pixel_array.shape == (3, fx.ROWS, fx.COLS)
    assert "RescaleIntercept" not in ds and "ImagePositionPatient" not in ds
    [shared] = ds.SharedFunctionalGroupsSequence
    [measures] = shared.PixelMeasuresSequence
    assert [float(v) for v in measures.PixelSpacing] == [fx.PIXEL_SPACING] * 2
    assert float(measures.SliceThickness) == fx.SLICE_THICKNESS
    [orientation] = shared.PlaneOrientationSequence
    assert [float(v) for v in orientation.ImageOrientationPatient] == [1, 0, 0, 0, 1, 0]
    frames = ds.PerFrameFunctionalGroupsSequence
    assert len(frames) == 3
    for i, frame in enumerate(frames):
        [plane] = frame.PlanePositionSequence
        assert tuple(float(v) for v in plane.ImagePositionPatient) == e.positions[i]
    return ds


def test_enhanced_ct(built: dict[str, Expect]) -> None:
    e = built["enhanced_ct"]
    ds = check_multiframe(e, EnhancedCTImageStorage)
    assert "PixelValueTransformationSequence" not in ds.SharedFunctionalGroupsSequence[0]
    intercepts = []
    for i, frame in enumerate(ds.PerFrameFunctionalGroupsSequence):
        [rescale] = frame.PixelValueTransformationSequence
        assert rescale.RescaleType == "HU"
        intercepts.append(float(rescale.RescaleIntercept))
        rescaled = apply_modality_lut(ds.pixel_array[i].astype(np.float64), rescale)
        np.testing.assert_array_equal(rescaled, e.hu[i])
    assert len(set(intercepts)) == 3
    # the top level has no rescale: pydicom's dataset-level call leaves values unchanged
    assert np.array_equal(apply_modality_lut(ds.pixel_array, ds), ds.pixel_array)


def test_legacy_enhanced_ct(built: dict[str, Expect]) -> None:
    e = built["legacy_enhanced_ct"]
    ds = check_multiframe(e, LegacyConvertedEnhancedCTImageStorage)
    [rescale] = ds.SharedFunctionalGroupsSequence[0].PixelValueTransformationSequence
    for i, frame in enumerate(ds.PerFrameFunctionalGroupsSequence):
        assert "PixelValueTransformationSequence" not in frame
        rescaled = apply_modality_lut(ds.pixel_array[i].astype(np.float64), rescale)
        np.testing.assert_array_equal(rescaled, e.hu[i])


def test_single_frame_files_use_explicit_vr_little_endian(built: dict[str, Expect]) -> None:
    for name in ("ct_basic", "ct_padding_signed", "enhanced_ct", "series_gap"):
        assert built[name].transfer_syntax == ExplicitVRLittleEndian
