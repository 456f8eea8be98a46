"""The ``tf.data`` input pipeline: PNG files to batches of (image, class index)."""

from __future__ import annotations

import os
import tempfile

import numpy as np
import tensorflow as tf


def decode_images(
    paths: list[str], image_size: int, channels: int, out: np.ndarray | None = None
) -> np.ndarray:
    """Decode PNG files once, in parallel, into one uint8 array (n, size, size, channels):
    ``out`` if given, a preallocated array (for example a ``numpy.memmap`` on disk)."""

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
            out = np.lib.format.open_memmap(name, "w+", np.uint8, (len(paths), *shape))
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
