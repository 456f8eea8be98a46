"""Every transfer syntax CT is stored in decodes out of the box (docs/dicom.md, "Codecs").

Lossless syntaxes give back exactly the HU of the uncompressed file, through
``lungct.io.dicom.read_ct`` and through every decoder plugin pydicom has for them; lossy ones
decode within a tolerance; a syntax whose decoders are gone still gives ``no_decoder``.
Phantom slices are written with :func:`lungct.phantom.transfer_syntaxes.save_slice` (the
encoders ``write_cohort(..., transfer_syntax=...)`` uses); HTJ2K, which no pinned package
encodes, comes from small codestreams made once with OpenJPH (``ojph_compress``).
"""

from __future__ import annotations

import base64
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.encaps import encapsulate, generate_frames
from pydicom.pixels import get_decoder, pixel_array
from pydicom.uid import (
    HTJ2K,
    JPEG2000,
    UID,
    ExplicitVRLittleEndian,
    HTJ2KLossless,
    HTJ2KLosslessRPCL,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    JPEGLSNearLossless,
    RLELossless,
)

from lungct.errors import SkippedFile
from lungct.io.dicom import decoding_plugin, read_ct
from lungct.phantom import ct_slice_dataset, fov_mask, patient_rng, phantom_patient
from lungct.phantom.transfer_syntaxes import (
    TRANSFER_SYNTAXES,
    gdcm_encode_frame,
    resolve_transfer_syntax,
    save_slice,
)

SIZE = 64
SOP_UID = "1.2.826.0.1.3680043.8.498.1"
COMPRESSED_LOSSLESS = [name for name, uid in TRANSFER_SYNTAXES.items() if uid.is_compressed]


@pytest.fixture(scope="module")
def slice_hu() -> np.ndarray:
    """A malignant phantom slice through the nodule (air, lung, soft tissue, bone)."""
    return phantom_patient(patient_rng(3, 0), "malignant", 1, SIZE).hu[0]


def dataset(hu: np.ndarray, **kwargs) -> pydicom.Dataset:
    args = {
        "patient_id": "CODEC",
        "study_uid": "1.2.826.0.1.3680043.8.498.2",
        "series_uid": "1.2.826.0.1.3680043.8.498.3",
        "sop_uid": SOP_UID,
        "instance_number": 1,
        "z_mm": -120.0,
        "pixel_spacing_mm": 350.0 / hu.shape[0],
        "slice_thickness_mm": 2.5,
        "fov_mask": fov_mask(hu.shape[0]),
    }
    return ct_slice_dataset(hu, **{**args, **kwargs})


@pytest.fixture(scope="module")
def reference(slice_hu, tmp_path_factory) -> np.ndarray:
    """HU of the uncompressed (Explicit VR Little Endian) file, as read_ct gives them."""
    path = tmp_path_factory.mktemp("ref") / "ref.dcm"
    dataset(slice_hu).save_as(path, enforce_file_format=True)
    [frame] = read_ct(path)
    return frame.hu


LOSSY = {JPEGBaseline8Bit, JPEGExtended12Bit, JPEGLSNearLossless, JPEG2000, HTJ2K}


def write(ds: pydicom.Dataset, path: Path, syntax: UID, frames: list[bytes]) -> Path:
    """``ds`` with ``frames`` as its encapsulated pixel data, in ``syntax``."""
    ds.PixelData = encapsulate(frames)
    ds["PixelData"].VR = "OB"
    ds["PixelData"].is_undefined_length = True
    ds.file_meta.TransferSyntaxUID = syntax
    if syntax in LOSSY:
        ds.LossyImageCompression = "01"
    ds.save_as(path, enforce_file_format=True)
    return path


# --------------------------------------------------------------------------------------------
# Lossless: exact HU
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", sorted(TRANSFER_SYNTAXES))
def test_lossless_syntax_reads_back_the_exact_hu(tmp_path, slice_hu, reference, name):
    syntax = TRANSFER_SYNTAXES[name]
    path = tmp_path / f"{name}.dcm"
    save_slice(dataset(slice_hu), path, syntax)
    ds = pydicom.dcmread(path)
    assert ds.file_meta.TransferSyntaxUID == syntax
    assert ds.SOPInstanceUID == SOP_UID  # compressing keeps the instance
    assert "LossyImageCompression" not in ds or ds.LossyImageCompression == "00"
    [frame] = read_ct(path)
    assert frame.transfer_syntax == syntax
    assert np.array_equal(frame.hu, reference)
    if syntax.is_compressed:  # and the file is smaller than the native one
        native = tmp_path / "native.dcm"
        dataset(slice_hu).save_as(native, enforce_file_format=True)
        assert path.stat().st_size < native.stat().st_size


