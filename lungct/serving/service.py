"""The REST inference service (``python -m stages.serve``): Starlette on uvicorn.

Endpoints:

* ``POST /predict``: a ``multipart/form-data`` body, one part per file (DICOM, PNG, JPG,
  or a zip of a series or of any such files); the answer is the JSON of
  ``python -m stages.predict --format json`` (:func:`lungct.serving.formats.document`:
  the classes, one row per image, a ``series`` row per DICOM series of a zip, one
  ``failures`` entry per file that got no prediction, with the predict command's reason
  codes) plus ``warning``. A row's ``file`` is the uploaded file's name (a zip's members:
  ``<zip name>/<member path>``).
* ``GET /health``: ``{"status": "ok"}`` once the model is loaded.
* ``GET /model``: what the model is: classes, input (size, channels, windows, 2.5-D
  context, crop), what it was trained on, its test figures from the model card (only when
  the card names this model's sha256), the warning, the limits.

Every file goes through :func:`lungct.serving.inference.predict_files`, the predict command's own
code, with the model loaded once. Uploads are written to a fresh private temporary
folder per request (``tempfile``, mode 700), zips extracted there by
:func:`lungct.io.archives.safe_extract` with its rules and this service's limits, all of it
removed when the request ends.

Limits (:class:`Limits`): the request body (checked against Content-Length before
reading, and counted while streaming), files per request, a zip's unpacked size and
members, the decoded-size limit of every image (:mod:`lungct.limits`, a ``too_large``
failure row as in predict), and a time limit per request (503). A bad request is a 4xx
with ``{"error": "<one line>"}``; the service goes on. No traceback and no path of the
server's in a response; one log line per request, with counts and no file names (names
of medical images often hold patient names).

Batching (``batching``): ``queue`` (default) collects the images of concurrent requests
in one model call (:class:`MicroBatcher`: the model thread waits up to ``max_wait_ms``
for more, only while other requests are in progress); ``lock`` runs one model call per
request batch, one at a time. docs/benchmarks.md has the measurements behind the default.
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
from concurrent.futures import Executor
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import IO, Any

import numpy as np

from lungct.contract import Contract, Preprocessing
from lungct.errors import UserError, describe
from lungct.evaluation.card import INTENDED_USE, read_card, sha256_file
from lungct.io.archives import ArchiveError, safe_extract
from lungct.limits import MiB, size_text
from lungct.model.exported import OnnxModel, card_of
from lungct.serving.formats import document
from lungct.serving.inference import Failure, Prediction, Predictor, predict_files

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


class _Job:
    __slots__ = ("images", "done", "result", "error")

    def __init__(self, images: Sequence[np.ndarray]) -> None:
        self.images = images
        self.done = threading.Event()
        self.result: np.ndarray | None = None
        self.error: BaseException | None = None


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
    def contract(self) -> Contract:
        return self.predictor.contract

    @property
    def classes(self) -> tuple[str, ...]:
        return self.predictor.classes

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
        job = _Job(images)
        self._queue.put(job)
        job.done.wait()
        if job.error is not None:
            raise job.error
        assert job.result is not None
        return job.result

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
                try:
                    more = self._queue.get_nowait()
                except queue.Empty:
                    wait = deadline - time.monotonic()
                    if wait <= 0 or self._active <= len(jobs):  # nobody else to wait for
                        break
                    try:
                        more = self._queue.get(timeout=wait)
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
            start = 0
            for job in jobs:
                job.result = probabilities[start : start + len(job.images)]
                start += len(job.images)
        except BaseException as exc:  # handed to every waiting request
            for job in jobs:
                job.error = exc
        finally:
            for job in jobs:
                job.done.set()


# A body declared over the limit is still read (not kept) up to this many times the
# limit before the 413 answer; a larger one is refused at once and the connection closed.
DRAIN_FACTOR = 4


class _Refused(Exception):
    """A request refused before any work: HTTP status and one line."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass
