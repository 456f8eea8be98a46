"""The phantom cohort in its annotated forms: LIDC-IDRI XML, LUNA16 CSV (+ MetaImage),
Lung-PET-CT-Dx Pascal VOC; clinical series; compressed cohorts; determinism; and the default
form unchanged."""

from __future__ import annotations

import csv
import hashlib
import statistics
import xml.etree.ElementTree as ET
from collections import Counter
from pathlib import Path

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from matplotlib.path import Path as Polygon

from lungct.io.dicom import read_ct
from lungct.phantom import fov_mask, patient_rng, phantom_patient, write_cohort
from lungct.phantom.cohort import (
    ANNOTATION_FORMS,
    CLINICAL_SPACINGS_MM,
    clinical_spacing,
    series_uid,
)
from lungct.phantom.lidc_xml import CHARACTERISTICS, NAMESPACE
from lungct.phantom.nodules import BENIGN_DIAMETER_MM, MALIGNANT_DIAMETER_MM, section_radius
from lungct.phantom.voc import LETTERS

BALANCE = {"normal": 1.0, "benign": 1.0, "malignant": 1.0}
SEED = 5
PATIENTS, SLICES, SIZE = 6, 24, 128
NS = {"l": NAMESPACE}
RANGES = {"internalStructure": (1, 4), "calcification": (1, 6)}  # others 1-5


def cohort(root: Path, annotations: str, **kwargs) -> tuple[Path, list[tuple[str, str]]]:
    args = {
        "patients": PATIENTS,
        "slices": SLICES,
        "image_size": SIZE,
        "class_balance": BALANCE,
        "seed": SEED,
    }
    args.update(kwargs)
    out = root / annotations
    return out, write_cohort(out, annotations=annotations, **args)


@pytest.fixture(scope="module")
def forms(tmp_path_factory) -> dict[str, tuple[Path, list[tuple[str, str]]]]:
    root = tmp_path_factory.mktemp("forms")
    return {form: cohort(root, form) for form in ANNOTATION_FORMS if form != "labels"}


@pytest.fixture(scope="module")
def rendered(forms) -> dict[str, object]:
    """PatientID -> the rendered patient (clinical series), for the truth."""
    _, rows = forms["lidc"]
    return {
        pid: phantom_patient(patient_rng(SEED, i), label, SLICES, SIZE, clinical_spacing(SEED, i))
        for i, (pid, label) in enumerate(rows)
    }


def dicom_series(folder: Path) -> list[pydicom.Dataset]:
    return [pydicom.dcmread(p) for p in sorted(folder.rglob("*.dcm"))]


def digest(root: Path) -> str:
    h = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        h.update(path.relative_to(root).as_posix().encode() + b"\0")
        h.update(hashlib.sha256(path.read_bytes()).digest())
    return h.hexdigest()


def text(element: ET.Element, path: str) -> str:
    found = element.find(path, NS)
    assert found is not None and found.text is not None, path
    return found.text


# --------------------------------------------------------------------------------------------
# The default form, the series, the transfer syntax
# --------------------------------------------------------------------------------------------
def test_default_form_is_byte_identical_to_before(tmp_path):
    """Digest of this cohort as written before annotated forms and codecs existed."""
    out = tmp_path / "c"
    write_cohort(out, patients=4, slices=3, image_size=32, class_balance=BALANCE, seed=11)
    assert digest(out) == "790d6c76e41769cb2d607d0f5263af5d343866be047677cdd50ac593936aa0fb"


def test_annotated_forms_use_a_clinical_series(forms, rendered):
    root, rows = forms["lidc"]
    for i, (pid, label) in enumerate(rows):
        datasets = dicom_series(root / pid)
        assert len(datasets) == SLICES
        spacing = clinical_spacing(SEED, i)
        assert spacing in CLINICAL_SPACINGS_MM
        assert float(datasets[0].SliceThickness) == spacing
        z = [float(ds.ImagePositionPatient[2]) for ds in datasets]
        assert np.allclose(np.diff(z), -spacing)
        shows = rendered[pid].nodule_mask.any(axis=(1, 2))
        if label == "benign":  # a small nodule: slices above and below are free of it
            assert shows.any() and not shows[0] and not shows[-1]
        if label == "normal":
            assert not shows.any()


