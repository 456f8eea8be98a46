"""Benchmark of the training input pipeline: images per second through the project's CNN.

Run from the repository root::

    python -m benchmarks.train [--images N] [--epochs E] [--batch B]

One run generates a phantom cohort with the project's own stages (``stages.download``,
``stages.convert``, ``stages.split``, in-process, in a temporary folder) with ``params.yaml``
overridden to give about N training slices (``data.synthetic.patients``; slices per patient,
image size, windows and split fractions stay the repo's; ``split.leakage`` is set to ``warn``
because a benchmark needs images, not a leak-free split). The training PNGs are real files on
disk in ``<tmp>/data/splits/train/<class>/``; generation is timed but not counted.

Then, on the same model (``lungct.model.network.build_cnn`` with the ``train`` section of params.yaml;
one fresh model per measurement, each built after ``seed_everything`` with the same seed under
the ``train.strategy`` scope, as the train stage does, so all start from the same weights) and
the same batch size B (per replica), each measurement runs E epochs of ``model.fit(...,
class_weight=..., verbose=0)`` with the stage's class weights, timed by a callback. There is no
validation data, so no early stopping: every epoch is a training epoch. The three are interleaved: epoch k of each before epoch k + 1 of any, in an order
rotating each round, so that a change in the shared machine's load hits all three alike. The
first epoch (graph tracing, cache filling) is left out: each figure is the steady state,
images x (E - 1) / seconds of epochs 2..E.

* **pipeline**: the project's ``lungct.model.dataset.image_dataset`` over the training PNGs (decode
  once, cache as ``train.cache`` says, shuffle each epoch, batch, prefetch), as
  ``stages/train.py`` feeds the model;
* **compute bound**: the same decoded images preloaded into one float32 numpy array, fed as
  ``tf.data.Dataset.from_tensor_slices((x, y)).batch(B).prefetch(AUTOTUNE)``: nothing between
  memory and the model but slicing a batch, so this is what the model itself can take;
* **notebook style**: ``keras.utils.image_dataset_from_directory(train_dir, color_mode=...,
  image_size=(S, S), batch_size=B, shuffle=True, seed=...)`` as the notebook projects call it, with no
  ``.cache()`` or ``.prefetch()`` of their own: every PNG is read, decoded and resized again
  each epoch. (Keras 3 decodes in a parallel map and prefetches inside that function.)

Each row also gives the slowest and fastest steady-state epoch, the process's CPU use over
those epochs (100% = one core) and the mean 1-minute load average as they began: on a shared
machine a low CPU share with a load above the core count is the machine's, not the pipeline's.

Targets (marked PASS/FAIL; the script always exits 0 unless something crashes):

* pipeline / compute bound   >= 0.9 (the input pipeline must not starve the model)
* pipeline / notebook style    >= 1.5
"""

from __future__ import annotations

import argparse
import math
import os
import resource
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

os.environ.setdefault(
    "TF_CPP_MIN_LOG_LEVEL", "2"
)  # as lungct.model.network: no TF start-up chatter

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
import yaml  # noqa: E402

from benchmarks.host import load1, machine  # noqa: E402
from lungct.data.tables import read_splits, split_images  # noqa: E402
from lungct.model.dataset import image_dataset
from lungct.model.network import build_cnn, class_weights
from lungct.model.runtime import distribution_strategy, seed_everything
from lungct.params import PARAMS_FILE, Params, TrainParams, merge, parse_params  # noqa: E402
from stages.convert import convert  # noqa: E402
from stages.download import download  # noqa: E402
from stages.split import split  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
DATA_DIR = Path("data")  # relative to the scratch folder the stages run in

TARGET_VS_COMPUTE = 0.9
TARGET_VS_NOTEBOOK = 1.5


