"""The annotation readers and slice-label rules (lungct/annotations, docs/annotations.md).

Every expectation is derived by hand in a comment. The LIDC-IDRI series used by most
tests: 21 axial slices, keys ``1.2.3.<k>``, at z = -130 + 2.5 k (k = 0..20; slice 10 is
at z = -105), so the slice spacing is 2.5 mm and half of it 1.25 mm.
"""

from __future__ import annotations

import math
import re
import zlib
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from lungct.annotations import (
    REASONS,
    SliceRef,
    detect,
    inspect_metaimage,
    lidc_labels,
    luna16_labels,
    read_lidc,
    read_metaimage,
    voc_labels,
    world_to_pixel,
)
from lungct.annotations import datasets as datasets_module
from lungct.annotations import reasons as R
from lungct.annotations.lidc import outline_centroid
from lungct.errors import SkippedFile

SERIES = "1.2.3"
AXIAL = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)
SQUARE = ((10, 10), (14, 10), (14, 14), (10, 14))  # centroid (12, 12), area 16 px


# --------------------------------------------------------------------------------------------
# Builders: slices and tiny XML strings
# --------------------------------------------------------------------------------------------
def z_of(k: int) -> float:
    return -130.0 + 2.5 * k


def uid(k: int, series: str = SERIES) -> str:
    return f"{series}.{k}"


def series_slices(
    series: str = SERIES, n: int = 21, patient: str = "LIDC-IDRI-0001"
) -> list[SliceRef]:
    return [
        SliceRef.from_geometry(
            uid(k, series), series, patient, (-150.0, -160.0, z_of(k)), AXIAL, (0.7, 0.7)
        )
        for k in range(n)
    ]


def roi(
    sop: str | None = None,
    z: float | None = None,
    points=SQUARE,
    inclusion: str | None = "TRUE",
) -> str:
    parts = []
    if z is not None:
        parts.append(f"<imageZposition>{z}</imageZposition>")
    if sop is not None:
        parts.append(f"<imageSOP_UID>{sop}</imageSOP_UID>")
    if inclusion is not None:
        parts.append(f"<inclusion>{inclusion}</inclusion>")
    parts += [f"<edgeMap><xCoord>{x}</xCoord><yCoord>{y}</yCoord></edgeMap>" for x, y in points]
    return "<roi>" + "".join(parts) + "</roi>"


def nodule(malignancy: object, *rois: str, characteristics: bool = True) -> str:
    chars = ""
    if characteristics:
        m = "" if malignancy is None else f"<malignancy>{malignancy}</malignancy>"
        chars = f"<characteristics><subtlety>4</subtlety>{m}<texture>5</texture></characteristics>"
    return (
        f"<unblindedReadNodule><noduleID>N</noduleID>{chars}{''.join(rois)}</unblindedReadNodule>"
    )


def at(k: int, malignancy: object = 4, points=SQUARE, inclusion: str = "TRUE") -> str:
    """A nodule with characteristics outlined on slice k (by UID and z)."""
    return nodule(malignancy, roi(uid(k), z_of(k), points, inclusion))


def small(k: int) -> str:
    """A nodule under 3 mm: no characteristics, one point."""
    return nodule(None, roi(uid(k), z_of(k), ((30, 40),)), characteristics=False)


def non_nodule(sop: str | None, z: float | None) -> str:
    parts = f"<imageZposition>{z}</imageZposition>" if z is not None else ""
    parts += f"<imageSOP_UID>{sop}</imageSOP_UID>" if sop is not None else ""
    return (
        f"<nonNodule><nonNoduleID>x</nonNoduleID>{parts}"
        "<locus><xCoord>50</xCoord><yCoord>60</yCoord></locus></nonNodule>"
    )


def session(*items: str) -> str:
    return (
        "<readingSession><annotationVersion>3.12</annotationVersion>"
        f"<servicingRadiologistID>anon</servicingRadiologistID>{''.join(items)}</readingSession>"
    )


def lidc_xml(*sessions: str, series: str = SERIES) -> str:
    return (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        '<LidcReadMessage uid="1.1" xmlns="http://www.nih.gov" '
        'xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance">\n'
        "<ResponseHeader><Version>1.8.1</Version>"
        "<TaskDescription>Second unblinded read</TaskDescription>"
        f"<SeriesInstanceUid>{series}</SeriesInstanceUid>"
        "<StudyInstanceUID>1.2</StudyInstanceUID></ResponseHeader>\n"
        + "\n".join(sessions)
        + "\n</LidcReadMessage>\n"
    )


def write(tmp_path: Path, name: str, content: str | bytes) -> Path:
    path = tmp_path / name
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content, encoding="utf-8")
    return path


def label_lidc(tmp_path, *sessions, min_readers=2, margin_mm=10.0, slices=None):
    path = write(tmp_path, "069.xml", lidc_xml(*sessions))
    result = lidc_labels([path], slices or series_slices(), min_readers, margin_mm)
    return result.labels, result.problems


# --------------------------------------------------------------------------------------------
# LIDC-IDRI: scores and readers
# --------------------------------------------------------------------------------------------
def test_lidc_reader_disagreement_takes_the_median(tmp_path):
    # Three readers mark slice 10 with malignancy 2, 4 and 5: the median is 4 > 3.
    labels, problems = label_lidc(
        tmp_path, session(at(10, 2)), session(at(10, 4)), session(at(10, 5))
    )
    assert problems == []
    s = labels[uid(10)]
    assert (s.label, s.reason, s.readers, s.score) == ("malignant", "", 3, 4.0)
    assert s.source.endswith("069.xml")
    # 1, 2 and 5: the median is 2 < 3, benign, though one reader said 5.
    labels, _ = label_lidc(tmp_path, session(at(10, 1)), session(at(10, 2)), session(at(10, 5)))
    assert (labels[uid(10)].label, labels[uid(10)].score) == ("benign", 2.0)


