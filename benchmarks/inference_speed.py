"""Benchmark of the forward pass (issue 17): the model as predict and evaluate load it now
(batch norm folded into the convolutions) against the model as they loaded it before, on the
same machine, in one run; and how far their outputs differ.

Run from the repository root::

    python -m benchmarks.inference_speed [--images N] [--batch B] [--rounds R] [--model FILE]

The default model (``lungct.model.network.build_cnn`` with the ``train`` and ``convert`` sections of
params.yaml, seeded), its batch-norm statistics and scales set to random, non-trivial values
(gammas of both signs, means and variances far from 0 and 1: as a trained model has them,
and a harder case for folding than the initial ones); or, with ``--model``, a trained
``models/model.keras``. Both contenders have exactly these weights:

* **reference (before issue 17)**: ``benchmarks.train_speed.reference_model`` (the model
  code before issue 17: Keras' ``BatchNormalization``), saved and loaded with
  ``keras.saving.load_model`` as ``lungct.model.saving.load_model`` loaded it then; batch norm at
  inference is Keras' ``x * scale + shift`` (two passes over the feature map);
* **project, folded**: ``lungct.model.saving.save_model``, then ``lungct.model.saving.load_model`` (what
  evaluate and ``Predictor.load`` run): batch norm folded into the convolutions, which
  oneDNN runs with the bias and the ReLU fused;
* **project, not folded**: ``inference_model(load_model(..., fold=False), fold=False)``:
  the same float32 inference copy without the folding (the fused batch-norm layer at
  inference), to show what folding itself gains;
* **ceiling: reference, no batch norm**: the same network without batch norm at all
  (``train.batch_norm: false``: convolutions with a bias, random weights): the most that
  removing batch norm from the forward pass can give, whatever the means.

The same N images (uniform 0..255, the model's input range), ``model.predict_on_batch`` in
batches of B (64: evaluate's ``evaluate.batch_size`` and predict's default), R rounds
interleaved in a rotating order so a change in the shared machine's load hits all alike; the
first round left out. The ratio is images/s of the steady rounds; the median of the
per-round ratios is shown beside it. Outputs: the largest absolute difference of a class
probability, folded against the reference and against the unfolded model.

Targets (marked PASS/FAIL; the script always exits 0 unless something crashes):

* project, folded / reference forward images/s    >= 1.5
* largest output difference, folded vs reference   <= 1e-5
"""

from __future__ import annotations

import argparse
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

from benchmarks.host import load1, machine  # noqa: E402
from benchmarks.train_speed import Matmul, model_flops, reference_model  # noqa: E402
from lungct.model.folding import inference_model
from lungct.model.network import build_cnn
from lungct.model.runtime import seed_everything
from lungct.model.saving import load_model, save_model
from lungct.params import PARAMS_FILE, load_params  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
TARGET_SPEEDUP = 1.5
TOLERANCE = 1e-5


@dataclass
class Forward:
    name: str
    model: keras.Model
    seconds: list[float] = field(default_factory=list)

    def round(self, x: np.ndarray, batch: int) -> np.ndarray:
        start = time.perf_counter()
        out = [self.model.predict_on_batch(x[i : i + batch]) for i in range(0, len(x), batch)]
        self.seconds.append(time.perf_counter() - start)
        return np.concatenate(out)

    def rate(self, images: int) -> float:
        steady = self.seconds[1:]
        return images * len(steady) / sum(steady)


def randomize_batch_norm(model: keras.Model, seed: int) -> None:
    """Batch-norm weights and statistics as a trained model has them: not 1 and 0."""
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            n = layer.moving_mean.shape[0]
            layer.gamma.assign(rng.uniform(0.3, 2.0, n) * rng.choice([-1.0, 1.0], n, p=[0.2, 0.8]))
            layer.beta.assign(rng.normal(0.0, 0.5, n))
            layer.moving_mean.assign(rng.normal(0.0, 1.0, n))
            layer.moving_variance.assign(rng.uniform(0.05, 3.0, n))