@pytest.mark.parametrize("name", COMPRESSED_LOSSLESS)
def test_every_decoder_plugin_gives_the_same_stored_values(tmp_path, slice_hu, name):
    """Whichever plugin pydicom picks (gdcm, pyjpegls, pylibjpeg, pillow, pydicom), the
    stored values are exact: the encoder and at least one other decoder agree."""
    syntax = TRANSFER_SYNTAXES[name]
    native = dataset(slice_hu).pixel_array
    path = tmp_path / f"{name}.dcm"
    save_slice(dataset(slice_hu), path, syntax)
    plugins = get_decoder(syntax).available_plugins
    assert plugins, f"no decoder for {syntax.name}"
    for plugin in plugins:
        assert np.array_equal(pixel_array(path, decoding_plugin=plugin), native), plugin


def test_compressed_files_are_deterministic(tmp_path, slice_hu):
    for name in COMPRESSED_LOSSLESS:
        a, b = tmp_path / f"a-{name}.dcm", tmp_path / f"b-{name}.dcm"
        save_slice(dataset(slice_hu), a, TRANSFER_SYNTAXES[name])
        save_slice(dataset(slice_hu), b, TRANSFER_SYNTAXES[name])
        assert a.read_bytes() == b.read_bytes(), name


def test_transfer_syntax_names_and_uids():
    assert resolve_transfer_syntax("jpeg-lossless") == JPEGLosslessSV1
    assert resolve_transfer_syntax("1.2.840.10008.1.2.4.57") == JPEGLossless
    assert resolve_transfer_syntax(str(JPEGLSLossless)) == JPEGLSLossless
    assert not LOSSY & set(TRANSFER_SYNTAXES.values())
    for bad in ("jpeg-baseline", str(JPEG2000), "1.2.3", ""):
        with pytest.raises(ValueError, match="unknown or lossy transfer syntax"):
            resolve_transfer_syntax(bad)