@pytest.mark.parametrize(
    ("scores", "median", "label"),
    [
        ((2, 4), 3.0, "indeterminate"),  # (2 + 4) / 2 = 3: exactly 3
        ((3, 5), 4.0, "malignant"),  # (3 + 5) / 2 = 4 > 3
        ((2, 3), 2.5, "benign"),  # (2 + 3) / 2 = 2.5 < 3
        ((3, 4), 3.5, "malignant"),  # 3.5 > 3
        ((3, 3), 3.0, "indeterminate"),
    ],
)
def test_lidc_median_of_an_even_count(tmp_path, scores, median, label):
    labels, _ = label_lidc(tmp_path, *(session(at(10, m)) for m in scores))
    s = labels[uid(10)]
    assert (s.label, s.readers, s.score) == (label, 2, median)


def test_lidc_two_nodules_of_one_reader_on_one_slice_count_once_with_the_highest(tmp_path):
    # Reader A marks slice 10 with two nodules, malignancy 2 and 5; reader B with 4.
    # A counts once, with 5: median(5, 4) = 4.5 -> malignant (with A's 2 it would be
    # median(2, 4) = 3, indeterminate). Readers = 2, not 3.
    right = ((20, 10), (24, 10), (24, 14), (20, 14))  # centroid (22, 12)
    labels, _ = label_lidc(
        tmp_path,
        session(at(10, 2, SQUARE), at(10, 5, right)),
        session(at(10, 4, SQUARE)),
    )
    s = labels[uid(10)]
    assert (s.label, s.readers, s.score) == ("malignant", 2, 4.5)
    # The centre: A's outline of the nodule it scores 5 (22, 12) and B's (12, 12): mean (17, 12).
    assert s.center == pytest.approx((17.0, 12.0))


def test_lidc_min_readers_one_and_two(tmp_path):
    # One reader marks slice 10 with 5.
    one, _ = label_lidc(tmp_path, session(at(10, 5)), session(), min_readers=1)
    assert (one[uid(10)].label, one[uid(10)].readers, one[uid(10)].score) == ("malignant", 1, 5.0)
    two, _ = label_lidc(tmp_path, session(at(10, 5)), session(), min_readers=2)
    s = two[uid(10)]
    # 1 reader < 2: not labelled, and the reader count and score are still recorded.
    assert (s.label, s.reason, s.readers, s.score) == ("", R.LIDC_TOO_FEW_READERS, 1, 5.0)
    with pytest.raises(ValueError, match="min_readers"):
        label_lidc(tmp_path, session(), min_readers=0)


def test_lidc_inclusion_false_does_not_mark_but_blocks_normal(tmp_path):
    # Reader A outlines slice 10 with inclusion TRUE (malignancy 5), reader B with FALSE
    # (a hole cut out of its nodule): only A marks it -> 1 reader < 2.
    labels, _ = label_lidc(tmp_path, session(at(10, 5)), session(at(10, 5, inclusion="FALSE")))
    assert (labels[uid(10)].reason, labels[uid(10)].readers) == (R.LIDC_TOO_FEW_READERS, 1)
    # B alone: nobody marks slice 10, but B's roi lies on it (0 mm): not normal.
    labels, _ = label_lidc(tmp_path, session(at(10, 5, inclusion="FALSE")))
    assert (labels[uid(10)].reason, labels[uid(10)].readers) == (R.LIDC_NEAR_ANNOTATION, 0)
    # inclusion written in lower case is still TRUE; a missing inclusion counts as TRUE.
    no_inclusion = nodule(4, roi(uid(10), z_of(10), inclusion=None))
    labels, _ = label_lidc(tmp_path, session(at(10, 4, inclusion="true")), session(no_inclusion))
    assert (labels[uid(10)].label, labels[uid(10)].readers) == ("malignant", 2)


def test_lidc_small_nodule_and_non_nodule_block_normal_but_do_not_mark(tmp_path):
    # Reader A: a nodule under 3 mm on slice 10; reader B: a non-nodule on slice 4
    # (z -120). Neither marks: slice 10 and 4 are 0 mm from an annotation.
    labels, _ = label_lidc(tmp_path, session(small(10)), session(non_nodule(uid(4), z_of(4))))
    for k in (10, 4):
        assert (labels[uid(k)].reason, labels[uid(k)].readers) == (R.LIDC_NEAR_ANNOTATION, 0)
    # Slice 0 (z -130) is 10 mm from the non-nodule: within the margin (inclusive).
    assert labels[uid(0)].reason == R.LIDC_NEAR_ANNOTATION
    # Slice 20 (z -80) is 25 mm from the nodule at -105 and 40 from -120: normal.
    assert (labels[uid(20)].label, labels[uid(20)].readers) == ("normal", 0)
    assert labels[uid(20)].center is None


@pytest.mark.parametrize(
    ("margin", "expected"),
    [
        (10.0, R.LIDC_NEAR_ANNOTATION),  # slice 6 is exactly 10 mm away: inclusive, blocked
        (10.01, R.LIDC_NEAR_ANNOTATION),  # just inside the margin
        (9.99, "normal"),  # just outside the margin
    ],
)
def test_lidc_margin_edges(tmp_path, margin, expected):
    # One non-nodule on slice 10 (z -105); slice 6 is at z -115, 10 mm away.
    labels, _ = label_lidc(tmp_path, session(non_nodule(uid(10), z_of(10))), margin_mm=margin)
    s = labels[uid(6)]
    assert (s.label or s.reason) == expected
    # Slice 5 (12.5 mm) is normal under all three margins, slice 7 (7.5 mm) under none.
    assert labels[uid(5)].label == "normal"
    assert labels[uid(7)].reason == R.LIDC_NEAR_ANNOTATION


