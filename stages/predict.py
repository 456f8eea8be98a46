"""predict: class probabilities of DICOM files, PNG/JPG images and folders of them, from the
trained model, preprocessed exactly as the pipeline preprocessed its training images.

    python -m stages.predict PATH [PATH ...] [--format table|csv|json] [--output FILE]
    python -m stages.predict PATH [PATH ...] --format dicom-sr --output DIR

Not a DVC stage: it reads ``models/model.keras`` and ``models/labels.json`` (``--model``,
``--labels``) and runs the convert stage's own code on each file (``lungct.io.preprocess``)
with the windows, channels and input size the contract records. A file that cannot be
predicted gets one line on stderr and the rest still run; a folder's metadata files (by
name) are passed over and counted. CSV and JSON carry the model's identity and warning.
docs/predict.md has the rest.
"""

from __future__ import annotations

if not __package__:  # started as a file: stages/stages.py says how to start it
    import stages  # noqa: F401

import argparse
import os
import sys
from collections.abc import Sequence
from contextlib import nullcontext
from itertools import islice
from pathlib import Path

from lungct.artifacts import CONTRACT_FILE, MODEL_FILE
from lungct.atomic import atomic_file, check_replaceable
from lungct.errors import UserError, printable, run_stage
from lungct.serving.dicom_sr import check_output_dir, write_reports
from lungct.serving.formats import FORMATS, About, render
from lungct.serving.inference import (
    METADATA_NAMES,
    METADATA_SUFFIXES,
    Failure,
    PassedOver,
    Predictor,
    expand,
    input_notes,
    predict_files,
    preprocess_pool,
)

DICOM_SR = "dicom-sr"  # one DICOM Structured Report per series or image, into a folder

MAX_WORKERS = 8
POOL_MIN_FILES = 16  # below this, starting worker processes costs more than it saves


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m stages.predict",
        description="Predict the class of CT slices (DICOM, PNG, JPG, or folders of them).",
        epilog=(
            "Folders are walked recursively (hidden files left out); each DICOM series found "
            "in a folder also gets a 'series' row, the mean of its slices' probabilities. "
            "Exit status: 0 all predicted; 1 some inputs failed (one line each on stderr, "
            "the rest predicted); 2 usage or model error."
        ),
    )
    add = parser.add_argument
    add("paths", nargs="+", metavar="PATH", help="files or folders (recursive)")
    add("--model", type=Path, default=MODEL_FILE, help=f"(default {MODEL_FILE})")
    add("--labels", type=Path, default=CONTRACT_FILE, help=f"(default {CONTRACT_FILE})")
    add(
        "--format",
        choices=(*FORMATS, DICOM_SR),
        help="output format (default: from the --output suffix .csv/.json, else table); "
        f"{DICOM_SR}: DICOM Structured Reports into the folder --output",
    )
    add(
        "--output",
        type=Path,
        help="write here (atomically) instead of stdout: a new path or a regular file "
        f"({DICOM_SR}: a new or empty folder)",
    )
    add("--batch-size", type=int, default=64, help="images per model call (64)")
    add(
        "--tta",
        action="store_true",
        help="test-time augmentation: the mean over the image and four shifted copies "
        "(as evaluate with evaluate.tta)",
    )
    add(
        "--workers",
        type=int,
        help="processes reading files while the model runs; 0: none (default: one per core, "
        f"at most {MAX_WORKERS}, when there are {POOL_MIN_FILES} files or more)",
    )
    args = parser.parse_args(argv)
    if args.batch_size < 1:
        parser.error("--batch-size must be at least 1")
    if args.workers is not None and args.workers < 0:
        parser.error("--workers must be 0 or more")
    if args.format is None:
        suffix = args.output.suffix.lower() if args.output else ""
        args.format = {".csv": "csv", ".json": "json"}.get(suffix, "table")
    if args.format == DICOM_SR and args.output is None:
        parser.error(f"--format {DICOM_SR} needs --output DIR (a new or empty folder)")
    return args


def predict(argv: Sequence[str] | None = None) -> int:
    """Run the command; return the exit status (0 all predicted, 1 some files failed)."""
    args = parse_args(argv)
    if args.format == DICOM_SR:  # a file, a link or a folder holding anything: refused
        check_output_dir(args.output)
    elif args.output is not None:  # a folder, link, FIFO or device there: one line, at once
        check_replaceable(args.output)
    Predictor.check(args.model, args.labels)  # a missing model: one line, at once
    workers = args.workers
    if workers is None:
        files = (e for e in expand(args.paths) if not isinstance(e, PassedOver))
        many = sum(1 for _ in islice(files, POOL_MIN_FILES)) >= POOL_MIN_FILES
        workers = min(MAX_WORKERS, os.cpu_count() or 1) if many else 0

    def report(failure: Failure) -> None:
        print(printable(str(failure)), file=sys.stderr, flush=True)

    passed_over: list[PassedOver] = []

    # The pool first: its workers fork from this process before TensorFlow is imported.
    with preprocess_pool(workers) if workers else nullcontext() as pool:
        predictor = Predictor.load(args.model, args.labels, tta=args.tta)
        if predictor.contract.warning:
            print(f"warning: {predictor.contract.warning}", file=sys.stderr)
        for line in input_notes(predictor.prep, args.paths):
            print(printable(f"note: {line}"), file=sys.stderr)
        rows, failures = predict_files(
            predictor,
            args.paths,
            args.batch_size,
            on_failure=report,
            pool=pool,
            on_passed_over=passed_over.append,
        )
    if args.format == DICOM_SR:  # the SRs' paths on stdout; what got none on stderr
        written, skipped = write_reports(args.output, rows, predictor.contract, args.model)
        for skip in skipped:
            print(printable(f"note: {skip}"), file=sys.stderr)
        sys.stdout.write("".join(f"{path}\n" for path in written))
    else:  # with the model's identity and warning (the table: in a file only)
        about = About.read(predictor.contract, args.model)
        to_file = args.output is not None
        text = render(args.format, rows, predictor.contract, failures, about, to_file=to_file)
        if not to_file:
            sys.stdout.write(text)
        else:
            try:
                with atomic_file(args.output) as tmp:
                    tmp.write_text(text, encoding="utf-8")
            except OSError as exc:
                raise UserError(f"{args.output}: cannot write ({exc.strerror or exc})") from None
    if passed_over:
        kinds = ", ".join([*METADATA_SUFFIXES, *(name.upper() for name in METADATA_NAMES)])
        count = len(passed_over)
        print(
            f"note: passed over {count} metadata file{'s' * (count != 1)} ({kinds})",
            file=sys.stderr,
        )
    if failures:
        images = sum(r.level == "image" for r in rows)
        print(
            f"predict: {len(failures)} input(s) failed, {images} image(s) predicted",
            file=sys.stderr,
        )
    return 1 if failures else 0


def main() -> None:
    status = predict()
    if status:
        sys.exit(status)


if __name__ == "__main__":
    run_stage(main)
