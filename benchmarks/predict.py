"""Benchmark of inference: ``stages.predict``'s path against the bare model forward pass.

Run from the repository root::

    python -m benchmarks.predict [--slices N] [--batch B] [--dicom-size S] [--repeats R] [--workers W]

One run writes N phantom CT slices (S x S, default 512 as a scanner writes them, 20 slices
per patient, ``lungct.phantom.write_cohort``) to a temporary folder, and the repo's default
model as train saves it (``lungct.model.train.fit_seed_ensemble``: ``train.seeds`` networks of
``lungct.model.network.build_cnn`` with the ``convert`` and ``train`` sections of params.yaml,
seeded, here untrained: weights do not change the time; more than one averaged) saved as ``model.keras`` with
the ``labels.json`` train writes, then loaded the way predict loads it
(``Predictor.load``). Generation is timed but not counted.

Both sides see the same images: the bare side gets them already preprocessed, in memory.

* **predict, batch**: ``lungct.serving.inference.predict_files(predictor, [folder], B, pool=...)``,
  what ``python -m stages.predict FOLDER`` runs after loading the model: walk the folder, read
  and preprocess each file (DICOM -> HU -> window -> resize, the convert stage's code) on W
  reader processes (``--workers``; predict's default, one per core, forked before TensorFlow
  is imported, as the command does) while the model runs, batches of B,
  ``predict_on_batch``, series rows; and the same with the files read in this process;
* **bare, batch**: ``model.predict_on_batch`` on the same images preprocessed beforehand (one
  float32 array), in batches of B: the forward pass alone. ``model(x, training=False)`` (eager)
  is shown too; it is slower, so the ratio is taken against ``predict_on_batch``. With a seed
  ensemble, its first member alone (saved and loaded the same way) too: what the ensemble
  costs over one model;
* **single image**: the same two for one file / one image at a time (median over files);
* **preprocess only**: reading and preprocessing the files, no model;
* **CLI cold start**: ``python -m stages.predict FILE`` as a fresh process (Python,
  TensorFlow import, model load, one image), once.

Each batch figure is the median of R passes over all images, the passes of all contenders
interleaved so that a change in the shared machine's load hits them alike; one warm-up pass
each is left out. Files are read from the page cache (they were just written).

Target (marked PASS/FAIL; the script always exits 0 unless something crashes):

* predict batch time per image (reader processes) / bare forward pass per image   <= 2.0
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from benchmarks.host import load1, machine
from lungct import phantom
from lungct.contract import Contract
from lungct.io.images import model_input
from lungct.io.preprocess import model_images
from lungct.params import PARAMS_FILE, Params, load_params
from lungct.serving.inference import Predictor, predict_files, preprocess_pool
from stages.predict import MAX_WORKERS

# TensorFlow is imported in main(), after the worker processes are forked, as the predict
# command does it.

REPO = Path(__file__).resolve().parents[1]
SLICES_PER_PATIENT = 20
SINGLE_SAMPLES = 40
TARGET_BATCH_RATIO = 2.0
ONE_MEMBER = "bare predict_on_batch, one member"


def generate(root: Path, params: Params, slices: int, size: int) -> list[Path]:
    raw = root / "raw"
    per_patient = min(SLICES_PER_PATIENT, slices)
    phantom.write_cohort(
        raw,
        patients=max(1, slices // per_patient),
        slices=per_patient,
        image_size=size,
        class_balance=dict(params.data.synthetic.class_balance),
        seed=params.base.seed,
    )
    return sorted(raw.rglob("*.dcm"))


def save_model(root: Path, params: Params) -> tuple[Path, Path, Path | None]:
    """The default model, as train saves it (``train.seeds`` members averaged), with its
    contract; and, for an ensemble, its first member alone (else None)."""
    from lungct.model.history import Fitted
    from lungct.model.network import build_cnn
    from lungct.model.runtime import seed_everything
    from lungct.model.saving import save_model
    from lungct.model.train import fit_seed_ensemble

    def untrained(cfg, contract: Contract, seed: int, *_, **__) -> Fitted:
        seed_everything(seed)
        prep = contract.prep
        return Fitted(build_cnn(prep.image_size, prep.channels, len(contract.classes), cfg), {}, 1)

    classes = sorted(params.data.synthetic.class_balance)
    contract = Contract.from_params(params, classes)
    no_images: tuple[list[str], list[int]] = ([], [])
    model, members = fit_seed_ensemble(
        params.train, contract, params.base.seed, no_images, no_images, fit=untrained
    )
    model_file, labels_file = root / "model.keras", root / "labels.json"
    member_file = root / "member.keras" if len(members) > 1 else None
    if member_file is not None:
        save_model(members[0].model, member_file)
    save_model(model, model_file)
    contract.write(labels_file)
    return model_file, labels_file, member_file


def per_image(seconds: float, images: int) -> float:
    return 1000.0 * seconds / images


def timed(run: Callable[[], object]) -> float:
    start = time.perf_counter()
    run()
    return time.perf_counter() - start


def batches(run: Callable[[np.ndarray], object], x: np.ndarray, size: int) -> Callable[[], None]:
    def all_batches() -> None:
        for i in range(0, len(x), size):
            run(x[i : i + size])

    return all_batches


def cold_start(file: Path, model_file: Path, labels_file: Path) -> float:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    command = [sys.executable, "-m", "stages.predict", str(file)]
    command += ["--model", str(model_file), "--labels", str(labels_file)]
    start = time.perf_counter()
    subprocess.run(command, env=env, check=True, capture_output=True)
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slices", type=int, default=400, help="N DICOM slices (400)")
    parser.add_argument("--batch", type=int, default=64, help="B images per batch (64)")
    parser.add_argument("--dicom-size", type=int, default=512, help="S, the DICOM matrix (512)")
    parser.add_argument("--repeats", type=int, default=5, help="R timed passes each (5)")
    parser.add_argument(
        "--workers", type=int, default=None, help="reader processes (predict's default)"
    )
    args = parser.parse_args(argv)
    if args.slices < 1 or args.batch < 1 or args.repeats < 1 or args.dicom_size < 32:
        parser.error("--slices, --batch, --repeats must be >= 1 and --dicom-size >= 32")
    workers = min(MAX_WORKERS, os.cpu_count() or 1) if args.workers is None else args.workers

    params = load_params(REPO / PARAMS_FILE)
    root = Path(tempfile.mkdtemp(prefix="lungct-bench-predict-"))
    pool = preprocess_pool(workers) if workers else None  # forked before TensorFlow loads
    host = machine()
    try:
        start = time.perf_counter()
        files = generate(root, params, args.slices, args.dicom_size)
        model_file, labels_file, member_file = save_model(root, params)
        generated = time.perf_counter() - start
        predictor = Predictor.load(model_file, labels_file)
        model, prep = predictor.model, predictor.prep
        member = Predictor.load(member_file, labels_file).model if member_file else None
        x = model_input([image.pixels for f in files for image in model_images(f, prep)])
        n, batch = len(x), args.batch
        print(
            f"{n} phantom slices of {args.dicom_size}x{args.dicom_size} -> model input "
            f"{prep.image_size}x{prep.image_size}x{prep.channels}; batch {batch}; generated in "
            f"{generated:.1f} s ({root})"
        )

        in_pool = f"predict_files, {workers} reader processes"
        contenders: dict[str, Callable[[], object]] = {
            in_pool: lambda: predict_files(predictor, [root / "raw"], batch, pool=pool),
            "predict_files, in process": lambda: predict_files(predictor, [root / "raw"], batch),
            "bare predict_on_batch": batches(model.predict_on_batch, x, batch),
            "bare model(x) eager": batches(lambda b: model(b, training=False).numpy(), x, batch),
            "preprocess only": lambda: [model_images(f, prep) for f in files],
        }
        if member is not None:
            contenders[ONE_MEMBER] = batches(member.predict_on_batch, x, batch)
        if not workers:
            del contenders[in_pool]
        times: dict[str, list[float]] = {name: [] for name in contenders}
        for run in contenders.values():  # warm-up: tracing, page cache
            run()
        for r in range(args.repeats):
            names = list(contenders)
            shift = r % len(names)
            for name in names[shift:] + names[:shift]:
                times[name].append(timed(contenders[name]))
        batch_ms = {name: per_image(statistics.median(t), n) for name, t in times.items()}

        sample = files[:: max(1, len(files) // SINGLE_SAMPLES)][:SINGLE_SAMPLES]
        single: dict[str, list[float]] = {"predict_files": [], "bare predict_on_batch": []}
        predict_files(predictor, [sample[0]], 1)
        model.predict_on_batch(x[:1])
        for file in sample:
            i = files.index(file)  # one image per phantom file: its row of x
            single["predict_files"].append(timed(lambda f=file: predict_files(predictor, [f], 1)))
            single["bare predict_on_batch"].append(
                timed(lambda i=i: model.predict_on_batch(x[i : i + 1]))
            )
        single_ms = {name: 1000.0 * statistics.median(t) for name, t in single.items()}
        cold = cold_start(files[0], model_file, labels_file)
    finally:
        shutil.rmtree(root, ignore_errors=True)
        if pool is not None:
            pool.shutdown()

    best = in_pool if workers else "predict_files, in process"
    ratio = batch_ms[best] / batch_ms["bare predict_on_batch"]
    single_ratio = single_ms["predict_files"] / single_ms["bare predict_on_batch"]
    print(f"machine: {host}")
    print("-" * 78)
    print(f"{'batch of ' + str(batch):<36}{'ms/image':>10}{'images/s':>12}")
    for name, ms in batch_ms.items():
        print(f"  {name:<34}{ms:>10.2f}{1000.0 / ms:>12.0f}")
    print(f"{'single image (median of ' + str(len(sample)) + ')':<36}{'ms':>10}")
    for name, ms in single_ms.items():
        print(f"  {name:<34}{ms:>10.2f}")
    print(f"  {'CLI cold start, one file':<34}{1000.0 * cold:>10.0f}")
    print("-" * 78)
    verdict = "PASS" if ratio <= TARGET_BATCH_RATIO else "FAIL"
    print(
        f"predict ({best}) / bare forward pass, batch {batch}: {ratio:.2f} "
        f"(<= {TARGET_BATCH_RATIO}) {verdict}"
    )
    print(f"predict (in process) / bare forward pass, single image: {single_ratio:.2f} (no target)")
    if ONE_MEMBER in batch_ms:
        print(
            f"ensemble of {params.train.seeds} / one member, bare forward pass, batch {batch}: "
            f"{batch_ms['bare predict_on_batch'] / batch_ms[ONE_MEMBER]:.2f} (no target)"
        )
    print(f"1-min load at end {load1():.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