def test_lidc_margin_edges_by_position(tmp_path):
    # A non-nodule with no UID of the series, placed by z alone: at -104.99 it is 10.01 mm
    # from slice 6 (z -115), just outside; at -105.01 it is 9.99 mm, just inside.
    outside, _ = label_lidc(tmp_path, session(non_nodule("9.9.9", -104.99)))
    assert outside[uid(6)].label == "normal"
    inside, _ = label_lidc(tmp_path, session(non_nodule("9.9.9", -105.01)))
    assert inside[uid(6)].reason == R.LIDC_NEAR_ANNOTATION


@pytest.mark.parametrize(
    ("offset", "marked"),
    [
        (0.0, 10),  # on slice 10
        (1.2, 10),  # 1.2 < 1.25 = half the spacing
        (-1.2, 10),
        (1.25, None),  # exactly half way between slices 10 and 11: strict, neither
        (1.3, 11),  # just outside slice 10's half spacing: 1.2 from slice 11
    ],
)
def test_lidc_uid_missing_falls_back_on_z_within_half_the_spacing(tmp_path, offset, marked):
    # Two readers outline a nodule (malignancy 4) whose imageSOP_UID is no slice of the
    # series, at z = -105 + offset (slice 10 is at -105, slice 11 at -102.5).
    stray = nodule(4, roi("9.9.9", -105.0 + offset))
    labels, _ = label_lidc(tmp_path, session(stray), session(stray))
    for k in (10, 11):
        s = labels[uid(k)]
        if k == marked:
            assert (s.label, s.readers) == ("malignant", 2)
        else:
            # Not marked, yet the rois lie within the margin: skipped, not normal.
            assert (s.reason, s.readers) == (R.LIDC_NEAR_ANNOTATION, 0)


def test_lidc_uid_wins_over_z(tmp_path):
    # The roi names slice 10 by UID but says z -80 (slice 20): the UID decides.
    labels, _ = label_lidc(tmp_path, *[session(nodule(5, roi(uid(10), -80.0)))] * 2)
    assert labels[uid(10)].label == "malignant"
    assert labels[uid(20)].readers == 0


def test_lidc_no_uid_element_uses_z(tmp_path):
    no_uid = nodule(2, roi(None, z_of(3)))
    labels, _ = label_lidc(tmp_path, session(no_uid), session(no_uid))
    assert (labels[uid(3)].label, labels[uid(3)].score) == ("benign", 2.0)
    # Rows along +x, columns along -y: the normal is -z and positions are -z, so the z of
    # the roi is mapped through the series' own (z, position) line: still slice 3.
    flipped = [
        SliceRef.from_geometry(s.key, SERIES, "", s.origin, (1, 0, 0, 0, -1, 0), s.spacing)
        for s in series_slices()
    ]
    assert flipped[3].position == pytest.approx(-z_of(3))
    labels, _ = label_lidc(tmp_path, session(no_uid), session(no_uid), slices=flipped)
    assert labels[uid(3)].label == "benign"
    assert labels[uid(7)].reason == R.LIDC_NEAR_ANNOTATION  # 10 mm away
    assert labels[uid(8)].label == "normal"  # 12.5 mm away


def test_lidc_one_slice_series_has_no_spacing(tmp_path):
    # A one-slice series has no spacing: an roi without a matching UID marks nothing
    # (even at the slice's own z), but it still blocks normal.
    one = series_slices(n=1)
    stray = nodule(5, roi("9.9.9", z_of(0)))
    labels, _ = label_lidc(tmp_path, session(stray), session(stray), slices=one)
    assert (labels[uid(0)].reason, labels[uid(0)].readers) == (R.LIDC_NEAR_ANNOTATION, 0)
    # By UID it is marked as usual.
    labels, _ = label_lidc(tmp_path, session(at(0, 5)), session(at(0, 5)), slices=one)
    assert labels[uid(0)].label == "malignant"


def test_lidc_nodule_without_malignancy(tmp_path):
    # Characteristics but no malignancy: an outlined nodule that cannot be scored.
    labels, _ = label_lidc(tmp_path, session(at(10, None)), session(at(10, "x")))
    assert (labels[uid(10)].reason, labels[uid(10)].readers) == (R.LIDC_NO_MALIGNANCY, 0)
    # With one scored reader and min_readers 2, the unscored one is what is missing.
    labels, _ = label_lidc(tmp_path, session(at(10, 4)), session(at(10, 9)))
    assert (labels[uid(10)].reason, labels[uid(10)].readers) == (R.LIDC_NO_MALIGNANCY, 1)
    # Two scored readers are enough whatever a third did.
    labels, _ = label_lidc(tmp_path, session(at(10, 4)), session(at(10, 4)), session(at(10, None)))
    assert labels[uid(10)].label == "malignant"


def test_lidc_positions_unknown(tmp_path):
    # A slice without geometry: marked by UID it is labelled; unmarked it cannot be normal.
    refs = series_slices()
    refs[10] = SliceRef(uid(10), SERIES)
    refs[20] = SliceRef(uid(20), SERIES)
    labels, _ = label_lidc(tmp_path, session(at(10, 5)), session(at(10, 5)), slices=refs)
    assert labels[uid(10)].label == "malignant"
    assert labels[uid(20)].reason == R.NO_POSITION
    # An roi with neither a matching UID nor a z cannot be placed: no slice is normal.
    labels, _ = label_lidc(tmp_path, session(non_nodule("9.9.9", None)))
    assert {s.reason for s in labels.values()} == {R.LIDC_UNPLACED_ANNOTATION}


def test_lidc_centre_and_size(tmp_path):
    # Reader A: the square (12, 12); reader B: a 6 x 3 rectangle written with extra points
    # on its right edge. Its polygon centroid is (3, 1.5); the mean of its points would
    # be x = (0 + 6 + 6 + 6 + 6 + 0) / 6 = 4. Centre: ((12 + 3) / 2, (12 + 1.5) / 2).
    rectangle = ((0, 0), (6, 0), (6, 1), (6, 2), (6, 3), (0, 3))
    labels, _ = label_lidc(tmp_path, session(at(10, 4, SQUARE)), session(at(10, 4, rectangle)))
    s = labels[uid(10)]
    assert s.center == pytest.approx((7.5, 6.75))
    # Size: the mean equivalent diameter, 2 sqrt(area * 0.7 * 0.7 / pi), of 16 and 18 px.
    expected = (2 * math.sqrt(16 * 0.49 / math.pi) + 2 * math.sqrt(18 * 0.49 / math.pi)) / 2
    assert s.size_mm == pytest.approx(expected)


