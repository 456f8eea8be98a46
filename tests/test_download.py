import json

import pandas as pd
import pydicom

from stages.download import download


def test_synthetic_download_writes_labelled_dicom_and_provenance(workdir, tiny):
    source = download(tiny)
    raw = workdir / "data/raw"
    labels = pd.read_csv(raw / "labels.csv")
    assert list(labels.columns) == ["PatientID", "label"]
    assert len(labels) == 9 and set(labels["label"]) == {"normal", "benign", "malignant"}
    dicoms = sorted(p for p in raw.rglob("*.dcm"))
    assert len(dicoms) == 9 * 2
    ds = pydicom.dcmread(dicoms[0])
    assert ds.SOPClassUID == "1.2.840.10008.5.1.4.1.1.2" and ds.Modality == "CT"
    assert ds.PatientID in set(labels["PatientID"])
    recorded = json.loads((raw / "SOURCE.json").read_text())
    assert recorded == source
    assert recorded["source"] == "synthetic" and recorded["files"] == 9 * 2 + 1
    assert len(recorded["sha256"]) == 64
    assert not list(workdir.glob("data/.raw.tmp-*"))


def test_same_seed_same_bytes(workdir, tiny):
    first = download(tiny)["sha256"]
    assert download(tiny)["sha256"] == first
    other = tiny.model_copy(update={"base": tiny.base.model_copy(update={"seed": 1})})
    assert download(other)["sha256"] != first