class RequestPart:
    """One file part of a ``POST /predict`` request: its name as the client sent it, its bytes."""

    name: str
    file: IO[bytes]


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
        self.model_name = Path(model_path).name
        self.model_sha256 = sha256_file(Path(model_path))
        default_card, source_sha256 = card_of(Path(model_path))
        self.card, self.card_note = read_card(card_path or default_card, model_path, source_sha256)
        self.batcher = (
            MicroBatcher(predictor, limits.batch_size, max_wait_ms / 1000)
            if batching == "queue"
            else None
        )

    # ---------------------------------------------------------------- what the model is
    def model_info(self) -> dict[str, Any]:
        prep = self.contract.prep
        card = self.card
        return {
            "classes": list(self.contract.classes),
            "input": {
                "image_size": prep.image_size,
                "channels": prep.channels,
                "windows": [{"center": c, "width": w} for c, w in prep.windows],
                "file_window": prep.file_window,
                "context_slices": prep.context_slices,
                "crop": {"kind": prep.crop, "mm": prep.crop_mm},
                "framing": prep.framing,
                "max_image_bytes": prep.max_image_bytes,
            },
            "model": {"file": self.model_name, "sha256": self.model_sha256},
            "trained_on": self.contract.describe_data(),
            "data": self.contract.data.to_dict() if self.contract.data else None,
            "test_metrics": card["test"] if card else None,
            "test_metrics_note": None if card else self.card_note.split(": ", 1)[-1],
            "intended_use": INTENDED_USE,
            "warning": self.contract.warning,
            "limits": asdict(self.limits),
            "batching": self.batching,
        }

    # ------------------------------------------------------------------ a request's work
    def predict_uploads(self, uploads: list[RequestPart]) -> dict[str, Any]:
        """Write the uploads to a private temporary folder (zips extracted), predict them
        with the predict command's code, and answer with its JSON document; file names
        are the uploads' own."""
        with tempfile.TemporaryDirectory(prefix="lungct-serve-") as folder:
            root = Path(folder)
            names: dict[str, str] = {}
            paths: list[Path] = []
            failures: list[tuple[int, Failure]] = []  # (upload index, failure)
            for index, upload in enumerate(uploads):
                key = f"{index:04d}"
                names[key] = upload.name
                target = root / key
                head = upload.file.read(4)
                upload.file.seek(0)
                if head in ZIP_MAGIC:
                    problem = self._extract(upload, root / f"{key}.zip", target)
                    if problem is not None:
                        failures.append((index, problem))
                        continue
                else:
                    with open(target, "xb") as out:
                        shutil.copyfileobj(upload.file, out, 1 << 20)
                paths.append(target)
            predictor: Any = self.batcher or self.predictor
            with self.batcher.request() if self.batcher else _nothing():
                rows, failed = predict_files(
                    predictor, paths, self.limits.batch_size, pool=self.pool
                )
            rename = _Renamer(root, names)
            rows = [rename.row(row) for row in rows]
            failures += [rename.failure(f) for f in failed]
            failures.sort(key=lambda pair: pair[0])  # in upload order
        answer = document(rows, self.contract.classes, [f for _, f in failures])
        answer["warning"] = self.contract.warning
        return answer

    def _extract(self, upload: RequestPart, archive: Path, target: Path) -> Failure | None:
        with open(archive, "xb") as out:
            shutil.copyfileobj(upload.file, out, 1 << 20)
        target.mkdir()
        try:
            safe_extract(
                archive,
                target,
                max_bytes=self.limits.max_archive_bytes,
                max_members=self.limits.max_archive_members,
            )
        except ArchiveError as err:  # one line naming the archive: named as uploaded
            detail = str(err).removeprefix(f"{archive.name}: ")
            return Failure(upload.name, "bad_archive", detail)
        finally:
            archive.unlink()
        return None


@contextmanager
def _nothing() -> Iterator[None]:
    yield