# --------------------------------------------------------------------------------------------
# HTJ2K: OpenJPH codestreams (12-bit unsigned, 32 x 32) of :func:`htj2k_pattern`
# --------------------------------------------------------------------------------------------
# ojph_compress -i u.yuv -o ll.j2c -dims {32,32} -num_comps 1 -signed false -bit_depth 12
#   -downsamp {1,1} -reversible true -num_decomps 3      (RPCL, the default progression)
HTJ2K_LOSSLESS = (
    "/0//UQApQAAAAAAgAAAAIAAAAAAAAAAAAAAAIAAAACAAAAAAAAAAAAABCwEB/1AACAACAAAACP9SAAwAAgABAAME"
    "BEAB/1wADSBweHiAeHh4cHB4/2QAFgABT3BlbkpQSCBWZXIgMC45LjAu/5AACgAAAAAFPwAB/5PAAW+A/VOn1Urq"
    "5uVJdgWj+syGwTpMV4IS0PkA1RyFAys4AMAAt2AAW9AAFvi5KC+9JsF6J6h9EXEN+7+B45NucFEbAnaIQBGXALvA"
    "N4YORzYrGI/l0NWP4Jlc0YlDuvgASkiMgEC4ADMwBd8DDHZQEVcGYlaTY7ojPUKBwX1CAEAwlKBDOADAAL2GAAXs"
    "kAAvYJgUfjE3i3ZsLZIE5CIinQ5UE0WvZkiEFcQ7ieA5hbx3pi248SJN6DQVNBQjLq/bA9aBPC5V3juDJGJIVXkM"
    "MnTFob0QEIKUPmOaVTqfoCIBcA1jhbkIR5KIRDAAAjAzkgGYfHy4OOL+wOAG0hoAEYow1mhiZHnQIVc7fhuBcFft"
    "7kDuAzMMmi4gwNhNAz1tJmcCTo9ytHOwVkor1TQBpqQmRbphDSMx90y0Sbfy4HVM5AAiKllVOQuaQ04XBoRAEgYw"
    "I5QBMvGKVMxBvjOAo76DY9dKBabUbBwue4BMPmrI87sGVvyq6eYFJZlhk2avvpQ6efAIUvoGCugBqMlSSY+VGiQ9"
    "fCgmCywMMOklyHcx4ezlFVgoKaFzBTCrmiCADQSARzIBwAF+lsABfprAAL9CwPn+Ry7wCe5XgaqWa8ADBLtRGK7+"
    "Nvpn9f2bF2s4FXJwD4IQiOOBCgbIoIWEDhXUdPjHkHRZQvzMs20h3RGSk6ZE8OZwDMSf8zyOaFbkdnvAiBmFSGEZ"
    "3UfxLK6EjxAA95mSY7lYXXzCAQHM+I+lR7g76yPaUBigJOg+DGCBC31CYXGIQIA28l7RALoKd2OXa1E3/HY44MAA"
    "+IFtJh6IuyngKosATWWMJhhgoY2BbgImuXlFqQ1AFLa46aY3HfyITd4QcwvAL5JIwKJHMpZIHHiAAiFUoEfK9dIP"
    "P60+ePIZdIOjgzhI4uOAvKV51jvDznnz/YAk9klLgtQourmO/CAsKY5XcIF/IaI6c5tWeWAz2HKl5tJB4mpJO5II"
    "c58MDCAyAQiGBlgOCFigWgP7/sH73YnkkiQbzyMEBx5wYCALvFZDTb2zcRl9pE0fYLwQq6V+EAXyBwMOVNBAAAEI"
    "ziFIGJ6+t/L42SdAu/jqb9E5JTgPIU+GY/wd9HkcxxRAZANyUljIjYkKkfGOCQYYkAGvCvZMeDDRocK8DrkqmBER"
    "a4DehgGaGpCW4IF7HuzTy02vvmIkNHmy1YSSwSsjp26rNix54Feo/Xfr1XJu0gmRKqtQJcOJAwNERHBDADDsABqo"
    "wIHW4H+XH3575RKqQA8PJilGxiXNM1j4QAwMwvEz33r18Q4Wzkcm9Y5JDTqgAf8XUIE/fz03c9FF0755gg0KAHlJ"
    "dLmm5pyAwJWrlJKy/UBxoQwMYRgAppAKkEAgJQ20EU+ADV4zJEBkEI7BgH+xb+DCAYCAPwGMCNDIBEEEtATt+58b"
    "Ex5624psv38PH+JbSOL6/zMfeN03wOXtrxldp0gt6KEDHni4cNGiwwMPFlYv/MjPvQH4A77rLNcB5h06uNDasvzQ"
    "0vLwwOpB4nl5u7DALnTffgcHB60eeNYHPGD9QP1uHuzmAA/z8/K2nIPdNu2Wt7ay8t3a6Fu4PXr/d9hucGA3Dzpo"
    "oIEHPDjgzd3AA0GEP/7ciz9GNi/8eCR3NLht8++BgQM9qELpez33OX+46R3IvXXXH0AEW9gBA4M/eoYExAM67W4Y"
    "SYsQh7sEO6kheSQ3n2lGOFwlAB3XgCAPzlAB7qEgE9/aNDc7v7+OHVDE5lBAqVjTc+U0NYgzAQjEAIOHAAGEuQT/"
    "2Q=="
)
# the same with -qstep 0.002 instead of -reversible true (irreversible 9/7 wavelet)
HTJ2K_LOSSY = (
    "/0//UQApQAAAAAAgAAAAIAAAAAAAAAAAAAAAIAAAACAAAAAAAAAAAAABCwEB/1AACAACAAAAI/9SAAwAAgABAAME"
    "BEAA/1wAFyJvk2+qb6pvwlg1WDVYeFAaUBpfv/9kABYAAU9wZW5KUEggVmVyIDAuOS4wLv+QAAoAAAAABCYAAf+T"
    "wALeFxFKFWWRFkVEB7hs2d4zydGkNb+rPPcANEKBszcAwALbgAW3AAtgSVIHmUu4ANp4iCmtjF8eJMPtsv45BxiA"
    "WZcATwgTbeogBJJjJm6iyoOShGJPhgJJRxCA0LgA5ROtUDheFHeKqzsfZRLO0DwMEIggQzcAwAvSoAXp0AL0QMr2"
    "3otfWYCO+9RSn0dMVBJWmSSo4KyozUryK+aKJSfMWzezHvj7DpYdrSQiMABPy4mTDCDTPHXzADwa1jhdycAnHQhg"
    "gAAII5IByv9aF/jKLEm6RDSNAYkAQJ8XS2RZHT60AcSwWKH6TjBVfEwaiYk45LEh/oGApDV/kGL7AZU8Lm0D5xyK"
    "+QHSguJQl8Lm40AQEgIAI5QBUMljRW8tdNLqL/9ksRauTfMtJUWNZT+yQ/4ZJjbMfiftiYVNDXy43ZaiMhBC6+BU"
    "qt0LrBQUplnIYvCrmgRLgBDXMgHAF9xQBfdcAL7jRHluoFjQKvfbhqCqWLaNtltMKAKjGRJZAc+DUgEsACEgjjsA"
    "pV2ix8IOdDrkKkJOeDQ8sCtHqext6dEkKm6mQR1IhgQCVYlHBkJYQv7obEYCLDtPGLQTj0oCaqEY5r1LRu4VZILH"
    "nBMd4Ak0CGiFJWRKYSAHNgRAIoxATeRKJhChuMV8NjZ1tZzEAwUhZNFC3iUrgoOOxNAqNAao90BzEK/SdkDXPUUG"
    "JgQQJIghvVXuYN1W8x3FMcAIB9WHosOQHNGww9jFZK5R1mXNs1LfSmoZQAtZHvIcAACBAiPoAsfbA2QMDXLwEEor"
    "CuegfTgYJlDVcoa7HXQonSdVlSfwOAgagbFl0SbRDAVWdXoxqQr7GJbmgYEojCPYQKixFsIGUuwWA00gEQhwgq0D"
    "ECBBJBKko4VTMSF0dFCyojo0yJJBnbfwsLTIMEViWBrdt1FXA9iAyVMICyOgqDAFcKS+p4JrclR5PyNtjrDNwM37"
    "aGQFsK1Xo4AE6GK07fUIs0QWJTAYijZsnzOLQGqSQAFImIEQEPyXS8FA5TToCoapC47tdEPICLpIfgiLLigkLNzt"
    "xgBrxQQjxMMSEGA9LDhBD0CCEAAAeDwwajIn0ATIMc/tIbCSI+YMEUNBTb5MKhc2kOLIvd8lDxFDEBCCAAhDAAUD"
    "UgskMkxMJuOwWHPEXBBB+BkIKCcC4AeAVoYEu6+BhA8VBiQAxAItAiMcxqMQUCIAYhGNcAglYAMloBgqEbUzg0XG"
    "Q4mIvuAUMYxGASC4ASwENknAWJwuWGysSBZgzAg+AltYLs/3JgdAhoBShmXGoK+WeJRLg2hpEVD2DtQghooO+JEX"
    "gLmw5p747XSVjgsiOmzchDEBnwQA/UgvxIIXYWFTGZ14cipAiU+9KlKuWVAxehhDgIkMFHMABCfRBP/Z"
)


