"""The export stage (SavedModel and ONNX, checked against the Keras model) and the model
card, on the session's tiny project (built by ``dvc repro``, export stage included)."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import lungct.model.export as export_module
from lungct.errors import UserError
from lungct.model import exported
from tests.trained import stage_env, trained_project

EXPORT = Path("models/export")


@pytest.fixture(scope="module")
def project() -> Path:
    return trained_project()


def digests(folder: Path) -> dict[str, str]:
    return {
        p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def test_export_folder_holds_both_formats_with_the_contract(project: Path):
    export = project / EXPORT
    files = set(digests(export))
    assert {
        "export.json",
        "savedmodel/saved_model.pb",
        "savedmodel/fingerprint.pb",
        "savedmodel/labels.json",
        "onnx/model.onnx",
        "onnx/labels.json",
    } <= files
    contract = (project / "models/labels.json").read_bytes()
    assert (export / "savedmodel/labels.json").read_bytes() == contract
    assert (export / "onnx/labels.json").read_bytes() == contract
    record = json.loads((export / "export.json").read_text())
    assert record["input"] == {"name": "image", "dtype": "float32", "shape": [None, 32, 32, 1]}
    assert record["output"]["name"] == "probabilities" and record["classes"][0] == "benign"
    assert record["checked_on"] == {"split": "test", "images": 6, "tolerance": 1e-5}
    model = project / "models/model.keras"
    assert record["source_model"] == {
        "file": "model.keras",
        "sha256": hashlib.sha256(model.read_bytes()).hexdigest(),
    }


def test_exports_give_the_evaluated_probabilities(project: Path):
    """Both exports on the test split: evaluate's probabilities (metrics/predictions.csv,
    6 decimals) within 1e-5; the augmentation layers are off in both."""
    from lungct.model.dataset import decode_images

    table = pd.read_csv(project / "metrics/predictions.csv")
    paths = [str(project / "data/splits" / image) for image in table["image"]]
    images = decode_images(paths, 32, 1).astype(np.float32)
    expected = table[[c for c in table.columns if c.startswith("p_")]].to_numpy()
    export = project / EXPORT
    saved = export_module.run_savedmodel(export / "savedmodel", images)
    onnx = exported.run_onnx(export / "onnx/model.onnx", images)
    np.testing.assert_allclose(saved, expected, atol=1e-5)
    np.testing.assert_allclose(onnx, expected, atol=1e-5)
    # Twice the same input, the same output: nothing random at inference.
    np.testing.assert_array_equal(
        export_module.run_savedmodel(export / "savedmodel", images), saved
    )


def scratch(project: Path, target: Path) -> Path:
    """What the export stage reads, in a folder of its own."""
    for part in ("models/model.keras", "models/labels.json"):
        (target / part).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(project / part, target / part)
    shutil.copytree(project / "data/splits", target / "data/splits")
    return target


def test_export_is_byte_reproducible(project: Path, tmp_path: Path):
    """Another process, the same model: the same bytes in every file (what DVC hashes)."""
    work = scratch(project, tmp_path)
    result = subprocess.run(
        [sys.executable, "-m", "stages.export"],
        cwd=work,
        env=stage_env(),
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    assert digests(work / EXPORT) == digests(project / EXPORT)
    assert "export: ONNX, largest difference" in result.stderr


def test_an_ensemble_export_is_byte_reproducible(project: Path, tmp_path: Path):
    """The default model is a seed ensemble: two of tf2onnx's optimizers visit its parallel
    members in an order that changes between conversions (other names, another of two
    equal constants kept); without them, two export processes write the same ONNX bytes.
    (One conversion a process, as the stage does: tf2onnx numbers the nodes it makes with a
    counter that runs for the life of the process.)"""
    from lungct.model.calibrate import temperature_of, uncalibrated, with_temperature
    from lungct.model.network import ensemble
    from lungct.model.saving import load_model, save_model

    work = scratch(project, tmp_path / "work")
    saved = load_model(work / "models/model.keras")
    members = [uncalibrated(load_model(work / "models/model.keras")) for _ in range(3)]
    for scale, member in zip((0.9, 1.1), members[1:], strict=True):
        member.set_weights([w * scale for w in member.get_weights()])
    calibrated = with_temperature(ensemble(members), temperature_of(saved))  # as train saves
    save_model(calibrated, work / "models/model.keras")
    again = shutil.copytree(work, tmp_path / "again")
    for folder in (work, again):
        result = subprocess.run(
            [sys.executable, "-m", "stages.export"],
            cwd=folder,
            env=stage_env(),
            capture_output=True,
            text=True,
        )
        assert result.returncode == 0, result.stderr
    onnx_file = EXPORT / "onnx/model.onnx"
    assert (work / onnx_file).read_bytes() == (again / onnx_file).read_bytes()


def test_a_failed_check_is_one_error_and_leaves_nothing(
    project: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    work = scratch(project, tmp_path)
    monkeypatch.chdir(work)
    (work / EXPORT).mkdir(parents=True)
    (work / EXPORT / "previous").write_text("an earlier export")

    def off_by(run, amount):
        return lambda path, images: run(path, images) + amount

    monkeypatch.setattr(export_module, "run_onnx", off_by(export_module.run_onnx, 1e-3))
    with pytest.raises(UserError, match=r"onnx/model.onnx: outputs differ from the Keras") as err:
        export_module.export()
    assert "(tolerance 1e-05); nothing exported" in str(err.value)
    assert "\n" not in str(err.value)
    assert sorted(p.name for p in (work / EXPORT).iterdir()) == ["previous"]
    assert not list(work.rglob(".*.tmp-*"))

    monkeypatch.setattr(export_module, "run_savedmodel", off_by(export_module.run_savedmodel, 1))
    with pytest.raises(UserError, match=r"savedmodel: outputs differ"):
        export_module.export()
    assert not list(work.rglob(".*.tmp-*"))


def test_model_card_names_the_model_and_holds_the_test_figures(project: Path):
    from lungct.atomic import sha256_file
    from lungct.evaluation.card import read_card

    card, note = read_card(project / "models/card.json", project / "models/model.keras")
    assert card is not None, note
    headline = json.loads((project / "metrics/eval.json").read_text())
    assert {key: card["test"][key] for key in headline} == headline
    assert card["test"]["images"] == 6 and card["test"]["groups"] == 3
    assert card["model_sha256"] == sha256_file(project / "models/model.keras")
    assert card["data"]["source"] == "synthetic" and "not for real CT" in card["warning"]
    other, note = read_card(project / "models/card.json", project / "models/labels.json")
    assert other is None and "describes another model" in note
