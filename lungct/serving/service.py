"""The REST inference service (``python -m stages.serve``): Starlette on uvicorn.

``POST /predict`` answers with the JSON of ``python -m stages.predict --format json``
(:func:`lungct.serving.formats.document`: the model, its warning, the rows, the failures),
every file going through the predict command's own
:func:`lungct.serving.inference.predict_files`; ``GET /health``;
``GET /model``. Uploads go to a fresh private temporary folder per request, zips extracted
there by :func:`lungct.io.archives.safe_extract`, all of it removed when the request ends.
docs/deploy.md describes the endpoints, the limits (:class:`Limits`), the errors (one JSON
line, never a traceback or a server path), the log (counts, never file names: names of
medical images often hold patient names) and the batching modes.
"""

from __future__ import annotations

import logging
import queue
import shutil
import socket
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Executor, Future
from contextlib import contextmanager, nullcontext
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import IO, Any, NamedTuple

import numpy as np

from lungct.atomic import sha256_file
from lungct.contract import Preprocessing
from lungct.errors import UserError, describe
from lungct.evaluation.card import INTENDED_USE, read_card
from lungct.io.archives import ArchiveError, safe_extract
from lungct.limits import MiB, size_text
from lungct.model.exported import OnnxModel, card_of
from lungct.reasons import BAD_ARCHIVE
from lungct.serving.formats import About, document
from lungct.serving.inference import Failure, Predictor, predict_files

log = logging.getLogger("lungct.serving.service")
WARNING_HEADER = "X-Model-Warning"
ZIP_MAGIC = (b"PK\x03\x04", b"PK\x05\x06")  # a zip (or an empty one) by content


@dataclass(frozen=True)
class Limits:
    """What one request may ask of the service."""

    max_upload_bytes: int = 256 * MiB  # the whole request body
    max_files: int = 64  # file parts per request
    max_archive_bytes: int = 1024 * MiB  # a zip's unpacked size
    max_archive_members: int = 10_000  # a zip's files and folders
    timeout_s: float = 120.0  # from the request's start to its answer
    concurrency: int = 8  # requests preprocessed at once; the rest wait (within the timeout)
    batch_size: int = 64  # images per model call


class _Job(NamedTuple):
    images: Sequence[np.ndarray]
    answer: Future[np.ndarray]


class MicroBatcher:
    """A :class:`Predictor` behind a queue: the images of concurrent callers of
    :meth:`probabilities` go to the model together, one call per batch of up to
    ``max_batch`` images, from one model thread. The thread waits up to ``max_wait_s``
    for more images only while more requests are in progress than it holds images
    from (:meth:`request` counts them), so a lone client pays no wait."""

    def __init__(self, predictor: Predictor, max_batch: int = 64, max_wait_s: float = 0.004):
        self.predictor = predictor
        self.max_batch = max_batch
        self.max_wait_s = max_wait_s
        self._queue: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._active = 0
        self._active_lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="lungct-model", daemon=True)
        self._thread.start()

    @property
    def prep(self) -> Preprocessing:
        return self.predictor.prep

    @contextmanager
    def request(self) -> Iterator[None]:
        with self._active_lock:
            self._active += 1
        try:
            yield
        finally:
            with self._active_lock:
                self._active -= 1

    def probabilities(self, images: Sequence[np.ndarray]) -> np.ndarray:
        job = _Job(images, Future())
        self._queue.put(job)
        return job.answer.result()

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join(timeout=5)

    def _run(self) -> None:
        while True:
            job = self._queue.get()
            if job is None:
                return
            jobs = [job]
            count = len(job.images)
            deadline = time.monotonic() + self.max_wait_s
            while count < self.max_batch:
                others = self._active > len(jobs)  # requests it holds no images from yet
                wait = max(deadline - time.monotonic(), 0) if others else 0
                try:
                    more = self._queue.get(timeout=wait)  # 0: only what is queued already
                except queue.Empty:
                    break
                if more is None:
                    self._queue.put(None)  # stop after this batch
                    break
                jobs.append(more)
                count += len(more.images)
            self._call(jobs)

    def _call(self, jobs: list[_Job]) -> None:
        try:
            probabilities = self.predictor.probabilities([i for job in jobs for i in job.images])
        except BaseException as exc:  # handed to every waiting request
            for job in jobs:
                job.answer.set_exception(exc)
            return
        start = 0
        for job in jobs:
            job.answer.set_result(probabilities[start : start + len(job.images)])
            start += len(job.images)


# A body declared over the limit is still read (not kept) up to this many times the
# limit before the 413 answer; a larger one is refused at once and the connection closed.
DRAIN_FACTOR = 4