class _Renamer:
    """Temporary paths back to upload names: ``<root>/0003`` is the fourth upload,
    ``<root>/0003/a/b.dcm`` its member ``a/b.dcm``."""

    def __init__(self, root: Path, names: dict[str, str]) -> None:
        self.root = root
        self.names = names

    def split(self, text: str) -> tuple[str, list[str]]:
        try:
            key, *rest = Path(text).relative_to(self.root).parts
        except ValueError:
            return "", [text]
        return key, rest

    def path(self, text: str) -> str:
        key, rest = self.split(text)
        return "/".join([self.names[key], *rest]) if key in self.names else "/".join(rest)

    def row(self, row: Prediction) -> Prediction:
        row.file = self.path(row.file)
        return row

    def failure(self, failure: Failure) -> tuple[int, Failure]:
        """The failure, named as uploaded, with the index of its upload."""
        detail = failure.detail
        for key, name in self.names.items():
            detail = detail.replace(str(self.root / key), name)
        key, _ = self.split(failure.file)
        index = int(key) if key.isdigit() else len(self.names)
        renamed = Failure(
            self.path(failure.file), failure.reason, detail.replace(str(self.root), "")
        )
        return index, renamed


# ------------------------------------------------------------------------- the ASGI app
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

    async def uploads_of(request: Request) -> tuple[list[RequestPart], Any]:
        kind = request.headers.get("content-type", "")
        if not kind.lower().startswith("multipart/form-data"):
            raise _Refused(
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
            raise _Refused(413, over)
        parser = MultiPartParser(
            request.headers, body(request), max_files=limits.max_files, max_fields=16
        )
        try:
            form = await parser.parse()
        except _TooLarge:
            raise _Refused(413, over) from None
        except MultiPartException as exc:
            if exc.message.startswith("Too many files"):
                raise _Refused(
                    413, f"more than {limits.max_files} files in one request (the limit)"
                ) from None
            raise _Refused(400, f"not a readable multipart/form-data body: {exc.message}") from None
        files = [
            RequestPart(value.filename or f"upload-{i + 1}", value.file)
            for i, (_, value) in enumerate(form.multi_items())
            if not isinstance(value, str)
        ]
        if not files:
            await form.close()
            raise _Refused(400, "no files in the request: send one part per file")
        return files, form

    async def predict(request: Request) -> JSONResponse:
        form = None
        try:
            with anyio.fail_after(limits.timeout_s):
                files, form = await uploads_of(request)
                request.state.files = len(files)
                answer = await anyio.to_thread.run_sync(
                    service.predict_uploads, files, limiter=limiter, abandon_on_cancel=True
                )
        except _Refused as refused:
            return error(refused.status, refused.message)
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

    async def http_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, HTTPException)
        return error(exc.status_code, str(exc.detail))

    app = Starlette(
        routes=[
            Route("/predict", predict, methods=["POST"]),
            Route("/health", health, methods=["GET"]),
            Route("/model", model, methods=["GET"]),
        ],
        exception_handlers={HTTPException: http_error},
    )
    return RequestLog(app)


class RequestLog:
    """ASGI middleware: one log line per request (client, method, path, status, time, and
    for /predict the counts), and a JSON 500 instead of a traceback for anything
    unexpected (its type and first line go to the log)."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = {"code": 500, "started": False}

        async def sending(message: dict) -> None:
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
                status["started"] = True
            await send(message)

        problem = ""
        try:
            await self.app(scope, receive, sending)
        except Exception as exc:  # a bug: the client gets one line, the log the exception
            problem = f" error {describe(exc)}"
            if not status["started"]:
                from starlette.responses import JSONResponse

                response = JSONResponse({"error": "internal error"}, status_code=500)
                await response(scope, receive, sending)
        state = scope.get("state", {})
        counts = "".join(
            f" {key}={state[key]}" for key in ("files", "images", "failures") if key in state
        )
        client = scope.get("client") or ("-", 0)
        log.info(
            "%s %s %s %d %.0fms%s%s",
            client[0],
            scope["method"],
            scope["path"],
            status["code"],
            1000 * (time.perf_counter() - start),
            counts,
            problem,
        )


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
