"""Benchmark of the convert stage (DICOM -> windowed 8-bit PNG) on synthetic 512x512 CT.

Run from the repository root::

    python -m benchmarks.convert [--slices N] [--workers W] [--rounds R] [--stage-rounds S]
                                 [--levers] [--no-memory] [--syntax native|jpeg2000|rle]
    python -m benchmarks.convert --real-data chest-ctscan-images.zip   # the hash check only

One run generates N phantom CT slices (512x512, ~20 slices per patient, written with
``lungct.phantom.write_cohort`` into a temporary raw folder with the ``SOURCE.json`` and
``labels.csv`` the stage expects; generation is timed but not counted), then measures:

* **per slice, one core**: the stage's own per-unit function
  (``lungct.data.convert.convert_unit``: read, window, resize, pHash, PNG, manifest row) over
  every file, in one process per variant, against read + decode alone (``dcmread`` +
  ``pixel_array``) in a third. R rounds; a round is every file once per variant, in 10
  steps of the file list with the variants taking turns on each step (their order
  turning), so that all see the same moments of a shared machine's load; CPU time of each
  process (``time.process_time``), median over rounds. The **reference** is the same
  function with a plain version of the pixel work patched in (:data:`REFERENCE`:
  HU computed in the reader, the float32 window, BILINEAR resize, ``imagehash.phash`` of
  the 512 x 512 slice, Pillow's PNG writer at level 1); **new** is the library as it is.
  Work after decoding = variant - decode; the one-core fraction of the decode bound =
  decode / variant. Their outputs are compared after the runs (PNG pixels, pHash bits).
  ``--levers`` adds a variant per lever (:data:`LEVERS`, added to the reference one at a
  time) and one that only reads (``read_ct``), and prints what each lever saves.
* **project**: ``stages.convert.convert`` in-process, with the repo's ``params.yaml``
  (``convert.workers`` set to W when the schema has that key), new and reference, in
  rounds interleaved with the decode bound (below);
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

The stage and the decode bound run in ``--stage-rounds`` rounds (median of each; the ratio
is the median of the rounds' ratios), the naive loop once, each after one warm-up pass over
a 20-file subset; outputs are cleared between runs. Files are read from the page cache (they
were just written). The cohort is rendered in a child process so that this process's allocator state stays that of a
fresh stage run (rendering large volumes raises glibc's malloc thresholds, which makes the
per-slice temporaries of the stage about 30% cheaper than in a fresh ``dvc repro``).

Targets (marked PASS/FAIL; the script always exits 0 unless something crashes):

* work after decoding, one core      <= 2.5 ms a slice (uncompressed files)
* decode / whole, one core           >= 0.35 (uncompressed files)
* project / naive slices per second  >= 1.8 (on 2 cores)
* project / decode bound             >= 0.35 for uncompressed files, 0.8 else
* peak RSS 4N / N                    <= 1.2 (memory must not grow with the data set)

``--real-data ZIP`` (a copy of the Kaggle Chest CT-Scan zip: exported PNG/JPG, no ids)
measures no time: it compares the reference and new pHash of every image and the
near-duplicate groups the split stage makes of each (``split.near_duplicate_distance``),
and the model images (resize) of both.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import itertools
import json
import math
import multiprocessing
import os
import queue
import resource
import shutil
import statistics
import sys
import tempfile
import time
import zipfile
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from multiprocessing.connection import Connection
from multiprocessing.queues import Queue
from pathlib import Path

import imagehash
import numpy as np
import pandas as pd
import pydicom
from PIL import Image
from pydicom.uid import JPEG2000Lossless, RLELossless

from benchmarks.host import machine
from lungct import phantom
from lungct.artifacts import RAW_LABELS, RAW_SOURCE
from lungct.contract import Preprocessing
from lungct.data import convert as conversion
from lungct.data.split import near_duplicate_components
from lungct.data.tables import input_files, read_labels
from lungct.io.dicom import CTFrame, read_ct
from lungct.io.images import fit_square, phash, read_image
from lungct.io.windowing import window_channels
from lungct.params import PARAMS_FILE, ConvertParams, Params, load_params
from stages.convert import convert

REPO = Path(__file__).resolve().parents[1]
SLICES_PER_PATIENT = 20
IMAGE_SIZE = 512  # DICOM matrix of the synthetic slices
WARMUP_FILES = 20

TARGET_PROJECT_VS_NAIVE = 1.8
TARGET_PROJECT_VS_DECODE = 0.8
TARGET_RSS_RATIO = 1.2
# On uncompressed files: the work after decoding, and decode / whole.
TARGET_WORK_MS = 2.5
TARGET_DECODE_FRACTION = 0.35


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
@functools.cache
def repo_params() -> Params:
    """The repo's params, read once a process (the tree may change while a run lasts)."""
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
# The reference: convert's pixel work done plainly (no lookup table, reduce or own PNG writer)
# --------------------------------------------------------------------------------------------
def reference_read_ct(path: Path, *args: int) -> list[CTFrame]:
    """``read_ct`` with the HU computed in the reader (padding mask, float32 rescale)."""
    frames = read_ct(path, *args)
    for frame in frames:
        frame.hu  # noqa: B018 - computed now, as the reader did
    return frames


