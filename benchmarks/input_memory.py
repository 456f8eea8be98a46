"""Memory of the training input pipeline: peak RSS growth over two shuffled epochs.

Run from the repository root, after ``dvc repro`` (it reads ``data/splits``)::

    python -m benchmarks.input_memory [--repeat 20]

Each measurement runs in a fresh child process (so one cannot inherit the other's
heap) over the training split's PNGs listed ``--repeat`` times, batch 16, seed 42:

* **project**: ``lungct.model.dataset.image_dataset(..., cache="memory")``: every PNG decoded
  once into one uint8 array; the shuffle permutes image indices; the float32 cast
  happens per batch;
* **float cache**: the common tf.data recipe ``map(decode -> float32).cache()
  .shuffle(n).batch().prefetch()``, which holds every image as float32 in the cache
  and again in the shuffle buffer.

Prints peak RSS growth (max RSS after the epochs minus max RSS after importing
TensorFlow) and the ratio. Both yield the same batches (tests/test_train.py checks
the project's against its file and no-cache variants).
"""

from __future__ import annotations

import argparse
import resource
import subprocess
import sys


def measure(kind: str, repeat: int) -> None:
    import tensorflow as tf

    from lungct.data.tables import read_splits, split_images
    from lungct.model.dataset import image_dataset

    table = read_splits()
    classes = sorted(table["class"].unique())
    paths, labels = split_images(table, "train", classes)
    paths, labels = paths * repeat, labels * repeat
    import PIL.Image

    with PIL.Image.open(paths[0]) as first:
        size, channels = first.width, len(first.getbands())
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    if kind == "project":
        data = image_dataset(paths, labels, size, channels, 16, shuffle_seed=42, cache="memory")
    else:

        def decode(path: tf.Tensor, label: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
            image = tf.io.decode_png(tf.io.read_file(path), channels=channels)
            return tf.cast(image, tf.float32), label

        data = tf.data.Dataset.from_tensor_slices((paths, labels)).map(decode).cache()
        data = data.shuffle(len(paths), seed=42).batch(16).prefetch(tf.data.AUTOTUNE)
    for _ in range(2):
        for _batch in data:
            pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(f"{len(paths)} {size} {channels} {(peak - base) / 1024:.0f}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=20)
    parser.add_argument("--child", choices=("project", "float"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        measure(args.child, args.repeat)
        return 0
    growth = {}
    for kind in ("project", "float"):
        out = subprocess.run(
            [
                sys.executable,
                "-m",
                "benchmarks.input_memory",
                "--child",
                kind,
                "--repeat",
                str(args.repeat),
            ],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.split()
        images, size, channels, growth[kind] = int(out[0]), out[1], out[2], float(out[3])
    pixels_mb = images * int(size) ** 2 * int(channels) / 2**20
    print(f"{images} images of {size} x {size} x {channels} ({pixels_mb:.0f} MB as uint8)")
    print(f"project (uint8 array, index shuffle): peak RSS growth {growth['project']:.0f} MB")
    print(f"float32 cache + image shuffle:         peak RSS growth {growth['float']:.0f} MB")
    print(f"ratio float / project: {growth['float'] / growth['project']:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
