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

``--abuse`` measures instead what the service's limits hold under (docs/deploy.md), on one
service with the default limits unless said: ``/health`` latency with 300 idle
connections open (``--max-connections 256``: the rest refused); how long idle and
slow-header connections stay open (``--header-timeout``); 16 concurrent 50 MiB uploads
with ``--concurrency 1`` (answers, and the most bytes the service held in temporary
files at once); 3 requests of a zip of 200 MiB of zeros at ``--timeout 2`` (the service's
CPU seconds after the answers).
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
import urllib.error
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


def _cpu(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _temp_bytes(folder: Path) -> int:
    """Bytes under ``folder``, and in the unnamed files the service process holds open."""
    total = sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())
    return total


def abuse(root: Path, model: Path, files: list[Path]) -> list[tuple[str, str]]:
    """The figures of ``--abuse`` (the module docstring), as (what, figure) rows."""
    import socket
    import threading
    import zipfile

    rows: list[tuple[str, str]] = []
    temp = root / "temp"
    temp.mkdir()
    env = dict(os.environ, PYTHONPATH=str(REPO), TMPDIR=str(temp))
    log = root / "abuse.log"

    def serve(*args: str) -> tuple[subprocess.Popen, str]:
        command = [sys.executable, "-m", "stages.serve", "--port", "0", "--model", str(model)]
        with open(log, "w") as err:
            process = subprocess.Popen([*command, *args], env=env, stderr=err)
        deadline = time.monotonic() + 180
        while "listening on " not in log.read_text():
            if process.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"the service did not start:\n{log.read_text()}")
            time.sleep(0.1)
        return process, log.read_text().split("listening on ", 1)[1].split()[0]

    def health(url: str) -> tuple[int, float]:
        """``/health``'s status and milliseconds."""
        start = time.perf_counter()
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=60) as response:
                response.read()
                status = response.status
        except urllib.error.HTTPError as err:
            status = err.code
        return status, 1000 * (time.perf_counter() - start)

    process, url = serve("--header-timeout", "10")
    host, port = url.removeprefix("http://").split(":")
    try:
        opened = time.monotonic()
        idle = [socket.create_connection((host, int(port)), timeout=30) for _ in range(300)]
        time.sleep(0.5)
        status, ms = health(url)
        rows.append(("/health with 300 idle connections open", f"{status} in {ms:.0f} ms"))
        while health(url)[0] != 200:
            time.sleep(0.1)
        rows.append(("/health 200 again after", f"{time.monotonic() - opened:.1f} s"))
        for sock in idle:
            sock.close()
        slow = socket.create_connection((host, int(port)), timeout=60)
        start = time.monotonic()
        slow.sendall(b"GET /health HTTP/1.1\r\n")
        while not _readable(slow):  # the service's close makes it readable (at its end)
            try:
                slow.sendall(b"X")
            except OSError:
                break
            time.sleep(0.5)
        rows.append(
            ("a header sent a byte per 0.5 s, closed after", f"{time.monotonic() - start:.1f} s")
        )
        slow.close()
    finally:
        process.terminate()
        process.wait(timeout=60)
    rows.append(("log size after these", f"{log.stat().st_size} bytes"))

    process, url = serve("--concurrency", "1")
    try:
        body, kind = multipart("big.bin", b"not an image " * (50 * 2**20 // 13))
        peak = 0
        done = threading.Event()

        def watch() -> None:
            nonlocal peak
            fd_dir = Path(f"/proc/{process.pid}/fd")
            while not done.is_set():
                held = _temp_bytes(temp)
                for fd in list(fd_dir.iterdir()) if fd_dir.exists() else []:
                    try:
                        target = os.readlink(fd)
                        if target.startswith(str(temp)) and target.endswith("(deleted)"):
                            held += os.stat(fd).st_size
                    except OSError:
                        pass
                peak = max(peak, held)
                time.sleep(0.05)

        watcher = threading.Thread(target=watch)
        watcher.start()

        def one(_: int) -> int | str:
            request = urllib.request.Request(f"{url}/predict", data=body, method="POST")
            request.add_header("Content-Type", kind)
            try:
                with urllib.request.urlopen(request, timeout=300) as response:
                    return response.status
            except urllib.error.HTTPError as err:
                return err.code
            except (urllib.error.URLError, ConnectionError):
                # a 503 sent before the body was read: the connection is closed, and a
                # client that sends before it reads sees a reset
                return "reset"

        with ThreadPoolExecutor(16) as pool:
            statuses = list(pool.map(one, range(16)))
        done.set()
        watcher.join()
        answers = ", ".join(f"{statuses.count(c)} x {c}" for c in sorted(set(statuses), key=str))
        rows.append(("16 concurrent 50 MiB uploads, --concurrency 1", answers))
        rows.append(("  most held in temporary files at once", f"{peak / 2**20:.0f} MiB"))
    finally:
        process.terminate()
        process.wait(timeout=60)

    process, url = serve("--timeout", "2", "--concurrency", "1")
    try:
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
            archive.writestr("zeros.dcm", bytes(200 * 2**20))
        body, kind = multipart("zeros.zip", buffer.getvalue())

        def bomb(_: int) -> int:
            request = urllib.request.Request(f"{url}/predict", data=body, method="POST")
            request.add_header("Content-Type", kind)
            try:
                with urllib.request.urlopen(request, timeout=300) as response:
                    return response.status
            except urllib.error.HTTPError as err:
                return err.code

        with ThreadPoolExecutor(3) as pool:
            statuses = list(pool.map(bomb, range(3)))
        after = _cpu(process.pid)
        time.sleep(10)
        rows.append(
            (
                f"3 x a {len(buffer.getvalue()) // 1024} KB zip of 200 MiB zeros, --timeout 2",
                f"{statuses}; then {_cpu(process.pid) - after:.2f} CPU-s in 10 s",
            )
        )
    finally:
        process.terminate()
        process.wait(timeout=60)
    return rows


def _readable(sock) -> bool:
    import select

    return bool(select.select([sock], [], [], 0)[0])


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
    parser.add_argument("--abuse", action="store_true", help="the limits' figures instead")
    args = parser.parse_args(argv)
    clients = [int(c) for c in args.clients.split(",")]
    if args.abuse:
        return run_abuse(args)
    if args.files < 1 or args.requests < 1 or args.rounds < 1 or min(clients) < 1:
        parser.error("--files, --requests, --rounds and --clients must be >= 1")

    params = load_params(REPO / PARAMS_FILE)
    if args.backbone:
        params = parse_params(merge(params.model_dump(), {"train": {"backbone": args.backbone}}))
    root = Path(tempfile.mkdtemp(prefix="lungct-bench-serve-"))
    services: dict[str, tuple[subprocess.Popen, str]] = {}
    try:
        files = generate(root, params, args.files, args.dicom_size)
        model, labels, _ = save_model(root, params)
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


def run_abuse(args: argparse.Namespace) -> int:
    params = load_params(REPO / PARAMS_FILE)
    root = Path(tempfile.mkdtemp(prefix="lungct-bench-serve-"))
    try:
        files = generate(root, params, 4, args.dicom_size)
        model, _, _ = save_model(root, params)
        rows = abuse(root, model, files)
        host = machine()
    finally:
        shutil.rmtree(root, ignore_errors=True)
    print(f"machine: {host}")
    print("| what | figure |")
    print("|---|---|")
    for what, figure in rows:
        print(f"| {what} | {figure} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