def reference_channels(frame: CTFrame, windows: list[tuple[float, float]]) -> np.ndarray:
    """The float32 window of the HU, one image-sized pass per operation."""
    return window_channels(frame.hu, windows)


def reference_fit_square(image: np.ndarray, size: int) -> np.ndarray:
    """BILINEAR to the new size, whatever the factor, then the black padding."""
    height, width = image.shape[:2]
    if (height, width) == (size, size):
        return image
    scale = size / max(height, width)
    new_w, new_h = max(1, round(width * scale)), max(1, round(height * scale))
    resized = np.asarray(
        Image.fromarray(image).resize((new_w, new_h), Image.Resampling.BILINEAR), dtype=np.uint8
    )
    out = np.zeros((size, size, *image.shape[2:]), dtype=np.uint8)
    top, left = (size - new_h) // 2, (size - new_w) // 2
    out[top : top + new_h, left : left + new_w] = resized
    return out


def reference_phash(gray: np.ndarray, resized: np.ndarray | None = None) -> str:
    """``imagehash.phash``: one LANCZOS resize of the whole slice to 32 x 32."""
    return str(imagehash.phash(Image.fromarray(gray)))


def reference_save_png(path: Path, image: np.ndarray) -> None:
    """Pillow's PNG writer at compress level 1 (adaptive filters)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image).save(path, format="PNG", compress_level=1)


# What lungct.data.convert calls per slice, by name: the reference patches these in.
REFERENCE = {
    "read_ct": reference_read_ct,
    "frame_channels": reference_channels,
    "fit_square": reference_fit_square,
    "phash": reference_phash,
    "save_png": reference_save_png,
}


@contextmanager
def reference_path() -> Iterator[None]:
    """``lungct.data.convert`` with :data:`REFERENCE` in place of the library's functions
    (pool workers forked meanwhile inherit it)."""
    saved = {name: getattr(conversion, name) for name in REFERENCE}
    for name, function in REFERENCE.items():
        setattr(conversion, name, function)
    try:
        yield
    finally:
        for name, function in saved.items():
            setattr(conversion, name, function)


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


# The levers, in the order --levers adds them to the reference, each with the names
# in lungct.data.convert it puts back to the library's.
LEVERS = {
    "+ window lookup, HU on demand": ("read_ct", "frame_channels"),
    "+ resize by reduce()": ("fit_square",),
    "+ pHash thumbnail reduced first": ("phash",),
    "+ PNG writer": ("save_png",),
}
DECODE = "decode"
READ = "read_ct only"  # --levers: the reader, no pixel work, no PNG


def variants(levers: bool) -> dict[str, tuple[str, ...] | str | None]:
    """Variant -> the names of :data:`REFERENCE` patched in (None: read + decode only;
    :data:`READ`: ``lungct.io.dicom.read_ct`` only)."""
    if not levers:
        return {DECODE: None, "reference": tuple(REFERENCE), "new": ()}
    found: dict[str, tuple[str, ...] | str | None] = {
        DECODE: None,
        READ: READ,
        "reference": tuple(REFERENCE),
    }
    patched = list(REFERENCE)
    for k, (name, lever) in enumerate(LEVERS.items()):
        patched = [n for n in patched if n not in lever]
        found["new" if k == len(LEVERS) - 1 else name] = tuple(patched)
    return found


@dataclass(frozen=True)
class SliceCost:
    """One variant's per-slice cost in one round, on one core."""

    cpu_ms: float  # process CPU time a slice
    wall_ms: float


