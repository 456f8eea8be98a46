"""Benchmark of the convert stage (DICOM -> windowed 8-bit PNG) on synthetic 512x512 CT.

Run from the repository root::

    python -m benchmarks.convert [--slices N] [--workers W] [--no-memory]

One run generates N phantom CT slices (512x512, ~20 slices per patient, written with
``lungct.phantom.write_cohort`` into a temporary raw folder with the ``SOURCE.json`` and
``labels.csv`` the stage expects; generation is timed but not counted), then measures:

* **project**: ``stages.convert.convert`` in-process, with the repo's ``params.yaml``
  (``convert.workers`` set to W when the schema has that key);
* **naive**: the notebook projects' single-process loop: ``dcmread`` -> ``pixel_array`` ->
  ``* slope + intercept`` -> lung window -> ``PIL`` resize -> PNG;
* **decode bound**: read and decode only (``dcmread`` + ``pixel_array``, nothing written)
  over W processes (``ProcessPoolExecutor.map`` with a chunksize): what a parallel convert
  could reach at best on this machine;
* **peak RSS** of the project stage for N and for 4N files, each in a fresh process (forked
  by a ``forkserver``, so it does not inherit this process's ``ru_maxrss``): ``ru_maxrss`` of
  the process itself plus ``RUSAGE_CHILDREN`` (the largest reaped child, so pool workers
  count; pages shared with the parent count in both). The 4N raw folder is four hard-linked
  copies of the N cohort (same bytes, no extra generation time). Skipped with ``--no-memory``.
* **CPU scaling**: W processes of pure-Python busy work vs one, before and after the
  throughput runs: on a shared VM the cores may not all be there, and this says so.

Each throughput is measured once, after one warm-up pass over a 20-file subset; outputs are
cleared between runs. Files are read from the page cache (they were just written). The
cohort is rendered in a child process so that this process's allocator state stays that of a
fresh stage run (rendering large volumes raises glibc's malloc thresholds, which makes the
per-slice temporaries of the stage about 30% cheaper than in a fresh ``dvc repro``).

Targets (marked PASS/FAIL; the script always exits 0 unless something crashes):

* project / naive slices per second  >= 1.8 (on 2 cores)
* project / decode bound             >= 0.8
* peak RSS 4N / N                    <= 1.2 (memory must not grow with the data set)
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing
import os
import queue
import resource
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from multiprocessing.queues import Queue
from pathlib import Path

import numpy as np
import pandas as pd
import pydicom
from PIL import Image
from pydicom.uid import JPEG2000Lossless, RLELossless

from benchmarks.host import machine
from lungct import phantom
from lungct.artifacts import RAW_LABELS, RAW_SOURCE, input_files
from lungct.params import PARAMS_FILE, ConvertParams, Params, load_params
from stages.convert import convert

REPO = Path(__file__).resolve().parents[1]
SLICES_PER_PATIENT = 20
IMAGE_SIZE = 512  # DICOM matrix of the synthetic slices
WARMUP_FILES = 20

TARGET_PROJECT_VS_NAIVE = 1.8
TARGET_PROJECT_VS_DECODE = 0.8
TARGET_RSS_RATIO = 1.2


@dataclass(frozen=True)
class Throughput:
    name: str
    files: int
    seconds: float

    @property
    def per_second(self) -> float:
        return self.files / self.seconds if self.seconds > 0 else math.inf


@dataclass(frozen=True)
class PeakRss:
    files: int
    self_mb: float
    children_mb: float
    seconds: float

    @property
    def total_mb(self) -> float:
        return self.self_mb + self.children_mb


# --------------------------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------------------------
def repo_params() -> Params:
    return load_params(REPO / PARAMS_FILE)


def project_convert_params(workers: int) -> ConvertParams:
    """The repo's convert params, with ``workers`` set when the schema has that key."""
    params = repo_params().convert
    if "workers" in type(params).model_fields:
        params = type(params).model_validate({**params.model_dump(), "workers": workers})
    return params


def write_raw_metadata(raw: Path, labels: list[tuple[str, str]]) -> None:
    """What the download stage writes next to a DICOM cohort: SOURCE.json and labels.csv."""
    (raw / RAW_SOURCE).write_text(json.dumps({"layout": "dicom"}) + "\n", encoding="utf-8")
    table = pd.DataFrame(labels, columns=["PatientID", "label"])
    table.to_csv(raw / RAW_LABELS, index=False, lineterminator="\n")