def test_outline_centroid():
    assert outline_centroid(SQUARE) == pytest.approx((16.0, 12.0, 12.0))
    # A closed outline (the first point repeated last) gives the same polygon.
    assert outline_centroid((*SQUARE, SQUARE[0])) == pytest.approx((16.0, 12.0, 12.0))
    # Clockwise or counter-clockwise: the same area.
    assert outline_centroid(SQUARE[::-1]) == pytest.approx((16.0, 12.0, 12.0))
    # One point, two points, collinear points: the mean of the distinct points, area 0.
    assert outline_centroid(((3, 4),)) == (0.0, 3.0, 4.0)
    assert outline_centroid(((0, 0), (2, 2), (4, 4), (0, 0))) == pytest.approx((0.0, 2.0, 2.0))


def test_lidc_every_slice_gets_an_entry_and_other_series_are_not_annotated(tmp_path):
    other = series_slices("4.5.6", n=3)
    labels, problems = label_lidc(tmp_path, session(at(10, 5)), slices=series_slices() + other)
    assert set(labels) == {s.key for s in series_slices() + other}
    assert {labels[s.key].reason for s in other} == {R.NOT_ANNOTATED}
    assert problems == []


# --------------------------------------------------------------------------------------------
# LIDC-IDRI: files
# --------------------------------------------------------------------------------------------
def test_lidc_idri_radiograph_reads_are_skipped(tmp_path):
    cxr = (
        '<?xml version="1.0"?><IdriReadMessage xmlns="http://www.nih.gov/idri"><ResponseHeader>'
        f"<CTSeriesInstanceUid>{SERIES}</CTSeriesInstanceUid></ResponseHeader>"
        "<CXRreadingSession/></IdriReadMessage>"
    )
    path = write(tmp_path, "cxr.xml", cxr)
    result = lidc_labels([path], series_slices(), 2, 10.0)
    assert [(p.file, p.reason) for p in result.problems] == [(path, R.NOT_CT_ANNOTATION)]
    assert {s.reason for s in result.labels.values()} == {R.NOT_ANNOTATED}


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        (lidc_xml(session(at(10)))[:-40], R.ANNOTATION_UNREADABLE),  # truncated
        ("not xml at all", R.ANNOTATION_UNREADABLE),
        ("<LidcReadMessage><ResponseHeader/></LidcReadMessage>", R.ANNOTATION_UNREADABLE),
        ("<other/>", R.ANNOTATION_UNKNOWN),
        (  # billion laughs
            '<?xml version="1.0"?><!DOCTYPE l [<!ENTITY a "aaaa"><!ENTITY b "&a;&a;&a;">]>'
            "<LidcReadMessage>&b;</LidcReadMessage>",
            R.ANNOTATION_UNSAFE,
        ),
        (  # an external entity
            '<!DOCTYPE l [<!ENTITY x SYSTEM "file:///etc/passwd">]><LidcReadMessage>&x;'
            "</LidcReadMessage>",
            R.ANNOTATION_UNSAFE,
        ),
        (  # a DTD in UTF-16, which a byte search for <!DOCTYPE would miss
            '<?xml version="1.0" encoding="UTF-16"?><!DOCTYPE l><LidcReadMessage/>'.encode(
                "utf-16"
            ),
            R.ANNOTATION_UNSAFE,
        ),
    ],
)
def test_lidc_bad_files_are_problems_not_errors(tmp_path, content, reason):
    bad = write(tmp_path, "bad.xml", content)
    good = write(tmp_path / "good", "069.xml", lidc_xml(session(at(10, 5)), session(at(10, 5))))
    result = lidc_labels([bad, good], series_slices(), 2, 10.0)
    assert [(p.file, p.reason) for p in result.problems] == [(bad, reason)]
    assert result.labels[uid(10)].label == "malignant"  # the good file is still used


def test_lidc_file_over_the_size_limit_is_not_read(tmp_path):
    path = write(tmp_path, "069.xml", lidc_xml(session(at(10))))
    result = lidc_labels([path], series_slices(), 2, 10.0, max_file_bytes=100)
    assert [p.reason for p in result.problems] == [R.ANNOTATION_TOO_LARGE]


def test_lidc_body_broken_after_a_good_header_skips_its_series(tmp_path):
    # The header names the series but no readingSession follows: its slices say why.
    path = write(tmp_path, "069.xml", lidc_xml())
    result = lidc_labels([path], series_slices(), 2, 10.0)
    assert [p.reason for p in result.problems] == [R.ANNOTATION_UNREADABLE]
    assert {s.reason for s in result.labels.values()} == {R.ANNOTATION_UNREADABLE}


def test_lidc_xml_for_a_series_without_slices_is_reported(tmp_path):
    path = write(tmp_path, "x.xml", lidc_xml(session(at(1)), series="7.7.7"))
    result = lidc_labels([path], series_slices(), 2, 10.0)
    assert [(p.reason, p.detail) for p in result.problems] == [
        (R.ANNOTATION_UNMATCHED, "series 7.7.7 has no slice given")
    ]


def test_lidc_duplicate_files(tmp_path):
    text = lidc_xml(session(at(10, 5)), session(at(10, 5)))
    a, b = write(tmp_path / "a", "069.xml", text), write(tmp_path / "b", "069.xml", text)
    # The same reads twice (a copy, whatever its whitespace): used once, no problem.
    same = lidc_labels([a, b], series_slices(), 2, 10.0)
    assert same.problems == [] and same.labels[uid(10)].label == "malignant"
    # Different reads of one series: which to trust? Neither.
    write(tmp_path / "b", "069.xml", lidc_xml(session(at(10, 1)), session(at(10, 1))))
    different = lidc_labels([a, b], series_slices(), 2, 10.0)
    assert [p.reason for p in different.problems] == [R.ANNOTATION_DUPLICATE]
    assert {s.reason for s in different.labels.values()} == {R.ANNOTATION_DUPLICATE}