def slice_worker(
    patched: tuple[str, ...] | str | None,
    params: ConvertParams,
    raw: Path,
    warm_raw: Path,
    out: Path,
    conn: Connection,
) -> None:
    """Body of one variant's process. ``("run", start, stop)``: units ``start:stop`` through
    ``convert_unit`` with the ``patched`` names of :data:`REFERENCE` in place (None: their
    files decoded, nothing else; :data:`READ`: read by ``read_ct``, nothing else),
    answering with the CPU and wall seconds; ``"clear"``:
    empty the output folder and the rows; ``"rows"``: send the rows; ``"stop"``."""
    for name in () if patched in (None, READ) else patched:
        setattr(conversion, name, REFERENCE[name])
    prep = Preprocessing.from_params(params)
    jobs = {
        source: conversion.Job(source, out, "dicom", read_labels(source), prep, None, 0)
        for source in (warm_raw, raw)
    }
    units = {source: conversion.plan(source, "dicom", params, 1).units for source in jobs}
    rows: list[dict] = []

    def run(source: Path, start: int, stop: int) -> None:
        if patched is None:
            for unit in units[source][start:stop]:
                decode_one(source / unit.files[0])
        elif patched == READ:
            for unit in units[source][start:stop]:
                read_ct(source / unit.files[0])
        else:
            conversion._start_worker(jobs[source])
            for unit in units[source][start:stop]:
                rows.extend(conversion.convert_unit(unit))

    run(warm_raw, 0, len(units[warm_raw]))
    while (message := conn.recv()) != "stop":
        if message == "rows":
            conn.send(rows)
        elif message == "clear":
            clear(out)
            rows.clear()
        else:
            _, start, stop = message
            cpu, wall = time.process_time(), time.perf_counter()
            run(raw, start, stop)
            conn.send((time.process_time() - cpu, time.perf_counter() - wall))


@dataclass(frozen=True)
class OneCore:
    """Per-slice costs of every variant, round by round, and the outputs compared."""

    rounds: dict[str, list[SliceCost]]
    outputs: dict[str, Path]
    rows: dict[str, list[dict]]

    def cpu(self, variant: str) -> float:
        return statistics.median(c.cpu_ms for c in self.rounds[variant])

    def wall(self, variant: str) -> float:
        return statistics.median(c.wall_ms for c in self.rounds[variant])

    def work(self, variant: str) -> float:
        """Work after decoding: the variant minus decoding, round by round, median."""
        pairs = zip(self.rounds[variant], self.rounds[DECODE], strict=True)
        return statistics.median(v.cpu_ms - d.cpu_ms for v, d in pairs)

    def fraction(self, variant: str) -> float:
        """Decode / variant: the share of the decode bound one core reaches."""
        pairs = zip(self.rounds[variant], self.rounds[DECODE], strict=True)
        return statistics.median(d.cpu_ms / v.cpu_ms for v, d in pairs)

    def saving(self, before: str, after: str) -> tuple[float, float]:
        """What ``after`` saves on ``before``: ms a slice and the ratio of their work after
        decoding, round by round, median."""
        runs = zip(self.rounds[before], self.rounds[after], self.rounds[DECODE], strict=True)
        pairs = [(b.cpu_ms - d.cpu_ms, a.cpu_ms - d.cpu_ms) for b, a, d in runs]
        return statistics.median(b - a for b, a in pairs), statistics.median(
            b / a for b, a in pairs
        )


