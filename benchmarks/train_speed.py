"""Benchmark of training throughput: the project's CNN against the reference model (Keras'
batch norm), on the same machine, in one run; FLOPs, share of the matmul peak, and validation
quality of both.

Run from the repository root::

    python -m benchmarks.train_speed [--rounds R] [--seeds 42,43] [--no-quality] [--levers]

One run generates the default phantom cohort with the project's own stages
(``stages.download``, ``stages.convert``, ``stages.split``, in-process, in a temporary folder,
``params.yaml`` as it is: the default split, 432 training and 144 validation slices).

**Speed.** The training PNGs, decoded once into one float32 array in memory (as
``benchmarks.train``'s "compute bound" contender: nothing between memory and the model but
slicing a batch), feed

* **reference**: :func:`reference_model`, ``lungct.model.network.build_cnn`` with one conv a
  block and Keras' ``BatchNormalization`` (``tf.nn.moments`` and
  ``tf.nn.batch_normalization``, a dozen element-wise ops and as many in the gradient);
* **project**: ``lungct.model.network.build_cnn`` with the ``train`` section of params.yaml;
* **project, pipeline**: the same model fed by ``lungct.model.dataset.image_dataset`` (the train
  stage's input pipeline), to show the faster model is not starved;
* **matmul peak**: a float32 2048 x 2048 ``tf.matmul`` (``--matmuls`` of them a round): the
  machine's practical peak, measured in the same rounds under the same load;
* **project, the other precision**: ``build_cnn`` with ``train.precision: float32`` where
  params.yaml's precision gives bfloat16 on this machine (``auto`` on a CPU with
  AVX512_BF16 or AMX), or ``mixed_bfloat16`` where it gives float32 and the CPU has them.

Each model is built after ``seed_everything`` with the same seed, under the ``train.strategy``
scope, and fitted with the stage's class weights and batch size, one epoch (all training
slices) per round. Rounds are interleaved, in an order rotating each round, so a change in
the shared machine's load hits all alike; round 1 (tracing) is left out. The ratio is
images/s of the steady rounds (sum of images over sum of seconds); the median of the
per-round ratios is shown beside it.

``--levers`` adds the alternatives measured for the project's model, in float32, all in the same rounds
(see docs/benchmarks.md): the reference without batch norm (the most that any way of
computing batch norm can gain); the project with Keras' batch norm (checks that the rest
of the model is the reference's); the blocks as conv, pool, batch norm, ReLU (batch norm on
a 4x smaller map; worse validation quality, so not taken); batch 8 instead of 16. Levers
fixed before TensorFlow starts (oneDNN, threads, instruction set, XLA) are in
``benchmarks.train_env_levers``.

**FLOPs** are counted per layer, analytically: a 3 x 3 convolution is ``H * W * 9 * Cin *
Cout`` multiply-adds, 2 FLOPs each, forward; training adds the gradient of the input (the
same again; not for the first convolution, whose input needs none) and of the kernel (the
same again); dense layers likewise; batch norm, ReLU and pooling are element-wise and not
counted. The share of the peak is (training FLOPs per image x images/s) / float32 matmul
FLOP/s; a bfloat16 model can pass 1.0 (its multiplies run at twice the float32 rate).

**Quality** (unless ``--no-quality``): the real train stage (``stages.train.train``, params.yaml
as it is: epochs, early stopping on validation loss, class weights) in the same folder, once
with :func:`reference_model` in place of ``build_cnn``, once with the project's, and once
with the project's in the other precision, for each training seed of ``--seeds`` (the data
and split stay those of ``base.seed``); then each saved model, as saved (not folded), scores
the validation split (never the test split): loss, accuracy, balanced accuracy.

Targets (marked PASS/FAIL; the script always exits 0 unless something crashes):

* project / reference images/s                      >= 2.0
* project: training FLOP/s / matmul peak           >= 0.55
* validation, each seed: balanced accuracy >= reference's - 0.03 (4 of 144 slices) and loss
  <= reference's + 0.05: the same within the noise of one seed's 144 slices (an identical
  model trained with other float rounding moves by that much)
"""

from __future__ import annotations

import argparse
import math
import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