def test_the_pixels_do_not_depend_on_the_form(tmp_path, forms):
    labels, _ = cohort(tmp_path, "labels", series="clinical")
    lidc, _ = forms["lidc"]
    dicom = sorted(p.relative_to(labels) for p in labels.rglob("*.dcm"))
    assert dicom == sorted(p.relative_to(lidc) for p in lidc.rglob("*.dcm"))
    assert all((labels / p).read_bytes() == (lidc / p).read_bytes() for p in dicom)


def test_a_clinical_series_keeps_the_anatomy_and_the_nodule():
    fitted = phantom_patient(patient_rng(1, 2), "malignant", 6, 64)
    clinical = phantom_patient(patient_rng(1, 2), "malignant", 6, 64, 1.25)
    assert clinical.slice_spacing_mm == 1.25 != fitted.slice_spacing_mm
    assert clinical.nodule_center_mm == fitted.nodule_center_mm
    assert np.array_equal(fitted.nodule.harmonics, clinical.nodule.harmonics)
    with pytest.raises(ValueError, match="slice_spacing_mm"):
        phantom_patient(patient_rng(1, 2), "malignant", 6, 64, 0.1)


@pytest.mark.parametrize("syntax", ["jpeg-ls", "jpeg-lossless"])
def test_a_compressed_cohort_reads_back_the_same_hu(tmp_path, syntax):
    args = {"patients": 3, "slices": 2, "image_size": 32, "class_balance": BALANCE, "seed": 2}
    plain, packed = tmp_path / "plain", tmp_path / syntax
    rows = write_cohort(plain, **args)
    assert write_cohort(packed, transfer_syntax=syntax, **args) == rows
    files = sorted(p.relative_to(plain) for p in plain.rglob("*.dcm"))
    assert files == sorted(p.relative_to(packed) for p in packed.rglob("*.dcm"))
    for rel in files:
        [a], [b] = read_ct(plain / rel), read_ct(packed / rel)
        assert b.transfer_syntax != a.transfer_syntax
        assert np.array_equal(a.hu, b.hu)


def test_bad_options_are_refused(tmp_path):
    args = {"patients": 3, "slices": 2, "image_size": 32, "class_balance": BALANCE, "seed": 1}
    with pytest.raises(ValueError, match="annotations must be one of"):
        write_cohort(tmp_path / "a", annotations="nifti", **args)
    with pytest.raises(ValueError, match="series must be one of"):
        write_cohort(tmp_path / "b", series="thin", **args)
    with pytest.raises(ValueError, match="unknown or lossy transfer syntax"):
        write_cohort(tmp_path / "c", transfer_syntax="jpeg-baseline", **args)
    with pytest.raises(ValueError, match="luna16-mhd"):
        write_cohort(tmp_path / "d", annotations="luna16-mhd", transfer_syntax="rle", **args)


@pytest.mark.parametrize("form", ANNOTATION_FORMS)
def test_every_form_is_deterministic(tmp_path, form):
    args = {"patients": 4, "slices": 8, "image_size": 32, "class_balance": BALANCE, "seed": 9}
    a, rows_a = cohort(tmp_path / "a", form, **args)
    b, rows_b = cohort(tmp_path / "b", form, **args)
    assert rows_a == rows_b and digest(a) == digest(b)


# --------------------------------------------------------------------------------------------
# LIDC-IDRI
# --------------------------------------------------------------------------------------------
def lidc_message(root: Path, pid: str) -> tuple[ET.Element, list[pydicom.Dataset]]:
    [xml] = list((root / pid).rglob("*.xml"))
    datasets = dicom_series(root / pid)
    assert xml.parent == Path(datasets[0].filename).parent  # beside the DICOM files
    return ET.parse(xml).getroot(), datasets


