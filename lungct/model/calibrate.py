"""Calibration in the model's graph: train fits it on the val split after training, and the
saved model carries it, so evaluate, predict, the app, the service, Grad-CAM and the ONNX
and SavedModel exports all give the same calibrated probabilities.

:class:`Temperature` is the model's last layer (:func:`with_temperature`); its maths and the
fit are NumPy's in :mod:`lungct.evaluation.calibration`, and :func:`calibrate` records what
the fit did on the val split. Importing this module imports TensorFlow.
"""

from __future__ import annotations

import keras
import numpy as np

from lungct.evaluation.calibration import (
    TINY,
    apply_temperature,
    choose_temperature,
    choose_threshold,
    expected_calibration_error,
    negative_log_likelihood,
)
from lungct.params import CalibrationParams


@keras.saving.register_keras_serializable(package="lungct")
class Temperature(keras.layers.Layer):
    """``softmax(log(p) / temperature)`` of the probabilities ``p`` it is given: temperature
    scaling (Guo et al., 2017) of a softmax model's or an ensemble's output, in float32."""

    def __init__(self, temperature: float = 1.0, **kwargs) -> None:
        super().__init__(**{"dtype": "float32", **kwargs})
        self.temperature = float(temperature)

    def call(self, probabilities):
        p = keras.ops.cast(probabilities, "float32")
        return keras.ops.softmax(keras.ops.log(keras.ops.maximum(p, TINY)) / self.temperature)

    def get_config(self) -> dict:
        return {**super().get_config(), "temperature": self.temperature}


CALIBRATED_OUTPUT = "calibrated"  # the name of the Temperature layer in a saved model


def uncalibrated(model: keras.Model) -> keras.Model:
    """``model`` without its :class:`Temperature` layer (the model itself if it has none):
    the same layers and weights, the output before calibration."""
    last = model.layers[-1]
    if not isinstance(last, Temperature):
        return model
    return keras.Model(model.inputs, last.input, name=model.name)


def temperature_of(model: keras.Model) -> float | None:
    """The temperature of ``model``'s :class:`Temperature` layer; None without one."""
    last = model.layers[-1]
    return last.temperature if isinstance(last, Temperature) else None


def before_and_after(model: keras.Model) -> keras.Model:
    """``model`` with two outputs: the probabilities before its :class:`Temperature` layer
    and after (the same twice without one), from one pass (evaluate's before-and-after)."""
    raw = uncalibrated(model)
    return keras.Model(model.inputs, [raw.outputs[0], model.outputs[0]], name=model.name)


def with_temperature(model: keras.Model, temperature: float) -> keras.Model:
    """``model`` (its own temperature layer, if any, replaced) followed by
    :class:`Temperature`: one input, one output, the same name (an ensemble stays one)."""
    inner = uncalibrated(model)
    calibrated = Temperature(temperature, name=CALIBRATED_OUTPUT)(inner.outputs[0])
    return keras.Model(inner.inputs, calibrated, name=inner.name)


def calibrate(
    model: keras.Model,
    raw: np.ndarray,
    y_val: list[int] | np.ndarray,
    groups: list[str] | np.ndarray,
    cfg: CalibrationParams,
    seed: int = 0,
) -> tuple[keras.Model, float, float, dict]:
    """Fit the temperature (``cfg.temperature``, :func:`choose_temperature`; ``seed`` draws
    its cross-fitting halves) and choose the "uncertain" threshold on held-out images:
    their probabilities before calibration ``raw``, their classes ``y_val`` and their
    patients ``groups``. Returns ``(calibrated model, temperature, threshold, record)``; the
    record (``metrics/train.json``'s ``calibration``) holds how the temperature was chosen,
    the held-out NLL and ECE before and after, and the rule's coverage and accuracy there."""
    y = np.asarray(y_val, dtype=int)
    raw = np.asarray(raw, dtype=np.float64)
    temperature, choice = choose_temperature(y, raw, np.asarray(groups), cfg.temperature, seed)
    calibrated = apply_temperature(raw, temperature)
    rule = choose_threshold(y, calibrated, cfg.answered_accuracy, cfg.max_uncertain)
    record = {
        "temperature": temperature,
        "choice": choice,
        "images": len(y),
        "nll": {
            "before": round(negative_log_likelihood(y, raw), 6),
            "after": round(negative_log_likelihood(y, calibrated), 6),
        },
        "ece": {
            "before": round(expected_calibration_error(y, raw), 6),
            "after": round(expected_calibration_error(y, calibrated), 6),
        },
        "uncertain": rule.to_dict(),
    }
    return with_temperature(model, temperature), temperature, rule.threshold, record
