"""The inference copy of a trained model: float32, batch norm folded into the convolution
before it, augmentation left out."""

from __future__ import annotations

import keras
import numpy as np
from keras import layers

from lungct.model.network import ensemble, ensemble_members


def _chain(model: keras.Model) -> list[keras.Layer] | None:
    """The layers of a functional model that is one chain (each layer called once, on the
    previous one's output, the last one's output the model's), input layer left out; else
    None."""
    if isinstance(model, keras.Sequential) or len(model.inputs) != 1 or len(model.outputs) != 1:
        return None
    chain = model.layers
    if not chain or not isinstance(chain[0], keras.layers.InputLayer):
        return None
    for previous, layer in zip(chain, chain[1:], strict=False):
        if len(layer._inbound_nodes) != 1 or layer.input is not previous.output:
            return None
    return chain[1:] if chain[-1].output is model.outputs[0] else None


def _bn_affine(bn: layers.BatchNormalization) -> tuple[np.ndarray, np.ndarray]:
    """Batch norm at inference as ``x * scale + shift`` per channel (float64)."""
    mean = bn.moving_mean.numpy().astype(np.float64)
    variance = bn.moving_variance.numpy().astype(np.float64)
    gamma = bn.gamma.numpy().astype(np.float64) if bn.scale else np.ones_like(mean)
    beta = bn.beta.numpy().astype(np.float64) if bn.center else np.zeros_like(mean)
    scale = gamma / np.sqrt(variance + bn.epsilon)
    return scale, beta - mean * scale


def _foldable(conv: keras.Layer, bn: keras.Layer, pooled: bool) -> bool:
    """A plain channels-last Conv2D (no activation), then a channels-last batch norm; when a
    max pool lies between them, every scale must be >= 0 (then the pool commutes with it)."""
    if type(conv) is not layers.Conv2D or not isinstance(bn, layers.BatchNormalization):
        return False
    if bn.renorm or bn.axis not in (-1, 3) or conv.data_format != "channels_last":
        return False
    if keras.activations.serialize(conv.activation) != "linear":
        return False
    return not pooled or bool((_bn_affine(bn)[0] >= 0).all())


def _folded_conv(conv: layers.Conv2D, bn: layers.BatchNormalization) -> tuple[layers.Conv2D, list]:
    """A Conv2D with a bias (same name) computing ``bn(conv(x))`` at inference, and its weights."""
    scale, shift = _bn_affine(bn)
    kernel = conv.kernel.numpy().astype(np.float64) * scale  # the output channel is last
    bias = conv.bias.numpy().astype(np.float64) if conv.use_bias else 0.0
    config = {**conv.get_config(), "use_bias": True, "dtype": "float32"}
    folded = layers.Conv2D.from_config(config)
    return folded, [kernel.astype(np.float32), (bias * scale + shift).astype(np.float32)]


_AUGMENTATION = (
    layers.RandomFlip,
    layers.RandomRotation,
    layers.RandomZoom,
    layers.RandomTranslation,
    layers.RandomContrast,
    layers.RandomBrightness,
)


def _is_augmentation(layer: keras.Layer) -> bool:
    """The ``augment`` block: identity at inference."""
    return isinstance(layer, keras.Sequential) and all(
        isinstance(x, _AUGMENTATION) for x in layer.layers
    )


def _float32_copy(layer: keras.Layer) -> tuple[keras.Layer, list]:
    """A copy of ``layer`` (same name and config) computing in float32, and the weights to
    give it once built (a ``mixed_bfloat16`` layer's weights are float32 already)."""
    return type(layer).from_config({**layer.get_config(), "dtype": "float32"}), layer.get_weights()


def inference_model(model: keras.Model, fold: bool = True) -> keras.Model:
    """A float32 copy of ``model`` for inference, with (``fold``) each batch norm folded
    into the convolution before it: ``conv`` then ``bn`` becomes one ``conv`` with a bias,
    whose kernel is scaled per output channel by ``gamma / sqrt(moving_variance +
    epsilon)`` and whose bias takes the shift: no pass over the feature map for the batch
    norm, and oneDNN fuses the bias and the ReLU into the convolution.

    Every layer is a copy computing in float32 (a ``train.precision: mixed_bfloat16``
    model runs in float32 here), with the model's weights copied: the model itself is left
    untouched. The folded convolutions keep their names (``conv1``, ...), so Grad-CAM finds
    them; the augmentation block (identity at inference) is left out. A max pool between
    the convolution and the batch norm (``conv``, ``pool``, ``bn``) is folded too when
    every scale is >= 0 (a max commutes with it), and kept otherwise. Outputs equal the
    float32 model's at inference within float rounding (tests/test_fold.py: 1e-5); the
    copy is not for training (no batch norm left). A model that is not one chain of
    layers (the keras.applications backbones) is returned as it is; an :func:`ensemble`
    gets each member's copy.
    """
    members = ensemble_members(model)
    if members:
        return ensemble([inference_model(member, fold) for member in members])
    chain = _chain(model)
    if chain is None:
        return model
    first = model.layers[0]
    inputs = keras.Input(
        batch_shape=model.inputs[0].shape, dtype=model.inputs[0].dtype, name=first.name
    )
    x, weights, i = inputs, [], 0
    while i < len(chain):
        layer, after = chain[i], chain[i + 1 : i + 3]
        pool = after[0] if after and type(after[0]) is layers.MaxPooling2D else None
        if fold and after and _foldable(layer, after[0], pooled=False):
            bn, step = after[0], 2
        elif fold and pool and len(after) == 2 and _foldable(layer, after[1], pooled=True):
            bn, step = after[1], 3
        else:
            if not _is_augmentation(layer):
                copy, values = _float32_copy(layer)
                x = copy(x)
                weights.append((copy, values))
            i += 1
            continue
        conv, values = _folded_conv(layer, bn)
        x = conv(x)
        weights.append((conv, values))
        if step == 3:
            x = _float32_copy(pool)[0](x)
        i += step
    folded = keras.Model(inputs, x, name=model.name)
    for layer, values in weights:
        layer.set_weights(values)
    return folded
