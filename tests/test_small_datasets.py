"""Small and annotated datasets, as a user first meets them: a class the data lacks stops the
split with a hint, thin splits are warned of and recorded, convert tells slices an
annotation rule excludes apart from files it cannot use, and every skipped row says why.

Fixtures are the phantom, a few patients of a few 64-pixel slices: seconds each.
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path

import pandas as pd
import pytest

from lungct.data.split import MIN_GROUPS_PER_CLASS, few_groups
from lungct.errors import SkippedFile, UserError
from lungct.io.dicom import read_ct
from lungct.params import Params, merge, parse_params
from lungct.phantom import write_cohort
from stages.convert import convert
from stages.download import download
from stages.split import split

# metrics/split.json's keys before the thin-split counts: other tools read them.
SPLIT_KEYS = {
    "images",
    "groups",
    "images_per_class",
    "images_with_near_duplicates",
    "largest_group",
    "class_imbalance_ratio",
    "strategy",
    "leakage",
    "layout",
    "classes",
    "grouping",
    "folds",
    "near_duplicate_distance",
    "groups_spanning_classes",
    "found_cross_split_groups",
    "found_cross_split_pairs",
    "dropped",
    "groups_in_several_splits",
    "cross_split_near_duplicate_pairs",
    "leaky",
}
CONVERT_KEYS = {"layout", "files", "converted", "skipped", "skipped_by_reason", "patients"}


def from_folder(tiny_raw: dict, folder: Path, **split_params) -> Params:
    """Params that bring ``folder`` in as a user's data (data.source: path)."""
    data = {"source": "path", "path": str(folder), "kaggle_handle": ""}
    return parse_params(merge(tiny_raw, {"data": data, "split": split_params}))


def lidc_folder(workdir: Path, patients: int, balance: dict[str, float], slices: int = 4) -> Path:
    folder = workdir / "incoming"
    write_cohort(
        folder,
        patients=patients,
        slices=slices,
        image_size=64,
        seed=1,
        annotations="lidc",
        class_balance=balance,
    )
    return folder


def warnings_of(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.getMessage().startswith("warning:")]


# 1. A class the data lacks


def test_one_lidc_patient_says_what_the_data_has_and_what_to_do(workdir, tiny_raw):
    params = from_folder(tiny_raw, lidc_folder(workdir, 1, {"malignant": 1.0}))
    download(params)
    convert(params.convert, seed=params.base.seed)
    with pytest.raises(UserError) as err:
        split(params)
    message = str(err.value)
    assert "\n" not in message
    assert "no images of class(es) ['benign', 'normal']" in message
    assert "the data has malignant (1 patient)" in message  # the classes there are, counted
    assert "bring patients with benign or normal images" in message
    assert "at least 3 patients" in message
    assert "docs/data.md#layouts-and-classes" in message  # where mappings are explained
    assert "split.classes: binary" not in message  # it would lack a class too
    assert not Path("data/splits").exists() and not Path("metrics/split.json").exists()


def test_binary_is_offered_where_it_would_split(workdir, tiny_raw):
    """Normal and malignant patients, no benign one: the default preset lacks a class, and
    binary (with and without cancer) has enough patients of each."""
    tiny_raw["data"]["synthetic"]["class_balance"].pop("benign")
    params = parse_params(tiny_raw)
    download(params)
    convert(params.convert, seed=params.base.seed)
    with pytest.raises(UserError) as err:
        split(params)
    message = str(err.value)
    assert "no images of class(es) ['benign']" in message
    assert re.search(r"the data has malignant \(\d patients\), normal \(\d patients\)", message)
    assert "or set split.classes: binary" in message
    binary = parse_params(merge(params.model_dump(), {"split": {"classes": "binary"}}))
    assert split(binary)["groups_per_class"]["test"] == {"with_cancer": 1, "without_cancer": 1}


# 2. Thin splits


def test_thin_splits_are_warned_of_and_recorded(workdir, tiny, caplog):
    """The tiny cohort: 3 patients a class, split 1/1/1, every cell under the threshold."""
    download(tiny)
    convert(tiny.convert, seed=tiny.base.seed)
    with caplog.at_level(logging.INFO):
        metrics = split(tiny)
    assert metrics == json.loads(Path("metrics/split.json").read_text())
    assert set(metrics) >= SPLIT_KEYS  # nothing renamed
    classes = ["benign", "malignant", "normal"]
    assert metrics["groups_per_class"] == {s: dict.fromkeys(classes, 1) for s in metrics["groups"]}
    assert metrics["min_groups_per_class"] == MIN_GROUPS_PER_CLASS == 5
    cells = [f"{s}/{c}" for s in ("train", "val", "test") for c in classes]
    assert metrics["few_groups"] == cells
    lines = warnings_of(caplog)
    assert len(lines) == len(cells)  # one line per split and class
    assert all(
        re.fullmatch(r"warning: split: \w+ holds 1 patient of class '\w+', .*", x) for x in lines
    )
    assert any("test holds 1 patient of class 'benign', fewer than 5" in x for x in lines)


def test_few_groups_threshold():
    enough = {"train": {"a": 24, "b": 5}, "val": {"a": 8, "b": 5}, "test": {"a": 8, "b": 5}}
    assert few_groups(enough) == []
    thin = {"train": {"a": 24, "b": 5}, "val": {"a": 8, "b": 4}, "test": {"a": 0, "b": 5}}
    assert few_groups(thin) == ["val/b", "test/a"]


