"""The synthetic chest-CT phantom: DICOM encoding, anatomy in HU, determinism, labels, nodules."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.uid import CTImageStorage

from lungct import phantom
from lungct.phantom import (
    CLASSES,
    assign_labels,
    ct_slice_dataset,
    fov_mask,
    patient_rng,
    phantom_patient,
    phantom_slices_hu,
    write_cohort,
)

BALANCE = {"normal": 1.0, "benign": 1.0, "malignant": 1.0}
SEED = 7
PATIENTS, SLICES, SIZE = 6, 4, 64

REQUIRED_TAGS = [
    "PatientID",
    "PatientName",
    "StudyInstanceUID",
    "SeriesInstanceUID",
    "SOPInstanceUID",
    "SOPClassUID",
    "StudyDate",
    "SeriesDate",
    "Modality",
    "SeriesNumber",
    "InstanceNumber",
    "ImagePositionPatient",
    "ImageOrientationPatient",
    "PixelSpacing",
    "SliceThickness",
    "SliceLocation",
    "FrameOfReferenceUID",
    "ImageType",
    "RescaleIntercept",
    "RescaleSlope",
    "RescaleType",
    "WindowCenter",
    "WindowWidth",
    "KVP",
    "BitsAllocated",
    "BitsStored",
    "HighBit",
    "PixelRepresentation",
    "PixelPaddingValue",
    "Manufacturer",
    "PixelData",
]


def to_hu(ds: pydicom.Dataset) -> np.ndarray:
    return ds.pixel_array.astype(np.float32) * float(ds.RescaleSlope) + float(ds.RescaleIntercept)


def series_files(root: Path) -> dict[str, list[Path]]:
    return {p.name: sorted(p.rglob("*.dcm")) for p in sorted(root.iterdir()) if p.is_dir()}


@pytest.fixture(scope="module")
def cohort(tmp_path_factory) -> tuple[Path, list[tuple[str, str]]]:
    out = tmp_path_factory.mktemp("phantom") / "raw"
    rows = write_cohort(
        out,
        patients=PATIENTS,
        slices=SLICES,
        image_size=SIZE,
        class_balance=BALANCE,
        seed=SEED,
    )
    return out, rows


# --------------------------------------------------------------------------------------------
# DICOM files
# --------------------------------------------------------------------------------------------
def test_files_are_ct_image_storage_with_required_tags(cohort):
    root, rows = cohort
    files = sorted(root.rglob("*.dcm"))
    assert len(files) == PATIENTS * SLICES
    for path in files:
        raw = path.read_bytes()
        assert raw[:128] == b"\0" * 128 and raw[128:132] == b"DICM"
        ds = pydicom.dcmread(path)
        assert ds.file_meta.TransferSyntaxUID == pydicom.uid.ExplicitVRLittleEndian
        assert ds.file_meta.MediaStorageSOPClassUID == CTImageStorage
        assert ds.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
        assert ds.SOPClassUID == CTImageStorage and ds.Modality == "CT"
        missing = [tag for tag in REQUIRED_TAGS if tag not in ds]
        assert not missing, f"{path}: missing {missing}"
        assert list(ds.ImageType) == ["ORIGINAL", "PRIMARY", "AXIAL"]
        assert [float(v) for v in ds.ImageOrientationPatient] == [1, 0, 0, 0, 1, 0]
        assert (ds.BitsAllocated, ds.BitsStored, ds.HighBit) == (16, 16, 15)
        assert ds.PixelRepresentation == 1 and ds.PhotometricInterpretation == "MONOCHROME2"
        assert ds.RescaleType == "HU" and ds.Manufacturer == "lungct phantom"
        assert float(ds.WindowCenter) == -600 and float(ds.WindowWidth) == 1500
        assert ds.PixelPaddingValue == -2000
        assert ds.StudyDate == ds.SeriesDate == "20240101"
        arr = ds.pixel_array
        assert arr.dtype == np.int16 and arr.shape == (SIZE, SIZE)
        # The image is centred: the first pixel sits half the field of view up and left.
        spacing = float(ds.PixelSpacing[0])
        assert spacing == pytest.approx(phantom.FOV_MM / SIZE)
        x0, y0 = (float(v) for v in ds.ImagePositionPatient[:2])
        assert x0 == pytest.approx(-(SIZE - 1) / 2 * spacing)
        assert y0 == pytest.approx(-(SIZE - 1) / 2 * spacing)


def test_padding_outside_the_field_of_view_only(cohort):
    root, _ = cohort
    fov = fov_mask(SIZE)
    assert fov[SIZE // 2, SIZE // 2] and not fov[0, 0] and not fov[-1, -1]
    for path in sorted(root.rglob("*.dcm")):
        stored = pydicom.dcmread(path).pixel_array
        assert (stored[~fov] == -2000).all()
        assert not (stored[fov] == -2000).any()


def test_dicom_hu_matches_the_rendered_anatomy(cohort):
    root, rows = cohort
    fov = fov_mask(SIZE)
    c, off = (SIZE - 1) / 2, int(0.65 * SIZE / 2)
    for index, (pid, label) in enumerate(rows):
        patient = phantom_patient(patient_rng(SEED, index), label, SLICES, SIZE)
        files = sorted((root / pid).rglob("*.dcm"))
        hu = np.stack([to_hu(pydicom.dcmread(p)) for p in files])
        # Every pixel inside the field of view is the rendered HU, rounded.
        assert np.abs(hu[:, fov] - patient.hu[:, fov]).max() <= 0.5 + 1e-3
        # Air in front of the body, near the corners of the field of view.
        for row, col in ((round(c - off), round(c - off)), (round(c - off), round(c + off))):
            assert fov[row, col] and not patient.body_mask[:, row, col].any()
            patch = hu[:, row - 1 : row + 2, col - 1 : col + 2]
            assert patch.mean() == pytest.approx(-1000, abs=40)
        lungs = hu[patient.lung_mask]
        assert np.median(lungs) == pytest.approx(-850, abs=60)
        soft = hu[patient.body_mask & ~patient.lung_mask]
        assert ((soft >= 0) & (soft <= 100)).mean() > 0.15  # muscle, heart, mediastinum
        assert hu[patient.body_mask].max() >= 300  # bone
        assert hu[patient.body_mask].min() > -1100  # nothing below air inside the body


def test_ct_slice_dataset_encodes_stored_values():
    hu = np.array([[-1000.0, -850.4, 40.6], [700.0, 1e6, -1e6], [0.0, 0.0, 0.0]])
    fov = np.ones_like(hu, dtype=bool)
    fov[2, :] = False
    kwargs = dict(
        patient_id="P",
        study_uid="1.2.3",
        series_uid="1.2.3.4",
        sop_uid="1.2.3.4.5",
        instance_number=3,
        z_mm=-12.5,
        pixel_spacing_mm=0.5,
        slice_thickness_mm=1.25,
    )
    ds = ct_slice_dataset(
        hu,
        rescale_intercept=-1000.0,
        rescale_slope=0.5,
        padding_value=-3000,
        fov_mask=fov,
        **kwargs,
    )
    stored = ds.pixel_array
    assert stored.dtype == np.int16
    assert stored[0].tolist() == [0, 299, 2081]
    assert stored[1].tolist() == [3400, 32767, -32768]
    assert stored[2].tolist() == [-3000] * 3
    assert ds.PixelPaddingValue == -3000
    assert float(ds.ImagePositionPatient[2]) == -12.5 == float(ds.SliceLocation)
    assert float(ds.SliceThickness) == 1.25 and ds.InstanceNumber == 3
    plain = ct_slice_dataset(hu[:2], padding_value=None, **kwargs)
    assert "PixelPaddingValue" not in plain
    assert float(plain.RescaleIntercept) == -1024 and float(plain.RescaleSlope) == 1
    assert plain.pixel_array[0].tolist() == [24, 174, 1065]
    with pytest.raises(ValueError):
        ct_slice_dataset(hu, padding_value=None, fov_mask=fov, **kwargs)
    with pytest.raises(ValueError):
        ct_slice_dataset(hu[None], **kwargs)


# --------------------------------------------------------------------------------------------
# Determinism
# --------------------------------------------------------------------------------------------
def _tree(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def test_same_seed_same_bytes_other_seed_other_bytes(tmp_path):
    kwargs = dict(patients=3, slices=2, image_size=48, class_balance=BALANCE)
    assert write_cohort(tmp_path / "a", seed=3, **kwargs) == write_cohort(
        tmp_path / "b", seed=3, **kwargs
    )
    write_cohort(tmp_path / "c", seed=4, **kwargs)
    a, b, c = (_tree(tmp_path / name) for name in "abc")
    assert len(a) == 6 and a == b
    a_by_file = {Path(k).name + Path(k).parts[0]: v for k, v in a.items()}
    c_by_file = {Path(k).name + Path(k).parts[0]: v for k, v in c.items()}
    assert a_by_file.keys() == c_by_file.keys()
    assert all(a_by_file[k] != c_by_file[k] for k in a_by_file)


def test_write_cohort_refuses_a_non_empty_directory(tmp_path):
    (tmp_path / "stale.dcm").write_bytes(b"old")
    with pytest.raises(FileExistsError):
        write_cohort(tmp_path, patients=3, slices=1, image_size=32, class_balance=BALANCE, seed=0)


def test_phantom_slices_hu_is_deterministic_and_shaped():
    one = phantom_slices_hu(np.random.default_rng(5), "malignant", 3, 64)
    two = phantom_slices_hu(np.random.default_rng(5), "malignant", 3, 64)
    other = phantom_slices_hu(np.random.default_rng(6), "malignant", 3, 64)
    assert one.dtype == np.float32 and one.shape == (3, 64, 64)
    assert np.array_equal(one, two) and not np.array_equal(one, other)
    big = phantom_slices_hu(np.random.default_rng(5), "normal", 1, 512)
    assert big.shape == (1, 512, 512) and np.isfinite(big).all()
    with pytest.raises(ValueError):
        phantom_slices_hu(np.random.default_rng(5), "unknown", 3, 64)


# --------------------------------------------------------------------------------------------
# Labels and layout
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("patients", "balance", "expected"),
    [
        (60, BALANCE, {"normal": 20, "benign": 20, "malignant": 20}),
        (10, {"normal": 0.5, "benign": 0.3, "malignant": 0.2}, {"normal": 5, "benign": 3, "malignant": 2}),
        (7, BALANCE, {"normal": 3, "benign": 2, "malignant": 2}),
        (5, {"normal": 0.98, "benign": 0.01, "malignant": 0.01}, {"normal": 3, "benign": 1, "malignant": 1}),
        (4, {"normal": 1.0, "malignant": 3.0, "benign": 0.0}, {"normal": 1, "malignant": 3}),
        (9, {"benign": 2.0, "malignant": 1.0}, {"benign": 6, "malignant": 3}),
    ],
)  # fmt: skip
def test_assign_labels_counts(patients, balance, expected):
    labels = assign_labels(patients, balance, seed=1)
    assert len(labels) == patients and dict(Counter(labels)) == expected


def test_assign_labels_is_a_seeded_shuffle():
    first = assign_labels(30, BALANCE, seed=1)
    assert first == assign_labels(30, BALANCE, seed=1)
    other = assign_labels(30, BALANCE, seed=2)
    assert other != first and Counter(other) == Counter(first)
    assert first != sorted(first)  # shuffled, not grouped by class


@pytest.mark.parametrize(
    "balance", [{"normal": 1.0, "cancer": 1.0}, {"normal": 0.0, "benign": 0.0}, {"normal": -1.0}]
)
def test_assign_labels_rejects_bad_balance(balance):
    with pytest.raises(ValueError):
        assign_labels(6, balance, seed=0)


def test_cohort_rows_and_layout(cohort):
    root, rows = cohort
    assert rows == [
        (f"PHANTOM-{i + 1:04d}", label)
        for i, label in enumerate(assign_labels(PATIENTS, BALANCE, SEED))
    ]
    assert {label for _, label in rows} == set(CLASSES)
    assert sorted(p.name for p in root.iterdir()) == [pid for pid, _ in rows]
    series_uids = set()
    for pid, _ in rows:
        (series_dir,) = (root / pid).iterdir()
        files = sorted(series_dir.iterdir())
        assert [f.name for f in files] == [f"{i:04d}.dcm" for i in range(1, SLICES + 1)]
        dss = [pydicom.dcmread(f) for f in files]
        assert {ds.PatientID for ds in dss} == {pid}
        assert {ds.SeriesInstanceUID for ds in dss} == {series_dir.name}
        assert len({ds.StudyInstanceUID for ds in dss}) == 1
        assert len({ds.FrameOfReferenceUID for ds in dss}) == 1
        assert len({ds.SOPInstanceUID for ds in dss}) == SLICES
        assert [ds.InstanceNumber for ds in dss] == list(range(1, SLICES + 1))
        z = np.array([float(ds.ImagePositionPatient[2]) for ds in dss])
        assert (np.diff(z) < 0).all()  # strictly monotonic: instance 1 is the most superior
        assert np.diff(z) == pytest.approx(-float(dss[0].SliceThickness), abs=2e-4)
        assert [float(ds.SliceLocation) for ds in dss] == pytest.approx(z.tolist())
        series_uids.add(series_dir.name)
    assert len(series_uids) == PATIENTS


# --------------------------------------------------------------------------------------------
# Nodules and anatomy along z
# --------------------------------------------------------------------------------------------
N_NODULE_SEEDS = 8


@pytest.fixture(scope="module")
def rendered() -> dict[str, list[phantom.PhantomPatient]]:
    return {
        label: [phantom_patient(np.random.default_rng(s), label, 8, 128) for s in range(N_NODULE_SEEDS)]
        for label in CLASSES
    }  # fmt: skip


def _max_area_mm2(p: phantom.PhantomPatient) -> float:
    return float(p.nodule_mask.sum(axis=(1, 2)).max()) * p.pixel_spacing_mm**2


def test_nodules_by_class(rendered):
    for p in rendered["normal"]:
        assert p.nodule_diameter_mm is None and not p.nodule_mask.any()
    benign = [_max_area_mm2(p) for p in rendered["benign"]]
    malignant = [_max_area_mm2(p) for p in rendered["malignant"]]
    assert min(benign) > 0
    assert min(malignant) > 2 * max(benign)
    for p in rendered["benign"]:
        assert 6 <= p.nodule_diameter_mm <= 12
    for p in rendered["malignant"]:
        assert 15 <= p.nodule_diameter_mm <= 30
    for p in rendered["malignant"]:
        assert -150 < np.median(p.hu[p.nodule_mask]) < 150  # soft tissue


def test_benign_nodules_are_calcified_or_soft_tissue():
    # 256 px (1.4 mm pixels), so that even a 6 mm nodule has a pixel free of partial volume.
    calcified = []
    for s in range(8):
        p = phantom_patient(np.random.default_rng(100 + s), "benign", 3, 256)
        brightest = p.hu[p.nodule_mask].max()
        assert brightest > 150 if p.calcified else -150 < brightest < 150
        calcified.append(p.calcified)
    assert any(calcified) and not all(calcified)


def _blob_area_mm2(p: phantom.PhantomPatient) -> float:
    """Area of the connected pixels > -300 HU inside the lung at the nodule's centre slice."""
    k = int(np.argmin(np.abs(p.z_positions_mm - p.nodule_center_mm[2])))
    c = (p.hu.shape[-1] - 1) / 2
    col = round(p.nodule_center_mm[0] / p.pixel_spacing_mm + c)
    row = round(p.nodule_center_mm[1] / p.pixel_spacing_mm + c)
    dense = (p.hu[k] > -300) & p.lung_mask[k]
    region = np.zeros_like(dense)
    near = (slice(row - 1, row + 2), slice(col - 1, col + 2))
    region[near] = dense[near]
    while True:  # flood fill, 4-connected
        grown = region.copy()
        grown[1:] |= region[:-1]
        grown[:-1] |= region[1:]
        grown[:, 1:] |= region[:, :-1]
        grown[:, :-1] |= region[:, 1:]
        grown &= dense
        if (grown == region).all():
            return float(region.sum()) * p.pixel_spacing_mm**2
        region = grown


