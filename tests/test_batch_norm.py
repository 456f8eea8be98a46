"""The fused batch-norm layer (lungct.model.network), the precision policy, and the float32
inference copy of a model (lungct.model.saving)."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf

from lungct.model.gradcam import GradCam
from lungct.model.network import FusedBatchNormalization, build_cnn
from lungct.model.saving import inference_model, load_model, save_model

SIZE = 32


def randomize_batch_norm(model: keras.Model, seed: int = 0) -> None:
    """Statistics and scales as a trained model has them, negative gammas included."""
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            n = layer.moving_mean.shape[0]
            layer.gamma.assign(rng.uniform(0.3, 2.0, n) * rng.choice([-1.0, 1.0], n))
            layer.beta.assign(rng.normal(0.0, 0.5, n))
            layer.moving_mean.assign(rng.normal(0.0, 1.0, n))
            layer.moving_variance.assign(rng.uniform(0.05, 3.0, n))


def images(n: int = 8, channels: int = 1, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.uniform(0.0, 255.0, (n, SIZE, SIZE, channels)).astype(np.float32)


def model_for(tiny, **update) -> keras.Model:
    """The tiny recipe in float32 (``train.precision: auto`` may be bfloat16 here) unless
    ``update`` says otherwise, batch norm randomized."""
    update = {"precision": "float32", **update}
    model = build_cnn(SIZE, 1, 3, tiny.train.model_copy(update=update), seed=0)
    randomize_batch_norm(model)
    return model


@pytest.mark.parametrize(
    "update",
    [
        {},  # the tiny recipe: batch norm, global max head, augmentation on
        {"batch_norm": False},
        {"head": "flatten"},
        {"filters": [4, 8, 16], "dense_units": 4, "convs_per_block": 2},
    ],
    ids=["default", "no_batch_norm", "flatten", "three_blocks_two_convs"],
)
def test_inference_copy_equals_the_model(tiny, update):
    model = model_for(tiny, **update)
    copy = inference_model(model)
    assert copy is not model
    x = images()
    assert np.abs(copy.predict_on_batch(x) - model.predict_on_batch(x)).max() <= 1e-6
    names = [layer.name for layer in model.layers]
    assert [layer.name for layer in copy.layers] == names  # Grad-CAM finds conv names


def test_bfloat16_model_runs_in_float32_for_inference(tiny):
    """A mixed_bfloat16 model runs in float32 for inference: equal to the float32 model of
    the same weights, not to its own bfloat16 outputs."""
    model = model_for(tiny, precision="mixed_bfloat16")
    float32 = build_cnn(SIZE, 1, 3, tiny.train.model_copy(update={"precision": "float32"}))
    float32.set_weights(model.get_weights())
    copy = inference_model(model)
    assert all(x.dtype_policy.name == "float32" for x in copy.layers[1:])
    assert model.get_layer("conv1").dtype_policy.name == "mixed_bfloat16"  # left untouched
    x = images()
    assert np.abs(copy.predict_on_batch(x) - float32.predict_on_batch(x)).max() <= 1e-5


def test_backbone_copy_equals_the_model(tiny):
    params = tiny.train.model_copy(update={"backbone": "mobilenet_v2"})
    model = build_cnn(SIZE, 1, 3, params)
    x = images(2)
    assert (
        np.abs(inference_model(model).predict_on_batch(x) - model.predict_on_batch(x)).max() <= 1e-5
    )


def test_auto_precision_is_bfloat16_only_where_the_cpu_has_it(tiny):
    from lungct.model.runtime import compute_dtype, cpu_has_bfloat16

    assert compute_dtype("float32") == "float32"
    assert compute_dtype("mixed_bfloat16") == "mixed_bfloat16"
    expected = "mixed_bfloat16" if cpu_has_bfloat16() else "float32"
    if tf.config.list_physical_devices("GPU"):
        expected = "float32"
    assert compute_dtype("auto") == expected
    model = build_cnn(SIZE, 1, 3, tiny.train.model_copy(update={"precision": "auto"}))
    assert model.get_layer("conv1").dtype_policy.name == expected
    assert model.get_layer("probabilities").dtype_policy.name == "float32"


def test_gradcam_works_on_the_inference_copy(tiny):
    gradcam = GradCam(inference_model(model_for(tiny)))
    assert gradcam.layer_name == "conv2"  # the last of the tiny recipe's two blocks
    cam = gradcam(images(1)[0], 0)
    assert cam.shape == (SIZE, SIZE) and 0.0 <= cam.min() <= cam.max() <= 1.0


def test_fused_batch_norm_is_keras_batch_norm():
    """Same outputs, gradients and moving statistics as Keras' layer, in training and at
    inference (float rounding apart)."""
    x = tf.constant(np.random.default_rng(0).normal(2.0, 3.0, (4, 8, 8, 5)).astype(np.float32))
    keras_bn = keras.layers.BatchNormalization(momentum=0.9)
    fused = FusedBatchNormalization(momentum=0.9)
    gamma = np.random.default_rng(1).uniform(-2.0, 2.0, 5).astype(np.float32)
    for layer in (keras_bn, fused):
        layer.build(x.shape)
        layer.gamma.assign(gamma)
        layer.beta.assign(gamma - 1.0)
    grads = []
    for layer in (keras_bn, fused):
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = layer(x, training=True)
            loss = tf.reduce_sum(y * y * x)
        grads.append([y, *tape.gradient(loss, [x, layer.gamma, layer.beta])])
    for a, b in zip(*grads, strict=True):
        scale = float(np.abs(a).max()) or 1.0
        assert np.abs(np.asarray(a) - np.asarray(b)).max() <= 1e-5 * scale
    for name in ("moving_mean", "moving_variance"):
        assert np.allclose(getattr(keras_bn, name).numpy(), getattr(fused, name).numpy(), atol=1e-6)
    assert np.abs(keras_bn(x) - fused(x)).max() <= 1e-5


def test_fused_batch_norm_falls_back_to_keras_for_what_it_cannot_fuse():
    x = tf.constant(np.random.default_rng(0).normal(size=(4, 6, 5)).astype(np.float32))
    keras_bn, fused = keras.layers.BatchNormalization(axis=1), FusedBatchNormalization(axis=1)
    for layer in (keras_bn, fused):
        layer.build(x.shape)
    assert np.abs(keras_bn(x, training=True) - fused(x, training=True)).max() <= 1e-5


@pytest.mark.parametrize("precision", ["float32", "mixed_bfloat16"])
def test_model_with_fused_batch_norm_round_trips_in_safe_mode(tiny, tmp_path, precision):
    model = model_for(tiny, precision=precision)
    path = tmp_path / "model.keras"
    save_model(model, path)
    # load_model uses keras.saving.load_model(safe_mode=True): the layer is registered.
    saved = load_model(path, for_inference=False)
    bn = saved.get_layer("bn1")
    assert type(bn) is FusedBatchNormalization and bn.momentum == 0.9
    x = images()
    assert np.array_equal(saved.predict_on_batch(x), model.predict_on_batch(x))
    loaded = load_model(path)  # what evaluate and predict get
    expected = inference_model(model)
    assert np.abs(loaded.predict_on_batch(x) - expected.predict_on_batch(x)).max() <= 1e-6
    config = keras.saving.serialize_keras_object(bn)
    assert config["registered_name"] == "lungct>FusedBatchNormalization"
    restored = keras.saving.deserialize_keras_object(config, safe_mode=True)
    assert type(restored) is FusedBatchNormalization


def test_bfloat16_training_is_deterministic(tiny):
    """Two fits of the same seeded mixed_bfloat16 model give the same weights, bit for bit."""
    from lungct.model.runtime import seed_everything

    params = tiny.train.model_copy(update={"precision": "mixed_bfloat16"})
    x = images(16)
    y = np.arange(16) % 3
    weights = []
    for _ in range(2):
        seed_everything(0)
        model = build_cnn(SIZE, 1, 3, params, seed=0)
        model.fit(x, y, batch_size=8, epochs=2, shuffle=False, verbose=0)
        weights.append(b"".join(w.tobytes() for w in model.get_weights()))
    assert weights[0] == weights[1]