# 3. Excluded by rule, or skipped as unusable


def test_lidc_rule_exclusions_are_counted_apart_from_unusable_files(workdir, tiny_raw, caplog):
    folder = lidc_folder(workdir, 3, {"normal": 1.0, "benign": 1.0, "malignant": 1.0}, slices=6)
    (folder / "metadata.csv").write_text(
        "Series UID,Collection,Subject ID\n1.2.3,LIDC-IDRI,LIDC-IDRI-0001\n"
    )
    params = from_folder(tiny_raw, folder)
    download(params)
    # One file of 19 unusable: over 5 %, a failure; the excluded slices do not count.
    with pytest.raises(UserError) as err:
        convert(params.convert, seed=params.base.seed)
    message = str(err.value)
    assert "1 of 19 files skipped as unreadable or unusable" in message
    assert "{'not_dicom': 1}" in message and "excluded by rule, not counted" in message
    loose = params.convert.model_copy(update={"max_skipped_fraction": 0.06})
    with caplog.at_level(logging.INFO):
        metrics = convert(loose, seed=params.base.seed)
    assert set(metrics) >= CONVERT_KEYS
    assert metrics["excluded"] > 0.2 * metrics["files"]  # many more than the threshold
    assert set(metrics["excluded_by_reason"]) <= {"lidc_near_annotation", "lidc_too_few_readers"}
    assert metrics["unusable_by_reason"] == {"not_dicom": 1} and metrics["unusable_files"] == 1
    assert metrics["skipped"] == metrics["excluded"] + metrics["unusable"]
    assert metrics["skipped_by_reason"] == {
        **metrics["excluded_by_reason"],
        **metrics["unusable_by_reason"],
    }
    [line] = [r.getMessage() for r in caplog.records if r.getMessage().startswith("convert: ")]
    assert f"{metrics['excluded']} slices excluded by rule (lidc_near_annotation" in line
    assert line.endswith("1 files skipped as unreadable or unusable (not_dicom 1)")
    manifest = pd.read_csv("data/converted/manifest.csv", keep_default_na=False)
    [csv_row] = manifest[manifest["source"] == "metadata.csv"].to_dict("records")
    assert csv_row["detail"].endswith("a text file (CSV)")  # 4. what the file is


def test_an_unusable_annotation_file_counts_against_the_threshold(workdir, tiny_raw):
    """An LIDC-IDRI XML that names its series but holds no readingSession cannot label the
    series: its slices are unusable (annotation_unreadable), not excluded by the rule."""
    folder = lidc_folder(workdir, 2, {"normal": 1.0, "malignant": 1.0})
    xml = sorted(folder.rglob("*.xml"))[0]
    text = xml.read_text()
    xml.write_text(re.sub(r"<readingSession>.*</readingSession>", "", text, flags=re.S))
    params = from_folder(tiny_raw, folder)
    download(params)
    with pytest.raises(
        UserError,
        match=r"4 of 8 files skipped as unreadable or unusable.*"
        r"annotation_unreadable",
    ):
        convert(params.convert, seed=params.base.seed)
    metrics = convert(params.convert.model_copy(update={"max_skipped_fraction": 0.5}))
    assert metrics["unusable_by_reason"] == {"annotation_unreadable": 4}


# 4. Every skipped row says why


@pytest.mark.parametrize(
    ("content", "says"),
    [
        (b"PatientID,label\nA,normal\nB,benign\n", "a text file (CSV)"),
        (b'<?xml version="1.0"?>\n<LidcReadMessage/>\n', "a text file (XML)"),
        (b'{"layout": "lidc"}', "a text file (JSON)"),
        (b"scan notes, not a DICOM file\n", "a text file"),
        ("Patient,Befund\nA,Läsion\n".encode("latin-1"), "a text file (CSV)"),
        (b"\x89PNG\r\n\x1a\n" + bytes(64), "a PNG image"),
        (b"PK\x03\x04" + bytes(64), "a zip archive"),
        (bytes(range(256)) * 2, "binary data (first bytes 00 01 02 03 04 05 06 07)"),
    ],
    ids=["csv", "xml", "json", "text", "latin-1", "png", "zip", "binary"],
)
def test_a_file_that_is_not_dicom_says_what_it_is(tmp_path, content, says):
    path = tmp_path / "file"
    path.write_bytes(content)
    with pytest.raises(SkippedFile) as err:
        read_ct(path)
    assert err.value.reason == "not_dicom"
    assert err.value.detail == f"no DICOM preamble or data set: {says}"


def test_an_unlabeled_row_says_where_the_label_was_looked_for(workdir, tiny):
    download(tiny)
    labels = Path("data/raw/labels.csv")
    lines = labels.read_text().splitlines()
    labels.write_text("\n".join([lines[0], *lines[2:]]) + "\n")
    patient = lines[1].split(",")[0]
    convert(tiny.convert.model_copy(update={"max_skipped_fraction": 0.2}))
    manifest = pd.read_csv("data/converted/manifest.csv", keep_default_na=False)
    unlabeled = manifest[manifest["reason"] == "unlabeled"]
    assert len(unlabeled) == 2
    assert set(unlabeled["detail"]) == {f"PatientID '{patient}' has no label in labels.csv"}