def test_nodule_is_a_3d_blob_inside_the_lung(rendered):
    spanning = 0
    for label in ("benign", "malignant"):
        for p in rendered[label]:
            assert not (p.nodule_mask & ~p.lung_mask).any()
            per_slice = p.nodule_mask.sum(axis=(1, 2))
            assert (per_slice > 0).mean() >= 0.7
            dz = np.abs(p.z_positions_mm - p.nodule_center_mm[2])
            assert per_slice[np.argmin(dz)] >= 0.7 * per_slice.max()
            if label == "malignant" and dz.max() > 0.4 * p.nodule_diameter_mm:
                # A series reaching the nodule's poles: the cross-section shrinks there.
                spanning += 1
                assert per_slice[np.argmax(dz)] < 0.6 * per_slice.max()
    assert spanning > 0
    # Seen in HU alone, the soft-tissue blob in the lung is larger for malignant patients.
    benign = [_blob_area_mm2(p) for p in rendered["benign"]]
    malignant = [_blob_area_mm2(p) for p in rendered["malignant"]]
    assert min(malignant) > max(benign) > 0


def test_normal_lungs_have_vessels_and_anatomy_varies_smoothly(rendered):
    sizes = []
    for p in rendered["normal"]:
        vessels = (p.hu > -300) & p.lung_mask
        assert vessels.sum(axis=(1, 2)).min() > 0  # bright dots in every slice
        lung = p.lung_mask
        inter = (lung[1:] & lung[:-1]).sum(axis=(1, 2))
        union = (lung[1:] | lung[:-1]).sum(axis=(1, 2))
        assert (inter / union).min() > 0.9  # neighbouring slices look alike
        sizes.append(int(p.body_mask[0].sum()))
    assert len(set(sizes)) == len(sizes)  # patients differ


def test_spacing_covers_every_class():
    thin = {label: 0 for label in CLASSES}
    for s in range(30):
        for label in CLASSES:
            p = phantom_patient(np.random.default_rng(s), label, 2, 32)
            thin[label] += p.slice_spacing_mm * 2 <= 9 * 1.2
    assert all(thin[label] > 0 for label in CLASSES)


def test_patient_geometry_does_not_depend_on_the_image_size():
    small = phantom_patient(np.random.default_rng(9), "malignant", 3, 64)
    large = phantom_patient(np.random.default_rng(9), "malignant", 3, 256)
    assert small.nodule_center_mm == large.nodule_center_mm
    assert small.slice_spacing_mm == large.slice_spacing_mm
    assert np.array_equal(small.z_positions_mm, large.z_positions_mm)
    area = [p.lung_mask.sum() * p.pixel_spacing_mm**2 for p in (small, large)]
    assert area[0] == pytest.approx(area[1], rel=0.1)