def measure_one_core(
    raw: Path, warm_raw: Path, root: Path, rounds: int, levers: bool = False, steps: int = 10
) -> OneCore:
    """Each variant in a process of its own (forked by a fresh fork server, so no variant
    inherits another's heap). A round is every file once per variant, in ``steps`` slices
    of the file list, the variants taking turns on each (their order turning), so that
    they all run through the same moments of a shared machine's load."""
    methods = multiprocessing.get_all_start_methods()
    ctx = multiprocessing.get_context("forkserver" if "forkserver" in methods else "spawn")
    patches = variants(levers)
    params = project_convert_params(1)  # read here: the tree may change while a run lasts
    names = list(patches)
    outputs = {v: root / f"out_{k}" for k, v in enumerate(names)}
    files = len(input_files(raw))  # one slice a file
    bounds = [round(files * i / steps) for i in range(steps + 1)]
    conns, procs = {}, []
    for variant in names:
        parent, child = ctx.Pipe()
        args = (patches[variant], params, raw, warm_raw, outputs[variant], child)
        proc = ctx.Process(target=slice_worker, args=args)
        proc.start()
        conns[variant], procs = parent, [*procs, proc]
    result: dict[str, list[SliceCost]] = {v: [] for v in names}
    try:
        for r in range(rounds):
            spent = dict.fromkeys(names, (0.0, 0.0))
            for variant in names:
                conns[variant].send("clear")
            for step, (start, stop) in enumerate(itertools.pairwise(bounds)):
                turn = (r + step) % len(names)
                for variant in names[turn:] + names[:turn]:
                    conns[variant].send(("run", start, stop))
                    cpu, wall = conns[variant].recv()
                    spent[variant] = (spent[variant][0] + cpu, spent[variant][1] + wall)
            for variant, (cpu, wall) in spent.items():
                result[variant].append(SliceCost(1e3 * cpu / files, 1e3 * wall / files))
        rows = {}
        for variant in ("reference", "new"):
            conns[variant].send("rows")
            rows[variant] = conns[variant].recv()
    finally:
        for variant in names:
            with contextlib.suppress(OSError):  # it died; its traceback is on stderr
                conns[variant].send("stop")
        for proc in procs:
            proc.join()
    return OneCore(result, outputs, rows)


@dataclass(frozen=True)
class Outputs:
    """Reference against new on the same slices."""

    images: int
    same_pixels: int
    mean_abs: float  # mean |reference - new| over all pixels of all images
    max_abs: int
    same_hash: int
    hash_bits: Counter  # Hamming distance between the two hashes -> images
    reference_bytes: int
    new_bytes: int


def compare_outputs(one_core: OneCore) -> Outputs:
    ref = {r["output"]: r for r in one_core.rows["reference"] if r.get("status") == "converted"}
    new = {r["output"]: r for r in one_core.rows["new"] if r.get("status") == "converted"}
    same_pixels, total_abs, pixels, max_abs, bits = 0, 0.0, 0, 0, Counter()
    sizes = {"reference": 0, "new": 0}
    for output in sorted(ref.keys() & new.keys()):
        arrays = []
        for variant in ("reference", "new"):
            path = one_core.outputs[variant] / output
            sizes[variant] += path.stat().st_size
            with Image.open(path) as image:
                arrays.append(np.asarray(image, dtype=np.int16))
        diff = np.abs(arrays[0] - arrays[1])
        same_pixels += int(not diff.any())
        total_abs += float(diff.sum())
        pixels += diff.size
        max_abs = max(max_abs, int(diff.max()))
        bits[hamming(ref[output]["phash"], new[output]["phash"])] += 1
    return Outputs(
        images=len(ref.keys() & new.keys()),
        same_pixels=same_pixels,
        mean_abs=total_abs / max(pixels, 1),
        max_abs=max_abs,
        same_hash=bits[0],
        hash_bits=bits,
        reference_bytes=sizes["reference"],
        new_bytes=sizes["new"],
    )


def hamming(a: str, b: str) -> int:
    return (int(a, 16) ^ int(b, 16)).bit_count()


@dataclass(frozen=True)
class StageRounds:
    """The stage (new and reference) and the decode bound, W processes, in rounds."""

    new: list[Throughput]
    reference: list[Throughput]
    decode: list[Throughput]

    @staticmethod
    def median(runs: list[Throughput]) -> Throughput:
        seconds = statistics.median(t.seconds for t in runs)
        return Throughput(runs[0].name, runs[0].files, seconds)

    def fraction(self, variant: str) -> float:
        """Stage / decode bound (slices per second), round by round, median."""
        runs = self.new if variant == "new" else self.reference
        return statistics.median(
            t.per_second / d.per_second for t, d in zip(runs, self.decode, strict=True)
        )