def htj2k_pattern(size: int = 32) -> np.ndarray:
    """int16 stored values (intercept -1024): body, lungs, texture, -2000 padding."""
    i, j = np.mgrid[:size, :size]
    c = (size - 1) / 2
    r = np.hypot(i - c, j - c)
    stored = np.where(r < size * 0.45, 1064, 24)  # soft tissue 40 HU, air -1000 HU
    lung = np.hypot(i - c, np.abs(j - c) - size * 0.2) < size * 0.15
    stored = np.where(lung, 174, stored)  # lung -850 HU
    stored = stored + ((i * 7 + j * 13 + i * j) % 31) - 15  # deterministic texture
    stored = np.where(r > size / 2, -2000, stored)  # padding outside the field of view
    return stored.astype(np.int16)


def htj2k_dataset() -> tuple[pydicom.Dataset, np.ndarray]:
    """The pattern as 12-bit unsigned CT (stored + 2048, intercept -3072, padding 48) and its
    HU as read_ct gives them."""
    stored = htj2k_pattern()
    hu = stored.astype(np.float32) - 1024
    ds = dataset(hu, fov_mask=None, padding_value=None)
    ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 12, 11, 0
    ds.RescaleIntercept = "-3072"
    ds.PixelPaddingValue = 48
    expected = np.where(stored == -2000, -1000.0, hu).astype(np.float32)
    return ds, expected


@pytest.mark.parametrize("syntax", [HTJ2KLossless, HTJ2KLosslessRPCL])
def test_htj2k_lossless_gives_the_exact_hu(tmp_path, syntax):
    ds, expected = htj2k_dataset()
    path = write(ds, tmp_path / "htj2k.dcm", syntax, [base64.b64decode(HTJ2K_LOSSLESS)])
    [frame] = read_ct(path)
    assert np.array_equal(frame.hu, expected)