@dataclass
class Throughput:
    name: str
    images: int  # per epoch
    epoch_seconds: list[float] = field(default_factory=list)
    epoch_cpu: list[float] = field(default_factory=list)  # process CPU seconds per epoch
    epoch_load: list[float] = field(default_factory=list)  # 1-min load as each epoch began

    @property
    def steady(self) -> list[float]:
        return self.epoch_seconds[1:]

    @property
    def per_second(self) -> float:
        """Steady-state images per second (first epoch left out)."""
        seconds = sum(self.steady)
        return self.images * len(self.steady) / seconds if seconds > 0 else math.nan

    @property
    def cpu_percent(self) -> float:
        seconds = sum(self.steady)
        return 100 * sum(self.epoch_cpu[1:]) / seconds if seconds > 0 else math.nan

    @property
    def load(self) -> float:
        """Mean 1-min load average at the start of the steady-state epochs."""
        return float(np.mean(self.epoch_load[1:])) if len(self.epoch_load) > 1 else math.nan

    @property
    def spread(self) -> tuple[float, float]:
        """Slowest and fastest steady-state epoch, images per second."""
        rates = [self.images / s for s in self.steady]
        return min(rates), max(rates)


# --------------------------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------------------------
def repo_raw_params() -> dict:
    return yaml.safe_load((REPO / PARAMS_FILE).read_text(encoding="utf-8"))


def bench_params(images: int) -> Params:
    """The repo's params with a synthetic cohort of about ``images`` training slices."""
    raw = repo_raw_params()
    synthetic = raw["data"]["synthetic"]
    train_share = 1 - raw["split"]["val_fraction"] - raw["split"]["test_fraction"]
    patients = max(
        3 * len(synthetic["class_balance"]), math.ceil(images / (train_share * synthetic["slices"]))
    )
    override = {
        "data": {"source": "synthetic", "synthetic": {"patients": patients}},
        "split": {"leakage": "warn"},
    }
    return parse_params(merge(raw, override), "params.yaml (benchmark overrides)")


def generate(root: Path, params: Params) -> tuple[list[str], list[int], list[str], Path]:
    """Run download, convert and split in ``root``; return the training paths (absolute),
    class indices, class names and the training folder."""
    cwd = Path.cwd()
    os.chdir(root)  # the stages write data/ and metrics/ relative to the cwd
    try:
        download(params, out=DATA_DIR / "raw")
        convert(params.convert, raw=DATA_DIR / "raw", out=DATA_DIR / "converted")
        split(params, converted=DATA_DIR / "converted", out=DATA_DIR / "splits")
    finally:
        os.chdir(cwd)
    splits_dir = root / DATA_DIR / "splits"
    table = read_splits(splits_dir)
    classes = sorted(table.loc[table["split"] == "train", "class"].unique())
    paths, labels = split_images(table, "train", classes, splits_dir)
    return paths, labels, classes, splits_dir / "train"


# --------------------------------------------------------------------------------------------
# Measurements
# --------------------------------------------------------------------------------------------
def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


class EpochTimer(keras.callbacks.Callback):
    """Wall and CPU seconds of every epoch (iterator creation and shuffling included), and
    the 1-minute load average when it started."""

    def __init__(self, result: Throughput) -> None:
        super().__init__()
        self.result = result
        self._wall = self._cpu = 0.0

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        self.result.epoch_load.append(load1())
        self._wall, self._cpu = time.perf_counter(), cpu_seconds()

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        self.result.epoch_seconds.append(time.perf_counter() - self._wall)
        self.result.epoch_cpu.append(cpu_seconds() - self._cpu)


@dataclass(frozen=True)
class Setup:
    """What the train stage derives from params.yaml: the strategy (``train.strategy``; the
    batch is ``train.batch_size`` per replica), the class weights (``train.class_weight``) and
    the decoded-image cache (``train.cache``, a file cache under ``cache_dir``)."""

    params: Params
    classes: list[str]
    labels: list[int]  # of the training images, indices into ``classes``
    strategy: tf.distribute.Strategy
    weights: dict[int, float] | None
    cache_dir: Path

    @property
    def size(self) -> int:
        return self.params.convert.image_size

    @property
    def channels(self) -> int:
        return len(self.params.convert.windows)

    @property
    def batch(self) -> int:
        return self.params.train.batch_size * self.strategy.num_replicas_in_sync

    @property
    def seed(self) -> int:
        return self.params.base.seed


