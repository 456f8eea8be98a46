"""Benchmark of the REST service: requests per second and latency under concurrent clients,
against ``predict_files`` in process on the same files.

Run from the repository root::

    python -m benchmarks.serve [--files N] [--requests R] [--dicom-size S] [--clients 1,4,16]

One run writes N phantom CT slices (S x S, default 512 as a scanner writes them) and the
repo's default model (untrained: weights do not change the time; as
``benchmarks.predict``), then:

* **service**: ``python -m stages.serve`` on a free 127.0.0.1 port, one per batching mode
  (``queue``: concurrent requests share model calls; ``lock``: one model call per request,
  one at a time), both started before the passes; for each number of clients C, C threads
  send R requests, each ``POST /predict`` with one DICOM file (multipart), round robin
  over the N files; figures: requests per second (R / wall time), median and 95th
  percentile latency;
* **in process**: ``predict_files(predictor, [file], 1)`` on the same files from C threads
  sharing one ``Predictor`` in this process: the predict command's path without the
  process start, and without HTTP, multipart, temporary files or JSON;
* **ratio**: service requests per second / in-process files per second, per C.

Every figure is the median of ``--rounds`` passes, the contenders interleaved (their
order rotated each round) so that a change in a shared machine's load hits them alike.

The clients run in this process (urllib, threads), on the same cores as the service: on a
2-core machine they compete with it, as a reverse proxy on the same host would.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from benchmarks.host import machine
from benchmarks.predict import generate, save_model
from lungct.params import PARAMS_FILE, load_params, merge, parse_params

REPO = Path(__file__).resolve().parents[1]


def multipart(name: str, data: bytes) -> tuple[bytes, str]:
    boundary = uuid.uuid4().hex
    body = io.BytesIO()
    body.write(f"--{boundary}\r\n".encode())
    body.write(f'Content-Disposition: form-data; name="files"; filename="{name}"\r\n\r\n'.encode())
    body.write(data + f"\r\n--{boundary}--\r\n".encode())
    return body.getvalue(), f"multipart/form-data; boundary={boundary}"


def start(model: Path, batching: str, log: Path) -> tuple[subprocess.Popen, str]:
    env = dict(os.environ, PYTHONPATH=str(REPO), TF_CPP_MIN_LOG_LEVEL="2")
    command = [sys.executable, "-m", "stages.serve", "--port", "0", "--model", str(model)]
    with open(log, "w") as err:
        process = subprocess.Popen(
            [*command, "--batching", batching, "--concurrency", "16"],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=err,
        )
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        text = log.read_text()
        if "listening on " in text:
            return process, text.split("listening on ", 1)[1].split()[0]
        if process.poll() is not None:
            raise SystemExit(f"the service exited:\n{text}")
        time.sleep(0.2)
    process.kill()
    raise SystemExit("the service did not start")


def load(url: str, bodies: list[tuple[bytes, str]], clients: int, requests: int) -> dict:
    """``requests`` POSTs from ``clients`` threads; throughput and latency percentiles."""

    def one(i: int) -> float:
        body, kind = bodies[i % len(bodies)]
        request = urllib.request.Request(f"{url}/predict", data=body, method="POST")
        request.add_header("Content-Type", kind)
        start = time.perf_counter()
        with urllib.request.urlopen(request, timeout=120) as response:
            answer = json.loads(response.read())
        assert response.status == 200 and len(answer["predictions"]) == 1, answer
        return time.perf_counter() - start

    for i in range(min(4, requests)):  # warm-up: tracing, connections
        one(i)
    start = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        latencies = list(pool.map(one, range(requests)))
    wall = time.perf_counter() - start
    return summary(latencies, wall)


def summary(latencies: list[float], wall: float) -> dict:
    ordered = sorted(latencies)
    return {
        "per_s": len(latencies) / wall,
        "p50_ms": 1000 * statistics.median(ordered),
        "p95_ms": 1000 * ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))],
    }


def in_process(files: list[Path], model: Path, labels: Path):
    """One request's work without the service: ``predict_files`` on one file."""
    from lungct.serving.inference import Predictor, predict_files

    predictor = Predictor.load(model, labels)

    def one(i: int) -> float:
        start = time.perf_counter()
        rows, failures = predict_files(predictor, [files[i % len(files)]], 1)
        assert len(rows) == 1 and not failures
        return time.perf_counter() - start

    for i in range(4):  # warm-up: tracing
        one(i)
    return one


def threads(one, clients: int, requests: int) -> dict:
    start = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        latencies = list(pool.map(one, range(requests)))
    return summary(latencies, time.perf_counter() - start)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=40, help="N DICOM slices (40)")
    parser.add_argument("--requests", type=int, default=80, help="R requests per pass (80)")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved passes (3)")
    parser.add_argument("--dicom-size", type=int, default=512, help="S, the DICOM matrix (512)")
    parser.add_argument("--clients", default="1,4,16", help="concurrent clients (1,4,16)")
    parser.add_argument(
        "--backbone", default=None, help="train.backbone of the model (default: params.yaml's)"
    )
    args = parser.parse_args(argv)
    clients = [int(c) for c in args.clients.split(",")]
    if args.files < 1 or args.requests < 1 or args.rounds < 1 or min(clients) < 1:
        parser.error("--files, --requests, --rounds and --clients must be >= 1")

    params = load_params(REPO / PARAMS_FILE)
    if args.backbone:
        params = parse_params(merge(params.model_dump(), {"train": {"backbone": args.backbone}}))
    root = Path(tempfile.mkdtemp(prefix="lungct-bench-serve-"))
    services: dict[str, tuple[subprocess.Popen, str]] = {}
    try:
        files = generate(root, params, args.files, args.dicom_size)
        model, labels = save_model(root, params)
        host = machine()
        bodies = [multipart(f.name, f.read_bytes()) for f in files]
        for batching in ("queue", "lock"):  # both up at once; idle, a service costs nothing
            services[batching] = start(model, batching, root / f"serve-{batching}.log")
        local = in_process(files, model, labels)
        contenders = {f"service, batching {b}": url for b, (_, url) in services.items()}
        contenders["predict_files in process"] = ""
        runs: dict[tuple[str, int], list[dict]] = {}
        for r in range(args.rounds):  # interleaved: a change in the machine's load hits all
            names = list(contenders)
            names = names[r % len(names) :] + names[: r % len(names)]
            for c in clients:
                for name in names:
                    url = contenders[name]
                    figures = (
                        load(url, bodies, c, args.requests)
                        if url
                        else threads(local, c, args.requests)
                    )
                    runs.setdefault((name, c), []).append(figures)
    finally:
        for process, _ in services.values():
            process.terminate()
            process.wait(timeout=30)
        shutil.rmtree(root, ignore_errors=True)

    def median(name: str, c: int, key: str) -> float:
        return statistics.median(run[key] for run in runs[(name, c)])

    print(f"machine: {host}")
    print(
        f"{args.files} phantom DICOM slices of {args.dicom_size}x{args.dicom_size}, one file "
        f"per request, {args.requests} requests per pass, median of {args.rounds} "
        f"interleaved passes; model: backbone {params.train.backbone} (untrained)"
    )
    print("| clients | contender | requests/s | p50 ms | p95 ms | / in process |")
    print("|---|---|---|---|---|---|")
    for c in clients:
        base = median("predict_files in process", c, "per_s")
        for name in contenders:
            per_s = median(name, c, "per_s")
            print(
                f"| {c} | {name} | {per_s:.1f} | {median(name, c, 'p50_ms'):.1f} | "
                f"{median(name, c, 'p95_ms'):.1f} | {per_s / base:.2f} |"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
