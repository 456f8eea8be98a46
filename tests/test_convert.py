import json

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from lungct.errors import UserError
from lungct.windowing import window_uint8
from stages.convert import convert
from stages.download import download


@pytest.fixture
def raw(workdir, tiny):
    download(tiny)
    return workdir / "data/raw"


def test_every_file_in_the_manifest_converted_or_skipped(workdir, tiny, raw):
    (raw / "PHANTOM-0001" / "notes.txt").write_text("not DICOM")
    metrics = convert(tiny.convert)
    manifest = pd.read_csv(workdir / "data/converted/manifest.csv", keep_default_na=False)
    assert len(manifest) == 9 * 2 + 1
    skipped = manifest[manifest["status"] == "skipped"]
    assert skipped["source"].tolist() == ["PHANTOM-0001/notes.txt"]
    assert skipped["reason"].tolist() == ["not_dicom"]
    converted = manifest[manifest["status"] == "converted"]
    assert set(converted["label"]) == {"normal", "benign", "malignant"}
    assert metrics == json.loads((workdir / "metrics/convert.json").read_text())
    assert metrics["converted"] == 18 and metrics["skipped_by_reason"] == {"not_dicom": 1}
    assert metrics["patients"] == 9 and metrics["series"] == 9


def test_pngs_are_windowed_resized_and_padding_is_air(workdir, tiny, raw):
    convert(tiny.convert)
    manifest = pd.read_csv(workdir / "data/converted/manifest.csv", keep_default_na=False)
    image = np.asarray(Image.open(workdir / "data/converted" / manifest["output"].iloc[0]))
    assert image.shape == (32, 32) and image.dtype == np.uint8
    # The corner is outside the scanner's field of view: padding (-2000 stored) must become
    # air (-1000 HU, 60 in the lung window), not -3024 HU (0) as a bare rescale would give.
    assert image[0, 0] == window_uint8(np.array([-1000.0]), -600, 1500)[0] == 60
    # Lung window: a chest slice has dark lungs, mid-grey tissue and bright bone.
    assert image.max() >= 200 and (image > 0).mean() > 0.3


def test_unlabelled_patient_is_skipped(workdir, tiny, raw):
    labels = pd.read_csv(raw / "labels.csv")
    labels.iloc[1:].to_csv(raw / "labels.csv", index=False)
    convert(tiny.convert)
    manifest = pd.read_csv(workdir / "data/converted/manifest.csv", keep_default_na=False)
    unlabeled = manifest[manifest["reason"] == "unlabeled"]
    assert len(unlabeled) == 2 and set(unlabeled["patient_id"]) == {labels["PatientID"].iloc[0]}


def test_nothing_convertible_is_an_error_and_writes_nothing(workdir, tiny):
    raw = workdir / "data/raw"
    raw.mkdir(parents=True)
    (raw / "labels.csv").write_text("PatientID,label\n")
    (raw / "a.txt").write_text("x")
    with pytest.raises(UserError, match="no file could be converted"):
        convert(tiny.convert)
    assert not (workdir / "data/converted").exists()
    assert not (workdir / "metrics").exists()


def test_missing_raw_data_is_a_clear_error(workdir, tiny):
    with pytest.raises(UserError, match="data/raw: not found"):
        convert(tiny.convert)
