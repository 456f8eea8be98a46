"""lungct.model.gradcam: Grad-CAM maps for the project's CNN and the keras.applications backbones."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from lungct.model.gradcam import GradCam, GradCamUnavailable, heat_colours, overlay
from lungct.model.network import build_cnn
from lungct.model.saving import load_model
from tests.trained import trained_project


def test_cnn_map_is_image_sized_and_normalised():
    model = load_model(trained_project() / "models/model.keras")
    gradcam = GradCam(model)
    assert gradcam.layer_name == "conv2"  # the last of TINY's two blocks
    size = model.input_shape[1]
    x = np.random.default_rng(0).uniform(0, 255, (size, size, 1)).astype(np.float32)
    for k in range(model.output_shape[-1]):
        cam = gradcam(x, k)
        assert cam.shape == (size, size) and cam.dtype == np.float32
        assert cam.min() >= 0.0 and cam.max() <= 1.0
        assert cam.max() in (0.0, pytest.approx(1.0))


def test_backbone_map_comes_from_inside_the_nested_network(tiny):
    params = tiny.train.model_copy(update={"backbone": "mobilenet_v2"})
    model = build_cnn(32, 1, 3, params)
    gradcam = GradCam(model)  # checks its re-run of the layers against model(x)
    assert gradcam.layer_name.endswith("/Conv_1")
    cam = gradcam(np.full((32, 32, 1), 100, np.float32), 0)
    assert cam.shape == (32, 32) and 0.0 <= cam.min() <= cam.max() <= 1.0


def test_model_without_convolutions_is_unavailable():
    inputs = keras.Input((8, 8, 1))
    outputs = keras.layers.Dense(2, activation="softmax")(keras.layers.Flatten()(inputs))
    with pytest.raises(GradCamUnavailable, match="no Conv2D"):
        GradCam(keras.Model(inputs, outputs))


def test_overlay_colours_only_where_the_map_is_high():
    gray = np.full((4, 4), 100, np.uint8)
    cam = np.zeros((4, 4), np.float32)
    cam[0, 0] = 1.0
    out = overlay(gray, cam)
    assert out.shape == (4, 4, 3) and out.dtype == np.uint8
    assert (out[1:, 1:] == 100).all() and tuple(out[0, 0]) != (100, 100, 100)
    low, high = heat_colours(np.array([0.0, 1.0]))
    assert tuple(low) == (0, 0, 128) and tuple(high) == (128, 0, 0)