def _variant(xml: str, how: str) -> str:
    if how == "prefix":  # every element prefixed, the namespace bound to the prefix
        xml = re.sub(r"<(/?)(\w+)", r"<\1nih:\2", xml)
        return xml.replace('xmlns="http://www.nih.gov"', 'xmlns:nih="http://www.nih.gov"')
    if how == "none":
        return xml.replace(' xmlns="http://www.nih.gov"', "")
    if how == "case":
        return xml.replace("SeriesInstanceUid", "SeriesInstanceUID")
    if how == "pretty":  # indentation and newlines everywhere, and CRLF line ends
        return re.sub(r"(<[^/!?][^>]*>)", r"\1\r\n    ", xml).replace("</", "\n  </")
    return xml


@pytest.mark.parametrize("how", ["default", "prefix", "none", "case", "pretty"])
def test_lidc_namespace_prefix_and_whitespace_variants(tmp_path, how):
    xml = lidc_xml(session(at(10, 2)), session(at(10, 4)), session(small(3), non_nodule(None, -80)))
    path = write(tmp_path, "069.xml", _variant(xml, how))
    read = read_lidc(path)
    assert (read.series_uid, read.study_uid, read.readers, len(read.rois)) == (SERIES, "1.2", 3, 4)
    result = lidc_labels([path], series_slices(), 2, 10.0)
    assert result.problems == []
    # median(2, 4) = 3 on slice 10; slice 3 has the small nodule; slice 20 the non-nodule.
    assert result.labels[uid(10)].label == "indeterminate"
    assert result.labels[uid(3)].reason == R.LIDC_NEAR_ANNOTATION
    assert result.labels[uid(20)].reason == R.LIDC_NEAR_ANNOTATION
    assert result.labels[uid(15)].label == "normal"  # -92.5: 12.5 mm from -80 and from -105


def test_lidc_element_order_does_not_matter(tmp_path):
    # roi children in another order (edgeMap first, inclusion last), characteristics after
    # the rois, the header after the sessions.
    shuffled_roi = (
        "<roi><edgeMap><xCoord>1</xCoord><yCoord>2</yCoord></edgeMap>"
        f"<imageSOP_UID>{uid(10)}</imageSOP_UID><inclusion>TRUE</inclusion>"
        f"<imageZposition>{z_of(10)}</imageZposition></roi>"
    )
    reader = (
        f"<readingSession><unblindedReadNodule>{shuffled_roi}<characteristics>"
        "<malignancy>5</malignancy></characteristics></unblindedReadNodule></readingSession>"
    )
    xml = (
        f'<LidcReadMessage xmlns="http://www.nih.gov">{reader}{reader}<ResponseHeader>'
        f"<SeriesInstanceUid>{SERIES}</SeriesInstanceUid></ResponseHeader></LidcReadMessage>"
    )
    result = lidc_labels([write(tmp_path, "a.xml", xml)], series_slices(), 2, 10.0)
    assert (result.labels[uid(10)].label, result.labels[uid(10)].center) == ("malignant", (1, 2))


# --------------------------------------------------------------------------------------------
# LUNA16
# --------------------------------------------------------------------------------------------
LUNA_HEADER = "seriesuid,coordX,coordY,coordZ,diameter_mm\n"


def luna_slices(series: str = "9.8.7") -> list[SliceRef]:
    # Axial slices at z = -110, -107.5, ..., -87.5 (k = 0..9).
    return [
        SliceRef.from_geometry(
            f"{series}#{k}", series, "", (0.0, 0.0, -110 + 2.5 * k), AXIAL, (1, 1)
        )
        for k in range(10)
    ]


def test_luna16_diameter_and_margin_boundaries(tmp_path):
    # One nodule at z = -100 (slice 4), diameter 5: radius 2.5.
    csv = write(tmp_path, "annotations.csv", LUNA_HEADER + "9.8.7,10.0,20.0,-100.0,5.0\n")
    result = luna16_labels(csv, luna_slices(), margin_mm=10.0)
    got = {
        k: (result.labels[f"9.8.7#{k}"].label or result.labels[f"9.8.7#{k}"].reason)
        for k in range(10)
    }
    # |z + 100| per slice: 10, 7.5, 5, 2.5, 0, 2.5, 5, 7.5, 10, 12.5.
    # <= 2.5: nodule (inclusive); > 10: normal; in between (10 inclusive): near.
    near = R.LUNA16_NEAR_NODULE
    assert got == {
        0: near, 1: near, 2: near, 3: "nodule", 4: "nodule", 5: "nodule",
        6: near, 7: near, 8: near, 9: "normal",
    }  # fmt: skip
    s = result.labels["9.8.7#4"]
    # Origin (0, 0), identity orientation, 1 mm pixels: (x, y) = (10, 20) is column 10, row 20.
    assert (s.center, s.size_mm, s.readers, s.score) == ((10.0, 20.0), 5.0, None, None)
    assert result.problems == []
    # margin 7.4 < 7.5: slices 1 and 7 become normal; 6 (5 mm) stays near.
    result = luna16_labels(csv, luna_slices(), margin_mm=7.4)
    assert result.labels["9.8.7#1"].label == "normal" and result.labels["9.8.7#7"].label == "normal"
    assert result.labels["9.8.7#6"].reason == near


def test_luna16_series_absent_from_the_csv_is_all_normal(tmp_path):
    csv = write(tmp_path, "annotations.csv", LUNA_HEADER + "9.8.7,0,0,-100,5\n")
    other = luna_slices("1.1.1") + [SliceRef("1.1.1#99", "1.1.1")]  # even without a position
    result = luna16_labels(csv, other, margin_mm=10.0)
    assert {s.label for s in result.labels.values()} == {"normal"}


