"""Large inputs on one machine: convert and train on N and 4N slices with bounded memory.

Run from the repository root::

    python -m benchmarks.scale [--slices 5000] [--image-size 64] [--epochs 1]

Two cohorts of the synthetic phantom, N and 4N slices (default 5,000 and 20,000), are
written as DICOM in a temporary project. For each, the project's own stages run as
subprocesses (``python -m stages.<name>``, as ``dvc repro`` runs them): download,
convert, split, then train with ``train.cache: file`` (the decoded images live in a
memory-mapped temporary file, not in the process). Each stage's peak resident memory is
read from ``getrusage`` of its process, and its throughput is slices per second.

Prints, per stage: peak RSS at N and 4N and their ratio (memory that does not grow with
the number of slices gives about 1.0), and the throughput at 4N. It also extrapolates to
LIDC-IDRI's size (about 250,000 CT slices) at the measured rates, per core.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from benchmarks.host import machine
from lungct.params import merge

ROOT = Path(__file__).resolve().parents[1]
LIDC_SLICES = 250_000  # CT slices in LIDC-IDRI (about 1,000 patients)
SLICES_PER_PATIENT = 50


# Runs a stage as `python -m stages.<name>` does, then prints the peak RSS of its process
# and of its worker processes (convert's pool), whichever is larger, in KB.
WRAPPER = (
    "import resource, runpy, sys\n"
    "try:\n"
    "    runpy.run_module(sys.argv[1], run_name='__main__')\n"
    "finally:\n"
    "    peak = max(resource.getrusage(w).ru_maxrss\n"
    "               for w in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN))\n"
    "    print(f'PEAK_KB {peak}', file=sys.stderr)\n"
)


def run_stage(project: Path, stage: str) -> tuple[float, float]:
    """Run one stage in ``project``; return (seconds, peak RSS in MB of one process)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TF_CPP_MIN_LOG_LEVEL": "3"}
    start = time.perf_counter()
    result = subprocess.run(
        [sys.executable, "-c", WRAPPER, f"stages.{stage}"],
        cwd=project,
        env=env,
        capture_output=True,
        text=True,
    )
    seconds = time.perf_counter() - start
    if result.returncode:
        sys.exit(f"{stage} failed (exit {result.returncode}):\n{result.stderr[-3000:]}")
    peak = [line for line in result.stderr.splitlines() if line.startswith("PEAK_KB ")][-1]
    return seconds, int(peak.split()[1]) / 1024


def project_params(slices: int, image_size: int, epochs: int) -> dict:
    base = yaml.safe_load((ROOT / "params.yaml").read_text())
    patients = max(9, slices // SLICES_PER_PATIENT)
    return merge(
        base,
        {
            "data": {
                "synthetic": {
                    "patients": patients,
                    "slices": slices // patients,
                    "image_size": image_size,
                }
            },
            "convert": {"image_size": image_size},
            "train": {"epochs": epochs, "cache": "file", "early_stopping_patience": 0},
        },
    )


def measure(slices: int, image_size: int, epochs: int, stages: list[str]) -> dict:
    with tempfile.TemporaryDirectory(prefix="lungct-scale-") as folder:
        project = Path(folder)
        params = project_params(slices, image_size, epochs)
        (project / "params.yaml").write_text(yaml.safe_dump(params))
        real = params["data"]["synthetic"]["patients"] * params["data"]["synthetic"]["slices"]
        out = {"slices": real}
        for stage in stages:
            seconds, peak = run_stage(project, stage)
            out[stage] = (seconds, peak)
            print(f"  {stage:9s} {real:6d} slices: {seconds:7.1f} s, peak RSS {peak:7.0f} MB")
        return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slices", type=int, default=5000, help="N; the large cohort is 4N")
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=1)
    args = parser.parse_args(argv)
    print(machine(tensorflow=False))  # no TensorFlow here: children inherit the peak RSS
    stages = ["download", "convert", "split", "train"]
    small = measure(args.slices, args.image_size, args.epochs, stages)
    large = measure(4 * args.slices, args.image_size, args.epochs, stages)
    print(
        f"\n| stage | peak RSS at {small['slices']} | at {large['slices']} | ratio | slices/s at {large['slices']} |"
    )
    print("|---|---|---|---|---|")
    for stage in stages:
        (_, a), (seconds, b) = small[stage], large[stage]
        rate = large["slices"] * (args.epochs if stage == "train" else 1) / seconds
        print(f"| {stage} | {a:.0f} MB | {b:.0f} MB | {b / a:.2f} | {rate:.0f} |")
    convert_rate = large["slices"] / large["convert"][0]
    train_rate = large["slices"] * args.epochs / large["train"][0]
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    print(
        f"\nAt these rates on {cores} cores, LIDC-IDRI's ~{LIDC_SLICES:,} slices would take "
        f"{LIDC_SLICES / convert_rate / 3600:.1f} h to convert and "
        f"{LIDC_SLICES / train_rate / 3600:.1f} h per training epoch at {args.image_size} px "
        f"(x {cores} per core)."
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