os.environ.setdefault(
    "TF_CPP_MIN_LOG_LEVEL", "2"
)  # as lungct.model.network: no TF start-up chatter

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from keras import layers  # noqa: E402

import lungct.model.network  # noqa: E402
import lungct.model.train  # noqa: E402
from benchmarks.host import load1, machine  # noqa: E402
from benchmarks.train import (  # noqa: E402
    Contender,
    Setup,
    contender,
    generate,
    preload,
    run_interleaved,
)
from lungct.artifacts import MODEL_FILE  # noqa: E402
from lungct.data.tables import read_splits, split_images  # noqa: E402
from lungct.model.dataset import image_dataset
from lungct.model.network import _HEADS as HEADS
from lungct.model.network import augmentation, backbone, build_cnn, class_weights, learning_rate
from lungct.model.runtime import (
    compute_dtype,
    cpu_has_bfloat16,
    distribution_strategy,
    seed_everything,
)
from lungct.params import PARAMS_FILE, Params, TrainParams, load_params  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
TARGET_SPEEDUP = 2.0
TARGET_PEAK_SHARE = 0.55
QUALITY_LOSS_SLACK = 0.05
QUALITY_ACCURACY_SLACK = 0.03  # about 4 of the 144 validation slices
QUALITY_KEYS = ("val_loss", "val_accuracy", "val_balanced_accuracy")
MATMUL_SIZE = 2048


# --------------------------------------------------------------------------------------------
# The reference: build_cnn with one conv a block and Keras' batch norm
# --------------------------------------------------------------------------------------------
def _head(
    inputs: keras.KerasTensor, x: keras.KerasTensor, n_classes: int, params: TrainParams, steps: int
) -> keras.Model:
    """What follows the blocks, as in ``build_cnn``: dense + ReLU, dropout, a softmax over
    the classes; compiled with the project's optimizer, schedule, loss and metric."""
    x = layers.Dense(params.dense_units, activation="relu", name="dense")(x)
    x = layers.Dropout(params.dropout, name="dropout")(x)
    outputs = layers.Dense(n_classes, activation="softmax", name="probabilities")(x)
    model = keras.Model(inputs, outputs, name="lung_ct_cnn")
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate=learning_rate(params, steps)),
        loss=keras.losses.SparseCategoricalCrossentropy(),
        metrics=[keras.metrics.SparseCategoricalAccuracy(name="accuracy")],
    )
    return model


def reference_model(
    image_size: int,
    channels: int,
    n_classes: int,
    params: TrainParams,
    seed: int = 0,
    steps_per_epoch: int = 1,
) -> keras.Model:
    """Conv blocks (Conv2D 3x3 + optional batch norm + ReLU + 2x2 max pool), then a head
    (flatten or global pooling), dense + ReLU, dropout and a softmax over the classes;
    or, with ``train.backbone``, a keras.applications network in place of the blocks.

    The model takes float32 pixel values in 0..255 and rescales them itself, so
    evaluation and inference feed exactly what the PNGs hold. Augmentation layers come
    first and act only in training.
    """
    inputs = keras.Input(shape=(image_size, image_size, channels), name="image")
    augment = augmentation(params.augment, seed)
    x = augment(inputs) if augment is not None else inputs
    if params.backbone == "cnn":
        x = layers.Rescaling(1.0 / 255.0, name="rescale")(x)
        for i, width in enumerate(params.filters, start=1):
            x = layers.Conv2D(
                width, 3, padding="same", use_bias=not params.batch_norm, name=f"conv{i}"
            )(x)
            if params.batch_norm:
                # Momentum 0.9, not Keras' 0.99: with a few dozen steps an epoch the
                # moving statistics must settle within an epoch or two, or validation (and
                # early stopping on it) sees a model that predicts one class.
                x = layers.BatchNormalization(momentum=0.9, name=f"bn{i}")(x)
            x = layers.ReLU(name=f"relu{i}")(x)
            x = layers.MaxPooling2D(2, name=f"pool{i}")(x)
        x = HEADS[params.head](name=params.head)(x)
    else:
        x = backbone(params.backbone, params.pretrained, x)
    return _head(inputs, x, n_classes, params, steps_per_epoch)


