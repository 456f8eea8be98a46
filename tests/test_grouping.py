"""Likely patients among images without ids (lungct.data.grouping: split.grouping patient_likely),
measured against known identity, and the leak-sensitivity figure of evaluate."""

from __future__ import annotations

from pathlib import Path

import imagehash
import numpy as np
import pandas as pd
import pytest
from PIL import Image
from scipy.cluster.hierarchy import fcluster, linkage
from scipy.spatial.distance import pdist, squareform

from benchmarks.grouping import export_idless, pairwise_scores, render_cohort
from lungct.artifacts import EVIDENCE_COLUMNS
from lungct.data.grouping import (
    THUMB,
    Evidence,
    Rule,
    average_linkage,
    duplicate_pairs,
    likely_patients,
)
from lungct.data.split import read_converted
from lungct.errors import UserError
from lungct.evaluation.metrics import classification_metrics, leak_sensitivity, nearest_bits
from lungct.evaluation.report import markdown_report
from lungct.params import merge, parse_params
from stages.convert import convert
from tests.conftest import project_params


@pytest.fixture
def params():
    return parse_params(merge(project_params(), {"convert": {"workers": 1}}))


@pytest.fixture
def rule(params) -> Rule:
    return Rule.of(params.split)


def test_pairwise_scores_by_hand():
    # Together: (0,1), (2,3); one patient: (0,1), (0,2), (1,2); both: (0,1).
    assert pairwise_scores(["a", "a", "b", "b"], ["x", "x", "x", "y"]) == (
        0.5,
        pytest.approx(1 / 3),
    )
    assert pairwise_scores([1, 2, 3], ["x", "y", "z"]) == (1.0, 1.0)  # nothing to count


def test_patient_likely_beats_phash_on_the_phantom_without_ids(workdir, params):
    """20 phantom patients x 4 slices 2.5 mm apart, each patient one screenshot-like export
    (its own crop and scale), written as an IQ-OTH/NCCD tree without ids and converted.

    The floor: precision may not fall below the old rule's on the same images. A looser
    rule that finds more of each patient by merging different patients would shrink the
    test set's patients and hide leaks no better; recall must rise by a tenth at least.
    """
    truth = export_idless(workdir / "data/raw", render_cohort(20, 4, 0, 128), "screenshot", 0)
    convert(params.convert)
    scores = {}
    for grouping in ("phash", "patient_likely"):
        cfg = params.split.model_copy(update={"grouping": grouping})
        table, layout = read_converted(workdir / "data/converted", cfg)
        assert layout == "iqothnccd" and not table["has_id"].any()
        patients = [truth[s.removeprefix("images/").removesuffix(".png")] for s in table["source"]]
        scores[grouping] = pairwise_scores(table["group"].tolist(), patients)
    (old_precision, old_recall), (precision, recall) = scores["phash"], scores["patient_likely"]
    # Measured: phash 0.748 / 0.792, patient_likely 0.779 / 0.942.
    assert recall >= old_recall + 0.1
    assert precision >= old_precision
    assert table["group"].str.startswith("likely-patient-").all()


