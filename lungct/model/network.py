"""The CNN (the baseline notebook CNN's family, with options), its augmentation, test-time
views and seed or fold ensembles."""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf
from keras import layers
from sklearn.utils.class_weight import compute_class_weight

from lungct.errors import UserError, first_line
from lungct.model.runtime import compute_dtype
from lungct.params import AugmentParams, TrainParams


@keras.saving.register_keras_serializable(package="lungct")
class FusedBatchNormalization(layers.BatchNormalization):
    """Keras' ``BatchNormalization``, computed by TensorFlow's fused kernel: one op forward
    and one backward where Keras 3 runs a dozen element-wise ops, a third of the default
    CNN's training time on the CPU (docs/benchmarks.md). Same weights and maths (the moving
    variance is Keras' biased one), Keras' config, loadable in safe mode (registered).
    Inputs it cannot take (a mask, renorm, synchronized, not 4-D channels last) go to Keras.
    """

    def call(self, inputs, training=None, mask=None):
        rank = len(inputs.shape)
        fusable = rank == 4 and self.axis in (-1, rank - 1)
        if mask is not None or not fusable or self.renorm or self.synchronized:
            return super().call(inputs, training=training, mask=mask)
        x = tf.cast(inputs, tf.float32) if inputs.dtype == tf.float64 else inputs
        channels = x.shape[-1]
        scale = tf.cast(self.gamma, tf.float32) if self.scale else tf.ones((channels,))
        offset = tf.cast(self.beta, tf.float32) if self.center else tf.zeros((channels,))
        if training and self.trainable:
            y, mean, variance = tf.compat.v1.nn.fused_batch_norm(
                x, scale, offset, epsilon=self.epsilon, data_format="NHWC", is_training=True
            )
            # The kernel returns the unbiased variance (n / (n - 1)) for the moving average;
            # Keras averages the biased one, which the kernel normalized with.
            n = tf.cast(tf.size(x) // channels, tf.float32)
            variance = variance * ((n - 1.0) / tf.maximum(n, 1.0))
            m = self.momentum
            self.moving_mean.assign(self.moving_mean * m + mean * (1.0 - m))
            self.moving_variance.assign(self.moving_variance * m + variance * (1.0 - m))
        else:
            mean = tf.cast(self.moving_mean, tf.float32)
            variance = tf.cast(self.moving_variance, tf.float32)
            y, _, _ = tf.compat.v1.nn.fused_batch_norm(
                x, scale, offset, mean, variance, self.epsilon, "NHWC", is_training=False
            )
        return tf.cast(y, self.compute_dtype)


# How the last feature map becomes a vector: the baseline CNN flattens it; a global max keeps
# "is there a nodule anywhere" with far fewer weights.
_HEADS = {
    "flatten": layers.Flatten,
    "global_max": layers.GlobalMaxPooling2D,
    "global_average": layers.GlobalAveragePooling2D,
}


def augmentation(params: AugmentParams, seed: int) -> keras.Sequential | None:
    """Random flips, rotations, zooms, shifts and intensity jitter (contrast, brightness);
    active only while training (Keras preprocessing layers pass images through unchanged
    at inference). Empty areas are filled with black, as the convert stage pads; jittered
    pixels stay within 0..255. None when every transform is off."""
    steps: list[layers.Layer] = []
    black = {"fill_mode": "constant", "seed": seed}
    if params.flip:
        steps.append(layers.RandomFlip("horizontal", seed=seed, name="flip"))
    if params.rotation:
        steps.append(layers.RandomRotation(params.rotation, name="rotate", **black))
    if params.zoom:
        steps.append(layers.RandomZoom(params.zoom, name="zoom", **black))
    if params.translation:
        t = params.translation
        steps.append(layers.RandomTranslation(t, t, name="shift", **black))
    if params.contrast:
        steps.append(layers.RandomContrast(params.contrast, seed=seed, name="contrast"))
    if params.brightness:
        steps.append(
            layers.RandomBrightness(
                params.brightness, value_range=(0, 255), seed=seed, name="brightness"
            )
        )
    return keras.Sequential(steps, name="augment") if steps else None


def class_weights(labels: list[int]) -> dict[int, float]:
    """Balanced weights of the classes in ``labels``, ``n / (classes * count)`` (scikit-learn's
    ``compute_class_weight("balanced")``), as Keras' ``class_weight`` takes them."""
    present = np.unique(labels)
    weights = compute_class_weight("balanced", classes=present, y=labels)
    return dict(zip(present.tolist(), weights.tolist(), strict=True))


def build_cnn(
    image_size: int,
    channels: int,
    n_classes: int,
    params: TrainParams,
    seed: int = 0,
    steps_per_epoch: int = 1,
) -> keras.Model:
    """Conv blocks (``convs_per_block`` x [Conv2D 3x3 + optional batch norm + ReLU], then a
    2x2 max pool), then a head (flatten or global pooling), dense + ReLU, dropout and a
    softmax over the classes; or, with ``train.backbone``, a keras.applications network in
    place of the blocks.

    The model takes float32 pixel values in 0..255 and rescales them itself, so
    evaluation and inference feed exactly what the PNGs hold. Augmentation layers come
    first and act only in training.
    """
    inputs = keras.Input(shape=(image_size, image_size, channels), name="image")
    augment = augmentation(params.augment, seed)
    x = augment(inputs) if augment is not None else inputs
    # train.precision: the blocks and the dense layer compute in it (bfloat16 with
    # mixed_bfloat16; the weights stay float32); the softmax is float32 whatever it is.
    dtype = compute_dtype(params.precision)
    if params.backbone == "cnn":
        x = layers.Rescaling(1.0 / 255.0, name="rescale", dtype=dtype)(x)
        conv_options = {"padding": "same", "use_bias": not params.batch_norm, "dtype": dtype}
        for i, width in enumerate(params.filters, start=1):
            for j in range(1, params.convs_per_block + 1):
                # conv1, bn1, relu1 with one conv a block (the names of earlier models);
                # conv1_1, conv1_2, ... with more
                n = f"{i}" if params.convs_per_block == 1 else f"{i}_{j}"
                x = layers.Conv2D(width, 3, name=f"conv{n}", **conv_options)(x)
                if params.batch_norm:
                    # Momentum 0.9, not Keras' 0.99: with a few dozen steps an epoch the
                    # moving statistics must settle within an epoch or two, or validation
                    # (and early stopping on it) sees a model that predicts one class.
                    x = FusedBatchNormalization(momentum=0.9, name=f"bn{n}", dtype=dtype)(x)
                x = layers.ReLU(name=f"relu{n}", dtype=dtype)(x)
            x = layers.MaxPooling2D(2, name=f"pool{i}", dtype=dtype)(x)
        x = _HEADS[params.head](name=params.head, dtype=dtype)(x)
    else:  # keras.applications: float32 (train.precision is for the blocks)
        dtype = "float32"
        x = backbone(params.backbone, params.pretrained, x)
    x = layers.Dense(params.dense_units, activation="relu", name="dense", dtype=dtype)(x)
    x = layers.Dropout(params.dropout, name="dropout", dtype=dtype)(x)
    head = layers.Dense(n_classes, activation="softmax", name="probabilities", dtype="float32")
    outputs = head(x)
    model = keras.Model(inputs, outputs, name="lung_ct_cnn")
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate=learning_rate(params, steps_per_epoch)),
        loss=keras.losses.SparseCategoricalCrossentropy(),
        metrics=[keras.metrics.SparseCategoricalAccuracy(name="accuracy")],
    )
    return model