# --------------------------------------------------------------------------------------------
# FLOPs
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class LayerFlops:
    name: str
    forward: int  # FLOPs per image (a multiply-add is 2)
    training: int  # forward + gradients of the input (where needed) and of the weights


def model_flops(model: keras.Model) -> list[LayerFlops]:
    """FLOPs per image of the convolutions and dense layers, in model order."""
    rows: list[LayerFlops] = []
    first = True  # the first weighted layer needs no input gradient
    for layer in model.layers:
        if isinstance(layer, layers.Conv2D):
            _, h, w, cout = layer.output.shape
            kh, kw, cin_per_group, _ = layer.kernel.shape
            forward = 2 * h * w * kh * kw * cin_per_group * cout
        elif isinstance(layer, layers.Dense):
            cin, cout = layer.kernel.shape
            forward = 2 * cin * cout
        else:
            continue
        rows.append(LayerFlops(layer.name, forward, forward * (2 if first else 3)))
        first = False
    return rows


# --------------------------------------------------------------------------------------------
# Speed
# --------------------------------------------------------------------------------------------
@dataclass
class Matmul:
    """``count`` float32 N x N matmuls a round: the machine's practical FLOP/s."""

    count: int
    size: int = MATMUL_SIZE
    seconds: list[float] = field(default_factory=list)

    def __post_init__(self) -> None:
        rng = np.random.default_rng(0)
        self.a = tf.constant(rng.standard_normal((self.size, self.size), dtype=np.float32))
        self.b = tf.constant(rng.standard_normal((self.size, self.size), dtype=np.float32))
        self.run = tf.function(lambda a, b: tf.reduce_sum(tf.matmul(a, b)))

    @property
    def name(self) -> str:
        return f"matmul peak ({self.size} x {self.size} float32)"

    @property
    def flops(self) -> int:
        return 2 * self.size**3 * self.count

    def round(self) -> None:
        start = time.perf_counter()
        for _ in range(self.count):
            self.run(self.a, self.b).numpy()
        self.seconds.append(time.perf_counter() - start)

    @property
    def rate(self) -> float:
        """FLOP/s of the steady rounds."""
        steady = self.seconds[1:]
        return self.flops * len(steady) / sum(steady) if steady else math.nan

    def last(self) -> str:
        return f"{self.flops / self.seconds[-1] / 1e9:.0f} GFLOP/s"


def other_precision(train: TrainParams) -> str | None:
    """The precision to compare with the one ``train.precision`` gives on this machine:
    float32 against bfloat16; bfloat16 against float32 only where the CPU has it."""
    if compute_dtype(train.precision) == "mixed_bfloat16":
        return "float32"
    return "mixed_bfloat16" if cpu_has_bfloat16() else None


def lever_builds(train: TrainParams) -> dict[str, tuple]:
    """The alternatives of ``--levers``: (build function, train params update)."""

    def keras_bn(*args, **kwargs):
        original = lungct.model.network.FusedBatchNormalization
        lungct.model.network.FusedBatchNormalization = layers.BatchNormalization
        try:
            return build_cnn(*args, **kwargs)
        finally:
            lungct.model.network.FusedBatchNormalization = original

    def pool_first(image_size, channels, n_classes, params, seed=0, steps_per_epoch=1):
        """The blocks as conv, max pool, batch norm, ReLU: batch norm on a 4x smaller map."""
        inputs = keras.Input(shape=(image_size, image_size, channels), name="image")
        x = layers.Rescaling(1.0 / 255.0, name="rescale")(inputs)
        for i, width in enumerate(params.filters, start=1):
            x = layers.Conv2D(width, 3, padding="same", use_bias=False, name=f"conv{i}")(x)
            x = layers.MaxPooling2D(2, name=f"pool{i}")(x)
            x = lungct.model.network.FusedBatchNormalization(momentum=0.9, name=f"bn{i}")(x)
            x = layers.ReLU(name=f"relu{i}")(x)
        x = HEADS[params.head](name=params.head)(x)
        return _head(inputs, x, n_classes, params, steps_per_epoch)

    float32 = {"precision": "float32"}
    return {
        "lever: reference without batch norm": (reference_model, {"batch_norm": False}),
        "lever: project float32, Keras' batch norm": (keras_bn, float32),
        "lever: project float32, pool before norm": (pool_first, float32),
        "lever: project float32, batch 8": (build_cnn, {**float32, "batch_size": 8}),
    }