def test_luna16_nearest_of_two_nodules(tmp_path):
    # Two nodules cover slice 4 (z -100): at -101 (d 4, centre x 5) and -100.5 (d 6, x 7):
    # the nearer centre (0.5 mm) gives the centre and size.
    rows = "9.8.7,5,5,-101,4\n9.8.7,7,5,-100.5,6\n"
    result = luna16_labels(write(tmp_path, "a.csv", LUNA_HEADER + rows), luna_slices(), 10.0)
    assert (result.labels["9.8.7#4"].center, result.labels["9.8.7#4"].size_mm) == ((7, 5), 6)


def test_luna16_world_to_pixel_oblique_orientation_and_anisotropic_spacing():
    # Rows rotated 30 degrees in the axial plane and the slice tilted 20 degrees about x;
    # Pixel Spacing (row 0.8, column 0.5). A world point built from column 37, row 81.5
    # and 4 mm off the plane along its normal maps back to (37, 81.5).
    t, f = math.radians(30), math.radians(20)
    x = np.array([math.cos(t), math.sin(t), 0.0])
    y = np.array([-math.sin(t) * math.cos(f), math.cos(t) * math.cos(f), math.sin(f)])
    origin = np.array([10.0, -20.0, -100.0])
    ref = SliceRef.from_geometry("k", "s", "", origin, (*x, *y), (0.8, 0.5))
    n = np.cross(x, y)
    point = origin + 37 * 0.5 * x + 81.5 * 0.8 * y + 4 * n
    assert world_to_pixel(point, ref) == pytest.approx((37.0, 81.5))
    # LPS with the patient flipped (rows along -x, columns along -y): x = -50 mm from an
    # origin at +100 is 150 mm / 0.5 = column 300.
    flipped = SliceRef.from_geometry("k", "s", "", (100, 100, 0), (-1, 0, 0, 0, -1, 0), (0.5, 0.5))
    assert world_to_pixel((-50, 40, 0), flipped) == pytest.approx((300.0, 120.0))
    assert world_to_pixel((0, 0, 0), SliceRef("k", "s")) is None


def test_luna16_bad_csv(tmp_path):
    missing = write(tmp_path, "a.csv", "seriesuid,coordX,coordY,diameter_mm\n9.8.7,1,2,3\n")
    result = luna16_labels(missing, luna_slices(), 10.0)
    assert [p.reason for p in result.problems] == [R.ANNOTATION_UNREADABLE]
    assert "coordZ" in result.problems[0].detail
    assert {s.reason for s in result.labels.values()} == {R.ANNOTATION_UNREADABLE}
    # A bad row spoils its own series only; a BOM and spaces in the header are fine.
    rows = (
        "\ufeffseriesuid, coordX, coordY, coordZ, diameter_mm\n9.8.7,1,2,abc,3\n1.1.1,0,0,-100,4\n"
    )
    result = luna16_labels(
        write(tmp_path, "b.csv", rows), luna_slices() + luna_slices("1.1.1"), 10.0
    )
    assert [p.reason for p in result.problems] == [R.ANNOTATION_UNREADABLE]
    assert result.labels["9.8.7#4"].reason == R.ANNOTATION_UNREADABLE
    assert result.labels["1.1.1#4"].label == "nodule"


# --------------------------------------------------------------------------------------------
# Lung-PET-CT-Dx (Pascal VOC)
# --------------------------------------------------------------------------------------------
def voc(*boxes: tuple[str, int, int, int, int]) -> str:
    objects = "".join(
        f"<object><name>{name}</name><pose>Unspecified</pose><truncated>0</truncated>"
        f"<difficult>0</difficult><bndbox><xmin>{a}</xmin><ymin>{b}</ymin><xmax>{c}</xmax>"
        f"<ymax>{d}</ymax></bndbox></object>"
        for name, a, b, c, d in boxes
    )
    return (
        "<annotation><folder>A0001</folder><filename>x</filename><size><width>512</width>"
        f"<height>512</height><depth>3</depth></size><segmented>0</segmented>{objects}</annotation>"
    )


def voc_slices() -> list[SliceRef]:
    refs = [SliceRef(f"2.3.{k}", "2.3", "Lung_Dx-A0001", spacing=(0.5, 0.8)) for k in range(6)]
    return refs + [SliceRef("3.4.0", "3.4", "Lung_Dx-B0002")]


def test_voc_letters_boxes_and_unannotated_slices(tmp_path):
    folder = tmp_path / "Annotation" / "A0001"
    files = [
        write(folder, "2.3.0.xml", voc(("A", 100, 150, 140, 170))),
        write(folder, "2.3.1.xml", voc(("B", 0, 0, 10, 10))),
        write(folder, "2.3.2.xml", voc(("e", 0, 0, 10, 10))),  # lower case is E
        write(folder, "2.3.3.xml", voc(("G", 0, 0, 10, 10), ("G", 0, 0, 20, 30))),
        write(folder, "2.3.4.xml", voc(("X", 0, 0, 10, 10))),
        write(folder, "9.9.9.xml", voc(("A", 0, 0, 10, 10))),  # no such slice
    ]
    result = voc_labels(files, voc_slices())
    labels = result.labels
    assert [labels[f"2.3.{k}"].label for k in range(4)] == ["A", "B", "E", "G"]
    # The box centre: ((100 + 140) / 2, (150 + 170) / 2); size: the longer side in mm,
    # max(40 columns x 0.8, 20 rows x 0.5) = 32.
    assert (labels["2.3.0"].center, labels["2.3.0"].size_mm) == ((120.0, 160.0), 32.0)
    assert labels["2.3.0"].source.endswith("2.3.0.xml")
    assert labels["2.3.3"].center == (10.0, 15.0)  # the larger of two G boxes
    assert labels["2.3.4"].reason == R.VOC_UNKNOWN_LABEL
    assert labels["2.3.5"].reason == R.VOC_UNANNOTATED_SLICE  # same patient, no box
    assert labels["3.4.0"].reason == R.NOT_ANNOTATED  # a patient without any box
    assert [(p.file.name, p.reason) for p in result.problems] == [
        ("9.9.9.xml", R.ANNOTATION_UNMATCHED)
    ]


