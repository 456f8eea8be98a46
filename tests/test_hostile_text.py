"""Hostile text never flows into outputs: class names are checked once wherever they enter
(params' ``split.classes``, the model contract, a ``folders`` dataset's folder names),
predict's table and CSV escape what is not the project's own text, and a model card of
the wrong shape is reported and ignored."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from lungct.contract import Contract
from lungct.data.layouts import class_mapping
from lungct.errors import UserError
from lungct.evaluation.card import read_card
from lungct.names import CLASS_NAME_MAX, check_class_names, class_name_problem
from lungct.params import merge, parse_params
from lungct.serving.formats import About, render_csv, render_table
from lungct.serving.inference import Prediction
from tests.conftest import TINY, project_params

HOSTILE_CLASSES = [
    "../../../../tmp/x",
    ".",
    "..",
    "a/b",
    "x\x00y",
    "",
    "\x1b[2J",
    "=cmd|' /C calc'!A0",
    "-2+3",
    "@SUM(A1)",
    "a b",
    "é",
    "x" * (CLASS_NAME_MAX + 1),
]


@pytest.mark.parametrize("name", HOSTILE_CLASSES)
def test_hostile_class_names_are_refused(name):
    assert class_name_problem(name) is not None
    with pytest.raises(ValueError):
        check_class_names(["normal", name])


def test_plain_class_names_pass():
    check_class_names(["normal", "with_cancer", "large-cell", "B2", "x" * CLASS_NAME_MAX])
    with pytest.raises(ValueError, match="given twice"):
        check_class_names(["a", "b", "a"])
    assert class_name_problem(3) is not None


@pytest.mark.parametrize("name", [name for name in HOSTILE_CLASSES if name])  # "": left out
def test_split_classes_mapping_refuses_hostile_names(name):
    raw = merge(project_params(), TINY)
    raw["split"]["classes"] = {"normal": name, "benign": "benign"}
    with pytest.raises(UserError) as err:
        parse_params(raw)
    assert "split.classes: class name" in str(err.value)
    assert "\x00" not in str(err.value) and "\x1b" not in str(err.value)


def test_split_classes_mapping_needs_two_classes():
    raw = merge(project_params(), TINY)
    for mapping in ({"normal": "", "benign": ""}, {"normal": "x", "benign": "x", "other": ""}):
        raw["split"]["classes"] = mapping
        with pytest.raises(UserError, match="split.classes: a mapping must name two classes"):
            parse_params(raw)
    raw["split"]["classes"] = {"normal": "n", "benign": "b", "indeterminate": ""}
    assert parse_params(raw).split.classes["indeterminate"] == ""


def test_folder_names_that_give_no_safe_class_are_refused():
    long = "Lung " + "x" * CLASS_NAME_MAX
    with pytest.raises(UserError, match="split.classes: folder 'Lung x.*give a mapping"):
        class_mapping("folders", "default", ["normal", long])
    with pytest.raises(UserError, match="gives no class name"):
        class_mapping("folders", "default", ["normal", "..."])
    mapping = class_mapping("folders", "default", ["Malignant cases", "normal"])
    assert mapping == {"malignant cases": "malignant_cases", "normal": "normal"}


LABELS = {
    "classes": ["benign", "malignant", "normal"],
    "image_size": 32,
    "channels": 1,
    "windows": [{"center": -600, "width": 1500}],
    "file_window": False,
}


@pytest.mark.parametrize("name", HOSTILE_CLASSES)
def test_contract_refuses_hostile_class_names(name):
    with pytest.raises(UserError) as err:
        Contract.from_dict({**LABELS, "classes": ["benign", name]}, "labels.json")
    assert str(err.value).startswith("labels.json: classes: class name")


def test_contract_from_params_refuses_hostile_class_names():
    params = parse_params(merge(project_params(), TINY))
    with pytest.raises(UserError, match="rerun the split stage"):
        Contract.from_params(params, ["benign", "../x"])


def about(contract: Contract) -> About:
    return About.of(contract, "model.keras", "0" * 64)


def test_table_escapes_control_characters_of_file_names():
    contract = Contract.from_dict(LABELS)
    rows = [Prediction("scan\x1b[2J\r\nowned\x07.png", "image", np.array([0.1, 0.7, 0.2]))]
    table = render_table(rows, contract)
    assert "\x1b" not in table and "\x07" not in table and "\r" not in table
    assert "scan\\x1b[2J\\r\\nowned\\x07.png" in table
    assert table.count("\n") == 2  # the header and one row


@pytest.mark.parametrize("name", ["=cmd|' /C calc'!A0", "+1+1", "-2+3", "@SUM(A1)", "\tx", "\rx"])
def test_csv_cells_that_a_spreadsheet_would_run_get_a_quote(name, tmp_path):
    import pandas as pd

    contract = Contract.from_dict(LABELS)
    rows = [Prediction(name, "image", np.array([0.1, 0.7, 0.2]))]
    text = render_csv(rows, contract, about(contract))
    (tmp_path / "p.csv").write_text(text)
    table = pd.read_csv(tmp_path / "p.csv", comment="#", keep_default_na=False)
    cell = table["file"].iloc[0]
    assert cell.startswith("'") and "\t" not in cell and "\r" not in cell
    assert table["predicted"].iloc[0] == "malignant"  # the rest is data as before


def test_csv_keeps_plain_names_and_escapes_control_characters(tmp_path):
    contract = Contract.from_dict(LABELS)
    rows = [
        Prediction("data/a-1.png", "image", np.array([0.1, 0.7, 0.2])),
        Prediction("b\x1b[2J.png", "image", np.array([0.1, 0.7, 0.2])),
    ]
    text = render_csv(rows, contract, about(contract))
    assert "\x1b" not in text
    lines = text.splitlines()
    assert lines[-2].startswith("data/a-1.png,image,")
    assert lines[-1].startswith("b\\x1b[2J.png,image,")


def test_csv_comment_lines_escape_control_characters():
    data = {
        "source": "kaggle",
        "dataset": "owner/\x1b]0;pwned\x07data",
        "layout": "folders",
    }
    contract = Contract.from_dict({**LABELS, "data": data})
    text = render_csv([], contract, about(contract))
    assert "\x1b" not in text and "\x07" not in text
    assert "owner/\\x1b]0;pwned\\x07data" in text


def card(tmp_path: Path, **test) -> Path:
    model = tmp_path / "model.keras"
    model.write_bytes(b"a model")
    from lungct.atomic import sha256_file

    figures = {"balanced_accuracy": 0.74, "ci_low": 0.61, "ci_high": 0.86, "images": 144}
    path = tmp_path / "card.json"
    body = {"model_sha256": sha256_file(model), "test": {**figures, **test}}
    path.write_text(json.dumps(body))
    return path


@pytest.mark.parametrize(
    "test, says",
    [
        ({"balanced_accuracy": "0.9"}, "test.balanced_accuracy must be a number"),
        ({"images": "144"}, "test.images must be a number"),
        ({"ci_low": "0.5"}, "test.ci_low must be a number"),
        ({"ci_high": None}, "test.ci_low and test.ci_high must both be numbers or both null"),
        ({"leaky": "no"}, "test.leaky must be true or false"),
        ({"accuracy": [1]}, "test.accuracy must be a number"),
    ],
)
def test_a_card_of_the_wrong_shape_is_reported_and_ignored(tmp_path, test, says):
    path = card(tmp_path, **test)
    found, why = read_card(path, tmp_path / "model.keras")
    assert found is None
    assert why == f"{path}: not a model card ({says}; rerun dvc repro)"


def test_a_card_of_the_right_shape_is_read(tmp_path):
    found, why = read_card(card(tmp_path), tmp_path / "model.keras")
    assert why == "" and found["test"]["images"] == 144
    found, why = read_card(card(tmp_path, ci_low=None, ci_high=None), tmp_path / "model.keras")
    assert why == "" and found["test"]["ci_low"] is None
