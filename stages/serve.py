"""serve: the trained model as a REST service (Starlette on uvicorn); not a DVC stage.

    python -m stages.serve [--host 127.0.0.1] [--port 8000] [--model models/model.keras]
                           [--labels LABELS] [--card CARD] [limits ...]

The model is loaded once; ``--model`` may also be the ONNX export (run by onnxruntime).
Prints ``serve: listening on http://HOST:PORT`` on stderr when ready. Endpoints and
limits: :mod:`lungct.serving.service` and docs/deploy.md. A bad option is one ``error:``
line naming it, exit status 2.
"""

from __future__ import annotations

if not __package__:  # started as a file: stages/stages.py says how to start it
    import stages  # noqa: F401

import argparse
import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import fields
from pathlib import Path
from typing import NoReturn

from lungct.artifacts import MODEL_FILE
from lungct.errors import UserError, run_stage
from lungct.serving.inference import Predictor, preprocess_pool
from lungct.serving.service import (
    Limits,
    Service,
    limit_problem,
    load_predictor,
    serve_forever,
    stop_pool,
)

log = logging.getLogger("serve")

MAX_WAIT_MS = (0.0, 10_000.0)  # --max-wait-ms: from 0 (no wait) to 10 s
MAX_WORKERS = 256


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        """One ``error:`` line (as every stage's bad input), exit status 2; no usage."""
        raise UserError(message)


def _checked(name: str, kind: type) -> Callable[[str], float]:
    """An argparse type: a number that :func:`limit_problem` accepts for ``name``."""

    def parse(text: str) -> float:
        try:
            value = kind(text)
        except ValueError:
            what = "a whole number" if kind is int else "a number"
            raise argparse.ArgumentTypeError(f"must be {what}, not {text!r}") from None
        problem = limit_problem(name, value)
        if problem:
            raise argparse.ArgumentTypeError(problem.split(" ", 1)[1])  # the flag is shown
        return value

    return parse


def _number(kind: type, low: float, high: float) -> Callable[[str], float]:
    """An argparse type: a finite number from ``low`` to ``high``."""

    def parse(text: str) -> float:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be a number, not {text!r}") from None
        if not math.isfinite(value) or not low <= value <= high:
            raise argparse.ArgumentTypeError(f"must be from {low:g} to {high:g}, not {text}")
        return value

    return parse


def _host(text: str) -> str:
    if not text.strip() or text != text.strip() or any(c.isspace() for c in text):
        raise argparse.ArgumentTypeError(
            f"must be an address or host name (0.0.0.0: every interface), not {text!r}"
        )
    return text


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = _Parser(
        prog="python -m stages.serve", description="Serve the trained model over HTTP."
    )
    add = parser.add_argument
    add("--host", type=_host, default="127.0.0.1", help="address to listen on (127.0.0.1)")
    add("--port", type=_number(int, 0, 65535), default=8000, help="port (8000; 0: any free)")
    add("--model", type=Path, default=MODEL_FILE, help=f"a .keras or .onnx model ({MODEL_FILE})")
    add("--labels", type=Path, help="its contract (default: labels.json beside it)")
    add("--card", type=Path, help="its model card (default: card.json beside it or its export)")
    for spec in fields(Limits):
        kind = float if isinstance(spec.default, float) else int
        add(
            spec.metadata["flag"],
            dest=spec.name,
            type=_checked(spec.name, kind),
            default=spec.default,
            help=f"{spec.metadata['help']} ({spec.default:g})",
        )
    add("--batching", choices=("queue", "lock"), default="queue", help="see docs/deploy.md")
    add(
        "--max-wait-ms",
        type=_number(float, *MAX_WAIT_MS),
        default=4.0,
        help="queue: wait for more images (ms)",
    )
    add(
        "--workers",
        type=_number(int, 0, MAX_WORKERS),
        default=0,
        help="processes reading files (0: in the request)",
    )
    args = parser.parse_args(argv)
    args.labels = args.labels or args.model.parent / "labels.json"
    args.limits = Limits(**{spec.name: getattr(args, spec.name) for spec in fields(Limits)})
    return args


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    contract = Predictor.check(args.model, args.labels)  # a missing model: one line, at once
    # The pool first: its workers fork from this process before TensorFlow is imported.
    pool = preprocess_pool(args.workers) if args.workers else None
    try:
        predictor = load_predictor(args.model, args.labels)
        service = Service(
            predictor, args.model, args.card, args.limits, args.batching, args.max_wait_ms, pool
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
            stop_pool(pool)


if __name__ == "__main__":
    run_stage(main)
