"""Every output says ``uncertain`` (with every probability) below the contract's threshold:
predict's table, CSV and JSON, the service's JSON and the app, on the tiny trained model
with a copy of its contract whose threshold no answer reaches. (The DICOM SR's uncertain
finding: tests/test_dicom_sr.py.)"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd
import pytest
from streamlit.testing.v1 import AppTest

from stages.predict import predict
from tests.test_app import APP, keep_main_module  # noqa: F401  (a fixture)
from tests.test_serve import call, multipart, start, stop
from tests.trained import trained_project

UNSURE = 0.999  # no answer of the tiny model's is this sure


@pytest.fixture(scope="module")
def unsure(tmp_path_factory) -> Path:
    """models/ of the tiny project, its contract asking for a top probability of 0.999."""
    project = trained_project()
    models = tmp_path_factory.mktemp("unsure")
    shutil.copy(project / "models/model.keras", models / "model.keras")
    contract = json.loads((project / "models/labels.json").read_text())
    contract["calibration"]["uncertain_below"] = UNSURE
    (models / "labels.json").write_text(json.dumps(contract))
    return models


@pytest.fixture(scope="module")
def images() -> list[Path]:
    return sorted((trained_project() / "data/splits/test").rglob("*.png"))[:2]


def test_predict_says_uncertain_in_every_format(unsure, images, tmp_path, capsys):
    model = ["--model", str(unsure / "model.keras"), "--labels", str(unsure / "labels.json")]
    args = [*map(str, images), *model]
    assert predict([*args, "--output", str(tmp_path / "p.csv"), "--format", "csv"]) == 0
    table = pd.read_csv(tmp_path / "p.csv", comment="#")
    assert list(table["predicted"]) == ["uncertain"] * 2
    assert table.filter(like="p_").sum(axis=1).round(3).tolist() == [1.0, 1.0]

    assert predict([*args, "--output", str(tmp_path / "p.json"), "--format", "json"]) == 0
    document = json.loads((tmp_path / "p.json").read_text())
    assert [row["predicted"] for row in document["predictions"]] == ["uncertain"] * 2
    assert all(len([k for k in row if k.startswith("p_")]) == 3 for row in document["predictions"])
    assert document["model"]["uncertain"] == f"uncertain below a top probability of {UNSURE}"

    capsys.readouterr()
    assert predict([*args, "--format", "table"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert all(line.split()[1] == "uncertain" for line in lines[1:]), lines


def test_the_service_says_uncertain(unsure, images, tmp_path):
    server = start(tmp_path, "--model", str(unsure / "model.keras"))
    try:
        body, kind = multipart([(path.name, path.read_bytes()) for path in images])
        status, _, answer = call(f"{server.url}/predict", body, kind)
    finally:
        stop(server)
    assert status == 200, answer
    assert [row["predicted"] for row in answer["predictions"]] == ["uncertain"] * 2
    assert answer["model"]["uncertain"].endswith(str(UNSURE))


def test_the_app_says_uncertain_and_names_the_most_probable(unsure, images, monkeypatch):
    monkeypatch.setenv("LUNGCT_MODEL", str(unsure / "model.keras"))
    monkeypatch.setenv("LUNGCT_LABELS", str(unsure / "labels.json"))
    at = AppTest.from_file(str(APP), default_timeout=120).run()
    at.file_uploader(key="uploads").set_value(
        [("slice.png", images[0].read_bytes(), "image/png")]
    ).run()
    assert not at.exception and not at.error
    assert "Predicted: **uncertain**" in at.markdown[0].value
    (note,) = at.info
    assert "not sure enough" in note.value and "the most probable is" in note.value
