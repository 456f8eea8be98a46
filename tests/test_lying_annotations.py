"""Annotations that lie: centres far off the image, sizes and coordinates that are not
finite or not plausible, two slices with one SOPInstanceUID, XML of millions of empty
elements. Each is a skipped slice (or file) with a reason code, in bounded time and
memory, never a label (docs/annotations.md, Plausibility and Safety).
"""

from __future__ import annotations

import re
import time
import tracemalloc
from pathlib import Path

import numpy as np
import pytest

from lungct.annotations import lidc_labels, luna16_labels, voc_labels
from lungct.annotations import reasons as R
from lungct.annotations.plausible import MAX_LESION_MM, MAX_PIXEL, MAX_WORLD_MM
from lungct.annotations.slices import SliceRef
from lungct.annotations.xmlsafe import MAX_XML_ELEMENTS, AnnotationError, read_xml
from lungct.data.crops import MAX_CROP_PIXELS, crop_box, crop_hu
from lungct.data.tables import read_manifest
from lungct.errors import SkippedFile
from lungct.params import merge, parse_params
from lungct.reasons import LESION_OUTSIDE_IMAGE, NO_PIXEL_SPACING
from stages.convert import convert
from stages.download import download
from tests.test_annotations import (
    AXIAL,
    LUNA_HEADER,
    at,
    label_lidc,
    lidc_xml,
    luna_slices,
    nodule,
    roi,
    series_slices,
    session,
    uid,
    voc,
    voc_slices,
    write,
    z_of,
)

CROP_MEMORY = 16 * 2**20  # a refused or clipped crop allocates no more (tracemalloc peak)


# --------------------------------------------------------------------------------------------
# Lesion crops: a centre far off the image
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("center", [(3000.0, 20.0), (20.0, -3000.0), (60000.0, 60000.0)])
def test_a_crop_centred_off_the_image_is_a_reason_in_little_memory(center):
    hu = np.full((64, 64), -700.0, dtype=np.float32)
    tracemalloc.start()
    try:
        with pytest.raises(SkippedFile) as err:
            crop_hu(hu, crop_box(center, 64.0, (0.7, 0.7)), 64)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert err.value.reason == LESION_OUTSIDE_IMAGE
    assert "outside the 64 x 64 image" in str(err.value)
    assert peak < CROP_MEMORY


def test_a_crop_overhanging_the_edge_cuts_out_only_its_square():
    """A centre on the image, the crop reaching far past its edge (a 1000 mm square at
    0.5 mm on a 2000-pixel slice): only the square is resampled, air beyond the slice."""
    hu = np.full((2000, 2000), 40.0, dtype=np.float32)
    box = crop_box((1999.0, 0.0), 1000.0, (0.5, 0.5))  # 2000 pixels wide
    tracemalloc.start()
    try:
        out = crop_hu(hu, box, 32)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 40 * 2**20  # the 2000 x 2000 square, not the slice padded by 2000
    assert out[-4:, :4].min() == pytest.approx(40.0)  # bottom left: the slice's corner
    assert out[:4, -4:].max() == pytest.approx(-1000.0)  # top right: air


def test_a_crop_over_the_largest_square_is_refused():
    with pytest.raises(SkippedFile) as err:
        crop_box((10.0, 10.0), 64.0, (64.0 / (MAX_CROP_PIXELS + 1), 0.7))
    assert err.value.reason == NO_PIXEL_SPACING
    crop_box((10.0, 10.0), 64.0, (64.0 / MAX_CROP_PIXELS, 0.7))  # at the bound: fine


# --------------------------------------------------------------------------------------------
# LUNA16: diameters and coordinates
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "row",
    [
        "0,0,-100,1e308",
        "0,0,-100,nan",
        "0,0,-100,inf",
        "0,0,-100,-4",
        "0,0,-100,0",
        f"0,0,-100,{MAX_LESION_MM + 1:g}",
        "60000,60000,-100,5",
        "0,0,-1e300,5",
        f"0,{-MAX_WORLD_MM - 1:g},-100,5",
    ],
)
def test_luna16_implausible_rows_are_a_reason_for_their_series(tmp_path, row):
    rows = LUNA_HEADER + f"9.8.7,{row}\n1.1.1,0,0,-100,4\n"
    slices = luna_slices() + luna_slices("1.1.1")
    result = luna16_labels(write(tmp_path, "annotations.csv", rows), slices, 10.0)
    assert {result.labels[f"9.8.7#{k}"].reason for k in range(10)} == {R.ANNOTATION_IMPLAUSIBLE}
    assert [p.reason for p in result.problems] == [R.ANNOTATION_IMPLAUSIBLE]
    assert "line 2" in result.problems[0].detail
    assert result.labels["1.1.1#4"].label == "nodule"  # the other series is used