class Service:
    """The loaded model, its contract and card, the limits, and the work of a request."""

    def __init__(
        self,
        predictor: Predictor,
        model_path: Path,
        card_path: Path | None,
        limits: Limits = Limits(),
        batching: str = "queue",
        max_wait_ms: float = 4.0,
        pool: Executor | None = None,
    ) -> None:
        self.predictor = predictor
        self.contract = predictor.contract
        self.limits = limits
        self.batching = batching
        self.pool = pool
        self.model_name = model_path.name
        self.model_sha256 = sha256_file(model_path)
        self.about = About.of(self.contract, self.model_name, self.model_sha256)
        default_card, source_sha256 = card_of(model_path)
        self.card, self.card_note = read_card(card_path or default_card, model_path, source_sha256)
        self.batcher = (
            MicroBatcher(predictor, limits.batch_size, max_wait_ms / 1000)
            if batching == "queue"
            else None
        )

    def model_info(self) -> dict[str, Any]:
        prep = self.contract.prep
        card = self.card
        return {
            "classes": list(self.contract.classes),
            "input": {**prep.to_json(), "max_image_bytes": prep.max_image_bytes},
            "model": {
                "file": self.model_name,
                "sha256": self.model_sha256,
                "version": self.about.model["version"],
            },
            "trained_on": self.contract.describe_data(),
            "data": self.contract.data.to_dict() if self.contract.data else None,
            "test_metrics": card["test"] if card else None,
            "test_metrics_note": None if card else self.card_note.split(": ", 1)[-1],
            "intended_use": INTENDED_USE,
            "warning": self.contract.warning,
            "limits": asdict(self.limits),
            "batching": self.batching,
        }

    def predict_uploads(self, uploads: list[tuple[str, IO[bytes]]]) -> dict[str, Any]:
        """Write the uploads, (name as the client sent it, bytes), to a private temporary
        folder (zips extracted), predict them with the predict command's code, and answer
        with its JSON document; file names are the uploads' own."""
        names = [name for name, _ in uploads]
        with tempfile.TemporaryDirectory(prefix="lungct-serve-") as folder:
            root = Path(folder)
            paths: list[Path] = []
            failures: list[tuple[int, Failure]] = []  # (upload index, failure)
            for index, (name, file) in enumerate(uploads):
                target = root / f"{index:04d}"
                is_zip = file.read(4) in ZIP_MAGIC
                file.seek(0)
                written = target.with_suffix(".zip") if is_zip else target
                with open(written, "xb") as out:
                    shutil.copyfileobj(file, out, 1 << 20)
                problem = self._extract(written, target) if is_zip else None
                if problem is None:
                    paths.append(target)
                else:
                    failures.append((index, Failure(name, BAD_ARCHIVE, problem)))
            predictor: Any = self.batcher or self.predictor
            with self.batcher.request() if self.batcher else nullcontext():
                rows, failed = predict_files(
                    predictor, paths, self.limits.batch_size, pool=self.pool
                )
            for row in rows:
                row.file = _uploaded(root, names, row.file)[1]
            for failure in failed:
                index, file = _uploaded(root, names, failure.file)
                detail = failure.detail
                for key, name in enumerate(names):
                    detail = detail.replace(str(root / f"{key:04d}"), name)
                detail = detail.replace(str(root), "")
                failures.append((index, Failure(file, failure.reason, detail)))
            failures.sort(key=lambda pair: pair[0])  # in upload order
        return document(rows, self.contract.classes, [f for _, f in failures], self.about)

    def _extract(self, archive: Path, target: Path) -> str | None:
        """Extract (then remove) an uploaded zip; why it was refused, if it was."""
        target.mkdir()
        try:
            safe_extract(
                archive,
                target,
                max_bytes=self.limits.max_archive_bytes,
                max_members=self.limits.max_archive_members,
            )
        except ArchiveError as err:  # one line naming the archive, named as uploaded instead
            return str(err).removeprefix(f"{archive.name}: ")
        finally:
            archive.unlink()
        return None


def _uploaded(root: Path, names: list[str], path: str) -> tuple[int, str]:
    """A temporary path as uploaded, with its upload's index: ``<root>/0003`` is the fourth
    upload, ``<root>/0003/a/b.dcm`` its member ``a/b.dcm``."""
    key, *rest = Path(path).relative_to(root).parts
    return int(key), "/".join([names[int(key)], *rest])