def test_voc_conflicts_and_bad_files(tmp_path):
    files = [
        write(tmp_path, "2.3.0.xml", voc(("A", 0, 0, 10, 10), ("G", 0, 0, 10, 10))),
        write(tmp_path, "2.3.1.xml", voc(("A", 10, 0, 5, 10))),  # xmax < xmin
        write(tmp_path, "2.3.2.xml", "<annotation><object><name>A</name></object>"),
        write(tmp_path, "2.3.3.xml", voc()),
        write(tmp_path, "2.3.4.xml", '<!DOCTYPE a [<!ENTITY x "y">]><annotation/>'),
    ]
    result = voc_labels(files, voc_slices())
    reasons = [result.labels[f"2.3.{k}"].reason for k in range(5)]
    assert reasons == [
        R.VOC_CONFLICTING_LABELS,
        R.ANNOTATION_IMPLAUSIBLE,
        R.ANNOTATION_UNREADABLE,
        R.ANNOTATION_UNREADABLE,
        R.ANNOTATION_UNSAFE,
    ]
    assert [p.reason for p in result.problems] == reasons[1:]


# --------------------------------------------------------------------------------------------
# MetaImage
# --------------------------------------------------------------------------------------------
DIRECTION = (0.0, -1.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 1.0)  # rows along +y, columns along -x


def write_volume(path: Path, array: np.ndarray, compress: bool = False) -> sitk.Image:
    image = sitk.GetImageFromArray(array)
    image.SetOrigin((-10.0, 20.0, -300.5))
    image.SetSpacing((0.6, 0.9, 2.5))
    image.SetDirection(DIRECTION)
    sitk.WriteImage(image, str(path), useCompression=compress)
    return image


VOLUME = (np.arange(3 * 4 * 5, dtype=np.int16).reshape(3, 4, 5) * 37 - 1024).astype(np.int16)


@pytest.mark.parametrize(
    ("name", "compress"), [("v.mhd", False), ("v.mhd", True), ("v.mha", False), ("v.mha", True)]
)
def test_metaimage_round_trip(tmp_path, name, compress):
    image = write_volume(tmp_path / name, VOLUME, compress)
    volume = read_metaimage(tmp_path / name, limit=2**20)
    assert volume.hu.dtype == np.int16 and volume.hu.shape == (3, 4, 5)
    assert np.array_equal(volume.hu, VOLUME)
    g = volume.geometry
    assert (g.size, g.spacing, g.direction) == ((5, 4, 3), (0.6, 0.9, 2.5), DIRECTION)
    assert g.origin == (-10.0, 20.0, -300.5) and g.compressed == compress
    refs = g.slice_refs()
    assert [r.key for r in refs] == ["v#0", "v#1", "v#2"]
    for k, ref in enumerate(refs):
        # Each slice's origin is SimpleITK's physical point of index (0, 0, k); its pixel
        # (i, j) maps back from SimpleITK's physical point of (i, j, k).
        assert ref.origin == pytest.approx(image.TransformIndexToPhysicalPoint((0, 0, k)))
        assert ref.position == pytest.approx(-300.5 + 2.5 * k)
        assert ref.spacing == (0.9, 0.6)
        point = image.TransformIndexToPhysicalPoint((3, 2, k))
        assert world_to_pixel(point, ref) == pytest.approx((3.0, 2.0))


def test_metaimage_float_values_are_exact(tmp_path):
    array = np.linspace(-1000.25, 3000.5, 24, dtype=np.float32).reshape(2, 3, 4)
    write_volume(tmp_path / "f.mhd", array)
    volume = read_metaimage(tmp_path / "f.mhd", limit=2**20)
    assert volume.hu.dtype == np.float32 and np.array_equal(volume.hu, array)


def test_metaimage_with_luna16_labels(tmp_path):
    # A LUNA16 series: the nodule centre in world mm becomes a pixel of the volume's slice.
    image = write_volume(tmp_path / "1.2.840.5.mhd", VOLUME)
    refs = inspect_metaimage(tmp_path / "1.2.840.5.mhd", 2**20).slice_refs(patient_id="p")
    x, y, z = image.TransformContinuousIndexToPhysicalPoint((1.5, 2.0, 1.0))
    csv = write(tmp_path, "annotations.csv", LUNA_HEADER + f"1.2.840.5,{x},{y},{z},3\n")
    labels = luna16_labels(csv, refs, 10.0).labels
    s = labels["1.2.840.5#1"]
    assert s.label == "nodule" and s.center == pytest.approx((1.5, 2.0))
    # Slices 0 and 2 are 2.5 mm from the centre: past 1.5 mm, within 10.
    assert labels["1.2.840.5#0"].reason == R.LUNA16_NEAR_NODULE


def _edit_header(path: Path, old: str, new: str) -> None:
    text = path.read_text(encoding="latin-1")
    assert old in text
    path.write_text(text.replace(old, new), encoding="latin-1")


