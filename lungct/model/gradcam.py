"""Grad-CAM (Selvaraju et al., 2017): which parts of the input pushed the model towards a
class, as seen by its last convolutional layer. A coarse map of influence (at that layer's
resolution, upsampled), not a lesion segmentation: it can light up anatomy, padding or
artefacts, and the app says so next to every map.

The gradient is of the class's log-probability (the log undoes the softmax's saturation, so
a confident prediction still gets a map). Works for the project's CNN, the keras.applications
backbones (the last ``Conv2D`` inside the nested backbone) and an ensemble (the mean of each
member's map of the ensemble's log-probability); any other structure raises
:class:`GradCamUnavailable`.
"""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf
from PIL import Image


class GradCamUnavailable(Exception):  # noqa: N818 - a capability, not a failure of the app
    """The model has no convolutional layer Grad-CAM can use."""


def _last_conv(model: keras.Model) -> tuple[keras.Layer, keras.Model | None]:
    """The last Conv2D layer: at the top level, or inside the last nested model holding one
    (returned as the second item)."""
    for layer in reversed(model.layers):
        if isinstance(layer, keras.layers.Conv2D):
            return layer, None
        if isinstance(layer, keras.Model) and not isinstance(layer, keras.Sequential):
            inner = [x for x in layer.layers if isinstance(x, keras.layers.Conv2D)]
            if inner:
                return inner[-1], layer
    raise GradCamUnavailable(f"model {model.name!r} has no Conv2D layer")


class GradCam:
    """Grad-CAM maps of one model; build once, call per image."""

    def __init__(self, model: keras.Model) -> None:
        self.model = model
        from lungct.model.network import ensemble_members

        members = ensemble_members(model)
        if members:
            self._forward = self._ensemble(members)
            self.layer_name = f"{_last_conv(members[0])[0].name} of each of {len(members)} members"
            return
        conv, nested = _last_conv(model)
        self.layer_name = conv.name if nested is None else f"{nested.name}/{conv.name}"
        if nested is None:
            self._forward = keras.Model(model.inputs, [conv.output, model.output])
        else:
            self._forward = self._chain(model, nested, conv)
            # the re-run chain must give the model's output, or the map is of another function
            shape = (1, *model.input_shape[1:])
            x = tf.constant(np.random.default_rng(0).uniform(0, 255, shape).astype(np.float32))
            _, chained = self._forward(x, training=False)
            if not np.allclose(chained.numpy(), model(x, training=False).numpy(), atol=1e-5):
                raise GradCamUnavailable(f"cannot follow the layers of model {model.name!r}")

    @staticmethod
    def _ensemble(members: list[keras.Model]):
        """Each member's last conv maps, and the ensemble's output (the mean of theirs)."""
        features = []
        for member in members:
            conv, nested = _last_conv(member)
            if nested is not None:
                raise GradCamUnavailable(f"ensemble member {member.name!r} has a nested backbone")
            features.append(keras.Model(member.inputs, [conv.output, member.output]))

        def forward(x: tf.Tensor, training: bool = False) -> tuple[list, tf.Tensor]:
            pairs = [f(x, training=training) for f in features]
            return [maps for maps, _ in pairs], tf.add_n([p for _, p in pairs]) / len(pairs)

        return forward

    @staticmethod
    def _chain(model: keras.Model, nested: keras.Model, conv: keras.Layer):
        """The model's layers re-run in order, with the nested backbone replaced by a copy
        that also returns the conv layer's output (a backbone model is a chain of layers)."""
        features = keras.Model(nested.inputs, [conv.output, nested.output])
        layers = [x for x in model.layers if not isinstance(x, keras.layers.InputLayer)]

        def forward(x: tf.Tensor, training: bool = False) -> tuple[tf.Tensor, tf.Tensor]:
            maps = None
            for layer in layers:
                if layer is nested:
                    maps, x = features(x, training=training)
                elif isinstance(layer.input, list):  # e.g. gray repeated to RGB
                    x = layer([x] * len(layer.input), training=training)
                else:
                    x = layer(x, training=training)
            return maps, x

        return forward

    def __call__(self, image: np.ndarray, class_index: int) -> np.ndarray:
        """The map of one model input (H x W x C, float32 0..255) for ``class_index``:
        float32 H x W in [0, 1] (all zero when nothing pushed the class up)."""
        x = tf.constant(np.asarray(image, dtype=np.float32)[None])
        with tf.GradientTape() as tape:
            maps, probabilities = self._forward(x, training=False)
            score = tf.math.log(probabilities[:, class_index] + 1e-12)
        members = maps if isinstance(maps, list) else [maps]
        cams = []
        for member_maps, grads in zip(members, tape.gradient(score, members), strict=True):
            weights = tf.reduce_mean(grads, axis=(1, 2))  # one weight per feature map
            cams.append(tf.nn.relu(tf.reduce_sum(member_maps * weights[:, None, None, :], axis=-1)))
        cam = Image.fromarray((tf.add_n(cams) / len(cams))[0].numpy().astype(np.float32))
        height, width = image.shape[:2]
        cam = np.asarray(cam.resize((width, height), Image.Resampling.BILINEAR), np.float32)
        cam = cam.clip(0.0, None)
        peak = float(cam.max())
        return cam / peak if peak > 0 else np.zeros_like(cam)


def heat_colours(cam: np.ndarray) -> np.ndarray:
    """[0, 1] -> RGB uint8 on the usual "jet" ramp: dark blue, cyan, yellow, dark red."""
    c = np.asarray(cam, dtype=np.float32)[..., None]
    centres = np.array([3.0, 2.0, 1.0], dtype=np.float32)  # red, green, blue peaks
    rgb = np.clip(1.5 - np.abs(4.0 * c - centres), 0.0, 1.0)
    return (rgb * 255.0 + 0.5).astype(np.uint8)


def overlay(gray: np.ndarray, cam: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """The heat map over a uint8 grayscale image, more opaque where the map is higher."""
    base = np.repeat(np.asarray(gray, dtype=np.float32)[..., None], 3, axis=-1)
    weight = alpha * np.asarray(cam, dtype=np.float32)[..., None]
    mixed = base * (1.0 - weight) + heat_colours(cam).astype(np.float32) * weight
    return np.clip(mixed + 0.5, 0, 255).astype(np.uint8)
