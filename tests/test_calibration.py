"""Temperature scaling, the "uncertain" rule and the risk-coverage curve: NumPy's maths by
hand-made cases, and the Keras layer against it (one model, saved and loaded)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from lungct.contract import Contract
from lungct.errors import UserError
from lungct.evaluation.calibration import (
    apply_temperature,
    aurc,
    choose_temperature,
    choose_threshold,
    crossfit_loss,
    ece_if_calibrated,
    expected_calibration_error,
    fit_temperature,
    negative_log_likelihood,
    reliability,
    risk_coverage,
    selective,
)
from lungct.names import check_class_names
from lungct.params import CalibrationParams


def softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def overconfident(n: int = 2000, sharpen: float = 3.0, seed: int = 0):
    """Labels drawn from softmax(z) (so softmax(z) is calibrated) and a model that says
    softmax(sharpen * z): over-confident by exactly ``sharpen``."""
    rng = np.random.default_rng(seed)
    z = rng.normal(0.0, 1.5, (n, 3))
    truth = softmax(z)
    y = np.array([rng.choice(3, p=p) for p in truth])
    return y, softmax(sharpen * z)


def test_temperature_undoes_overconfidence_and_keeps_the_argmax():
    y, p = overconfident()
    t = fit_temperature(y, p)
    assert t == pytest.approx(3.0, rel=0.15)  # the sharpening it was given
    calibrated = apply_temperature(p, t)
    assert negative_log_likelihood(y, calibrated) < negative_log_likelihood(y, p) - 0.05
    assert expected_calibration_error(y, calibrated) < 0.03 < expected_calibration_error(y, p)
    np.testing.assert_array_equal(calibrated.argmax(axis=1), p.argmax(axis=1))
    np.testing.assert_allclose(calibrated.sum(axis=1), 1.0)


def test_temperature_of_a_calibrated_model_is_about_one():
    y, p = overconfident(sharpen=1.0, seed=1)
    assert fit_temperature(y, p) == pytest.approx(1.0, abs=0.12)
    assert fit_temperature(np.array([], dtype=int), np.zeros((0, 3))) == 1.0


def test_auto_keeps_a_temperature_that_helps_patients_it_was_not_fitted_on():
    """temperature: auto fits on half the patients and scores the other half: an
    over-confident model keeps its temperature, a calibrated one gets none (its fit to all
    the images is noise), and too few patients to halve give none."""
    y, p = overconfident(n=300, seed=4)
    groups = np.arange(len(y)) // 10  # 30 patients of 10 images
    temperature, record = choose_temperature(y, p, groups, "auto")
    assert temperature == fit_temperature(y, p) and temperature > 2
    losses = record["crossfit"]
    assert losses["temperature"] < losses["none"] - 0.05 and losses["draws"] > 1
    assert 0 < losses["gain_se"] < losses["none"] - losses["temperature"]
    assert losses == {**crossfit_loss(y, p, groups), "draws": losses["draws"]}  # seeded

    y, p = overconfident(n=300, sharpen=1.0, seed=5)
    temperature, record = choose_temperature(y, p, groups, "auto")
    assert fit_temperature(y, p) != 1.0  # what "true" would have kept
    losses = record["crossfit"]
    assert temperature == 1.0 and losses["none"] - losses["temperature"] <= losses["gain_se"]

    y, p = overconfident(n=300, seed=4)
    assert choose_temperature(y, p, groups % 3, "auto") == (1.0, {"mode": "auto", "crossfit": None})
    assert choose_temperature(y, p, groups, True)[0] == fit_temperature(y, p)
    assert choose_temperature(y, p, groups, False) == (1.0, {"mode": False})


def test_reliability_bins_and_ece_by_hand():
    p = np.array([[0.95, 0.05], [0.95, 0.05], [0.6, 0.4], [0.4, 0.6]])
    y = np.array([0, 1, 0, 1])
    rows = reliability(y, p, bins=10)
    assert [(r["images"], r["accuracy"]) for r in rows] == [(2, 1.0), (2, 0.5)]
    # bins: 0.6 (two images, both right: gap 0.4) and 0.95 (one of two right: gap 0.45)
    assert expected_calibration_error(y, p) == pytest.approx(0.5 * 0.4 + 0.5 * 0.45)


def test_ece_if_calibrated_is_what_a_calibrated_model_shows_on_a_set_this_size():
    """Labels drawn from the probabilities: the measured ECE is of the size of the floor on a
    small set, the floor shrinks as the set grows, and an over-confident model sits above it."""
    y, _ = overconfident(n=5000, sharpen=1.0, seed=3)
    _, calibrated = overconfident(n=5000, sharpen=1.0, seed=3)
    small = ece_if_calibrated(calibrated[:144])
    assert 0.03 < small < 0.12
    assert ece_if_calibrated(calibrated) < small / 3
    measured = [
        expected_calibration_error(y[i : i + 144], calibrated[i : i + 144])
        for i in range(0, 4320, 144)
    ]
    assert abs(np.mean(measured) - small) < 0.02
    assert ece_if_calibrated(calibrated[:144]) == small  # seeded
    y_over, over = overconfident(n=2000, sharpen=3.0)
    assert expected_calibration_error(y_over, over) > 3 * ece_if_calibrated(over)


def test_risk_coverage_and_aurc_by_hand():
    # confidences 0.9 (right), 0.8 (wrong), 0.7 (right), 0.6 (wrong)
    p = np.array([[0.9, 0.1], [0.2, 0.8], [0.7, 0.3], [0.4, 0.6]])
    y = np.array([0, 0, 0, 0])
    coverage, risk, threshold = risk_coverage(y, p)
    np.testing.assert_allclose(coverage, [0.25, 0.5, 0.75, 1.0])
    np.testing.assert_allclose(risk, [0.0, 0.5, 1 / 3, 0.5])
    np.testing.assert_allclose(threshold, [0.9, 0.8, 0.7, 0.6])
    assert aurc(y, p) == pytest.approx((0 + 0.5 + 1 / 3 + 0.5) / 4)
    # ties are answered together: both images at 0.8 count at the same coverage
    tied = np.array([[0.8, 0.2], [0.8, 0.2]])
    coverage, risk, _ = risk_coverage(np.array([0, 1]), tied)
    np.testing.assert_allclose(coverage, [1.0])
    assert aurc(np.array([0, 1]), tied) == pytest.approx(0.5)


def test_threshold_is_the_lowest_that_reaches_the_target_within_the_cap():
    # ten images, most confident first: right x4, wrong, right x3, wrong x2
    confidence = np.linspace(0.95, 0.5, 10)
    right = np.array([1, 1, 1, 1, 0, 1, 1, 1, 0, 0], bool)
    p = np.stack([confidence, 1 - confidence], axis=1)
    y = np.where(right, 0, 1)
    # 0.8 accuracy: answered 8 (7 of 8 right) is the widest that reaches it
    rule = choose_threshold(y, p, answered_accuracy=0.8, max_uncertain=0.5)
    assert rule.coverage == 0.8 and rule.accuracy == pytest.approx(7 / 8)
    assert rule.threshold <= confidence[7] and rule.threshold > confidence[8]
    # a 1.0 target needs the top 4 only; the cap of 30 % uncertain wins
    capped = choose_threshold(y, p, answered_accuracy=1.0, max_uncertain=0.3)
    assert capped.coverage == 0.7
    # all answered already reach it, or no uncertainty allowed: never uncertain
    assert choose_threshold(y, p, answered_accuracy=0.7, max_uncertain=0.5).threshold == 0.0
    assert choose_threshold(y, p, answered_accuracy=1.0, max_uncertain=0.0).threshold == 0.0
    # what the rule does elsewhere (test images) is measured the same way
    assert selective(y, p, rule.threshold).to_dict() == rule.to_dict()


def contract_with(**calibration) -> dict:
    return {
        "classes": ["benign", "malignant", "normal"],
        "image_size": 32,
        "channels": 1,
        "windows": [[-600, 1500]],
        "file_window": False,
        "calibration": calibration,
    }


def test_contract_carries_the_calibration_and_answers_uncertain(tmp_path):
    contract = Contract.from_dict(contract_with(temperature=1.7, uncertain_below=0.6))
    assert (contract.temperature, contract.uncertain_below) == (1.7, 0.6)
    assert contract.answer([0.3, 0.55, 0.15]) == "uncertain"
    assert contract.answer([0.2, 0.7, 0.1]) == "malignant"
    path = tmp_path / "labels.json"
    contract.write(path)
    assert json.loads(path.read_text())["calibration"] == {
        "temperature": 1.7,
        "uncertain_below": 0.6,
    }
    assert Contract.read(path) == contract
    # absent: no temperature layer, never uncertain
    plain = contract_with()
    del plain["calibration"]
    assert Contract.from_dict(plain).answer([0.34, 0.33, 0.33]) == "benign"


@pytest.mark.parametrize(
    ("calibration", "key"),
    [
        ({"temperature": 0}, "calibration.temperature"),
        ({"temperature": float("nan")}, "calibration.temperature"),
        ({"temperature": True}, "calibration.temperature"),
        ({"uncertain_below": 1.5}, "calibration.uncertain_below"),
        ({"uncertain_below": "0.5"}, "calibration.uncertain_below"),
        ({"margin": 0.1}, "calibration must be"),
    ],
)
def test_a_bad_calibration_is_one_line_naming_the_key(calibration, key):
    with pytest.raises(UserError, match=rf"x.json: {key}.*rerun dvc repro"):
        Contract.from_dict(contract_with(**calibration), "x.json")


def test_uncertain_is_no_class_name():
    for name in ("uncertain", "Uncertain"):
        with pytest.raises(ValueError, match="reserved"):
            check_class_names(["normal", name])


CFG = CalibrationParams(temperature=True, answered_accuracy=0.9, max_uncertain=0.2)


def test_the_keras_layer_is_numpys_maths_saved_with_the_model(tmp_path):
    """A deliberately over-confident Keras model (a softmax whose logits are 3x the
    calibrated ones): the fitted temperature lowers the val NLL, keeps every argmax, and
    the saved model's layer gives NumPy's calibrated probabilities."""
    import keras

    from lungct.model.calibrate import (
        before_and_after,
        calibrate,
        temperature_of,
        uncalibrated,
    )
    from lungct.model.saving import load_model, save_model

    rng = np.random.default_rng(3)
    weights = rng.normal(0.0, 1.0, (4, 3))
    x = rng.normal(0.0, 1.0, (1500, 4)).astype(np.float32)
    truth = softmax(x @ weights)
    y = np.array([rng.choice(3, p=p) for p in truth])
    inputs = keras.Input((4,))
    dense = keras.layers.Dense(3, activation="softmax", use_bias=False)
    model = keras.Model(inputs, dense(inputs))
    dense.set_weights([3.0 * weights])
    raw = model.predict(x, verbose=0)

    groups = np.arange(len(y)) // 15
    calibrated, temperature, threshold, record = calibrate(model, raw, y, groups, CFG)
    assert temperature == pytest.approx(3.0, rel=0.15)
    assert record["nll"]["after"] < record["nll"]["before"]
    assert record["ece"]["after"] < record["ece"]["before"]
    assert 0 < threshold < 1 and record["uncertain"]["coverage"] >= 1 - CFG.max_uncertain
    out = calibrated.predict(x, verbose=0)
    np.testing.assert_array_equal(out.argmax(axis=1), raw.argmax(axis=1))
    np.testing.assert_allclose(out, apply_temperature(raw, temperature), atol=1e-5)

    path = tmp_path / "model.keras"
    save_model(calibrated, path)
    loaded = load_model(path)
    assert temperature_of(loaded) == temperature
    before, after = before_and_after(loaded).predict(x, verbose=0)
    np.testing.assert_allclose(before, raw, atol=1e-6)
    np.testing.assert_allclose(after, out, atol=1e-6)
    assert temperature_of(uncalibrated(loaded)) is None
    # calibrating again replaces the temperature, never stacks a second one
    again, _, _, _ = calibrate(loaded, raw, y, groups, CFG)
    assert sum(type(layer).__name__ == "Temperature" for layer in again.layers) == 1
    # train.calibration.temperature: false keeps the model's own probabilities
    off = CFG.model_copy(update={"temperature": False})
    assert calibrate(model, raw, y, groups, off)[1] == 1.0
    # auto: the over-confidence shows on patients the temperature was not fitted on too
    auto = CFG.model_copy(update={"temperature": "auto"})
    assert calibrate(model, raw, y, groups, auto)[1] == temperature


def test_the_contract_refuses_a_model_of_another_temperature():
    import keras

    from lungct.model.calibrate import with_temperature

    inputs = keras.Input((32, 32, 1))
    flat = keras.layers.Flatten()(inputs)
    model = with_temperature(
        keras.Model(inputs, keras.layers.Dense(3, activation="softmax")(flat)), 2.0
    )
    contract = Contract.from_dict(contract_with(temperature=2.0))
    assert contract.check_model(model, "m.keras") is model
    other = Contract.from_dict(contract_with(temperature=1.5))
    with pytest.raises(UserError, match="m.keras: calibrated with temperature 2, but"):
        other.check_model(model, "m.keras")