def round_ratios(a: Contender, b: Contender) -> list[float]:
    """Per steady round: a's images/s over b's."""
    return [ta / tb for ta, tb in zip(a.result.steady, b.result.steady, strict=True)]


# --------------------------------------------------------------------------------------------
# Quality
# --------------------------------------------------------------------------------------------
def validation_scores(model: keras.Model, setup: Setup, splits: Path) -> dict[str, float]:
    from sklearn.metrics import balanced_accuracy_score

    table = read_splits(splits)
    paths, labels = split_images(table, "val", setup.classes, splits)
    data = image_dataset(paths, labels, setup.size, setup.channels, 64)
    p = model.predict(data, verbose=0).astype(np.float64)
    y = np.asarray(labels)
    return {
        "val_loss": float(np.mean(-np.log(np.clip(p[np.arange(len(y)), y], 1e-7, 1.0)))),
        "val_accuracy": float(np.mean(p.argmax(axis=1) == y)),
        "val_balanced_accuracy": float(balanced_accuracy_score(y, p.argmax(axis=1))),
        "images": len(y),
    }


def train_and_score(root: Path, build, params: Params, setup: Setup) -> dict:
    """The train stage in ``root`` with ``build`` in place of ``build_cnn`` (the name
    :func:`lungct.model.train.fit_model` calls); the saved model's scores. Fails if the
    saved model is not what ``build`` makes (its weight count), so a substitution that
    missed cannot pass for a comparison."""
    from stages.train import train

    cwd, original = Path.cwd(), lungct.model.train.build_cnn
    os.chdir(root)
    lungct.model.train.build_cnn = build
    try:
        start = time.perf_counter()
        metrics = train(params)
        seconds = time.perf_counter() - start
        model = lungct.model.saving.load_model(MODEL_FILE, for_inference=False)
        scores = validation_scores(model, setup, root / "data" / "splits")
    finally:
        lungct.model.train.build_cnn = original
        os.chdir(cwd)
    expected = build(setup.size, setup.channels, len(setup.classes), params.train)
    if model.count_params() != expected.count_params() * max(1, params.train.seeds):
        raise RuntimeError(
            f"the train stage saved {model.count_params()} weights, not the "
            f"{expected.count_params()} a model of {build.__name__} has: build_cnn was not replaced"
        )
    return {
        **scores,
        "epochs": metrics["epochs"],
        "best_epoch": metrics["best_epoch"],
        "seconds": seconds,
    }