def test_lidc_messages_are_well_formed(forms):
    root, rows = forms["lidc"]
    for pid, _ in rows:
        message, datasets = lidc_message(root, pid)
        assert message.tag == f"{{{NAMESPACE}}}LidcReadMessage" and message.get("uid")
        assert (
            text(message, "l:ResponseHeader/l:SeriesInstanceUid") == datasets[0].SeriesInstanceUID
        )
        assert text(message, "l:ResponseHeader/l:StudyInstanceUID") == datasets[0].StudyInstanceUID
        sessions = message.findall("l:readingSession", NS)
        assert 3 <= len(sessions) <= 4
        readers = [text(s, "l:servicingRadiologistID") for s in sessions]
        assert len(set(readers)) == len(readers)
        for session in sessions:
            assert text(session, "l:annotationVersion") == "3.12"
            for nodule in session.findall("l:unblindedReadNodule", NS):
                assert text(nodule, "l:noduleID")
                rois = nodule.findall("l:roi", NS)
                assert rois
                for roi in rois:
                    float(text(roi, "l:imageZposition"))
                    assert text(roi, "l:imageSOP_UID")
                    assert text(roi, "l:inclusion") in ("TRUE", "FALSE")
                    for edge in roi.findall("l:edgeMap", NS):
                        assert 0 <= int(text(edge, "l:xCoord")) < SIZE
                        assert 0 <= int(text(edge, "l:yCoord")) < SIZE
                characteristics = nodule.find("l:characteristics", NS)
                if characteristics is None:  # under 3 mm: one roi, one point
                    assert len(rois) == 1 and len(rois[0].findall("l:edgeMap", NS)) == 1
                    continue
                assert [c.tag.split("}")[1] for c in characteristics] == list(CHARACTERISTICS)
                for c in characteristics:
                    low, high = RANGES.get(c.tag.split("}")[1], (1, 5))
                    assert low <= int(c.text) <= high
            for non_nodule in session.findall("l:nonNodule", NS):
                assert text(non_nodule, "l:nonNoduleID") and text(non_nodule, "l:imageSOP_UID")
                float(text(non_nodule, "l:imageZposition"))
                int(text(non_nodule, "l:locus/l:xCoord")), int(text(non_nodule, "l:locus/l:yCoord"))


def outlined(session: ET.Element) -> list[ET.Element]:
    """The session's marks of a nodule of 3 mm or more."""
    return [
        n
        for n in session.findall("l:unblindedReadNodule", NS)
        if n.find("l:characteristics", NS) is not None
    ]


def test_lidc_readers_disagree_but_agree_with_the_truth(forms):
    root, rows = forms["lidc"]
    spreads = []
    for pid, label in rows:
        message, _ = lidc_message(root, pid)
        sessions = message.findall("l:readingSession", NS)
        marks = [m for s in sessions for m in outlined(s)]
        if label == "normal":
            assert not marks  # at most small nodules and non-nodules
            continue
        assert len(marks) >= 3  # three of four readers at least
        ratings = [int(text(m, "l:characteristics/l:malignancy")) for m in marks]
        spreads.append(len(set(ratings)))
        if label == "malignant":
            assert statistics.mean(ratings) > 3 and statistics.median(ratings) > 3
        else:
            assert statistics.mean(ratings) < 3 and statistics.median(ratings) < 3
        # every reader outlines it on a few slices, not always the same ones
        extents = {len(m.findall("l:roi[l:inclusion='TRUE']", NS)) for m in marks}
        assert min(extents) >= 1
    assert max(spreads) >= 2  # some readers rate the same nodule differently


def test_lidc_outlines_surround_the_true_nodule(forms, rendered):
    root, rows = forms["lidc"]
    grid = np.stack(np.meshgrid(np.arange(SIZE), np.arange(SIZE)), axis=-1).reshape(-1, 2)
    checked = 0
    for pid, label in rows:
        if label == "normal":
            continue
        patient = rendered[pid]
        nodule = patient.nodule
        message, datasets = lidc_message(root, pid)
        z_files = [float(ds.ImagePositionPatient[2]) for ds in datasets]
        ps = float(datasets[0].PixelSpacing[0])
        x0, y0 = (float(v) for v in datasets[0].ImagePositionPatient[:2])
        centre = ((nodule.center[0] - x0) / ps, (nodule.center[1] - y0) / ps)
        for session in message.findall("l:readingSession", NS):
            for mark in outlined(session):
                for roi in mark.findall("l:roi[l:inclusion='TRUE']", NS):
                    k = int(
                        np.argmin(
                            np.abs(np.subtract(z_files, float(text(roi, "l:imageZposition"))))
                        )
                    )
                    points = np.array(
                        [
                            (int(text(e, "l:xCoord")), int(text(e, "l:yCoord")))
                            for e in roi.findall("l:edgeMap", NS)
                        ]
                    )
                    assert (points[0] == points[-1]).all()  # closed
                    polygon = Polygon(points)
                    rz = section_radius(nodule, patient.z_positions_mm[k], patient.slice_spacing_mm)
                    assert rz is not None  # only slices through the nodule are outlined
                    deep = grid[np.hypot(*(grid - centre).T) < 0.6 * rz / ps]
                    assert polygon.contains_point(centre, radius=-1e-9)
                    assert polygon.contains_points(deep).all()
                    radius = np.hypot(*(points - centre).T).mean()
                    assert 0.7 * rz / ps <= radius <= 1.8 * rz / ps + 2
                    if rz / ps >= 4:  # the outline is where the rendered nodule is
                        inside = polygon.contains_points(grid).reshape(SIZE, SIZE)
                        assert patient.nodule_mask[k][inside].mean() > 0.5
                    checked += 1
    assert checked > 20