@pytest.mark.parametrize(
    ("old", "new", "reason"),
    [
        ("DimSize = 5 4 3", "DimSize = 100000 100000 100000", R.TOO_LARGE),
        ("DimSize = 5 4 3", "DimSize = 5 4 4", R.METAIMAGE_SIZE_MISMATCH),
        ("DimSize = 5 4 3", "DimSize = 5 4", R.METAIMAGE_BAD_HEADER),
        ("DimSize = 5 4 3", "DimSize = 5 4 -3", R.METAIMAGE_BAD_HEADER),
        ("ElementDataFile = v.raw", "ElementDataFile = gone.raw", R.METAIMAGE_MISSING_DATA),
        ("ElementDataFile = v.raw", "ElementDataFile = ../v.raw", R.METAIMAGE_BAD_HEADER),
        ("ElementDataFile = v.raw", "ElementDataFile = /etc/passwd", R.METAIMAGE_BAD_HEADER),
        ("ElementDataFile = v.raw", "ElementDataFile = LIST", R.METAIMAGE_BAD_HEADER),
        ("ElementDataFile = v.raw", "ElementDataFile = v%03d.raw 1 3 1", R.METAIMAGE_BAD_HEADER),
        ("NDims = 3", "NDims = 4", R.METAIMAGE_BAD_HEADER),
        ("MET_SHORT", "MET_STRING", R.METAIMAGE_BAD_HEADER),
        ("NDims = 3", "NDims = 3\nNDims = 3", R.METAIMAGE_BAD_HEADER),
        ("NDims = 3", "garbage line", R.METAIMAGE_BAD_HEADER),
        ("ElementSpacing = 0.59999999999999998", "ElementSpacing = 0", R.METAIMAGE_BAD_HEADER),
    ],
)
def test_metaimage_bad_headers_are_reasons(tmp_path, old, new, reason):
    write_volume(tmp_path / "v.mhd", VOLUME)
    _edit_header(tmp_path / "v.mhd", old, new)
    with pytest.raises(SkippedFile) as err:
        read_metaimage(tmp_path / "v.mhd", limit=2**20)
    assert err.value.reason == reason


def test_metaimage_wrong_byte_count_and_corrupt_data(tmp_path):
    write_volume(tmp_path / "v.mhd", VOLUME)
    raw = tmp_path / "v.raw"
    raw.write_bytes(raw.read_bytes()[:-2])  # one value short
    with pytest.raises(SkippedFile) as err:
        read_metaimage(tmp_path / "v.mhd", limit=2**20)
    assert err.value.reason == R.METAIMAGE_SIZE_MISMATCH
    # A compressed stream of the right length but not zlib (MetaIO itself only prints
    # "Uncompress failed" and returns garbage).
    write_volume(tmp_path / "c.mhd", VOLUME, compress=True)
    zraw = tmp_path / "c.zraw"
    good = zraw.read_bytes()
    zraw.write_bytes(b"\x00" * len(good))
    with pytest.raises(SkippedFile) as err:
        read_metaimage(tmp_path / "c.mhd", limit=2**20)
    assert err.value.reason == R.METAIMAGE_UNREADABLE
    # A zlib stream that inflates to less (or more) than declared.
    for data in (zlib.compress(VOLUME.tobytes()[:-2]), zlib.compress(VOLUME.tobytes() + b"xx")):
        zraw.write_bytes(data)
        _edit_header(
            tmp_path / "c.mhd",
            f"CompressedDataSize = {len(good)}",
            f"CompressedDataSize = {len(data)}",
        )
        good = data
        with pytest.raises(SkippedFile) as err:
            read_metaimage(tmp_path / "c.mhd", limit=2**20)
        assert err.value.reason == R.METAIMAGE_SIZE_MISMATCH
    # Over the caller's limit (120 bytes declared).
    with pytest.raises(SkippedFile) as err:
        inspect_metaimage(tmp_path / "c.mhd", limit=100)
    assert err.value.reason == R.TOO_LARGE


# --------------------------------------------------------------------------------------------
# Dataset detection
# --------------------------------------------------------------------------------------------
def test_detect_each_layout(tmp_path):
    lidc = tmp_path / "lidc" / "LIDC-IDRI"
    cxr = lidc / "LIDC-IDRI-0001" / "01-01-2000-NA-CXR" / "3000.000-NA"
    write(cxr, "071.xml", '<?xml version="1.0"?><IdriReadMessage/>')
    series = lidc / "LIDC-IDRI-0002" / "01-01-2000-NA-30178" / "3000566.000000-NA-03192"
    write(series, "1-001.dcm", b"\0" * 132 + b"DICM")
    write(series, "069.xml", lidc_xml(session(at(1))))
    assert detect(tmp_path / "lidc") == "lidc"

    luna = tmp_path / "luna"
    write(luna / "subset0", "1.2.3.mhd", "NDims = 3\n")
    write(luna / "CSVFILES", "annotations.csv", LUNA_HEADER + "1.2.3,0,0,0,4\n")
    assert detect(luna) == "luna16"

    dx = tmp_path / "dx"
    write(dx / "Lung-PET-CT-Dx" / "Lung_Dx-A0001" / "s", "1-01.dcm", b"\0")
    write(dx / "Annotation" / "A0001", "1.3.6.1.4.1.14519.5.2.1.6655.xml", voc(("A", 0, 0, 9, 9)))
    assert detect(dx) == "lung-pet-ct-dx"


def test_detect_none_and_bounded(tmp_path, monkeypatch):
    assert detect(tmp_path / "missing") is None
    write(tmp_path, "annotations.csv", "id,label\n1,a\n")  # not LUNA16's columns
    for i in range(200):
        write(tmp_path / f"d{i:03}", "read.xml", "<other/>")
    opened = []
    real_head = datasets_module._head
    monkeypatch.setattr(datasets_module, "_head", lambda p: opened.append(p) or real_head(p))
    assert detect(tmp_path) is None
    assert len(opened) <= datasets_module.MAX_OPENED


# --------------------------------------------------------------------------------------------
# Documentation
# --------------------------------------------------------------------------------------------
def test_every_reason_code_is_documented():
    doc = (Path(__file__).parents[1] / "docs" / "annotations.md").read_text(encoding="utf-8")
    missing = [code for code in REASONS if f"`{code}`" not in doc]
    assert missing == []
    codes = {v for k, v in vars(R).items() if k.isupper() and isinstance(v, str)}
    assert codes == set(REASONS)