def create_app(service: Service) -> Any:
    """The Starlette application of ``service``."""
    import anyio
    from starlette.applications import Starlette
    from starlette.exceptions import HTTPException
    from starlette.formparsers import MultiPartException, MultiPartParser
    from starlette.requests import Request
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    limits = service.limits
    limiter = anyio.CapacityLimiter(limits.concurrency)
    headers = {WARNING_HEADER: service.contract.warning} if service.contract.warning else {}

    def error(status: int, message: str) -> JSONResponse:
        return JSONResponse({"error": message}, status_code=status, headers=headers)

    class _TooLarge(MultiPartException):
        pass

    async def body(request: Request) -> Any:
        received = 0
        async for chunk in request.stream():
            received += len(chunk)
            if received > limits.max_upload_bytes:
                raise _TooLarge("too large")
            yield chunk

    async def form_of(request: Request) -> Any:
        """The multipart form of ``request``, read within the limits."""
        kind = request.headers.get("content-type", "")
        if not kind.lower().startswith("multipart/form-data"):
            raise HTTPException(
                415,
                "send the files as multipart/form-data, one part per file "
                "(curl -F files=@slice.dcm http://HOST/predict)",
            )
        length = request.headers.get("content-length", "")
        over = f"the request is over the limit of {size_text(limits.max_upload_bytes)}"
        if length.isdigit() and int(length) > limits.max_upload_bytes:
            if int(length) <= DRAIN_FACTOR * limits.max_upload_bytes:
                # Read (and drop) a body not far over the limit, so that a client that
                # sends it all before reading gets this answer, not a reset connection.
                async for _ in request.stream():
                    pass
            raise HTTPException(413, over)
        parser = MultiPartParser(
            request.headers, body(request), max_files=limits.max_files, max_fields=16
        )
        try:
            return await parser.parse()
        except _TooLarge:
            raise HTTPException(413, over) from None
        except MultiPartException as exc:
            if exc.message.startswith("Too many files"):
                raise HTTPException(
                    413, f"more than {limits.max_files} files in one request (the limit)"
                ) from None
            raise HTTPException(
                400, f"not a readable multipart/form-data body: {exc.message}"
            ) from None

    async def predict(request: Request) -> JSONResponse:
        form = None
        try:
            with anyio.fail_after(limits.timeout_s):
                form = await form_of(request)
                files = [
                    (value.filename or f"upload-{i + 1}", value.file)
                    for i, (_, value) in enumerate(form.multi_items())
                    if not isinstance(value, str)
                ]
                if not files:
                    raise HTTPException(400, "no files in the request: send one part per file")
                request.state.files = len(files)
                answer = await anyio.to_thread.run_sync(
                    service.predict_uploads, files, limiter=limiter, abandon_on_cancel=True
                )
        except TimeoutError:
            return error(503, f"the request took longer than the limit of {limits.timeout_s:g} s")
        finally:
            if form is not None:
                await form.close()
        request.state.images = sum(r["level"] == "image" for r in answer["predictions"])
        request.state.failures = len(answer["failures"])
        return JSONResponse(answer, headers=headers)

    async def health(request: Request) -> JSONResponse:
        return JSONResponse({"status": "ok"})

    async def model(request: Request) -> JSONResponse:
        return JSONResponse(service.model_info(), headers=headers)

    async def http_error(request: Request, exc: HTTPException) -> JSONResponse:
        return error(exc.status_code, exc.detail)

    async def internal_error(request: Request, exc: Exception) -> JSONResponse:
        return JSONResponse({"error": "internal error"}, status_code=500)

    app = Starlette(
        routes=[
            Route("/predict", predict, methods=["POST"]),
            Route("/health", health, methods=["GET"]),
            Route("/model", model, methods=["GET"]),
        ],
        exception_handlers={HTTPException: http_error, Exception: internal_error},
    )
    return RequestLog(app)


class RequestLog:
    """ASGI middleware: one log line per request (client, method, path, status, time, and
    for /predict the counts); an unexpected exception (answered with a JSON 500 by the
    app's handler) gets its type and first line in the log instead of a traceback."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500

        async def sending(message: dict) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        problem = ""
        try:
            await self.app(scope, receive, sending)
        except Exception as exc:  # a bug, re-raised by Starlette once it has answered
            problem = f" error {describe(exc)}"
        state = scope.get("state", {})
        counts = "".join(f" {k}={state[k]}" for k in ("files", "images", "failures") if k in state)
        client = (scope.get("client") or ("-",))[0]
        request = f"{scope['method']} {scope['path']}"
        took_ms = 1000 * (time.perf_counter() - start)
        log.info("%s %s %d %.0fms%s%s", client, request, status, took_ms, counts, problem)


def load_predictor(model: Path, labels: Path) -> Predictor:
    """The Keras model (``.keras``), or an ONNX export (``.onnx``, run by onnxruntime,
    no TensorFlow), with its contract."""
    if Path(model).suffix.lower() != ".onnx":
        return Predictor.load(model, labels)
    contract = Predictor.check(model, labels)
    try:
        onnx_model = OnnxModel(model)
    except Exception as exc:  # onnxruntime's many errors: one line
        raise UserError(f"{model}: cannot load the ONNX model ({describe(exc)})") from None
    return Predictor(contract.check_model(onnx_model, model, labels), contract)


def serve_forever(service: Service, host: str, port: int, on_ready: Callable[[str], None]):
    """Bind ``host:port`` (0: any free port), call ``on_ready`` with the URL, serve until
    SIGINT or SIGTERM."""
    import uvicorn

    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
        sock.listen(2048)  # connections wait in the backlog until uvicorn accepts them
    except OSError as exc:
        sock.close()
        raise UserError(f"cannot listen on {host}:{port} ({exc.strerror or exc})") from None
    bound = sock.getsockname()[1]
    config = uvicorn.Config(
        create_app(service),
        log_level="warning",
        access_log=False,  # RequestLog writes the one line per request
        server_header=False,
        timeout_keep_alive=5,
        timeout_graceful_shutdown=10,
    )
    server = uvicorn.Server(config)
    shown = f"[{host}]" if family == socket.AF_INET6 else host
    on_ready(f"http://{shown}:{bound}")
    try:
        server.run(sockets=[sock])
    finally:
        if service.batcher is not None:
            service.batcher.close()