SYNTAXES = {"native": None, "jpeg2000": JPEG2000Lossless, "rle": RLELossless}


def generate_raw(
    raw: Path, slices: int, syntax: str = "native"
) -> tuple[list[Path], list[tuple[str, str]]]:
    """Write about ``slices`` 512x512 phantom CT slices plus the raw metadata files,
    recompressed to ``syntax`` (a lossless transfer syntax) unless it is ``native``."""
    params = repo_params()
    per_patient = min(SLICES_PER_PATIENT, slices)
    labels = phantom.write_cohort(
        raw,
        patients=max(1, slices // per_patient),
        slices=per_patient,
        image_size=IMAGE_SIZE,
        class_balance=dict(params.data.synthetic.class_balance),
        seed=params.base.seed,
    )
    write_raw_metadata(raw, labels)
    if SYNTAXES[syntax] is not None:
        for path in raw.rglob("*.dcm"):
            ds = pydicom.dcmread(path)
            ds.compress(SYNTAXES[syntax])
            ds.save_as(path, enforce_file_format=True)
    return input_files(raw), labels


def linked_raw(
    raw: Path, dest: Path, files: list[Path], labels: list[tuple[str, str]], copies: int
) -> Path:
    """A raw folder holding ``copies`` hard-linked copies of ``files`` (copy{k}/<rel path>)."""
    for k in range(copies):
        for path in files:
            target = dest / (f"copy{k}" if copies > 1 else "") / path.relative_to(raw)
            target.parent.mkdir(parents=True, exist_ok=True)
            try:
                os.link(path, target)
            except OSError:
                shutil.copy2(path, target)
    write_raw_metadata(dest, labels)
    return dest


def clear(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)


# --------------------------------------------------------------------------------------------
# Measurements
# --------------------------------------------------------------------------------------------
def timed(name: str, files: int, run: Callable[[], object]) -> Throughput:
    start = time.perf_counter()
    run()
    return Throughput(name, files, time.perf_counter() - start)


def measure_project(raw: Path, warm_raw: Path, out: Path, workers: int, files: int) -> Throughput:
    """The project's convert stage, in-process (the caller has chdir'd into a scratch folder)."""
    params = project_convert_params(workers)
    convert(params, raw=warm_raw, out=out)
    clear(out)
    result: dict = {}

    def run() -> None:
        result.update(convert(params, raw=raw, out=out))

    throughput = timed("project convert", files, run)
    if result.get("converted") != files:
        print(f"warning: project converted {result.get('converted')} of {files} files")
    clear(out)
    return throughput


def naive_loop(files: list[Path], out: Path, center: float, width: float, size: int) -> None:
    """The notebook projects' loop, as written there: one file after the other."""
    out.mkdir(parents=True, exist_ok=True)
    low = center - width / 2
    for i, path in enumerate(files):
        ds = pydicom.dcmread(path)
        hu = ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
        img = np.clip((hu - low) / width, 0, 1) * 255
        img = Image.fromarray(img.astype(np.uint8)).resize((size, size))
        img.save(out / f"{i:06d}.png")


def measure_naive(files: list[Path], out: Path) -> Throughput:
    params = repo_params().convert
    # The stage's first window (``convert.windows``; a single ``convert.window`` before).
    window = params.windows[0] if hasattr(params, "windows") else params.window
    args = (window.center, window.width, params.image_size)
    naive_loop(files[:WARMUP_FILES], out, *args)
    clear(out)
    throughput = timed("naive loop (1 process)", len(files), lambda: naive_loop(files, out, *args))
    clear(out)
    return throughput


def decode_one(path: Path) -> int:
    """Read and decode one slice; return its size so nothing large crosses processes."""
    return int(pydicom.dcmread(path).pixel_array.nbytes)


def decode_all(files: list[Path], workers: int) -> int:
    chunksize = max(1, math.ceil(len(files) / (4 * workers)))
    with ProcessPoolExecutor(workers) as pool:
        return sum(pool.map(decode_one, files, chunksize=chunksize))


def measure_decode_bound(files: list[Path], workers: int) -> Throughput:
    decode_all(files[:WARMUP_FILES], workers)
    name = f"decode bound ({processes(workers)})"
    return timed(name, len(files), lambda: decode_all(files, workers))


def busy_work(n: int) -> int:
    total = 0
    for i in range(n):
        total += i
    return total


def measure_cpu_scaling(workers: int, n: int = 2_000_000) -> float:
    """Speedup of ``workers`` processes over one on pure CPU work: the cores actually had.

    On a shared VM a second vCPU may be busy elsewhere; this tells whether a low
    project/naive ratio is the project's or the machine's.
    """
    start = time.perf_counter()
    busy_work(n)
    single = time.perf_counter() - start
    with ProcessPoolExecutor(workers) as pool:
        list(pool.map(busy_work, [1000] * workers))  # workers started
        start = time.perf_counter()
        list(pool.map(busy_work, [n] * workers))
        parallel = time.perf_counter() - start
    return workers * single / parallel


def _maxrss_mb(who: int) -> float:
    # ru_maxrss is in KiB on Linux, in bytes on macOS.
    scale = 1024 * 1024 if sys.platform == "darwin" else 1024
    return resource.getrusage(who).ru_maxrss / scale


def rss_child(raw: Path, out: Path, workdir: Path, workers: int, results: Queue) -> None:
    """Body of the fresh process: run the stage, send back its peak RSS."""
    os.chdir(workdir)
    # A fork-server child inherits the fork-server start method; give the stage the platform
    # default, as in a plain ``python stages/convert.py``, so its pool workers are our children.
    multiprocessing.set_start_method(None, force=True)
    params = project_convert_params(workers)
    start = time.perf_counter()
    metrics = convert(params, raw=raw, out=out)
    seconds = time.perf_counter() - start
    results.put(
        PeakRss(
            files=metrics["converted"],
            self_mb=_maxrss_mb(resource.RUSAGE_SELF),
            children_mb=_maxrss_mb(resource.RUSAGE_CHILDREN),
            seconds=seconds,
        )
    )


def measure_peak_rss(raw: Path, out: Path, workdir: Path, workers: int) -> PeakRss:
    """Peak RSS of the project stage in a fresh process (pool workers included).

    The process comes from a fork server: on Linux a process started by fork + exec
    (``subprocess``, the ``spawn`` start method) inherits its parent's ``ru_maxrss``, so it
    would report this benchmark's own peak. One forked by the small fork server starts from
    the server's few MB, then imports the project and runs the stage.
    """
    methods = multiprocessing.get_all_start_methods()
    ctx = multiprocessing.get_context("forkserver" if "forkserver" in methods else "spawn")
    workdir.mkdir(parents=True, exist_ok=True)
    results = ctx.Queue()
    proc = ctx.Process(target=rss_child, args=(raw, out, workdir, workers, results))
    proc.start()
    try:
        while True:
            try:
                return results.get(timeout=1.0)
            except queue.Empty:
                if not proc.is_alive() and results.empty():
                    raise RuntimeError(
                        f"peak RSS process failed (exit code {proc.exitcode})"
                    ) from None
    finally:
        proc.join()
        clear(out)


# --------------------------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------------------------
def processes(n: int) -> str:
    return f"{n} process" if n == 1 else f"{n} processes"


def verdict(value: float, target: float, *, at_least: bool) -> str:
    ok = value >= target if at_least else value <= target
    return "PASS" if ok else "FAIL"


def report(
    project: Throughput,
    naive: Throughput,
    decode: Throughput,
    rss: tuple[PeakRss, PeakRss] | None,
    workers: int,
    has_workers_key: bool,
    scaling: tuple[float, float],
    host: str,
) -> None:
    rows: list[tuple[str, str, str, str]] = []
    for t in (project, naive, decode):
        rows.append((f"{t.name} slices/s", f"{t.per_second:8.1f}", f"({t.seconds:.1f} s)", ""))
    vs_naive = project.per_second / naive.per_second
    vs_decode = project.per_second / decode.per_second
    rows.append(
        (
            "project / naive",
            f"{vs_naive:8.2f}",
            f">= {TARGET_PROJECT_VS_NAIVE}",
            verdict(vs_naive, TARGET_PROJECT_VS_NAIVE, at_least=True),
        )
    )
    rows.append(
        (
            "project / decode bound",
            f"{vs_decode:8.2f}",
            f">= {TARGET_PROJECT_VS_DECODE}",
            verdict(vs_decode, TARGET_PROJECT_VS_DECODE, at_least=True),
        )
    )
    if rss is not None:
        small, large = rss
        for r in (small, large):
            rate = r.files / r.seconds
            detail = f"(self {r.self_mb:.0f} + children {r.children_mb:.0f}; {rate:.0f} slices/s)"
            rows.append((f"peak RSS, {r.files} files (MB)", f"{r.total_mb:8.0f}", detail, ""))
        ratio = large.total_mb / small.total_mb
        rows.append(
            (
                f"peak RSS {large.files} / {small.files}",
                f"{ratio:8.2f}",
                f"<= {TARGET_RSS_RATIO}",
                verdict(ratio, TARGET_RSS_RATIO, at_least=False),
            )
        )
    else:
        rows.append(("peak RSS", "       -", "(skipped: --no-memory)", ""))
    width = max(len(r[0]) for r in rows)
    print()
    print(f"convert benchmark: {project.files} slices of {IMAGE_SIZE}x{IMAGE_SIZE}")
    pool = f"convert.workers = {workers}" if has_workers_key else "no convert.workers key"
    print(f"machine: {host}; W = {workers} ({pool})")
    print(
        f"CPU scaling, {processes(workers)} vs 1 (pure Python): "
        f"{scaling[0]:.2f}x before, {scaling[1]:.2f}x after the throughput runs"
    )
    print("-" * (width + 40))
    for name, value, detail, mark in rows:
        print(f"{name:<{width}}  {value}  {detail:<26} {mark}".rstrip())


# --------------------------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------------------------
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slices", type=int, default=600, help="N synthetic slices (600)")
    parser.add_argument(
        "--workers", type=int, default=os.cpu_count() or 1, help="W processes (all cores)"
    )
    parser.add_argument("--no-memory", action="store_true", help="skip the peak RSS runs")
    parser.add_argument(
        "--syntax",
        choices=sorted(SYNTAXES),
        default="native",
        help="transfer syntax of the generated files (native: uncompressed)",
    )
    args = parser.parse_args(argv)
    if args.slices < WARMUP_FILES or args.workers < 1:
        parser.error(f"--slices must be >= {WARMUP_FILES} and --workers >= 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    host = machine(tensorflow=False)  # before this run adds its own load
    root = Path(tempfile.mkdtemp(prefix="lungct-bench-convert-"))
    cwd = Path.cwd()
    try:
        start = time.perf_counter()
        raw = root / "raw"
        # In a child process: rendering 512x512 volumes grows this process's malloc
        # thresholds, which would make the stage look faster here than in a fresh DVC run.
        with ProcessPoolExecutor(1) as pool:
            files, labels = pool.submit(generate_raw, raw, args.slices, args.syntax).result()
        warm_raw = linked_raw(raw, root / "raw_warm", files[:WARMUP_FILES], labels, copies=1)
        print(
            f"generated {len(files)} {args.syntax} slices in "
            f"{time.perf_counter() - start:.1f} s ({root})"
        )

        workdir = root / "work"  # the stage writes metrics/convert.json relative to the cwd
        workdir.mkdir()
        os.chdir(workdir)
        has_workers_key = "workers" in ConvertParams.model_fields
        scaling_before = measure_cpu_scaling(args.workers)
        project = measure_project(raw, warm_raw, root / "out_project", args.workers, len(files))
        print(f"project: {project.per_second:.1f} slices/s")
        naive = measure_naive(files, root / "out_naive")
        print(f"naive:   {naive.per_second:.1f} slices/s")
        decode = measure_decode_bound(files, args.workers)
        print(f"decode:  {decode.per_second:.1f} slices/s")
        scaling = (scaling_before, measure_cpu_scaling(args.workers))

        rss = None
        if not args.no_memory:
            raw4 = linked_raw(raw, root / "raw4", files, labels, copies=4)
            out = root / "out_rss"
            small = measure_peak_rss(raw, out, root / "work_rss", args.workers)
            large = measure_peak_rss(raw4, out, root / "work_rss", args.workers)
            rss = (small, large)
        report(project, naive, decode, rss, args.workers, has_workers_key, scaling, host)
        print(f"total {time.perf_counter() - start:.1f} s")
    finally:
        os.chdir(cwd)
        shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