def test_htj2k_lossy_decodes_within_a_tolerance(tmp_path):
    ds, expected = htj2k_dataset()
    path = write(ds, tmp_path / "htj2k.dcm", HTJ2K, [base64.b64decode(HTJ2K_LOSSY)])
    [frame] = read_ct(path)
    inside = htj2k_pattern() != -2000
    error = np.abs(frame.hu - expected)[inside]
    assert 0 < error.max() <= 16 and error.mean() < 4


# --------------------------------------------------------------------------------------------
# Lossy: within a tolerance
# --------------------------------------------------------------------------------------------
def unpadded(hu: np.ndarray) -> pydicom.Dataset:
    """No padding: a lossy codec moves the padding value (-2000 decodes as -1998 or -2003,
    which are not padding), so the tolerances are checked without it."""
    return dataset(hu, fov_mask=None, padding_value=None)


def test_jpeg_ls_near_lossless_keeps_its_bound(tmp_path, slice_hu):
    ds = unpadded(slice_hu)
    exact = ds.pixel_array.astype(np.float32) - 1024
    ds.compress(JPEGLSNearLossless, jls_error=3, generate_instance_uid=False)
    path = tmp_path / "jls.dcm"
    ds.save_as(path, enforce_file_format=True)
    [frame] = read_ct(path)
    error = np.abs(frame.hu - exact)
    assert 0 < error.max() <= 3  # NEAR bounds every sample


def test_jpeg2000_lossy_decodes_within_a_tolerance(tmp_path, slice_hu):
    ds = unpadded(slice_hu)
    exact = ds.pixel_array.astype(np.float32) - 1024
    ds.compress(JPEG2000, j2k_cr=[5], encoding_plugin="pylibjpeg", generate_instance_uid=False)
    path = tmp_path / "j2k.dcm"
    ds.save_as(path, enforce_file_format=True)
    [frame] = read_ct(path)
    error = np.abs(frame.hu - exact)  # 5:1 smooths the noise (sigma 10-25 HU) away
    assert 0 < error.mean() < 20 and np.percentile(error, 99) < 80


@pytest.mark.parametrize("syntax", [JPEGBaseline8Bit, JPEGExtended12Bit])
def test_jpeg_8_bit_decodes_within_a_tolerance(tmp_path, slice_hu, syntax):
    """8-bit CT (HU = 8 * stored - 1024), rare but legal, in JPEG Baseline or JPEG Extended;
    GDCM encodes it, GDCM or Pillow decodes it."""
    ds = unpadded(slice_hu)
    stored = np.clip(np.rint((slice_hu + 1024) / 8), 0, 255).astype(np.uint8)
    ds.set_pixel_data(stored, "MONOCHROME2", 8, generate_instance_uid=False)
    ds.RescaleSlope = "8"
    frame_bytes = gdcm_encode_frame(ds, syntax, quality=95)
    path = write(ds, tmp_path / "jpeg.dcm", syntax, [frame_bytes])
    [frame] = read_ct(path)
    error = np.abs(frame.hu - (stored.astype(np.float32) * 8 - 1024))
    assert 0 < error.mean() < 16 and np.percentile(error, 99) < 100


@pytest.mark.xfail(
    strict=True,
    raises=SkippedFile,
    reason="12-bit JPEG Extended: pydicom 3.0.2 refuses GDCM for it and Pillow cannot; only "
    "pylibjpeg-libjpeg (GPL-3.0) decodes it (docs/dicom.md, Codecs)",
)
def test_jpeg_extended_12_bit_decodes_within_a_tolerance(tmp_path, slice_hu):
    ds = unpadded(slice_hu)
    stored = np.clip(np.rint(slice_hu + 2048), 0, 4095).astype(np.uint16)
    ds.set_pixel_data(stored, "MONOCHROME2", 12, generate_instance_uid=False)
    ds.RescaleIntercept = "-2048"
    frame_bytes = gdcm_encode_frame(ds, JPEGExtended12Bit, quality=95)
    path = write(ds, tmp_path / "jpeg12.dcm", JPEGExtended12Bit, [frame_bytes])
    [frame] = read_ct(path)
    error = np.abs(frame.hu - (stored.astype(np.float32) - 2048))
    assert error.max() <= 16