def quality(root: Path, params: Params, setup: Setup, seeds: list[int], other: str | None):
    """Train and score the reference, the project and (``other``) the project in the other
    precision for each seed; print each run, the means over seeds and the verdicts."""
    cfg = params.train
    print()
    print(
        f"validation quality: the train stage (epochs {cfg.epochs}, early stopping patience "
        f"{cfg.early_stopping_patience}, best epoch restored), scored on the validation split"
    )
    runs = {"reference": (reference_model, {}), "project": (build_cnn, {})}
    if other is not None:
        runs[f"project, {other}"] = (build_cnn, {"precision": other})
    scores: dict[str, list[dict]] = {name: [] for name in runs}
    for seed in seeds:
        base = params.base.model_copy(update={"seed": seed})
        for name, (build, update) in runs.items():
            train = cfg.model_copy(update=update)
            run_params = params.model_copy(update={"base": base, "train": train})
            s = train_and_score(root, build, run_params, setup)
            scores[name].append(s)
            print(
                f"  seed {seed} {name:<24} val loss {s['val_loss']:.4f}  accuracy "
                f"{s['val_accuracy']:.4f}  balanced {s['val_balanced_accuracy']:.4f}  "
                f"({s['images']} slices; best epoch {s['best_epoch']} of {s['epochs']}; "
                f"train stage {s['seconds']:.0f} s)"
            )
    print(f"means over {len(seeds)} seed(s) {seeds} (sd across seeds):")
    means = {}
    for name, runs_ in scores.items():
        m = {k: float(np.mean([r[k] for r in runs_])) for k in QUALITY_KEYS}
        sd = {k: float(np.std([r[k] for r in runs_])) for k in QUALITY_KEYS}
        means[name] = m
        seconds = sum(r["seconds"] for r in runs_) / sum(r["seconds"] for r in scores["reference"])
        print(
            f"  {name:<24} val loss {m['val_loss']:.4f} ({sd['val_loss']:.3f})  accuracy "
            f"{m['val_accuracy']:.4f} ({sd['val_accuracy']:.3f})  balanced "
            f"{m['val_balanced_accuracy']:.4f} ({sd['val_balanced_accuracy']:.3f}); "
            f"train stage time / reference {seconds:.2f}"
        )
    ref = means["reference"]
    for name in list(runs)[1:]:
        new = means[name]
        good = (
            new["val_balanced_accuracy"] >= ref["val_balanced_accuracy"] - QUALITY_ACCURACY_SLACK
            and new["val_loss"] <= ref["val_loss"] + QUALITY_LOSS_SLACK
        )
        print(
            f"{name} vs reference, mean over seeds: balanced accuracy "
            f"{new['val_balanced_accuracy'] - ref['val_balanced_accuracy']:+.4f} (>= "
            f"-{QUALITY_ACCURACY_SLACK}), loss {new['val_loss'] - ref['val_loss']:+.4f} (<= "
            f"+{QUALITY_LOSS_SLACK})  {verdict(good)}"
        )


