import numpy as np
import pydicom
import pytest
from pydicom import examples

from lungct.errors import SkippedFile
from lungct.io.dicom import padding_mask, read_ct, slice_position, stored_to_hu
from tests.dicom_fixtures import BUILDERS


def test_ct_small_known_hu_values():
    [ct] = read_ct(examples.get_path("ct"))
    assert ct.hu.dtype == np.float32
    # CT_small.dcm: stored 175 at (0, 0) and 1928 at (64, 64); intercept -1024, slope 1.
    assert ct.hu[0, 0] == pytest.approx(-849.0)
    assert ct.hu[64, 64] == pytest.approx(904.0)
    assert ct.patient_id == "1CT1"
    assert ct.slice_position == pytest.approx(-75.699997)
    assert ct.rescale_type == "HU" and ct.frame == 0
    assert ct.transfer_syntax == "1.2.840.10008.1.2.1"


def test_unsigned_stored_values_do_not_wrap():
    stored = np.array([0, 1000, 65535], dtype=np.uint16)
    assert stored_to_hu(stored, 1.0, -1024.0).tolist() == [-1024.0, -24.0, 64511.0]


def test_padding_is_masked_on_stored_values_before_rescale():
    stored = np.array([-2000, 0, 1024], dtype=np.int16)
    mask = padding_mask(stored, -2000)
    assert stored_to_hu(stored, 1.0, -1024.0, mask).tolist() == [-1000.0, -1024.0, 0.0]


def test_padding_value_encoded_unsigned_is_reinterpreted():
    stored = np.array([-2000, 5], dtype=np.int16)
    assert padding_mask(stored, 63536, bits_stored=16, signed=True).tolist() == [True, False]


def test_padding_range():
    stored = np.array([-3000, -2500, -2000, 0], dtype=np.int16)
    assert padding_mask(stored, -2000, -3000).tolist() == [True, True, True, False]
    assert padding_mask(stored, None) is None


def test_slope_is_applied():
    stored = np.array([100], dtype=np.int16)
    assert stored_to_hu(stored, 0.5, -1000.0).tolist() == [-950.0]


def test_slice_position_on_the_normal():
    # sagittal: row (0, 1, 0) x column (0, 0, -1) gives the normal (-1, 0, 0)
    assert slice_position([12.5, 3.0, 4.0], [0, 1, 0, 0, 0, -1]) == pytest.approx(-12.5)
    assert slice_position(None, [1, 0, 0, 0, 1, 0]) is None


def test_non_dicom_and_non_ct_files_are_skipped(tmp_path):
    text = tmp_path / "notes.txt"
    text.write_text("not an image")
    with pytest.raises(SkippedFile) as err:
        read_ct(text)
    assert err.value.reason == "not_dicom"

    mr = examples.mr.copy()
    path = tmp_path / "mr.dcm"
    mr.save_as(path)
    with pytest.raises(SkippedFile) as err:
        read_ct(path)
    assert err.value.reason == "not_ct"


# --------------------------------------------------------------------------- one rule each
# tests/dicom_fixtures.py writes one small file (or series) per rule of the standard, with
# the HU a correct reader must produce, or the reason code it must skip the file with.


@pytest.mark.parametrize("name", sorted(BUILDERS))
def test_reader_follows_each_rule(tmp_path, name):
    expect = BUILDERS[name](tmp_path)
    if expect.reason:
        for path in expect.paths:
            with pytest.raises(SkippedFile) as err:
                read_ct(path)
            assert err.value.reason == expect.reason, path.name
        return
    if expect.path is not None:  # one file, one or several frames
        frames = read_ct(expect.path)
        hu = np.stack([f.hu for f in frames])
        np.testing.assert_array_equal(hu, expect.hu.reshape(hu.shape))
        assert [f.frame for f in frames] == list(range(len(frames)))
        assert {f.rescale_type for f in frames} == {expect.rescale_type}
        assert frames[0].transfer_syntax == (expect.transfer_syntax or frames[0].transfer_syntax)
        return
    series = expect.series or {"": expect.order}
    volumes = expect.series_hu or {"": expect.hu}
    for uid, paths in series.items():
        for path, truth in zip(paths, volumes[uid], strict=True):
            [frame] = read_ct(path)
            np.testing.assert_array_equal(frame.hu, truth)
            if expect.tilt:
                assert frame.gantry_tilt == expect.tilt


