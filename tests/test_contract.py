"""The model contract (models/labels.json): written from params, read back validated,
checked against the model it belongs to."""

from __future__ import annotations

import json
import re
from types import SimpleNamespace

import pytest
from pydantic import ValidationError

from lungct.contract import Contract, Preprocessing
from lungct.errors import UserError
from lungct.params import load_params, merge, parse_params

THREE_WINDOWS = [
    {"center": -600, "width": 1500},
    {"center": 50, "width": 350},
    {"center": 400, "width": 1800},
]


def contract_dict(**changes) -> dict:
    data = {
        "classes": ["a", "b"],
        "image_size": 64,
        "channels": 3,
        "windows": THREE_WINDOWS,
        "file_window": True,
    }
    data.update(changes)
    return data


def test_from_params_writes_what_read_returns(tmp_path):
    raw = merge(
        load_params().model_dump(), {"convert": {"windows": THREE_WINDOWS, "image_size": 96}}
    )
    params = parse_params(raw)
    contract = Contract.from_params(params, ["benign", "malignant", "normal"])
    path = tmp_path / "labels.json"
    contract.write(path)
    assert Contract.read(path) == contract
    assert contract.input_shape == (96, 96, 3)
    written = json.loads(path.read_text())
    # The keys the model's users (and people) read; windows as {center, width} floats.
    assert written["classes"] == ["benign", "malignant", "normal"]
    assert written["windows"][1] == {"center": 50.0, "width": 350.0}
    assert written["channels"] == 3 and written["image_size"] == 96
    assert written["file_window"] is False and written["preprocessing"]


def test_from_dict_validates():
    contract = Contract.from_dict(contract_dict())
    assert contract.prep == Preprocessing(
        ((-600.0, 1500.0), (50.0, 350.0), (400.0, 1800.0)), file_window=True, image_size=64
    )
    bad = {
        "missing key.*file_window": {
            k: v for k, v in contract_dict().items() if k != "file_window"
        },
        "channels 1 but 3 window": contract_dict(channels=1),
        "positive width": contract_dict(windows=[{"center": 0, "width": 0}] * 3),
        "finite": contract_dict(windows=[{"center": float("nan"), "width": 10}] * 3),
        "two or more distinct": contract_dict(classes=["a"]),
        "classes: class name.s. a given twice": contract_dict(classes=["a", "a"]),
        "classes: class name '../x' is not letters": contract_dict(classes=["a", "../x"]),
        "image_size, channels integers": contract_dict(image_size="64"),
        "file_window must be": contract_dict(file_window="yes"),
        "framing must be one of image, body": contract_dict(framing="tight"),
        "not a model contract": ["a", "b"],
    }
    for message, data in bad.items():
        with pytest.raises(UserError, match=message):
            Contract.from_dict(data, "x.json")


def test_read_errors_are_one_line(tmp_path):
    with pytest.raises(UserError, match="not found"):
        Contract.read(tmp_path / "none.json")
    broken = tmp_path / "broken.json"
    broken.write_text("{", encoding="utf-8")
    with pytest.raises(UserError, match="not a readable model contract") as err:
        Contract.read(broken)
    assert "\n" not in str(err.value)


def test_check_model_names_the_mismatch():
    contract = Contract.from_dict(contract_dict())
    good = SimpleNamespace(input_shape=(None, 64, 64, 3), output_shape=(None, 2))
    assert contract.check_model(good, "m.keras") is good
    for shape, outputs in [((None, 64, 64, 1), 2), ((None, 64, 64, 3), 3)]:
        model = SimpleNamespace(input_shape=shape, output_shape=(None, outputs))
        with pytest.raises(UserError, match="m.keras: takes"):
            contract.check_model(model, "m.keras")


def test_training_data_round_trips_and_old_contracts_still_load(tmp_path):
    from lungct.contract import SYNTHETIC_WARNING, TrainingData

    old = Contract.from_dict(contract_dict())  # written before the data was recorded
    assert old.data is None and old.warning is None
    assert "not recorded" in old.describe_data()
    source = {"source": "synthetic", "generator": "lungct.phantom", "seed": 42, "layout": "dicom"}
    split = {"classes": "default", "strategy": "grouped", "leaky": False, "images": {"test": 6}}
    data = TrainingData.from_records(source, split)
    contract = Contract(old.classes, old.prep, data)
    path = tmp_path / "labels.json"
    contract.write(path)
    assert Contract.read(path) == contract
    written = json.loads(path.read_text())
    assert written["data"]["dataset"] == "lungct.phantom, seed 42"
    assert written["warning"] == SYNTHETIC_WARNING == contract.warning
    # A local path is named by its last part only; a real source has no warning.
    path_source = {"source": "path", "path": "/home/someone/data/chest.zip", "layout": "dicom"}
    real = TrainingData.from_records(path_source, split)
    assert real.dataset == "chest.zip" and real.warning is None
    with pytest.raises(UserError, match="data must be an object"):
        Contract.from_dict(contract_dict(data="synthetic"), "x.json")


