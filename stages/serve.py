"""serve: the trained model as a REST service (Starlette on uvicorn); not a DVC stage.

    python -m stages.serve [--host 127.0.0.1] [--port 8000] [--model models/model.keras]
                           [--labels LABELS] [--card CARD] [limits ...]

The model is loaded once; ``--model`` may also be the ONNX export (run by onnxruntime).
Prints ``serve: listening on http://HOST:PORT`` on stderr when ready. Endpoints and
limits: :mod:`lungct.serving.service` and docs/deploy.md.
"""

from __future__ import annotations

if not __package__:  # started as a file: stages/stages.py says how to start it
    import stages  # noqa: F401

import argparse
import logging
from collections.abc import Sequence
from dataclasses import fields
from pathlib import Path

from lungct.artifacts import MODEL_FILE
from lungct.errors import run_stage
from lungct.serving.inference import Predictor, preprocess_pool
from lungct.serving.service import Limits, Service, load_predictor, serve_forever

log = logging.getLogger("serve")


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    d = Limits()
    parser = argparse.ArgumentParser(
        prog="python -m stages.serve", description="Serve the trained model over HTTP."
    )
    add = parser.add_argument
    add("--host", default="127.0.0.1", help="address to listen on (127.0.0.1)")
    add("--port", type=int, default=8000, help="port (8000; 0: any free port)")
    add("--model", type=Path, default=MODEL_FILE, help=f"a .keras or .onnx model ({MODEL_FILE})")
    add("--labels", type=Path, help="its contract (default: labels.json beside it)")
    add("--card", type=Path, help="its model card (default: card.json beside it or its export)")
    add("--max-upload-bytes", type=int, default=d.max_upload_bytes, help="request body limit")
    add("--max-files", type=int, default=d.max_files, help="files per request")
    add("--max-archive-bytes", type=int, default=d.max_archive_bytes, help="a zip, unpacked")
    add("--max-archive-members", type=int, default=d.max_archive_members, help="a zip's members")
    add("--timeout", dest="timeout_s", type=float, default=d.timeout_s, help="seconds per request")
    add("--concurrency", type=int, default=d.concurrency, help="requests worked on at once")
    add("--batch-size", type=int, default=d.batch_size, help="images per model call")
    add("--batching", choices=("queue", "lock"), default="queue", help="see docs/deploy.md")
    add("--max-wait-ms", type=float, default=4.0, help="queue: wait for more images (ms)")
    add("--workers", type=int, default=0, help="processes reading files (0: in the request)")
    args = parser.parse_args(argv)
    for name in ("max_upload_bytes", "max_files", "max_archive_bytes", "max_archive_members"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    if args.timeout_s <= 0 or args.concurrency < 1 or args.batch_size < 1 or args.workers < 0:
        parser.error("--timeout, --concurrency and --batch-size must be positive, --workers >= 0")
    if not 0 <= args.port <= 65535:
        parser.error("--port must be 0..65535")
    args.labels = args.labels or args.model.parent / "labels.json"
    return args


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    contract = Predictor.check(args.model, args.labels)  # a missing model: one line, at once
    limits = Limits(**{field.name: getattr(args, field.name) for field in fields(Limits)})
    # The pool first: its workers fork from this process before TensorFlow is imported.
    pool = preprocess_pool(args.workers) if args.workers else None
    try:
        predictor = load_predictor(args.model, args.labels)
        service = Service(
            predictor, args.model, args.card, limits, args.batching, args.max_wait_ms, pool
        )
        if contract.warning:
            log.warning("warning: %s", contract.warning)
        if service.card is None:
            log.info("serve: no test figures (%s)", service.card_note)

        def ready(url: str) -> None:
            log.info(
                "serve: listening on %s (model %s, classes %s)",
                url,
                args.model.name,
                ", ".join(contract.classes),
            )

        serve_forever(service, args.host, args.port, ready)
    finally:
        if pool is not None:
            pool.shutdown(cancel_futures=True)


if __name__ == "__main__":
    run_stage(main)
