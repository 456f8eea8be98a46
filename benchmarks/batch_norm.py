"""Does the project's own batch-norm code earn its place over what the frameworks do?

Run from the repository root::

    python -m benchmarks.batch_norm [--rounds R] [--steps S] [--images N]

Two pieces of code are weighed, on the default network (``build_cnn`` with the ``train``
and ``convert`` sections of params.yaml, seeded, its batch-norm statistics set to values a
trained model has):

* ``FusedBatchNormalization`` (training): Keras' ``BatchNormalization`` computed by
  TensorFlow's fused kernel. Against the same network with Keras' own layer: images/s of
  ``train_on_batch`` (batch ``train.batch_size``, ``train.precision`` as the stage uses it).
* batch norm folded into the convolution before it by hand (:func:`folded`: the same
  network without batch norm, each kernel scaled and given the shift as a bias), against
  the float32 inference copy the project runs (:func:`lungct.model.saving.inference_model`),
  where TensorFlow's graph optimiser fuses convolution and batch norm itself; and, for the
  ONNX export, both converted by tf2onnx and run by ONNX Runtime, which fuses them when it
  loads a model. Images/s of ``predict_on_batch`` / ``session.run`` (batch 64).

Each contender runs in every round, in a rotating order, the first round left out; ratios
are of the steady rounds. The rule applied: keep the project's code where it is more
than 10 % faster (ratio > 1.10); otherwise the framework's is enough.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

import lungct.model  # noqa: F401  (quiet TensorFlow start-up)
from benchmarks.host import load1, machine

MARGIN = 1.10


@dataclass
class Contender:
    name: str
    run: Callable[[], object]
    work: int  # images per call of run
    seconds: list[float] = field(default_factory=list)

    def round(self) -> None:
        start = time.perf_counter()
        self.run()
        self.seconds.append(time.perf_counter() - start)

    def rate(self) -> float:
        steady = self.seconds[1:]
        return self.work * len(steady) / sum(steady)


def trained_like(model, seed: int) -> None:
    """Batch-norm weights and statistics as a trained model has them: not 1 and 0."""
    import keras

    rng = np.random.default_rng(seed)
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            n = layer.moving_mean.shape[0]
            layer.gamma.assign(rng.uniform(0.3, 2.0, n))
            layer.beta.assign(rng.normal(0.0, 0.5, n))
            layer.moving_mean.assign(rng.normal(0.0, 1.0, n))
            layer.moving_variance.assign(rng.uniform(0.05, 3.0, n))


def networks(params):
    """The default network with the project's fused batch norm, and with Keras' own layer
    (same weights)."""
    from keras import layers

    from lungct.model import network
    from lungct.model.runtime import seed_everything

    size, channels = params.convert.image_size, len(params.convert.windows)
    classes = len(params.data.synthetic.class_balance)
    seed_everything(params.base.seed)
    fused = network.build_cnn(size, channels, classes, params.train, params.base.seed)
    trained_like(fused, params.base.seed)
    original = network.FusedBatchNormalization
    network.FusedBatchNormalization = layers.BatchNormalization
    try:
        plain = network.build_cnn(size, channels, classes, params.train, params.base.seed)
    finally:
        network.FusedBatchNormalization = original
    plain.set_weights(fused.get_weights())
    return fused, plain


def folded(model, params):
    """``model`` (float32, one conv then one batch norm a step) with each batch norm folded
    into its convolution: the network built without batch norm (convolutions with a bias)."""
    from lungct.model.network import build_cnn

    plain = params.train.model_copy(update={"batch_norm": False, "precision": "float32"})
    size, channels = model.input_shape[1], model.input_shape[3]
    out = build_cnn(size, channels, model.output_shape[-1], plain, params.base.seed)
    for layer in out.layers:
        if not layer.weights:
            continue
        source = model.get_layer(layer.name)
        if layer.name.startswith("conv"):
            bn = model.get_layer(layer.name.replace("conv", "bn", 1))
            scale = bn.gamma.numpy() / np.sqrt(bn.moving_variance.numpy() + bn.epsilon)
            shift = bn.beta.numpy() - bn.moving_mean.numpy() * scale
            layer.set_weights([source.kernel.numpy() * scale, shift])
        else:
            layer.set_weights(source.get_weights())
    return out


def onnx_runner(model, folder, name: str) -> Callable[[np.ndarray], np.ndarray]:
    from lungct.model.export import write_onnx
    from lungct.model.exported import onnx_session

    path = folder / f"{name}.onnx"
    write_onnx(model, path)
    session = onnx_session(path)
    return lambda x: session.run(None, {"image": x})[0]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=6, help="R rounds, first left out (6)")
    parser.add_argument("--steps", type=int, default=8, help="S training steps a round (8)")
    parser.add_argument("--images", type=int, default=512, help="N images a round (512)")
    args = parser.parse_args(argv)
    if args.rounds < 2 or args.steps < 1 or args.images < 1:
        parser.error("--rounds must be >= 2, --steps and --images >= 1")
    import tempfile
    from pathlib import Path

    from lungct.model.saving import inference_model
    from lungct.params import load_params

    host = machine()
    params = load_params()
    fused, plain = networks(params)
    shape = fused.input_shape[1:]
    rng = np.random.default_rng(0)
    batch = params.train.batch_size
    x_train = rng.uniform(0, 255, (batch, *shape)).astype(np.float32)
    y_train = rng.integers(0, fused.output_shape[-1], batch)
    x = rng.uniform(0, 255, (args.images, *shape)).astype(np.float32)

    def fit(model):
        return lambda: [model.train_on_batch(x_train, y_train) for _ in range(args.steps)]

    def forward(predict):
        return lambda: [predict(x[i : i + 64]) for i in range(0, len(x), 64)]

    # the inference copies are taken before any training step changes the weights
    unfolded = inference_model(fused)
    keras_bn = inference_model(plain)
    by_hand = folded(unfolded, params)
    with tempfile.TemporaryDirectory(prefix="lungct-bench-bn-") as tmp:
        folder = Path(tmp)
        onnx_folded = onnx_runner(by_hand, folder, "folded")
        onnx_unfolded = onnx_runner(unfolded, folder, "unfolded")
        outputs = {
            "folded": by_hand.predict_on_batch(x[:64]),
            "unfolded": unfolded.predict_on_batch(x[:64]),
            "onnx folded": onnx_folded(x[:64]),
            "onnx unfolded": onnx_unfolded(x[:64]),
        }
        work = args.steps * batch
        training = [
            Contender("train: Keras BatchNormalization", fit(plain), work),
            Contender("train: FusedBatchNormalization", fit(fused), work),
        ]
        inference = [
            Contender(
                "infer: Keras batch norm, not folded", forward(keras_bn.predict_on_batch), len(x)
            ),
            Contender(
                "infer: fused batch norm, not folded", forward(unfolded.predict_on_batch), len(x)
            ),
            Contender("infer: folded by hand", forward(by_hand.predict_on_batch), len(x)),
            Contender("onnxruntime: not folded", forward(onnx_unfolded), len(x)),
            Contender("onnxruntime: folded", forward(onnx_folded), len(x)),
        ]
        everyone = training + inference
        for k in range(args.rounds):
            order = everyone[k % len(everyone) :] + everyone[: k % len(everyone)]
            for c in order:
                c.round()
            print(f"round {k + 1}/{args.rounds} done; 1-min load {load1():.2f}", flush=True)
    rates = {c.name: c.rate() for c in everyone}
    print(f"\nbatch-norm benchmark: default network, input {shape}, {args.rounds} rounds")
    print(f"machine: {host}")
    for c in everyone:
        print(f"{c.name:<40} {rates[c.name]:8.1f} images/s")
    print("-" * 72)
    pairs = [
        ("fused / Keras batch norm, training", training[1], training[0]),
        ("folded / fused not folded, TensorFlow", inference[2], inference[1]),
        ("folded / Keras not folded, TensorFlow", inference[2], inference[0]),
        ("folded / not folded, onnxruntime", inference[4], inference[3]),
    ]
    for label, ours, theirs in pairs:
        ratio = rates[ours.name] / rates[theirs.name]
        verdict = "keep ours" if ratio > MARGIN else "the framework's is enough"
        print(f"{label:<44} {ratio:6.2f}  ({verdict}: > {MARGIN})")
    for a, b in (("folded", "unfolded"), ("onnx folded", "onnx unfolded")):
        print(f"max |p {a} - p {b}|: {float(np.abs(outputs[a] - outputs[b]).max()):.1e}")
    print(f"1-min load {load1():.2f} at end")
    return 0


if __name__ == "__main__":
    sys.exit(main())