# --------------------------------------------------------------------------------------------
# A decoder that is not there
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "syntax", [JPEGLosslessSV1, JPEGLossless, JPEGLSLossless, JPEG2000Lossless, RLELossless]
)
def test_a_missing_decoder_still_gives_no_decoder(tmp_path, slice_hu, monkeypatch, syntax):
    """As without the packages: pydicom lists every plugin as unavailable, with what it
    needs."""
    name = next(n for n, uid in TRANSFER_SYNTAXES.items() if uid == syntax)
    path = tmp_path / f"{name}.dcm"
    save_slice(dataset(slice_hu), path, syntax)
    decoder = get_decoder(syntax)
    gone = {label: (f"{label}-package",) for label in decoder.available_plugins}
    monkeypatch.setattr(decoder, "_available", {})
    monkeypatch.setattr(decoder, "_unavailable", {**decoder._unavailable, **gone})
    with pytest.raises(SkippedFile) as err:
        read_ct(path)
    assert err.value.reason == "no_decoder"
    assert syntax.name in err.value.detail and "-package" in err.value.detail


def test_native_syntaxes_need_no_decoder():
    assert get_decoder(ExplicitVRLittleEndian).is_available


# --------------------------------------------------------------------------------------------
# Damaged codestreams: a skipped file, never a dead process
# --------------------------------------------------------------------------------------------
def mutated(path: Path, out: Path, seed: int) -> Path:
    """``path`` with 1-4 bytes of its (one) compressed frame replaced, chosen by ``seed``,
    most in the first 80 bytes (the marker segments)."""
    import random

    ds = pydicom.dcmread(path)
    [frame] = generate_frames(ds.PixelData, number_of_frames=1)
    rng, data = random.Random(seed), bytearray(frame)
    for _ in range(rng.randint(1, 4)):
        at = rng.randrange(2, min(len(data), 80)) if rng.random() < 0.7 else None
        data[at if at is not None else rng.randrange(2, len(data))] = rng.randrange(256)
    return write(ds, out, ds.file_meta.TransferSyntaxUID, [bytes(data)])


# GDCM aborted the process on these (a segmentation fault on a SOF of 17 bits, an uncaught
# gdcm::Exception in gdcmJPEGBITSCodec, an uncaught std::string in its JPEG-LS codec).
CRASHED_GDCM = [("jpeg-lossless", 15), ("jpeg-lossless", 38), ("jpeg-ls", 15)]


@pytest.mark.parametrize(("name", "seed"), CRASHED_GDCM)
def test_a_damaged_codestream_is_a_skipped_file_not_a_crash(tmp_path, slice_hu, name, seed):
    path = tmp_path / f"{name}.dcm"
    save_slice(dataset(slice_hu), path, TRANSFER_SYNTAXES[name])
    bad = mutated(path, tmp_path / "bad.dcm", seed)
    try:
        read_ct(bad)
    except SkippedFile as skip:
        assert skip.reason == "unreadable_pixels", skip
    [frame] = read_ct(path)  # and this process goes on reading
    assert frame.hu is not None


def test_a_jpeg_precision_over_16_bits_is_skipped(tmp_path, slice_hu):
    path = tmp_path / "jl.dcm"
    save_slice(dataset(slice_hu), path, JPEGLosslessSV1)
    ds = pydicom.dcmread(path)
    [frame] = generate_frames(ds.PixelData, number_of_frames=1)
    sof = frame.index(b"\xff\xc3")
    data = bytearray(frame)
    data[sof + 4] = 17  # the SOF's sample precision
    bad = write(ds, tmp_path / "bad.dcm", JPEGLosslessSV1, [bytes(data)])
    with pytest.raises(SkippedFile) as err:
        read_ct(bad)
    assert err.value.reason == "unreadable_pixels" and "GDCM" in err.value.detail


def test_gdcm_decodes_only_what_no_other_plugin_can():
    for uid in (JPEGLSLossless, JPEG2000Lossless, RLELossless, JPEGBaseline8Bit):
        assert decoding_plugin(uid) not in (None, "gdcm"), uid.name
    assert decoding_plugin(JPEGLosslessSV1) is None  # GDCM only: in a child process


def test_a_forked_reader_decodes_jpeg_lossless_with_its_own_child(tmp_path, slice_hu, reference):
    """A process forked after this one started its GDCM child (predict's and convert's
    reader processes) starts its own instead of waiting on one it does not have."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    path = tmp_path / "jl.dcm"
    save_slice(dataset(slice_hu), path, JPEGLosslessSV1)
    [frame] = read_ct(path)  # this process's child
    context = multiprocessing.get_context("fork")
    with ProcessPoolExecutor(1, mp_context=context) as pool:
        [forked] = pool.submit(read_ct, path).result(timeout=120)
    assert np.array_equal(forked.hu, frame.hu) and np.array_equal(frame.hu, reference)