def test_luna16_plausible_bounds_are_inclusive(tmp_path):
    rows = LUNA_HEADER + f"9.8.7,{MAX_WORLD_MM:g},0,-100,{MAX_LESION_MM:g}\n"
    result = luna16_labels(write(tmp_path, "annotations.csv", rows), luna_slices(), 10.0)
    assert result.problems == []
    assert result.labels["9.8.7#4"].label == "nodule"


# --------------------------------------------------------------------------------------------
# LIDC-IDRI: roi coordinates and outline sizes
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("points", "z"),
    [
        (((10, 10), ("NaN", 12), (14, 14)), z_of(10)),
        (((10, 10), ("INF", 12), (14, 14)), z_of(10)),
        (((10, 10), (1e999, 12), (14, 14)), z_of(10)),
        (((10, 10), (-3, 12), (14, 14)), z_of(10)),
        (((10, 10), (12, MAX_PIXEL + 1), (14, 14)), z_of(10)),
        (((10, 10), (12, 12), (14, 14)), 1e12),
        (((10, 10), (12, 12), (14, 14)), "nan"),
    ],
)
def test_lidc_implausible_coordinates_refuse_the_file(tmp_path, points, z):
    # Two readers mark slice 10; one of them writes a coordinate that is a lie.
    good = session(at(10, 4))
    lying = session(nodule(5, roi(uid(10), z, points)))
    labels, problems = label_lidc(tmp_path, good, lying)
    assert [p.reason for p in problems] == [R.ANNOTATION_IMPLAUSIBLE]
    assert "reader 2, nodule 1" in problems[0].detail
    assert {s.reason for s in labels.values()} == {R.ANNOTATION_IMPLAUSIBLE}


def test_lidc_a_point_that_is_not_a_number_is_still_dropped(tmp_path):
    points = ((10, 10), ("abc", 12), (14, 10), (14, 14), (10, 14))
    labels, problems = label_lidc(tmp_path, session(at(10, 4, points)), session(at(10, 4)))
    assert problems == [] and labels[uid(10)].label == "malignant"


def test_lidc_an_outline_wider_than_a_chest_is_implausible(tmp_path):
    # A 1000-pixel square at 0.7 mm: an equivalent diameter of 2 sqrt(700^2 / pi) = 790 mm.
    huge = ((0, 0), (1000, 0), (1000, 1000), (0, 1000))
    labels, problems = label_lidc(tmp_path, session(at(10, 4, huge)), session(at(10, 4, huge)))
    assert problems == []
    s = labels[uid(10)]
    assert (s.label, s.reason, s.readers) == ("", R.ANNOTATION_IMPLAUSIBLE, 2)
    assert s.size_mm == pytest.approx(2 * (700**2 / np.pi) ** 0.5)
    assert labels[uid(0)].label == "normal"  # far from it: the rule still holds


# --------------------------------------------------------------------------------------------
# Lung-PET-CT-Dx: boxes
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("box", "reason"),
    [
        (("A", 10, 0, 5, 10), R.ANNOTATION_IMPLAUSIBLE),  # xmin > xmax
        (("A", 0, 10, 10, 10), R.ANNOTATION_IMPLAUSIBLE),  # ymin = ymax
        (("A", -1, 0, 10, 10), R.ANNOTATION_IMPLAUSIBLE),
        (("A", 0, 0, 70000, 10), R.ANNOTATION_IMPLAUSIBLE),
        (("A", 0, 0, "nan", 10), R.ANNOTATION_IMPLAUSIBLE),
        (("A", 0, 0, "1e999", 10), R.ANNOTATION_IMPLAUSIBLE),
        (("A", 0, 0, "ten", 10), R.ANNOTATION_UNREADABLE),
        # 1000 columns x 0.8 mm: a box 800 mm long
        (("A", 0, 0, 1000, 10), R.ANNOTATION_IMPLAUSIBLE),
    ],
)
def test_voc_implausible_boxes_are_a_reason(tmp_path, box, reason):
    path = write(tmp_path, "2.3.0.xml", voc(box))
    result = voc_labels([path], voc_slices())
    assert result.labels["2.3.0"].reason == reason
    assert result.labels["2.3.1"].reason == R.VOC_UNANNOTATED_SLICE