def test_framing_does_not_change_the_likely_patients(workdir, params):
    """convert.framing: body changes what the model sees, not the split's evidence: the
    groups are those of the whole images, so a framing can be compared with another on the
    same test images (framed bodies look alike; grouped by their framed views, the Chest
    CT-Scan official test split lost 168 of 209 images to the leakage gate)."""
    raw = workdir / "data/raw"
    export_idless(raw, render_cohort(8, 3, 0, 128), "screenshot", 0)
    rng = np.random.default_rng(0)
    for path in sorted(raw.rglob("*.png")):  # exports with black margins of their own
        image = Image.open(path).convert("L")
        margin = int(rng.integers(8, 40))
        framed = Image.new("L", (image.width + 2 * margin, image.height + margin))
        framed.paste(image, (margin, margin))
        framed.save(path)
    seen = {}
    for framing in ("image", "body"):
        convert(params.convert.model_copy(update={"framing": framing}))
        manifest = pd.read_csv("data/converted/manifest.csv", dtype=str, keep_default_na=False)
        table, _ = read_converted(workdir / "data/converted", params.split)
        pixels = [np.asarray(Image.open(Path("data/converted", o))) for o in manifest["output"]]
        seen[framing] = (manifest[["source", *EVIDENCE_COLUMNS]], table["group"], pixels)
    (image_evidence, image_groups, image_pixels), (body_evidence, body_groups, body_pixels) = (
        seen["image"],
        seen["body"],
    )
    # The body's hash is the hash of what framing: body shows the model, bit for bit.
    assert body_evidence["body_phash"].tolist() == [
        str(imagehash.phash(Image.fromarray(pixels))) for pixels in body_pixels
    ]
    assert (image_evidence["view_thumb"].str.len() == 2 * THUMB * THUMB).all()
    pd.testing.assert_frame_equal(image_evidence, body_evidence)
    pd.testing.assert_series_equal(image_groups, body_groups)
    assert image_groups.nunique() < len(image_groups)  # some images were grouped
    changed = sum(not np.array_equal(a, b) for a, b in zip(image_pixels, body_pixels, strict=True))
    assert changed > len(image_pixels) // 2  # the framing did change the model's views


@pytest.mark.parametrize(
    ("column", "value", "says"),
    [
        ("view_thumb", "00" * 10, "a view_thumb is not 256 bytes"),
        ("view_thumb", "zz" * 256, "non-hexadecimal"),
        ("view_phash", "", "invalid literal"),
        ("body_phash", "1" * 17, "too large"),
    ],
)
def test_damaged_grouping_evidence_is_one_line(workdir, params, column, value, says):
    export_idless(workdir / "data/raw", render_cohort(3, 2, 0, 64), "plain", 0)
    convert(params.convert)
    path = Path("data/converted/manifest.csv")
    manifest = pd.read_csv(path, dtype=str, keep_default_na=False)
    manifest.loc[1, column] = value
    manifest.to_csv(path, index=False)
    with pytest.raises(UserError, match="unreadable grouping evidence") as caught:
        read_converted(workdir / "data/converted", params.split)
    assert str(caught.value).startswith(f"{workdir / path}: ") and says in str(caught.value)
    assert "\n" not in str(caught.value) and "rerun the convert stage" in str(caught.value)


def chain(n: int, step_bits: int, step_angle: float) -> Evidence:
    """Images i and i+1 alike (views ``step_bits`` apart, thumbnails at ``step_angle``
    radians), the ends of the chain unrelated; the original hashes all far apart."""
    rng = np.random.default_rng(0)
    view, views = int(rng.integers(0, 2**63)), []
    order = rng.permutation(64)
    for i in range(n):
        views.append(view)
        for bit in order[(i * step_bits) % 64 : (i * step_bits) % 64 + step_bits]:
            view ^= 1 << int(bit)
    thumbs = np.zeros((n, THUMB * THUMB), dtype=np.float32)
    thumbs[:, 0] = np.cos(np.arange(n) * step_angle)
    thumbs[:, 1] = np.sin(np.arange(n) * step_angle)
    originals = rng.integers(0, 2**63, n, dtype=np.int64).astype(np.uint64)
    bodies = rng.integers(0, 2**63, n, dtype=np.int64).astype(np.uint64)  # all far apart
    return Evidence(originals, np.array(views, dtype=np.uint64), thumbs, bodies)


def test_a_chain_of_alike_images_is_not_one_group(rule):
    # Each neighbour pair: 4 view bits (of 10) and correlation cos(0.25) = 0.969 (>= 0.96);
    # the ends: 36 bits and correlation cos(2.25) = -0.63.
    evidence = chain(10, 4, 0.25)
    for i in range(9):  # every neighbour pair alone is one likely patient
        assert len(set(likely_patients(evidence.subset([i, i + 1]), rule))) == 1
    groups = likely_patients(evidence, rule)
    sizes = np.bincount(np.unique(groups, return_inverse=True)[1])
    assert sizes.max() <= 3 and len(sizes) >= 4  # single linkage would give one group of 10
    assert groups[0] != groups[-1]