def test_framing_round_trips_and_says_so_for_a_reader(tmp_path):
    raw = merge(load_params().model_dump(), {"convert": {"framing": "body"}})
    contract = Contract.from_params(parse_params(raw), ["a", "b"])
    path = tmp_path / "labels.json"
    contract.write(path)
    assert Contract.read(path) == contract and contract.prep.framing == "body"
    written = json.loads(path.read_text())
    assert written["framing"] == "body"
    assert any("body's bounding box" in step for step in written["preprocessing"])
    # A contract from before framing existed: the whole image, as then.
    assert Contract.from_dict(contract_dict()).prep.framing == "image"


def test_contract_keeps_the_params_rules():
    """One schema: what params.yaml may not say, a contract may not say either, and each
    problem is one line naming the file and the key."""
    body = {"framing": "body", "channels": 1, "windows": THREE_WINDOWS[:1]}
    cases = {
        "framing: 'body' frames each image by itself": [
            contract_dict(**(body | {"context_slices": 1, "channels": 3})),
            contract_dict(**body, crop={"kind": "lesion", "mm": 40.0}),
        ],
        "crop.kind must be one of none, lesion": [contract_dict(crop={"kind": "box", "mm": 1})],
        "crop.mm: input should be a valid number": [
            contract_dict(crop={"kind": "none", "mm": True})
        ],
        "crop must be {kind": [contract_dict(crop="lesion"), contract_dict(crop={"kind": "none"})],
        "context_slices: input should be less than or equal to 8": [
            contract_dict(context_slices=9)
        ],
        "image_size: input should be greater than or equal to 16": [contract_dict(image_size=8)],
        "windows: give 1 window": [contract_dict(windows=THREE_WINDOWS[:2], channels=2)],
    }
    for message, contracts in cases.items():
        for data in contracts:
            with pytest.raises(UserError, match=f"^x.json: {re.escape(message)}") as err:
                Contract.from_dict(data, "x.json")
            assert "\n" not in str(err.value) and str(err.value).endswith("rerun dvc repro")
    with pytest.raises(UserError, match="framing: 'body' frames each image by itself"):
        parse_params(
            merge(load_params().model_dump(), {"convert": {"framing": "body", "context_slices": 1}})
        )


def test_preprocessing_is_frozen_hashable_and_ignores_the_machine_limit():
    prep = Contract.from_dict(contract_dict()).prep
    same = Preprocessing(prep.windows, prep.file_window, prep.image_size, max_image_bytes=10)
    assert prep == same and hash(prep) == hash(same) and prep.max_image_bytes != 10
    assert prep.windows[0] == (-600.0, 1500.0) and prep.windows[0].width == 1500.0
    with pytest.raises(ValidationError):
        prep.image_size = 32  # frozen
    with pytest.raises(ValidationError, match="crop_mm: a lesion crop needs a side above 0"):
        Preprocessing(prep.windows, False, 64, crop="lesion", crop_mm=0.0)


def test_calibration_defaults_round_trip_and_decide_uncertain(tmp_path):
    """A contract from params has no temperature and no uncertain answer until train
    calibrates it; an old contract without the key reads the same; the threshold is the
    one rule (the SR's near tie 0.4202 against 0.4195 is uncertain below 0.5)."""
    raw = load_params().model_dump()
    contract = Contract.from_params(parse_params(raw), ["benign", "malignant", "normal"])
    assert (contract.temperature, contract.uncertain_below) == (1.0, 0.0)
    path = tmp_path / "labels.json"
    contract.write(path)
    assert Contract.read(path) == contract
    assert Contract.from_dict(contract_dict()) == Contract.from_dict(
        contract_dict(calibration={"temperature": 1.0, "uncertain_below": 0.0})
    )
    three = ["benign", "malignant", "normal"]
    rule = Contract.from_dict(contract_dict(classes=three, calibration={"uncertain_below": 0.5}))
    assert rule.answer([0.1603, 0.4202, 0.4195]) == "uncertain"
    assert rule.answer([0.1, 0.7, 0.2]) == "malignant"
    assert contract.answer([0.1603, 0.4202, 0.4195]) == "malignant"


def test_model_version_is_the_software_version_and_the_model_sha256():
    from lungct import __version__
    from lungct.contract import model_version

    sha256 = "1100a878e889b9fe82497f758421cd1b682a24e6458e732f449a7717f0d35390"
    version = model_version(sha256)
    assert version == f"{__version__}+sha256.1100a878e889b9fe"
    assert len(version) <= 64  # a DICOM LO (the SR's algorithm version)