def test_voc_box_off_the_image_is_labelled_but_not_cropped(tmp_path):
    """A box at 60000 pixels is within DICOM's bounds, so it labels its slice; the lesion
    crop then finds its centre off the image."""
    path = write(tmp_path, "2.3.0.xml", voc(("A", 60000, 60000, 60010, 60010)))
    label = voc_labels([path], voc_slices()).labels["2.3.0"]
    assert label.label == "A" and label.center == (60005.0, 60005.0)
    with pytest.raises(SkippedFile) as err:
        crop_hu(np.zeros((512, 512), np.float32), crop_box(label.center, 64, (0.5, 0.8)), 224)
    assert err.value.reason == LESION_OUTSIDE_IMAGE


# --------------------------------------------------------------------------------------------
# Two slices with one SOPInstanceUID
# --------------------------------------------------------------------------------------------
def twin(ref: SliceRef, z: float) -> SliceRef:
    """Another file with ``ref``'s SOPInstanceUID, at another position."""
    return SliceRef.from_geometry(ref.key, ref.series_uid, ref.patient_id, (-150.0, -160.0, z), AXIAL, (0.7, 0.7))  # fmt: skip


def test_lidc_duplicate_uid_gets_no_mark_on_either_slice(tmp_path):
    # Three readers mark slice 10; a second file has slice 10's UID at slice 11's z + 0.5.
    slices = series_slices()
    slices.append(twin(slices[10], z_of(11) + 0.5))
    three = [session(at(10, m)) for m in (3, 4, 5)]
    labels, _ = label_lidc(tmp_path, *three, slices=slices)
    s = labels[uid(10)]
    assert (s.label, s.reason) == ("", R.DUPLICATE_SLICE)
    assert "2 slices given" in s.detail
    # Its neighbours are not marked by the roi's z either; they are near an annotation.
    assert labels[uid(11)].reason == R.LIDC_NEAR_ANNOTATION
    assert labels[uid(9)].reason == R.LIDC_NEAR_ANNOTATION
    assert labels[uid(0)].label == "normal"
    assert not any(label.readers for label in labels.values())


def test_lidc_duplicate_uid_by_z_alone_marks_no_neighbour(tmp_path):
    # The readers' rois name no UID, only slice 10's z: a twin of slice 10's UID there.
    slices = series_slices()
    slices.append(twin(slices[10], z_of(10)))
    rois = [session(nodule(m, roi(None, z_of(10)))) for m in (3, 4, 5)]
    labels, _ = label_lidc(tmp_path, *rois, slices=slices)
    assert labels[uid(10)].reason == R.DUPLICATE_SLICE
    assert not any(label.label in ("malignant", "benign") for label in labels.values())


def test_voc_and_luna16_duplicate_keys(tmp_path):
    refs = voc_slices()
    refs.append(SliceRef("2.3.0", "2.3", "Lung_Dx-A0001", spacing=(0.5, 0.8)))
    path = write(tmp_path, "2.3.0.xml", voc(("A", 0, 0, 10, 10)))
    result = voc_labels([path], refs)
    assert result.labels["2.3.0"].reason == R.DUPLICATE_SLICE
    assert result.labels["2.3.1"].reason == R.VOC_UNANNOTATED_SLICE
    csv = write(tmp_path, "annotations.csv", LUNA_HEADER + "9.8.7,0,0,-100,5\n")
    refs = luna_slices()
    refs.append(SliceRef.from_geometry("9.8.7#4", "9.8.7", "", (0, 0, -80), AXIAL, (1, 1)))
    labels = luna16_labels(csv, refs, 10.0).labels
    assert labels["9.8.7#4"].reason == R.DUPLICATE_SLICE
    assert labels["9.8.7#3"].label == "nodule"


