"""The CNN (the baseline notebook CNN's family, with options), the TensorFlow set-up, saving
and loading, and the ``tf.data`` input pipeline.

Importing this module imports TensorFlow (quietly); stages that do not train or
predict never import it.
"""

from __future__ import annotations

import json
import os
import tempfile
import zipfile

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # keep TF's C++ start-up chatter out of logs

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from keras import layers  # noqa: E402

from lungct.errors import UserError, first_line  # noqa: E402
from lungct.params import AugmentParams, TrainParams  # noqa: E402


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and Keras/TF and make TF ops deterministic (same params, same bytes)."""
    keras.utils.set_random_seed(seed)
    tf.config.experimental.enable_op_determinism()


@keras.saving.register_keras_serializable(package="lungct")
class FusedBatchNormalization(layers.BatchNormalization):
    """Keras' ``BatchNormalization``, computed by TensorFlow's fused kernel.

    Keras 3 computes batch norm from a dozen element-wise ops (``tf.nn.moments``, then
    ``tf.nn.batch_normalization``), each a pass over the feature map, and as many again in
    the gradient: on the CPU, a third of the default CNN's training time
    (docs/benchmarks.md). ``tf.compat.v1.nn.fused_batch_norm`` is one op forward and one
    backward (oneDNN's batch norm on the CPU). Same weights, same maths: the moving
    variance is Keras' (the biased batch variance), the layer's config is Keras', and a
    model saved with it loads in safe mode (the class is registered). Inputs it cannot
    take (a mask, renorm, synchronized, not 4-D with channels last) go to Keras' own code.
    """

    def _fusable(self, inputs, mask) -> bool:
        rank = len(inputs.shape)
        return (
            mask is None
            and rank == 4
            and self.axis in (-1, rank - 1)
            and not self.renorm
            and not self.synchronized
        )

    def call(self, inputs, training=None, mask=None):
        if not self._fusable(inputs, mask):
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
            momentum = self.momentum
            self.moving_mean.assign(self.moving_mean * momentum + mean * (1.0 - momentum))
            self.moving_variance.assign(
                self.moving_variance * momentum + variance * (1.0 - momentum)
            )
        else:
            y, _, _ = tf.compat.v1.nn.fused_batch_norm(
                x,
                scale,
                offset,
                mean=tf.cast(self.moving_mean, tf.float32),
                variance=tf.cast(self.moving_variance, tf.float32),
                epsilon=self.epsilon,
                data_format="NHWC",
                is_training=False,
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
    if params.flip:
        steps.append(layers.RandomFlip("horizontal", seed=seed, name="flip"))
    if params.rotation:
        steps.append(
            layers.RandomRotation(params.rotation, fill_mode="constant", seed=seed, name="rotate")
        )
    if params.zoom:
        steps.append(layers.RandomZoom(params.zoom, fill_mode="constant", seed=seed, name="zoom"))
    if params.translation:
        t = params.translation
        steps.append(layers.RandomTranslation(t, t, fill_mode="constant", seed=seed, name="shift"))
    if params.contrast:
        steps.append(layers.RandomContrast(params.contrast, seed=seed, name="contrast"))
    if params.brightness:
        steps.append(
            layers.RandomBrightness(
                params.brightness, value_range=(0, 255), seed=seed, name="brightness"
            )
        )
    return keras.Sequential(steps, name="augment") if steps else None


def distribution_strategy(name: str) -> tf.distribute.Strategy:
    """``auto``: MirroredStrategy over all GPUs when there are several, else the default
    strategy; ``mirrored``: MirroredStrategy over the GPUs, or over the logical CPU devices
    when there is no GPU (how the tests exercise it); ``default``: one device."""
    gpus = tf.config.list_logical_devices("GPU")
    if name == "auto":
        return tf.distribute.MirroredStrategy() if len(gpus) > 1 else tf.distribute.get_strategy()
    if name == "mirrored":
        devices = gpus or tf.config.list_logical_devices("CPU")
        return tf.distribute.MirroredStrategy([d.name for d in devices])
    return tf.distribute.get_strategy()


BFLOAT16_CPU_FLAGS = ("avx512_bf16", "amx_bf16")  # /proc/cpuinfo: native bfloat16 maths


def cpu_has_bfloat16() -> bool:
    """Whether this CPU does bfloat16 maths natively (AVX512_BF16 or AMX), as Linux reports
    it; False where it cannot tell. Without them oneDNN runs bfloat16 convolutions 0.6x as
    fast as float32 (AVX-512) or not at all (AVX2 only): docs/benchmarks.md."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as info:
            for line in info:
                if line.startswith("flags"):
                    return any(flag in line.split() for flag in BFLOAT16_CPU_FLAGS)
    except OSError:
        pass
    return False


def compute_dtype(precision: str) -> str:
    """``train.precision`` as a Keras dtype policy: ``auto`` is ``mixed_bfloat16`` on a CPU
    with native bfloat16 maths and no GPU (2x and more the float32 speed there), else
    ``float32``."""
    if precision != "auto":
        return precision
    if tf.config.list_physical_devices("GPU") or not cpu_has_bfloat16():
        return "float32"
    return "mixed_bfloat16"


def class_weights(labels: list[int], n_classes: int) -> dict[int, float]:
    """Balanced weights, ``n / (n_classes * count)``, for the classes present in ``labels``
    (as scikit-learn's ``compute_class_weight("balanced")``)."""
    counts = np.bincount(np.asarray(labels), minlength=n_classes)
    return {i: float(len(labels) / (n_classes * count)) for i, count in enumerate(counts) if count}


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
        for i, width in enumerate(params.filters, start=1):
            for j in range(1, params.convs_per_block + 1):
                # conv1, bn1, relu1 with one conv a block (the names of earlier models);
                # conv1_1, conv1_2, ... with more
                n = f"{i}" if params.convs_per_block == 1 else f"{i}_{j}"
                x = layers.Conv2D(
                    width,
                    3,
                    padding="same",
                    use_bias=not params.batch_norm,
                    name=f"conv{n}",
                    dtype=dtype,
                )(x)
                if params.batch_norm:
                    # Momentum 0.9, not Keras' 0.99: with a few dozen steps an epoch the
                    # moving statistics must settle within an epoch or two, or validation
                    # (and early stopping on it) sees a model that predicts one class.
                    # Fused: one op, not a dozen (Keras' own layer trained 1.4x slower on
                    # the CPU).
                    x = FusedBatchNormalization(momentum=0.9, name=f"bn{n}", dtype=dtype)(x)
                x = layers.ReLU(name=f"relu{n}", dtype=dtype)(x)
            x = layers.MaxPooling2D(2, name=f"pool{i}", dtype=dtype)(x)
        x = _HEADS[params.head](name=params.head, dtype=dtype)(x)
    else:  # keras.applications: float32 (train.precision is for the blocks)
        dtype = "float32"
        x = backbone(params.backbone, params.pretrained, x)
    x = layers.Dense(params.dense_units, activation="relu", name="dense", dtype=dtype)(x)
    x = layers.Dropout(params.dropout, name="dropout", dtype=dtype)(x)
    outputs = layers.Dense(n_classes, activation="softmax", name="probabilities", dtype="float32")(
        x
    )
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
    kwargs = {
        "include_top": False,
        "weights": weights,
        "pooling": "avg",
        "input_shape": x.shape[1:],
    }
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


def _renumber_shared_objects(config: object, ids: dict | None = None) -> object:
    ids = {} if ids is None else ids
    if isinstance(config, dict):
        return {
            key: ids.setdefault(value, len(ids))
            if key == "shared_object_id"
            else _renumber_shared_objects(value, ids)
            for key, value in config.items()
        }
    if isinstance(config, list):
        return [_renumber_shared_objects(value, ids) for value in config]
    return config


def save_model(model: keras.Model, path: os.PathLike) -> None:
    """``model.save``, made byte-reproducible, so one training gives one DVC hash.

    Keras stamps the save time into ``metadata.json`` and the zip headers, and
    numbers shared objects in ``config.json`` by their memory address; the stamps
    are removed and the numbers replaced by their order of appearance.
    """
    model.save(path)
    with zipfile.ZipFile(path) as archive:
        members = [(info, archive.read(info.filename)) for info in archive.infolist()]
    with zipfile.ZipFile(path, "w") as archive:
        for info, data in members:
            if info.filename == "metadata.json":
                metadata = json.loads(data)
                metadata.pop("date_saved", None)
                data = json.dumps(metadata, sort_keys=True).encode()
            elif info.filename == "config.json":
                data = json.dumps(_renumber_shared_objects(json.loads(data))).encode()
            fixed = zipfile.ZipInfo(info.filename, date_time=(1980, 1, 1, 0, 0, 0))
            fixed.compress_type = info.compress_type
            fixed.external_attr = info.external_attr
            archive.writestr(fixed, data)


# Test-time augmentation (evaluate.tta, predict --tta): the image and four copies shifted
# by this fraction of its side, up, down, left and right (5 px at 128), the uncovered
# border black as convert pads; no flips (a mirrored chest is not a chest).
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
    input, one output, the same weights; for inference only (not saved)."""
    source = model.inputs[0]
    inputs = keras.Input(shape=source.shape[1:], dtype=source.dtype, name="image")
    views = [
        model(Shift(dy, dx, name=f"shift_{i}")(inputs))
        for i, (dy, dx) in enumerate(tta_shifts(source.shape[1]))
    ]
    mean = layers.Average(name="probabilities", dtype="float32")(views)
    return keras.Model(inputs, mean, name=f"{model.name}_tta")


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
    """The members of a model :func:`ensemble` built (in order); [] for any other model."""
    inner = model.layers[1:-1]
    if (
        model.name != ENSEMBLE_NAME
        or len(model.layers) < 4
        or not isinstance(model.layers[-1], layers.Average)
        or not all(isinstance(m, keras.Model) for m in inner)
    ):
        return []
    return list(inner)


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


def load_model(path: os.PathLike, fold: bool = True) -> keras.Model:
    """Load a trained model in Keras safe mode (no arbitrary code from the file), for
    inference: with ``fold`` (the default), the float32 copy with batch norm folded into
    the convolutions (:func:`inference_model`; the file stays the trained model).
    ``fold=False`` gives the model as it was saved (to train on, or to compare).

    A missing, truncated or foreign file is a :class:`UserError` naming it.
    """
    if not os.path.isfile(path):
        raise UserError(f"{path}: not found (train a model first: dvc repro)")
    if not zipfile.is_zipfile(path):
        raise UserError(
            f"{path}: not a Keras model file (truncated or damaged?); rebuild it: dvc repro"
        )
    try:
        model = keras.saving.load_model(path, safe_mode=True)
    except Exception as exc:  # a damaged member, or code that safe mode refuses
        raise UserError(
            f"{path}: cannot load the model ({first_line(exc)}); rebuild it: dvc repro"
        ) from None
    return inference_model(model) if fold else model


def decode_images(
    paths: list[str], image_size: int, channels: int, out: np.ndarray | None = None
) -> np.ndarray:
    """Decode PNG files once, in parallel, into one uint8 array (n, size, size, channels).

    ``out`` may be a preallocated array, for example a ``numpy.memmap`` on disk.
    """

    def decode(path: tf.Tensor) -> tf.Tensor:
        image = tf.io.decode_png(tf.io.read_file(path), channels=channels)
        return tf.ensure_shape(image, (image_size, image_size, channels))

    if out is None:
        out = np.empty((len(paths), image_size, image_size, channels), dtype=np.uint8)
    files = tf.data.Dataset.from_tensor_slices(list(paths))
    files = files.map(decode, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    start = 0
    for chunk in files.batch(256).as_numpy_iterator():
        out[start : start + len(chunk)] = chunk
        start += len(chunk)
    return out


def image_dataset(
    paths: list[str],
    labels: list[int],
    image_size: int,
    channels: int,
    batch_size: int,
    shuffle_seed: int | None = None,
    cache: str = "memory",
    cache_dir: os.PathLike | None = None,
) -> tf.data.Dataset:
    """PNG files -> batches of (float32 image 0..255, class index).

    ``cache: memory`` decodes every PNG once into one uint8 array in memory (1 byte
    a pixel; the float32 cast happens per batch); ``file`` does the same into a
    memory-mapped file under ``cache_dir``, for data that does not fit; ``none``
    decodes each batch from disk every epoch. What is shuffled (every epoch, from
    ``shuffle_seed``) is the order of image *indices*, so the shuffle holds no
    pixels; evaluation (no seed) keeps file order.
    """
    shape = (image_size, image_size, channels)
    order = tf.data.Dataset.range(len(paths))
    if shuffle_seed is not None:
        order = order.shuffle(len(paths), seed=shuffle_seed, reshuffle_each_iteration=True)
    order = order.batch(batch_size)
    label_table = tf.constant(list(labels), dtype=tf.int32)

    if cache in ("memory", "file"):
        out = None
        if cache == "file":
            if cache_dir is None:
                raise ValueError("a file cache needs cache_dir")
            os.makedirs(cache_dir, exist_ok=True)
            # One file per dataset: train and val share the folder, and a second w+ open
            # of one name would truncate the first map under it (SIGBUS on the next read).
            fd, name = tempfile.mkstemp(prefix="images-", suffix=".npy", dir=cache_dir)
            os.close(fd)
            out = np.lib.format.open_memmap(
                name,
                mode="w+",
                dtype=np.uint8,
                shape=(len(paths), *shape),
            )
        images = decode_images(paths, image_size, channels, out)

        def pixels(index: tf.Tensor) -> tf.Tensor:
            return tf.numpy_function(lambda i: images[i], [index], tf.uint8, stateful=False)
    elif cache == "none":
        path_table = tf.constant(list(paths))

        def pixels(index: tf.Tensor) -> tf.Tensor:
            def one(path: tf.Tensor) -> tf.Tensor:
                return tf.io.decode_png(tf.io.read_file(path), channels=channels)

            return tf.map_fn(one, tf.gather(path_table, index), fn_output_signature=tf.uint8)
    else:
        raise ValueError(f"unknown cache {cache!r}")

    def batch(index: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        x = tf.ensure_shape(pixels(index), (None, *shape))
        return tf.cast(x, tf.float32), tf.gather(label_table, index)

    data = order.map(batch, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    return data.prefetch(tf.data.AUTOTUNE)