def test_near_duplicates_need_two_kinds_of_evidence(rule):
    thumbs = np.zeros((6, THUMB * THUMB), dtype=np.float32)
    thumbs[[0, 1, 2, 4], 0] = 1.0  # 0, 1, 2 and 4 alike
    thumbs[3, 1] = thumbs[5, 1] = 1.0  # 3 and 5 unlike them (correlation 0)
    originals = np.array([0, 0, 0xFF, 0, 0xFFFF, 0xFFFFFF00], dtype=np.uint64)
    views = np.array([0, 0xFF00, 0xFFFF0000, 0xFF0000000000, 0x3, 0xFFFF00000000FF], np.uint64)
    bodies = np.array([0, 0xF0F0, 0xFF00FF, 0xFFFF00, 0xFF000000, 0x1], dtype=np.uint64)
    evidence = Evidence(originals, views, thumbs, bodies)
    pairs = set(duplicate_pairs(evidence, evidence, rule))
    assert (0, 1) in pairs  # one original hash, thumbnails alike
    assert (0, 3) not in pairs  # one original hash, thumbnails unlike: two patients
    assert (0, 2) not in pairs  # 8 bits apart, views 16 bits apart
    assert (0, 4) in pairs  # views 2 bits apart: the same picture to the model, no more asked
    # Originals, views and thumbnails apart, the bodies 1 bit apart: one slice exported
    # with two margins.
    assert (0, 5) in pairs
    assert (1, 5) not in pairs and (2, 3) not in pairs


def test_average_linkage_is_upgma():
    """The nearest-neighbour chain gives scipy's average-linkage clusters, cut at a limit."""
    rng = np.random.default_rng(3)
    for _ in range(50):
        points = rng.normal(size=(25, 2))
        limit = rng.uniform(0.3, 2.0)
        ours = average_linkage(squareform(pdist(points)), np.ones(25), limit)
        scipy = fcluster(linkage(pdist(points), "average"), limit, "distance")
        assert ((ours[:, None] == ours) == (scipy[:, None] == scipy)).all()


def test_average_linkage_weighs_clusters_by_size():
    # Clusters of 3 and 1 images; mean image distances 0.9 between them: they merge.
    mean = np.array([[0.0, 0.9], [0.9, 0.0]])
    assert average_linkage(mean, np.array([3, 1]), 1.0).tolist() == [0, 0]
    # A third cluster at 0.5 from the first and 2.0 from the second: 0 and 2 merge first;
    # then (0+2) to 1 is (3 * 0.9 + 1 * 2.0) / 4 = 1.175 > 1: two groups.
    mean = np.array([[0.0, 0.9, 0.5], [0.9, 0.0, 2.0], [0.5, 2.0, 0.0]])
    assert average_linkage(mean, np.array([3, 1, 1]), 1.0).tolist() == [0, 1, 0]


# ------------------------------------------------------------------------ leak sensitivity


def test_nearest_bits():
    test = np.array([0b0, 0b1111, 0xFF], dtype=np.uint64)
    seen = np.array([0b11, 0xF0], dtype=np.uint64)
    assert nearest_bits(test, seen).tolist() == [2, 2, 4]
    assert nearest_bits(test, seen, chunk=1).tolist() == [2, 2, 4]
    assert nearest_bits(test, np.zeros(0, dtype=np.uint64)).tolist() == [64, 64, 64]


def test_leak_sensitivity_by_hand():
    y_true = np.array([0, 1, 0, 1, 0])
    predicted = np.array([0, 0, 0, 1, 1])  # right, wrong, right, right, wrong
    probabilities = np.eye(2)[predicted]
    distances = np.array([0, 10, 2, 7, 7])
    leak = leak_sensitivity(y_true, probabilities, distances)
    # Farthest first: 1 (10 bits), 3 and 4 (7, in test order); the far half gets the odd one.
    assert leak["far_half"] == {
        "images": 3,
        "min_bits": 7,
        "accuracy": pytest.approx(1 / 3, abs=1e-6),  # only 3 is right
        "balanced_accuracy": pytest.approx(0.25, abs=1e-6),  # class 0: 0/1, class 1: 1/2
    }
    assert leak["near_half"] == {
        "images": 2,
        "max_bits": 2,
        "accuracy": 1.0,
        "balanced_accuracy": 1.0,
    }
    assert leak["within_2_bits"] == 2 and leak["median_bits"] == 7.0
    # Ties in distance: test order decides.
    tied = leak_sensitivity(np.array([0, 1]), np.eye(2)[[0, 0]], np.array([5, 5]))
    assert tied["far_half"]["accuracy"] == 1.0 and tied["near_half"]["accuracy"] == 0.0