# --------------------------------------------------------------------------------------------
# XML of very many elements
# --------------------------------------------------------------------------------------------
def test_xml_of_too_many_elements_is_refused_early(tmp_path):
    """Past MAX_XML_ELEMENTS the parse stops: a file of empty elements under the byte cap
    is refused, at the cap, in about a second."""
    body = "<unblindedReadNodule/>" * 4 + "<a/>" * (MAX_XML_ELEMENTS + 10)
    path = write(tmp_path, "069.xml", lidc_xml(session(at(10), body)))
    started = time.monotonic()
    result = lidc_labels([path], series_slices())
    assert time.monotonic() - started < 20
    assert [p.reason for p in result.problems] == [R.ANNOTATION_TOO_LARGE]
    assert f"more than {MAX_XML_ELEMENTS} XML elements" in result.problems[0].detail
    assert {s.reason for s in result.labels.values()} == {R.NOT_ANNOTATED}


def test_xml_element_cap_and_safety(tmp_path):
    path = write(tmp_path, "a.xml", "<a>" + "<b/>" * 9 + "</a>")
    assert len(read_xml(path, max_elements=10)) == 9
    with pytest.raises(AnnotationError) as err:
        read_xml(path, max_elements=9)
    assert err.value.reason == R.ANNOTATION_TOO_LARGE
    # A DTD is refused before any element counts, in any encoding.
    laughs = '<?xml version="1.0" encoding="UTF-16"?><!DOCTYPE a [<!ENTITY x "y">]><a>&x;</a>'
    path.write_bytes(laughs.encode("utf-16"))
    with pytest.raises(AnnotationError) as err:
        read_xml(path)
    assert err.value.reason == R.ANNOTATION_UNSAFE


# --------------------------------------------------------------------------------------------
# Through the convert stage: the phantom with lying annotations
# --------------------------------------------------------------------------------------------
SMALL = {"data": {"synthetic": {"patients": 9, "slices": 4, "image_size": 32}}}


def convert_lying(tiny_raw: dict, form: str, lie, **convert_params):
    convert_params.setdefault("max_skipped_fraction", 1.0)
    override = merge(SMALL, {"data": {"synthetic": {"annotations": form}}})
    params = parse_params(merge(merge(tiny_raw, override), {"convert": convert_params}))
    download(params)
    lie(Path("data/raw"))
    metrics = convert(params.convert, seed=params.base.seed)
    return metrics, read_manifest()


def far_off(raw: Path) -> None:
    """Every LIDC-IDRI outline moved 8000 pixels right: plausible, but off the image."""
    for path in raw.rglob("*.xml"):
        text = path.read_text(encoding="utf-8")
        moved = re.sub(
            r"<xCoord>(\d+)</xCoord>", lambda m: f"<xCoord>{int(m[1]) + 8000}</xCoord>", text
        )
        path.write_text(moved, encoding="utf-8")


def test_convert_skips_lesion_crops_off_the_image(workdir, tiny_raw):
    metrics, manifest = convert_lying(
        tiny_raw, "lidc", far_off, crop="lesion", crop_mm=40.0, framing="image"
    )
    off = manifest[manifest["reason"] == LESION_OUTSIDE_IMAGE]
    assert len(off) >= 1
    assert off["label"].isin(["malignant", "benign", "indeterminate"]).all()
    assert off["detail"].str.contains("outside the 32 x 32 image").all()
    assert (manifest.loc[manifest["status"] == "converted", "label"] == "normal").all()
    assert metrics["converted"] >= 1


def luna16_lie(raw: Path) -> None:
    """The first nodule of annotations.csv 60 m away."""
    path = raw / "annotations.csv"
    header, first, *rest = path.read_text().splitlines()
    cells = first.split(",")
    cells[1:3] = ["60000", "60000"]
    path.write_text("\n".join([header, ",".join(cells), *rest]) + "\n")


def test_convert_skips_the_series_of_an_implausible_luna16_row(workdir, tiny_raw):
    _, manifest = convert_lying(tiny_raw, "luna16-mhd", luna16_lie, crop="lesion", framing="image")
    lied = manifest[manifest["reason"] == R.ANNOTATION_IMPLAUSIBLE]
    assert len(lied) == 4 and lied["series_uid"].nunique() == 1  # its 4 slices
    assert (manifest["status"] == "converted").any()