def test_missing_decoder_names_the_syntax_and_the_package(tmp_path, monkeypatch):
    """Without its decoder packages, a JPEG-LS file is ``no_decoder`` naming what to install
    (test_codecs.py does the same for every compressed syntax)."""
    from pydicom.pixels import get_decoder
    from pydicom.uid import JPEGLSLossless

    expect = BUILDERS["ct_jpeg_ls"](tmp_path)
    decoder = get_decoder(JPEGLSLossless)
    gone = {label: ("pyjpegls",) for label in decoder.available_plugins}
    monkeypatch.setattr(decoder, "_available", {})
    monkeypatch.setattr(decoder, "_unavailable", {**decoder._unavailable, **gone})
    with pytest.raises(SkippedFile) as err:
        read_ct(expect.path)
    assert err.value.reason == "no_decoder"
    assert "JPEG-LS Lossless" in err.value.detail and "pyjpegls" in err.value.detail


def test_monochrome1_is_not_inverted(tmp_path):
    expect = BUILDERS["ct_monochrome1"](tmp_path)
    [frame] = read_ct(expect.path)
    assert frame.hu.min() == pytest.approx(-1000.0, abs=5)  # air stays air, not bone


# --------------------------------------------------------------------------------------------
# Large elements are read lazily; deflated files; codestream headers
# --------------------------------------------------------------------------------------------
def test_pixel_data_over_the_defer_size_is_read_when_used_and_gives_the_same_hu(tmp_path):
    from lungct.io.dicom import DEFER_BYTES
    from lungct.phantom.dicom_writer import ct_slice_dataset

    hu = np.round(np.linspace(-1000, 1000, 256 * 256)).reshape(256, 256).astype(np.float32)
    ds = ct_slice_dataset(
        hu,
        patient_id="P",
        study_uid="1.2.3",
        series_uid="1.2.3.4",
        sop_uid="1.2.3.4.5",
        instance_number=1,
        z_mm=0.0,
        pixel_spacing_mm=1.0,
        slice_thickness_mm=1.0,
        padding_value=None,
    )
    assert len(ds.PixelData) > DEFER_BYTES  # deferred: read from the file by pixel_array
    ds.save_as(tmp_path / "big.dcm", enforce_file_format=True)
    [frame] = read_ct(tmp_path / "big.dcm")
    np.testing.assert_array_equal(frame.hu, hu)


def test_deflated_file_reads_as_the_plain_one(tmp_path):
    from pydicom.uid import DeflatedExplicitVRLittleEndian

    expect = BUILDERS["ct_basic"](tmp_path)
    ds = pydicom.dcmread(expect.path)
    ds.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    ds.save_as(tmp_path / "deflated.dcm", enforce_file_format=True)
    [frame] = read_ct(tmp_path / "deflated.dcm")
    np.testing.assert_array_equal(frame.hu, expect.hu)
    assert frame.transfer_syntax == DeflatedExplicitVRLittleEndian


def test_declared_size_over_the_limit_is_too_large_before_decoding(tmp_path, monkeypatch):
    expect = BUILDERS["ct_basic"](tmp_path)  # 16 x 20 x 16 bits: 640 bytes
    monkeypatch.setattr(pydicom.dataset.Dataset, "pixel_array", property(lambda ds: 1 / 0))
    with pytest.raises(SkippedFile) as err:
        read_ct(expect.path, max_bytes=639)
    assert err.value.reason == "too_large" and "639 bytes" in err.value.detail


def test_jpeg_frame_shape_comes_from_its_sof_marker():
    import io

    from PIL import Image

    from lungct.io.dicom import _jpeg_shape

    buffer = io.BytesIO()
    Image.new("L", (40, 24)).save(buffer, format="JPEG")
    assert _jpeg_shape(buffer.getvalue()) == (24, 40, 1)
    assert _jpeg_shape(b"not a jpeg") is None
