"""Benchmark of the training levers that must be set before TensorFlow starts:
oneDNN on or off, its instruction set, thread pools, XLA; each in its own process, all
timed in the same interleaved rounds.

Run from the repository root::

    python -m benchmarks.train_env_levers [--rounds R] [--steps S]

Each contender is a worker process (its own environment variables and TensorFlow thread
settings) holding one model, seeded, built by ``lungct.model.network.build_cnn`` from the ``train``
section of params.yaml (``benchmarks.train_speed.reference_model`` for the reference), and
S batches of ``train.batch_size`` random 128 x 128 x 1 images (0..255; speed does not
depend on the pixels) in memory. The parent tells one worker at a time to fit one epoch
(the S batches), in an order rotating each round, so a change in the shared machine's
load hits all alike; round 1 (tracing) is left out. Only one worker computes at a time;
the others wait on a pipe.

Contenders (in-process levers, such as the fused batch norm, the block order, batch size
and precision, are in ``benchmarks.train_speed --levers``):

* reference: ``benchmarks.train_speed.reference_model`` (Keras' batch norm), default settings;
* project: ``build_cnn``, default settings (the baseline of the ratios);
* ``TF_ENABLE_ONEDNN_OPTS=0``: TensorFlow's own (Eigen) kernels instead of oneDNN;
* inter-op threads 1 (ops one at a time; intra-op parallel), and intra-op threads 1;
* the project in float32 (``train.precision: float32``), and with inter-op threads 1;
* ``ONEDNN_MAX_CPU_ISA=AVX2``: oneDNN limited to AVX2 (what an AVX2-only CPU runs), float32;
* ``ONEDNN_MAX_CPU_ISA=AVX512_CORE`` with ``train.precision: mixed_bfloat16``: bfloat16
  on AVX-512 without the bfloat16 instructions (what ``precision: auto`` avoids);
* XLA: ``jit_compile=True``, which Keras only honours with op determinism off (the project
  always turns it on: ``seed_everything``), so this one runs without determinism.

No targets: it prints images/s and the ratio to the project's for each.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

WORKER = r"""
import json, os, sys, time
config = json.loads(sys.argv[1])
import tensorflow as tf
if config.get("inter") is not None:
    tf.config.threading.set_inter_op_parallelism_threads(config["inter"])
if config.get("intra") is not None:
    tf.config.threading.set_intra_op_parallelism_threads(config["intra"])
import keras, numpy as np
from lungct.model.network import build_cnn
from lungct.model.runtime import seed_everything
from lungct.params import load_params
from benchmarks.train_speed import reference_model
params = load_params()
train = params.train.model_copy(update=config.get("train", {}))
if config.get("determinism", True):
    seed_everything(params.base.seed)
else:
    keras.utils.set_random_seed(params.base.seed)
build = reference_model if config.get("reference") else build_cnn
model = build(128, 1, 3, train, params.base.seed)
if config.get("jit"):
    model.compile(optimizer=keras.optimizers.Adam(train.lr), loss=model.loss,
                  metrics=["accuracy"], jit_compile=True)
    assert model.jit_compile, "XLA refused"
batch, steps = train.batch_size, config["steps"]
rng = np.random.default_rng(0)
x = rng.uniform(0, 255, (batch * steps, 128, 128, 1)).astype(np.float32)
y = (np.arange(batch * steps) % 3).astype(np.int32)
data = tf.data.Dataset.from_tensor_slices((x, y)).batch(batch).prefetch(2)
print("ready", flush=True)
for _ in sys.stdin:
    start = time.perf_counter()
    model.fit(data, epochs=1, verbose=0)
    print(time.perf_counter() - start, flush=True)
"""

CONTENDERS: dict[str, dict] = {
    "reference (Keras batch norm)": {"reference": True},
    "project": {},
    "TF_ENABLE_ONEDNN_OPTS=0": {"env": {"TF_ENABLE_ONEDNN_OPTS": "0"}},
    "inter-op threads 1": {"inter": 1},
    "intra-op threads 1": {"intra": 1},
    "project, float32": {"train": {"precision": "float32"}},
    "project, float32, inter-op threads 1": {"train": {"precision": "float32"}, "inter": 1},
    "ONEDNN_MAX_CPU_ISA=AVX2, float32": {
        "env": {"ONEDNN_MAX_CPU_ISA": "AVX2"},
        "train": {"precision": "float32"},
    },
    "ONEDNN_MAX_CPU_ISA=AVX512_CORE, bfloat16": {
        "env": {"ONEDNN_MAX_CPU_ISA": "AVX512_CORE"},
        "train": {"precision": "mixed_bfloat16"},
    },
    "XLA (jit_compile), no op determinism": {"jit": True, "determinism": False},
}


class Worker:
    def __init__(self, name: str, config: dict, steps: int) -> None:
        self.name, self.seconds = name, []
        env = dict(os.environ, PYTHONPATH=str(REPO), TF_CPP_MIN_LOG_LEVEL="3")
        env.update(config.get("env", {}))
        self.proc = subprocess.Popen(
            [sys.executable, "-c", WORKER, json.dumps({**config, "steps": steps})],
            cwd=REPO,
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.failed = None
        line = self.proc.stdout.readline().strip()
        if line != "ready":
            self.failed = (self.proc.stderr.read().strip().splitlines() or ["no output"])[-1]
            self.proc.wait()

    def epoch(self) -> None:
        self.proc.stdin.write("go\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            self.failed = "died during an epoch"
            return
        self.seconds.append(float(line))

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.stdin.close()
            self.proc.wait()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=6, help="R rounds, first left out (6)")
    parser.add_argument("--steps", type=int, default=8, help="S batches an epoch (8)")
    args = parser.parse_args(argv)
    if args.rounds < 2 or args.steps < 1:
        parser.error("--rounds must be >= 2 and --steps >= 1")
    sys.path.insert(0, str(REPO))
    from benchmarks.host import load1, machine
    from lungct.params import load_params

    host = machine(tensorflow=False)
    batch = load_params(REPO / "params.yaml").train.batch_size
    images = batch * args.steps
    workers = []
    try:
        for name, config in CONTENDERS.items():
            worker = Worker(name, config, args.steps)
            if worker.failed:
                print(f"{name}: cannot start ({worker.failed})")
            workers.append(worker)
        live = [w for w in workers if not w.failed]
        for k in range(args.rounds):
            shift = k % len(live)
            for w in live[shift:] + live[:shift]:
                if not w.failed:
                    w.epoch()
            note = " (warm-up, left out)" if k == 0 else ""
            print(f"round {k + 1}/{args.rounds} done{note}; 1-min load {load1():.2f}")
    finally:
        for w in workers:
            w.close()
    print()
    print(
        f"train env levers: {images} random 128x128x1 images an epoch, batch {batch}, "
        f"{args.rounds} interleaved rounds (first left out), one process each"
    )
    print(f"machine: {host}")
    rates = {
        w.name: images * len(w.seconds[1:]) / sum(w.seconds[1:])
        for w in workers
        if not w.failed and len(w.seconds) > 1
    }
    base = rates.get("project")
    print("-" * 80)
    for w in workers:
        if w.name in rates:
            ratio = f"{rates[w.name] / base:6.2f}x the project" if base else ""
            print(f"{w.name:<42} {rates[w.name]:7.1f} images/s  {ratio}")
        else:
            print(f"{w.name:<42}  failed: {w.failed}")
    print(f"1-min load {load1():.2f} at end")
    return 0


if __name__ == "__main__":
    sys.exit(main())