def test_leak_sensitivity_line_in_the_report():
    y_true = np.array([0, 1, 0, 1])
    probabilities = np.eye(2)[[0, 1, 0, 0]]
    metrics = classification_metrics(y_true, probabilities, ["a", "b"])
    metrics["leak_sensitivity"] = leak_sensitivity(y_true, probabilities, np.array([9, 1, 0, 6]))
    split = {
        "images": {"train": 4, "val": 2, "test": 4},
        "groups": {"train": 4, "val": 2, "test": 4},
        "images_per_class": {s: {"a": 1, "b": 1} for s in ("train", "val", "test")},
        "layout": "chest-ctscan",
        "classes": "default",
        "strategy": "grouped",
        "leakage": "fail",
        "groups_in_several_splits": 0,
        "cross_split_near_duplicate_pairs": 0,
        "dropped": 0,
    }
    report = markdown_report(metrics, split)
    assert (
        "Leak sensitivity: balanced accuracy 0.500 on the 2 test images farthest from train "
        "and val (at least 6 pHash bits from the nearest), 0.750 on all; 2 test images lie "
        "within 2 bits of a train or val image." in " ".join(report.split())
    )


def test_identical_views_join_one_group_whatever_the_evidence():
    from lungct.data.split import join_identical

    components = np.array([0, 1, 2, 3, 3, 5])
    content = ["a", "b", "a", "c", "b", "a"]
    # 0, 2 and 5 show one picture; 1 and 4 another, 4 already with 3.
    assert join_identical(components, content, np.arange(6)).tolist() == [0, 1, 0, 1, 1, 0]
    # Images with ids (not in rows) keep their own groups.
    assert join_identical(components, content, np.array([0, 1, 3])).tolist() == [0, 1, 2, 3, 3, 5]
    assert join_identical(components, ["x"] * 6, np.arange(0)) is components


@pytest.mark.parametrize("framing", ["image", "body"])
def test_one_slice_exported_with_two_margins_is_one_group(workdir, params, framing):
    """Its whole images differ, its bodies are the same picture: they share a group under
    either framing (the official Chest CT-Scan folders hold many such re-exports, tight in
    train and wide with the table in test; the whole-image evidence missed them)."""
    raw = workdir / "data/raw"
    export_idless(raw, render_cohort(6, 2, 0, 128), "plain", 0)
    first = sorted(raw.rglob("*.png"))[0]
    image = Image.open(first).convert("L")
    wide = Image.new("L", (image.width + 120, image.height + 80))
    wide.paste(image, (60, 40))
    wide.save(first.with_name("wide-copy.png"))
    convert(params.convert.model_copy(update={"framing": framing}))
    table, _ = read_converted(workdir / "data/converted", params.split)
    source = table.set_index("source")["group"]
    pair = [
        f"images/{first.relative_to(raw).as_posix()}.png",
        "images/" + (first.with_name("wide-copy.png").relative_to(raw).as_posix() + ".png"),
    ]
    manifest = pd.read_csv("data/converted/manifest.csv", dtype=str, keep_default_na=False)
    evidence = manifest.set_index("output").loc[pair]
    whole = [int(h, 16) for h in evidence["view_phash"]]
    body = [int(h, 16) for h in evidence["body_phash"]]
    assert (whole[0] ^ whole[1]).bit_count() > params.split.view_duplicate_distance
    assert (body[0] ^ body[1]).bit_count() <= params.split.view_duplicate_distance
    assert source[pair[0]] == source[pair[1]]