def measure_stage_rounds(
    raw: Path, warm_raw: Path, root: Path, files: list[Path], workers: int, rounds: int
) -> StageRounds:
    runs: dict[str, list[Throughput]] = {"new": [], "reference": [], "decode": []}

    def run(variant: str) -> Throughput:
        if variant == "decode":
            return measure_decode_bound(files, workers)
        out = root / "out_project"
        if variant == "new":
            return measure_project(raw, warm_raw, out, workers, len(files))
        with reference_path():
            t = measure_project(raw, warm_raw, out, workers, len(files))
        return Throughput("project convert, reference", t.files, t.seconds)

    order = list(runs)
    for r in range(rounds):
        for variant in order[r % 3 :] + order[: r % 3]:
            runs[variant].append(run(variant))
    return StageRounds(runs["new"], runs["reference"], runs["decode"])


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


def rss_child(raw: Path, out: Path, workdir: Path, params: ConvertParams, results: Queue) -> None:
    """Body of the fresh process: run the stage, send back its peak RSS."""
    os.chdir(workdir)
    # A fork-server child inherits the fork-server start method; give the stage the platform
    # default, as in a plain ``python stages/convert.py``, so its pool workers are our children.
    multiprocessing.set_start_method(None, force=True)
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
    params = project_convert_params(workers)  # read here: the tree may change meanwhile
    proc = ctx.Process(target=rss_child, args=(raw, out, workdir, params, results))
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
    one_core: OneCore,
    outputs: Outputs,
    stage: StageRounds,
    naive: Throughput,
    rss: tuple[PeakRss, PeakRss] | None,
    workers: int,
    has_workers_key: bool,
    scaling: tuple[float, float],
    host: str,
    syntax: str,
) -> None:
    native = syntax == "native"  # the one-core targets are for uncompressed files
    print()
    print(f"convert benchmark: {naive.files} {syntax} slices of {IMAGE_SIZE}x{IMAGE_SIZE}")
    pool = f"convert.workers = {workers}" if has_workers_key else "no convert.workers key"
    print(f"machine: {host}; W = {workers} ({pool})")
    print(
        f"CPU scaling, {processes(workers)} vs 1 (pure Python): "
        f"{scaling[0]:.2f}x before, {scaling[1]:.2f}x after the throughput runs"
    )
    rounds = len(one_core.rounds["decode"])
    print()
    print(f"per slice, one core: CPU ms, median of {rounds} interleaved rounds (wall ms)")
    print(f"{'':38s}{'reference':>12s}{'new':>12s}  target")
    print(
        f"{'read + decode only':38s}{one_core.cpu('decode'):12.2f}{'':12s}  "
        f"(wall {one_core.wall('decode'):.2f})"
    )
    print(
        f"{'convert_unit, whole':38s}{one_core.cpu('reference'):12.2f}{one_core.cpu('new'):12.2f}  "
        f"(wall {one_core.wall('reference'):.2f} / {one_core.wall('new'):.2f})"
    )
    work = one_core.work("new")
    print(
        f"{'work after decoding':38s}{one_core.work('reference'):12.2f}{work:12.2f}  "
        f"<= {TARGET_WORK_MS}  {verdict(work, TARGET_WORK_MS, at_least=False) if native else ''}"
    )
    fraction = one_core.fraction("new")
    print(
        f"{'decode / whole (one-core fraction)':38s}{one_core.fraction('reference'):12.2f}"
        f"{fraction:12.2f}  >= {TARGET_DECODE_FRACTION}  "
        f"{verdict(fraction, TARGET_DECODE_FRACTION, at_least=True) if native else ''}"
    )
    print(f"{'reference / new, work after decoding':38s}{one_core.work('reference') / work:24.2f}")
    names = list(one_core.rounds)
    if len(names) > 3:  # --levers: what each saves, added to the reference in turn
        print()
        print(f"{'levers, one at a time':38s}{'work ms':>12s}{'saves ms':>12s}{'ratio':>8s}")
        print(f"{'reference':38s}{one_core.work('reference'):12.2f}")
        for before, after in itertools.pairwise(names[names.index("reference") :]):
            saved, ratio = one_core.saving(before, after)
            label = list(LEVERS)[-1] + " (= new)" if after == "new" else after
            print(f"{label:38s}{one_core.work(after):12.2f}{saved:12.2f}{ratio:8.2f}")
        print(f"{'of which read_ct (checks, header) alone':38s}{one_core.work(READ):12.2f}")
    print()
    print(
        f"outputs, reference vs new ({outputs.images} slices): PNG pixels identical in "
        f"{outputs.same_pixels}, mean |difference| {outputs.mean_abs:.3f}, largest "
        f"{outputs.max_abs}; pHash identical in {outputs.same_hash} "
        f"(bits apart: {dict(sorted(outputs.hash_bits.items()))}); PNG bytes "
        f"{outputs.reference_bytes / 1e6:.2f} MB vs {outputs.new_bytes / 1e6:.2f} MB"
    )

    rows: list[tuple[str, str, str, str]] = []
    new, ref, decode = (StageRounds.median(r) for r in (stage.new, stage.reference, stage.decode))
    for t in (new, ref, naive, decode):
        rows.append((f"{t.name} slices/s", f"{t.per_second:8.1f}", f"({t.seconds:.1f} s)", ""))
    vs_naive = new.per_second / naive.per_second
    rows.append(
        (
            "project / naive",
            f"{vs_naive:8.2f}",
            f">= {TARGET_PROJECT_VS_NAIVE}",
            verdict(vs_naive, TARGET_PROJECT_VS_NAIVE, at_least=True),
        )
    )
    target = TARGET_DECODE_FRACTION if native else TARGET_PROJECT_VS_DECODE
    rows.append(
        ("project / decode bound, reference", f"{stage.fraction('reference'):8.2f}", "", "")
    )
    rows.append(
        (
            "project / decode bound",
            f"{stage.fraction('new'):8.2f}",
            f">= {target}",
            verdict(stage.fraction("new"), target, at_least=True),
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
    print(f"stage, {processes(workers)}: median of {len(stage.decode)} interleaved rounds")
    print("-" * (width + 40))
    for name, value, detail, mark in rows:
        print(f"{name:<{width}}  {value}  {detail:<26} {mark}".rstrip())


# --------------------------------------------------------------------------------------------
# Real data: the hash and the resize on a copy of the Chest CT-Scan images (no timing)
# --------------------------------------------------------------------------------------------
def groups(hashes: list[str], distance: int) -> tuple[int, int, int, list[int]]:
    """Near-duplicate groups as the split stage makes them: count, largest, images in a
    group of two or more, and the component label of every image."""
    labels = near_duplicate_components(hashes, distance).tolist()
    sizes = Counter(labels)
    return len(sizes), max(sizes.values()), sum(n for n in sizes.values() if n > 1), labels


def real_data_check(archive: Path) -> None:
    """Reference against new pHash, and the near-duplicate groups of each, on every image
    of the archive; the model images of both resizes too."""
    params = repo_params()
    distance = params.split.near_duplicate_distance
    size = params.convert.image_size
    reference, new, diffs, same_images, shapes, names = [], [], [], 0, Counter(), []
    with tempfile.TemporaryDirectory(prefix="lungct-bench-real-") as tmp:
        with zipfile.ZipFile(archive) as zf:
            zf.extractall(tmp)
        paths = sorted(p for p in Path(tmp).rglob("*") if p.is_file())
        for path in paths:
            try:
                gray, _ = read_image(path)
            except Exception:  # not an image (a README, say)
                continue
            shapes["under 256 px a side" if max(gray.shape) < 256 else "256 px or more"] += 1
            names.append(path.relative_to(tmp).as_posix())
            reference.append(reference_phash(gray))
            new.append(phash(gray))
            a = reference_fit_square(gray, size).astype(np.int16)
            b = fit_square(gray, size).astype(np.int16)
            same_images += int(np.array_equal(a, b))
            diffs.append(float(np.abs(a - b).mean()))
    bits = Counter(hamming(a, b) for a, b in zip(reference, new, strict=True))
    ref_groups, new_groups = groups(reference, distance), groups(new, distance)
    members: dict[str, dict[int, set[int]]] = {"reference": {}, "new": {}}
    for name, labels in (("reference", ref_groups[3]), ("new", new_groups[3])):
        for i, label in enumerate(labels):
            members[name].setdefault(label, set()).add(i)
    moved = [
        i
        for i in range(len(names))
        if members["reference"][ref_groups[3][i]] != members["new"][new_groups[3][i]]
    ]
    print(f"{archive.name}: {len(reference)} images ({dict(shapes)})")
    print(f"pHash identical for {bits[0]}; bits apart: {dict(sorted(bits.items()))}")
    print(f"near-duplicate groups (split.near_duplicate_distance {distance}):")
    for name, g in (("reference", ref_groups), ("new", new_groups)):
        print(f"  {name:9s}  {g[0]} groups, largest {g[1]}, {g[2]} images in groups of 2+")
    print(f"  images whose group is not the same: {len(moved)}")
    for i in moved:
        before = sorted(members["reference"][ref_groups[3][i]] - {i})
        after = sorted(members["new"][new_groups[3][i]] - {i})
        print(
            f"    {names[i]}: with {[names[j] for j in before]} before, "
            f"{[names[j] for j in after]} now; bits to them before "
            f"{[hamming(reference[i], reference[j]) for j in before + after]}, "
            f"now {[hamming(new[i], new[j]) for j in before + after]}"
        )
    print(
        f"model images ({size} px): {same_images} of {len(diffs)} identical; mean |difference| "
        f"{statistics.fmean(diffs):.3f} (largest image mean {max(diffs):.3f})"
    )


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
    parser.add_argument(
        "--rounds", type=int, default=5, help="R rounds of the one-core, per-slice runs (5)"
    )
    parser.add_argument(
        "--stage-rounds", type=int, default=3, help="rounds of the stage and decode bound (3)"
    )
    parser.add_argument(
        "--levers",
        action="store_true",
        help="one-core variants adding the project's levers to the reference one at a time",
    )
    parser.add_argument(
        "--real-data",
        type=Path,
        metavar="ZIP",
        help="only compare the reference and new pHash and resize on a Chest CT-Scan zip",
    )
    args = parser.parse_args(argv)
    if args.slices < WARMUP_FILES or args.workers < 1 or args.rounds < 1 or args.stage_rounds < 1:
        parser.error(f"--slices must be >= {WARMUP_FILES}, --workers and rounds >= 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    repo_params()  # read once, now: forked children inherit it; others get it passed
    if args.real_data is not None:
        real_data_check(args.real_data)
        return 0
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
        one_core = measure_one_core(raw, warm_raw, root, args.rounds, args.levers)
        print(
            f"one core: work after decoding {one_core.work('reference'):.2f} ms a slice "
            f"(reference), {one_core.work('new'):.2f} ms (new)"
        )
        outputs = compare_outputs(one_core)
        for path in one_core.outputs.values():
            clear(path)
        stage = measure_stage_rounds(raw, warm_raw, root, files, args.workers, args.stage_rounds)
        print(
            f"stage / decode bound: {stage.fraction('reference'):.2f} (reference), "
            f"{stage.fraction('new'):.2f} (new)"
        )
        naive = measure_naive(files, root / "out_naive")
        print(f"naive:   {naive.per_second:.1f} slices/s")
        scaling = (scaling_before, measure_cpu_scaling(args.workers))

        rss = None
        if not args.no_memory:
            raw4 = linked_raw(raw, root / "raw4", files, labels, copies=4)
            out = root / "out_rss"
            small = measure_peak_rss(raw, out, root / "work_rss", args.workers)
            large = measure_peak_rss(raw4, out, root / "work_rss", args.workers)
            rss = (small, large)
        report(
            one_core,
            outputs,
            stage,
            naive,
            rss,
            args.workers,
            has_workers_key,
            scaling,
            host,
            args.syntax,
        )
        print(f"total {time.perf_counter() - start:.1f} s")
    finally:
        os.chdir(cwd)
        shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