def test_lidc_some_rois_match_by_z_only(forms):
    root, rows = forms["lidc"]
    stale, matched = 0, 0
    for pid, _ in rows:
        message, datasets = lidc_message(root, pid)
        uids = {ds.SOPInstanceUID for ds in datasets}
        z_files = [float(ds.ImagePositionPatient[2]) for ds in datasets]
        for roi in [
            *message.iter(f"{{{NAMESPACE}}}roi"),
            *message.iter(f"{{{NAMESPACE}}}nonNodule"),
        ]:
            z = float(text(roi, "l:imageZposition"))
            assert np.min(np.abs(np.subtract(z_files, z))) < 1e-4  # z always names a slice
            if text(roi, "l:imageSOP_UID") in uids:
                matched += 1
            else:
                stale += 1
    assert stale and matched > stale


def test_lidc_misses_small_nodules_and_non_nodules_over_a_cohort(tmp_path):
    out, rows = cohort(tmp_path, "lidc", patients=30, slices=12, image_size=32)
    counts = Counter()
    for pid, label in rows:
        message, _ = lidc_message(out, pid)
        sessions = message.findall("l:readingSession", NS)
        counts["sessions"] += len(sessions)
        marked = sum(bool(outlined(s)) for s in sessions)
        if label != "normal" and marked < len(sessions):
            counts["missed"] += 1
        for session in sessions:
            nodules = session.findall("l:unblindedReadNodule", NS)
            counts["small"] += sum(n.find("l:characteristics", NS) is None for n in nodules)
            counts["non_nodules"] += len(session.findall("l:nonNodule", NS))
            counts["holes"] += len(session.findall(".//l:roi[l:inclusion='FALSE']", NS))
            if label == "normal":
                counts["normal_marks"] += len(nodules) + len(session.findall("l:nonNodule", NS))
    assert counts["missed"] and counts["small"] and counts["non_nodules"]
    assert counts["holes"] and counts["normal_marks"]
    assert 3 * 30 <= counts["sessions"] <= 4 * 30


# --------------------------------------------------------------------------------------------
# LUNA16
# --------------------------------------------------------------------------------------------
def luna_rows(root: Path) -> list[dict[str, str]]:
    with (root / "annotations.csv").open(newline="") as stream:
        return list(csv.DictReader(stream))


def test_luna16_annotations_map_back_to_the_nodule(forms, rendered):
    root, rows = forms["luna16"]
    annotations = luna_rows(root)
    assert list(annotations[0]) == ["seriesuid", "coordX", "coordY", "coordZ", "diameter_mm"]
    nodular = [(pid, label) for pid, label in rows if label != "normal"]
    assert len(annotations) == len(nodular)
    for (pid, label), row in zip(nodular, annotations, strict=True):
        datasets = dicom_series(root / pid)
        assert row["seriesuid"] == datasets[0].SeriesInstanceUID == series_uid(SEED, pid)
        low, high = BENIGN_DIAMETER_MM if label == "benign" else MALIGNANT_DIAMETER_MM
        assert low <= float(row["diameter_mm"]) <= high
        x, y, z = (float(row[c]) for c in ("coordX", "coordY", "coordZ"))
        ps = float(datasets[0].PixelSpacing[0])
        x0, y0 = (float(v) for v in datasets[0].ImagePositionPatient[:2])
        column, line = round((x - x0) / ps), round((y - y0) / ps)
        z_files = np.array([float(ds.ImagePositionPatient[2]) for ds in datasets])
        k = int(np.argmin(np.abs(z_files - z)))
        assert abs(z_files[k] - z) <= float(datasets[0].SliceThickness) / 2 + 1e-6
        assert rendered[pid].nodule_mask[k, line, column]  # the centre is in the nodule
        if label == "benign":  # round, no spicules: the centre is the mask's centroid
            rows_, cols = np.nonzero(rendered[pid].nodule_mask[k])
            assert abs(cols.mean() - (x - x0) / ps) < 1 and abs(rows_.mean() - (y - y0) / ps) < 1
        [frame] = read_ct(Path(datasets[k].filename))
        assert frame.hu[line, column] > -300  # soft tissue or calcium, not lung