# --------------------------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------------------------
def verdict(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


def speed(args: argparse.Namespace, setup: Setup, paths: list[str], host: str) -> None:
    """The interleaved rounds and their report."""
    params, cfg, labels, classes, weights = (
        setup.params,
        setup.params.train,
        setup.labels,
        setup.classes,
        setup.weights,
    )
    x = preload(paths, setup.channels)
    y = np.asarray(labels, dtype=np.int32)
    memory = tf.data.Dataset.from_tensor_slices((x, y)).batch(setup.batch)
    memory = memory.prefetch(tf.data.AUTOTUNE)
    pipeline = image_dataset(
        paths,
        labels,
        setup.size,
        setup.channels,
        setup.batch,
        params.base.seed,
        cache="memory",
    )
    reference = contender("reference (Keras batch norm)", memory, setup, reference_model, cfg)
    project = contender("project (build_cnn)", memory, setup, build_cnn, cfg)
    piped = contender("project, image_dataset pipeline", pipeline, setup, build_cnn, cfg)
    peak = Matmul(args.matmuls)
    contenders: list = [reference, project, piped, peak]
    other = other_precision(cfg)
    if other is not None:
        other_cfg = cfg.model_copy(update={"precision": other})
        contenders.append(
            contender(f"project, precision {other}", memory, setup, build_cnn, other_cfg)
        )
    if args.levers:
        for name, (build, update) in lever_builds(cfg).items():
            train = cfg.model_copy(update=update)
            batch = train.batch_size * setup.strategy.num_replicas_in_sync
            data = (
                memory
                if batch == setup.batch
                else (tf.data.Dataset.from_tensor_slices((x, y)).batch(batch).prefetch(2))
            )
            contenders.append(contender(name, data, setup, build, train))
    print("per round, in the order: " + ", ".join(c.name for c in contenders))
    bench = time.perf_counter()
    run_interleaved(contenders, args.rounds)
    speed_seconds = time.perf_counter() - bench

    flops = model_flops(project.model)
    ref_flops = model_flops(reference.model)
    train_flops = sum(r.training for r in flops)
    speedup = project.rate / reference.rate
    per_round = round_ratios(reference, project)
    share = train_flops * project.rate / peak.rate
    ref_share = sum(r.training for r in ref_flops) * reference.rate / peak.rate

    print()
    print(
        f"train speed benchmark: {len(paths)} phantom training slices of {setup.size}x"
        f"{setup.size}x{setup.channels}, batch {setup.batch}, {args.rounds} interleaved "
        f"rounds of one epoch each (first left out), in-memory float32 tensors"
    )
    print(
        f"model: filters {cfg.filters}, head {cfg.head}, batch_norm {cfg.batch_norm}, "
        f"dense {cfg.dense_units}, precision {cfg.precision} "
        f"({compute_dtype(cfg.precision)} here); class weights "
        f"{ {classes[i]: round(w, 3) for i, w in (weights or {}).items()} or 'none' }"
    )
    print(f"machine: {host}")
    print()
    print("FLOPs per image (multiply-add = 2; element-wise layers not counted):")
    for r in flops:
        print(
            f"  {r.name:<14} forward {r.forward / 1e6:8.1f} M   training {r.training / 1e6:8.1f} M"
        )
    print(
        f"  {'total':<14} forward {sum(r.forward for r in flops) / 1e9:8.3f} G   "
        f"training {train_flops / 1e9:8.3f} G (reference: "
        f"{sum(r.training for r in ref_flops) / 1e9:.3f} G)"
    )
    print()
    for c in contenders:
        if isinstance(c, Matmul):
            print(f"{c.name:<44} {c.rate / 1e9:8.1f} GFLOP/s")
            continue
        slow, fast = c.result.spread
        print(
            f"{c.result.name:<44} {c.rate:8.1f} images/s  (rounds {slow:.0f}..{fast:.0f}; "
            f"CPU {c.result.cpu_percent:.0f}%; load {c.result.load:.2f})"
        )
    print("-" * 96)
    print(
        f"{'project / reference images/s':<44} {speedup:8.2f}  (median of rounds "
        f"{np.median(per_round):.2f})  >= {TARGET_SPEEDUP}  {verdict(speedup >= TARGET_SPEEDUP)}"
    )
    print(
        f"{'project training FLOP/s / matmul peak':<44} {share:8.2f}  ("
        f"{train_flops * project.rate / 1e9:.1f} GFLOP/s; reference {ref_share:.2f})"
        f"  >= {TARGET_PEAK_SHARE}  {verdict(share >= TARGET_PEAK_SHARE)}"
    )
    print(f"{'pipeline / in memory (project)':<44} {piped.rate / project.rate:8.2f}")
    for c in contenders[4:]:
        share_c = sum(r.training for r in model_flops(c.model)) * c.rate / peak.rate
        print(
            f"{c.result.name + ' / reference':<44} {c.rate / reference.rate:8.2f}  "
            f"({share_c:.2f} of the matmul peak)"
        )
    print(f"speed rounds {speed_seconds:.0f} s; 1-min load {load1():.2f} at end")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=6, help="R rounds, first left out (6)")
    parser.add_argument(
        "--matmuls", type=int, default=10, help="2048^2 matmuls per round for the peak (10)"
    )
    parser.add_argument(
        "--seeds", default=None, help="training seeds for quality, comma-separated (base.seed)"
    )
    parser.add_argument("--no-quality", action="store_true", help="speed only")
    parser.add_argument("--no-speed", action="store_true", help="quality only")
    parser.add_argument("--levers", action="store_true", help="also time the alternatives")
    args = parser.parse_args(argv)
    if args.rounds < 2 or args.matmuls < 1:
        parser.error("--rounds must be >= 2 and --matmuls >= 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    host = machine()  # before this run adds its own load
    params = load_params(REPO / PARAMS_FILE)
    cfg = params.train
    seeds = [int(s) for s in args.seeds.split(",")] if args.seeds else [params.base.seed]
    root = Path(tempfile.mkdtemp(prefix="lungct-bench-train-speed-"))
    try:
        start = time.perf_counter()
        paths, labels, classes, _ = generate(root, params)
        print(
            f"{len(paths)} training PNGs, classes {classes}: default phantom generated, "
            f"converted and split in {time.perf_counter() - start:.1f} s ({root})"
        )
        seed_everything(params.base.seed)
        weights = class_weights(labels) if cfg.class_weight == "auto" else None
        strategy = distribution_strategy(cfg.strategy)
        setup = Setup(params, classes, labels, strategy, weights, root / "cache")

        if not args.no_speed:
            speed(args, setup, paths, host)
        if not args.no_quality:
            quality(root, params, setup, seeds, other_precision(cfg))
        print(f"total {time.perf_counter() - start:.0f} s")
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