def contenders(root: Path, model_file: Path | None) -> tuple[list[Forward], str]:
    params = load_params(REPO / PARAMS_FILE)
    size, channels = params.convert.image_size, len(params.convert.windows)
    n_classes = len(params.data.synthetic.class_balance)
    if model_file is not None:
        project = load_model(model_file, fold=False)
        what = f"trained model {model_file}"
    else:
        seed_everything(params.base.seed)
        project = build_cnn(size, channels, n_classes, params.train, params.base.seed)
        randomize_batch_norm(project, params.base.seed)
        what = "default model (build_cnn), random batch-norm statistics"
    size, channels = project.input_shape[1], project.input_shape[3]
    n_classes = project.output_shape[-1]
    reference = reference_model(size, channels, n_classes, params.train, params.base.seed)
    reference.set_weights(project.get_weights())
    project_file, reference_file = root / "project.keras", root / "reference.keras"
    save_model(project, project_file)
    reference.save(reference_file)
    no_bn = reference_model(
        size, channels, n_classes, params.train.model_copy(update={"batch_norm": False})
    )
    loaded = [
        Forward("reference (before issue 17)", keras.saving.load_model(reference_file)),
        Forward("project, folded (load_model)", load_model(project_file)),
        Forward(
            "project, not folded",
            inference_model(load_model(project_file, fold=False), fold=False),
        ),
        Forward("ceiling: reference, no batch norm", no_bn),
    ]
    return loaded, what


def run_rounds(forwards: list[Forward], peak: Matmul, x: np.ndarray, batch: int, rounds: int):
    outputs: dict[str, np.ndarray] = {}
    for k in range(rounds):
        shift = k % (len(forwards) + 1)
        order = [*forwards, peak][shift:] + [*forwards, peak][:shift]
        for c in order:
            if isinstance(c, Matmul):
                c.round()
            else:
                outputs[c.name] = c.round(x, batch)
        note = " (warm-up, left out)" if k == 0 else ""
        rates = ", ".join(f"{len(x) / f.seconds[-1]:.0f}" for f in forwards)
        print(f"round {k + 1}/{rounds}: {rates} images/s{note}; 1-min load {load1():.2f}")
    return outputs


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=512, help="N images a round (512)")
    parser.add_argument("--batch", type=int, default=64, help="B images per batch (64)")
    parser.add_argument("--rounds", type=int, default=8, help="R rounds, first left out (8)")
    parser.add_argument("--matmuls", type=int, default=5, help="2048^2 matmuls a round (5)")
    parser.add_argument("--model", type=Path, default=None, help="a trained model.keras")
    args = parser.parse_args(argv)
    if args.images < 1 or args.batch < 1 or args.rounds < 2:
        parser.error("--images and --batch must be >= 1, --rounds >= 2")
    host = machine()
    root = Path(tempfile.mkdtemp(prefix="lungct-bench-inference-"))
    try:
        forwards, what = contenders(root, args.model)
        reference, folded, unfolded, ceiling = forwards
        shape = reference.model.input_shape[1:]
        rng = np.random.default_rng(0)
        x = rng.uniform(0.0, 255.0, (args.images, *shape)).astype(np.float32)
        peak = Matmul(args.matmuls)
        outputs = run_rounds(forwards, peak, x, args.batch, args.rounds)

        flops = sum(r.forward for r in model_flops(folded.model))
        rates = {f.name: f.rate(len(x)) for f in forwards}
        speedup = rates[folded.name] / rates[reference.name]
        per_round = np.median(np.asarray(reference.seconds[1:]) / np.asarray(folded.seconds[1:]))
        worst = float(np.abs(outputs[folded.name] - outputs[reference.name]).max())
        worst_unfolded = float(np.abs(outputs[folded.name] - outputs[unfolded.name]).max())
        print()
        print(
            f"inference benchmark: {what}; {len(x)} images of {shape}, batch {args.batch}, "
            f"predict_on_batch, {args.rounds} interleaved rounds (first left out)"
        )
        print(f"folded model layers: {[layer.name for layer in folded.model.layers]}")
        print(f"machine: {host}")
        print("-" * 96)
        for f in forwards:
            share = flops * rates[f.name] / peak.rate
            print(
                f"{f.name:<34} {1000 / rates[f.name]:7.3f} ms/image ({rates[f.name]:6.0f} images/s; "
                f"{share:.0%} of the matmul peak)"
            )
        print(
            f"{peak.name:<34} {peak.rate / 1e9:7.1f} GFLOP/s; forward {flops / 1e9:.3f} GFLOP/image"
        )
        print("-" * 96)
        mark = "PASS" if speedup >= TARGET_SPEEDUP else "FAIL"
        print(
            f"{'folded / reference images/s':<44} {speedup:8.2f}  (median of rounds "
            f"{per_round:.2f})  >= {TARGET_SPEEDUP}  {mark}"
        )
        for other in (unfolded, ceiling):
            print(
                f"{other.name + ' / reference':<44} "
                f"{rates[other.name] / rates[reference.name]:8.2f}"
            )
        mark = "PASS" if worst <= TOLERANCE else "FAIL"
        print(f"{'max |p folded - p reference|':<44} {worst:8.1e}  <= {TOLERANCE:g}  {mark}")
        print(f"{'max |p folded - p not folded|':<44} {worst_unfolded:8.1e}")
        print(f"1-min load {load1():.2f} at end")
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