def backbone(name: str, pretrained: bool, x: keras.KerasTensor) -> keras.KerasTensor:
    """A keras.applications feature extractor with global average pooling.

    ``pretrained`` loads ImageNet weights (a download, so only where there is
    internet); grayscale is then repeated to the three channels those weights expect.
    """
    if pretrained and x.shape[-1] != 3:
        x = layers.Concatenate(name="gray_to_rgb")([x] * (3 // x.shape[-1]))
    weights = "imagenet" if pretrained else None
    kwargs = dict(include_top=False, weights=weights, pooling="avg", input_shape=x.shape[1:])
    try:
        if name == "mobilenet_v2":
            x = layers.Rescaling(1.0 / 127.5, offset=-1.0, name="rescale")(x)  # to [-1, 1]
            net = keras.applications.MobileNetV2(**kwargs)
        else:  # efficientnet_b0 rescales 0..255 itself
            net = keras.applications.EfficientNetB0(**kwargs)
    except Exception as exc:  # a failed weights download or an unsupported input size
        raise UserError(
            f"train.backbone: cannot build {name} (pretrained={pretrained}): {first_line(exc)}"
        ) from None
    return net(x)


def learning_rate(
    params: TrainParams, steps_per_epoch: int
) -> float | keras.optimizers.schedules.LearningRateSchedule:
    if params.lr_schedule == "cosine":
        return keras.optimizers.schedules.CosineDecay(params.lr, params.epochs * steps_per_epoch)
    return params.lr


# Test-time augmentation (evaluate.tta, predict --tta, docs/params.md): the image and four
# copies shifted by this fraction of its side; no flips (a mirrored chest is not a chest).
TTA_SHIFT = 0.04


class Shift(layers.Layer):
    """Move the image ``dy`` pixels down and ``dx`` right; the uncovered border is 0."""

    def __init__(self, dy: int, dx: int, **kwargs) -> None:
        super().__init__(**kwargs)
        self.dy, self.dx = int(dy), int(dx)

    def call(self, x):
        d = max(abs(self.dy), abs(self.dx))
        if not d:
            return x
        height, width = x.shape[1], x.shape[2]
        padded = keras.ops.pad(x, [[0, 0], [d, d], [d, d], [0, 0]])
        top, left = d - self.dy, d - self.dx
        return padded[:, top : top + height, left : left + width, :]

    def get_config(self) -> dict:
        return {**super().get_config(), "dy": self.dy, "dx": self.dx}


def tta_shifts(image_size: int) -> list[tuple[int, int]]:
    """The (dy, dx) of each test-time view: none, then down, up, right, left."""
    d = max(1, round(TTA_SHIFT * image_size))
    return [(0, 0), (d, 0), (-d, 0), (0, d), (0, -d)]


def tta_model(model: keras.Model) -> keras.Model:
    """``model`` averaged over the test-time views of its input (:func:`tta_shifts`): one
    input, one output, the same weights; for inference only (not saved). A calibrated
    model's temperature applies to the average, as to an ensemble's."""
    from lungct.model.calibrate import temperature_of, uncalibrated, with_temperature

    temperature = temperature_of(model)
    model = uncalibrated(model)
    source = model.inputs[0]
    inputs = keras.Input(shape=source.shape[1:], dtype=source.dtype, name="image")
    views = [
        model(Shift(dy, dx, name=f"shift_{i}")(inputs))
        for i, (dy, dx) in enumerate(tta_shifts(source.shape[1]))
    ]
    mean = layers.Average(name="probabilities", dtype="float32")(views)
    averaged = keras.Model(inputs, mean, name=f"{model.name}_tta")
    return averaged if temperature is None else with_temperature(averaged, temperature)


ENSEMBLE_NAME = "lung_ct_ensemble"


def ensemble(members: list[keras.Model]) -> keras.Model:
    """One Keras model averaging ``members`` (same input, softmax outputs): one input, the
    members side by side (``member1``, ...), their mean as the output ``probabilities``.
    Saved and loaded like any model, so evaluate, predict, the app, export and Grad-CAM
    take it as it is. The members are uncompiled views of the given models' layers."""
    if len(members) < 2:
        raise ValueError("an ensemble needs two or more members")
    first = members[0].inputs[0]
    inputs = keras.Input(shape=first.shape[1:], dtype=first.dtype, name="image")
    outputs = []
    for i, member in enumerate(members, start=1):
        view = keras.Model(member.inputs[0], member.outputs[0], name=f"member{i}")
        outputs.append(view(inputs))
    mean = layers.Average(name="probabilities", dtype="float32")(outputs)
    return keras.Model(inputs, mean, name=ENSEMBLE_NAME)


def ensemble_members(model: keras.Model) -> list[keras.Model]:
    """The members of a model :func:`ensemble` built (in order), calibrated or not
    (:mod:`lungct.model.calibrate`); [] for any other model."""
    from lungct.model.calibrate import uncalibrated

    model = uncalibrated(model)
    inner = model.layers[1:-1]
    averaged = model.name == ENSEMBLE_NAME and isinstance(model.layers[-1], layers.Average)
    if averaged and len(inner) >= 2 and all(isinstance(m, keras.Model) for m in inner):
        return list(inner)
    return []