@dataclass
class Contender:
    """One model, one way of feeding it, and its timings: a round is one epoch of fitting."""

    data: tf.data.Dataset
    model: keras.Model
    weights: dict[int, float] | None
    result: Throughput

    @property
    def name(self) -> str:
        return self.result.name

    def round(self) -> None:
        self.model.fit(
            self.data,
            epochs=1,
            shuffle=False,
            class_weight=self.weights,
            callbacks=[EpochTimer(self.result)],
            verbose=0,
        )

    @property
    def rate(self) -> float:
        """Steady-state images per second."""
        return self.result.per_second

    def last(self) -> str:
        return f"{self.result.images / self.result.epoch_seconds[-1]:.1f} img/s"


def contender(
    name: str,
    data: tf.data.Dataset,
    setup: Setup,
    build: Callable[..., keras.Model] = build_cnn,
    train: TrainParams | None = None,
) -> Contender:
    """A fresh model from ``build`` (the project's ``build_cnn`` unless given) with ``train``
    (params.yaml's unless given), seeded and built as the train stage builds it, under the
    strategy's scope (same initial weights for all), fitted with the stage's class weights."""
    train = setup.params.train if train is None else train
    seed_everything(setup.seed)
    images = len(setup.labels)
    steps = -(-images // setup.batch)
    with setup.strategy.scope():
        model = build(setup.size, setup.channels, len(setup.classes), train, setup.seed, steps)
    return Contender(data, model, setup.weights, Throughput(name, images))


def pipeline_data(paths: list[str], labels: list[int], setup: Setup) -> tf.data.Dataset:
    """What stages/train.py fits on: the project's ``image_dataset``, shuffled from the seed."""
    cache = {"cache": setup.params.train.cache, "cache_dir": setup.cache_dir}
    return image_dataset(
        paths, labels, setup.size, setup.channels, setup.batch, setup.seed, **cache
    )


def preload(paths: list[str], channels: int) -> np.ndarray:
    """All images decoded as the pipeline decodes them: float32 0..255, NHWC."""
    images = [tf.io.decode_png(tf.io.read_file(p), channels=channels).numpy() for p in paths]
    return np.stack(images).astype(np.float32)


def compute_data(paths: list[str], labels: list[int], setup: Setup) -> tf.data.Dataset:
    x = preload(paths, setup.channels)
    y = np.asarray(labels, dtype=np.int32)
    data = tf.data.Dataset.from_tensor_slices((x, y)).batch(setup.batch)
    return data.prefetch(tf.data.AUTOTUNE)


def notebook_data(train_dir: Path, setup: Setup) -> tf.data.Dataset:
    """The notebook projects' call: no ``.cache()``, no ``.prefetch()`` added."""
    data = keras.utils.image_dataset_from_directory(
        train_dir,
        color_mode="grayscale" if setup.channels == 1 else "rgb",
        image_size=(setup.size, setup.size),
        batch_size=setup.batch,
        shuffle=True,
        seed=setup.seed,
        verbose=False,
    )
    if list(data.class_names) != setup.classes:
        raise RuntimeError(f"class folders {data.class_names} differ from {setup.classes}")
    return data


def run_interleaved(contenders: list, rounds: int) -> None:
    """Round k of every contender before round k + 1 of any, in an order that rotates each
    round, so a change in the shared machine's load hits all of them alike. Round 1 (tracing,
    cache filling) is the one left out. A contender has ``round()`` and ``last()``, the
    latest round's rate as text."""
    for k in range(rounds):
        shift = k % len(contenders)
        for c in contenders[shift:] + contenders[:shift]:
            c.round()
        note = " (warm-up, left out)" if k == 0 else ""
        rates = ", ".join(c.last() for c in contenders)
        print(f"round {k + 1}/{rounds}: {rates}{note}; 1-min load {load1():.2f}")


# --------------------------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------------------------
def verdict(value: float, target: float) -> str:
    return "PASS" if value >= target else "FAIL"


def report(results: list[Throughput], setup: Setup, epochs: int, host: str, generated: str) -> None:
    pipeline, compute, notebook = results
    cfg = setup.params.train
    rows: list[tuple[str, str, str, str]] = []
    for t in results:
        slow, fast = t.spread
        detail = f"(epochs {slow:.0f}..{fast:.0f}; CPU {t.cpu_percent:.0f}%; load {t.load:.2f})"
        rows.append((f"{t.name} images/s", f"{t.per_second:8.1f}", detail, ""))
    for label, value, target in (
        ("pipeline / compute bound", pipeline.per_second / compute.per_second, TARGET_VS_COMPUTE),
        (
            "pipeline / notebook style",
            pipeline.per_second / notebook.per_second,
            TARGET_VS_NOTEBOOK,
        ),
    ):
        rows.append((label, f"{value:8.2f}", f">= {target}", verdict(value, target)))
    width = max(len(r[0]) for r in rows)
    detail_width = max(len(r[2]) for r in rows)
    print()
    print(
        f"train benchmark: {pipeline.images} training PNGs of {setup.size}x{setup.size}x"
        f"{setup.channels}, classes {setup.classes}; batch {setup.batch}, {epochs} "
        f"interleaved epochs each (first left out); {generated}"
    )
    arch = (
        f"filters {cfg.filters}, head {cfg.head}, batch_norm {cfg.batch_norm}"
        if cfg.backbone == "cnn"
        else f"backbone {cfg.backbone} (pretrained {cfg.pretrained})"
    )
    print(f"model: build_cnn, {arch}, dense {cfg.dense_units}, augment {cfg.augment.model_dump()}")
    weights = {setup.classes[i]: round(w, 3) for i, w in (setup.weights or {}).items()}
    print(
        f"train stage settings: strategy {cfg.strategy} "
        f"({setup.strategy.num_replicas_in_sync} replica(s)), cache {cfg.cache}, "
        f"class weights {weights or 'none'}, lr_schedule {cfg.lr_schedule}; "
        "no validation data, so no early stopping"
    )
    print(f"machine: {host}")
    print("-" * (width + detail_width + 16))
    for name, value, detail, mark in rows:
        print(f"{name:<{width}}  {value}  {detail:<{detail_width}} {mark}".rstrip())


# --------------------------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------------------------
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=600, help="about N training slices (600)")
    parser.add_argument(
        "--epochs", type=int, default=4, help="E epochs per measurement, first left out (4)"
    )
    parser.add_argument(
        "--batch", type=int, default=None, help="B images per batch (params.yaml train.batch_size)"
    )
    args = parser.parse_args(argv)
    if args.images < 1 or args.epochs < 2 or (args.batch is not None and args.batch < 1):
        parser.error("--images and --batch must be >= 1, --epochs >= 2")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    host = machine()  # before this run adds its own load
    params = bench_params(args.images)
    if args.batch is not None:
        train = params.train.model_copy(update={"batch_size": args.batch})
        params = params.model_copy(update={"train": train})
    root = Path(tempfile.mkdtemp(prefix="lungct-bench-train-"))
    try:
        start = time.perf_counter()
        paths, labels, classes, train_dir = generate(root, params)
        generated = (
            f"{params.data.synthetic.patients} phantom patients generated, converted and split "
            f"in {time.perf_counter() - start:.1f} s"
        )
        print(f"{len(paths)} training PNGs: {generated} ({root})")
        seed_everything(params.base.seed)
        cfg = params.train
        weights = class_weights(labels) if cfg.class_weight == "auto" else None
        strategy = distribution_strategy(cfg.strategy)
        setup = Setup(params, classes, labels, strategy, weights, root / "cache")

        bench = time.perf_counter()
        contenders = [
            contender("pipeline (image_dataset)", pipeline_data(paths, labels, setup), setup),
            contender("compute bound (in memory)", compute_data(paths, labels, setup), setup),
            contender("notebook style (from_directory)", notebook_data(train_dir, setup), setup),
        ]
        print(f"images/s per epoch, in the order: {', '.join(c.name for c in contenders)}")
        run_interleaved(contenders, args.epochs)
        report([c.result for c in contenders], setup, args.epochs, host, generated)
        print(
            f"training runs {time.perf_counter() - bench:.1f} s, "
            f"total {time.perf_counter() - start:.1f} s; 1-min load {load1():.2f} at end"
        )
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