def test_luna16_metaimages_hold_the_dicom_hu(forms):
    mhd_root, rows = forms["luna16-mhd"]
    dicom_root, _ = forms["luna16"]
    assert not list(mhd_root.rglob("*.dcm"))
    assert luna_rows(mhd_root) == luna_rows(dicom_root)
    fov = fov_mask(SIZE)
    by_uid = {row["seriesuid"]: row for row in luna_rows(mhd_root)}
    for pid, _ in rows:
        datasets = dicom_series(dicom_root / pid)
        uid = datasets[0].SeriesInstanceUID
        header = (mhd_root / "subset0" / f"{uid}.mhd").read_text()
        assert "ElementType = MET_SHORT" in header and f"ElementDataFile = {uid}.raw" in header
        assert "TransformMatrix = 1 0 0 0 1 0 0 0 1" in header
        image = sitk.ReadImage(str(mhd_root / "subset0" / f"{uid}.mhd"))
        volume = sitk.GetArrayFromImage(image)
        assert volume.dtype == np.int16 and volume.shape == (SLICES, SIZE, SIZE)
        ps = float(datasets[0].PixelSpacing[0])
        assert image.GetSpacing() == pytest.approx((ps, ps, float(datasets[0].SliceThickness)))
        z_files = [float(ds.ImagePositionPatient[2]) for ds in datasets]
        x0, y0 = (float(v) for v in datasets[0].ImagePositionPatient[:2])
        assert image.GetOrigin() == pytest.approx((x0, y0, min(z_files)))
        # z ascending: the volume's first slice is the DICOM series' last (most inferior)
        for k, ds in enumerate(datasets):
            [frame] = read_ct(Path(ds.filename))
            plane = volume[SLICES - 1 - k]
            assert np.array_equal(plane[fov], frame.hu[fov])
            assert (plane[~fov] == -3024).all()  # padding kept, as LUNA16 has it
        if uid in by_uid:  # world -> voxel lands in the nodule
            row = by_uid[uid]
            point = tuple(float(row[c]) for c in ("coordX", "coordY", "coordZ"))
            i, j, k = image.TransformPhysicalPointToIndex(point)
            assert volume[k, j, i] > -300


# --------------------------------------------------------------------------------------------
# Lung-PET-CT-Dx (Pascal VOC)
# --------------------------------------------------------------------------------------------
def test_voc_boxes_contain_the_nodule(forms, rendered):
    root, rows = forms["voc"]
    lidc_rows = forms["lidc"][1]
    assert [label for _, label in rows] == [label for _, label in lidc_rows]
    folders = {p.name for p in (root / "Annotation").iterdir()}
    malignant = [
        (pid, old)
        for (pid, label), (old, _) in zip(rows, lidc_rows, strict=True)
        if label == "malignant"
    ]
    assert malignant and {pid.removeprefix("Lung_Dx-") for pid, _ in malignant} == folders
    for (pid, label), (old, _) in zip(rows, lidc_rows, strict=True):
        if label != "malignant":
            assert pid == old  # PHANTOM-NNNN, not annotated
            continue
        code = pid.removeprefix("Lung_Dx-")
        assert code[0] in LETTERS and code[1:].isdigit() and len(code) == 5
        datasets = dicom_series(root / pid)
        assert {ds.PatientID for ds in datasets} == {pid}
        mask = rendered[old].nodule_mask
        files = {p.stem: p for p in (root / "Annotation" / code).glob("*.xml")}
        by_uid = {ds.SOPInstanceUID: k for k, ds in enumerate(datasets)}
        assert set(files) == {
            datasets[k].SOPInstanceUID for k in np.flatnonzero(mask.any(axis=(1, 2)))
        }
        for uid, path in files.items():
            annotation = ET.parse(path).getroot()
            assert annotation.tag == "annotation" and annotation.findtext("filename")
            assert (
                annotation.findtext("size/width") == annotation.findtext("size/height") == str(SIZE)
            )
            assert annotation.findtext("object/name") == code[0]
            xmin, ymin, xmax, ymax = (
                int(annotation.findtext(f"object/bndbox/{t}"))
                for t in ("xmin", "ymin", "xmax", "ymax")
            )
            assert 0 <= xmin <= xmax < SIZE and 0 <= ymin <= ymax < SIZE
            rows_, cols = np.nonzero(mask[by_uid[uid]])
            assert xmin <= cols.min() and cols.max() <= xmax
            assert ymin <= rows_.min() and rows_.max() <= ymax
            assert (xmax - xmin) <= cols.max() - cols.min() + 4  # snug, as drawn by hand
