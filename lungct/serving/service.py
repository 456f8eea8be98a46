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

import ctypes
import json
import logging
import math
import os
import queue
import re
import shutil
import signal
import socket
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Executor, Future
from contextlib import contextmanager, nullcontext
from dataclasses import asdict, dataclass, field, fields, replace
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
from lungct.reasons import BAD_ARCHIVE, TOO_LARGE
from lungct.serving.formats import About, document
from lungct.serving.inference import (
    Failure,
    NonFiniteOutput,
    Predictor,
    ReadGuard,
    predict_files,
)

log = logging.getLogger("lungct.serving.service")
WARNING_HEADER = "X-Model-Warning"
ZIP_MAGIC = (b"PK\x03\x04", b"PK\x05\x06")  # a zip (or an empty one) by content


def _limit(default: float, low: float, high: float, flag: str, text: str) -> Any:
    """A :class:`Limits` field: its default, the range a value must lie in (``low`` is
    exclusive for a float, inclusive for an int), its command-line option and help."""
    return field(default=default, metadata={"range": (low, high), "flag": flag, "help": text})


@dataclass(frozen=True)
class Limits:
    """What one request, and all of them at once, may ask of the service: the one home of
    every limit, its default, range and option (``stages.serve`` makes its options from
    these fields; docs/deploy.md lists them)."""

    max_upload_bytes: int = _limit(256 * MiB, 1, 2**40, "--max-upload-bytes", "request body")
    max_files: int = _limit(64, 1, 10_000, "--max-files", "file parts per request")
    max_unpacked_bytes: int = _limit(
        1024 * MiB, 1, 2**40, "--max-unpacked-bytes", "a request's files on disk, zips unpacked"
    )
    max_members: int = _limit(
        10_000, 1, 10_000_000, "--max-members", "a request's files, and its zips' members"
    )
    max_decoded_bytes: int = _limit(
        2048 * MiB, 1, 2**40, "--max-decoded-bytes", "a request's images, decoded"
    )
    timeout_s: float = _limit(120.0, 0.0, 86_400.0, "--timeout", "seconds per request")
    concurrency: int = _limit(8, 1, 1024, "--concurrency", "requests read and predicted at once")
    batch_size: int = _limit(64, 1, 4096, "--batch-size", "images per model call")
    max_pending: int = _limit(
        32, 1, 10_000, "--max-pending", "/predict requests admitted at once (503 beyond)"
    )
    max_buffered_bytes: int = _limit(
        512 * MiB, 1, 2**42, "--max-buffered-bytes", "request bodies held at once (503 beyond)"
    )
    max_connections: int = _limit(
        256, 1, 100_000, "--max-connections", "open connections (503 and closed beyond)"
    )
    header_timeout_s: float = _limit(
        10.0, 0.0, 3600.0, "--header-timeout", "seconds to send a request's headers"
    )
    keep_alive_s: float = _limit(
        5.0, 0.0, 3600.0, "--keep-alive", "seconds an idle kept-alive connection stays open"
    )
    shutdown_s: float = _limit(
        10.0, 0.0, 3600.0, "--shutdown-timeout", "seconds requests get to finish on SIGTERM"
    )

    def __post_init__(self) -> None:
        for name, value in asdict(self).items():
            problem = limit_problem(name, value)
            if problem:
                raise UserError(problem)
        if self.max_buffered_bytes < self.max_upload_bytes:  # no field can say it alone
            raise UserError(
                f"--max-buffered-bytes ({self.max_buffered_bytes}) must be at least "
                f"--max-upload-bytes ({self.max_upload_bytes}): a request of the largest "
                "size could never be admitted"
            )


def limit_problem(name: str, value: float) -> str | None:
    """Why ``value`` is no good for the :class:`Limits` field ``name``, naming its option."""
    spec = next(f for f in fields(Limits) if f.name == name)
    low, high = spec.metadata["range"]
    flag = spec.metadata["flag"]
    if isinstance(spec.default, float):
        if not math.isfinite(value) or not low < value <= high:
            return f"{flag} must be a number over {low:g} and at most {high:g}, not {value!r}"
    elif not low <= value <= high:
        return f"{flag} must be a whole number from {low:g} to {high:g}, not {value}"
    return None


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

    @property
    def alive(self) -> bool:
        """Whether the model thread runs (``/health`` fails when it does not)."""
        return self._thread.is_alive()

    def probabilities(self, images: Sequence[np.ndarray]) -> np.ndarray:
        if not self.alive:
            raise RuntimeError("the model thread has stopped")
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
            try:
                self._gather(jobs)
            except Exception as exc:  # noqa: BLE001 - a bug here must not stop the thread
                for waiting in jobs:
                    waiting.answer.set_exception(exc)
                continue
            self._call(jobs)

    def _gather(self, jobs: list[_Job]) -> None:
        """Add the jobs that come within the wait (see the class) to ``jobs``."""
        count = len(jobs[0].images)
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

    def _call(self, jobs: list[_Job]) -> None:
        try:
            probabilities = self.predictor.probabilities([i for job in jobs for i in job.images])
        except NonFiniteOutput as exc:  # each request fails for its own images only
            start = 0
            for job in jobs:
                stop = start + len(job.images)
                rows = exc.rows[start:stop]
                if rows.any():
                    job.answer.set_exception(NonFiniteOutput(exc.probabilities[start:stop], rows))
                else:
                    job.answer.set_result(exc.probabilities[start:stop])
                start = stop
            return
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


class Cancelled(BaseException):  # noqa: N818 - a stop, not an error
    """A request's work stopped: its time ran out, its client left, or the service stops.
    A BaseException, so that a reader's ``except Exception`` (a bad file) does not take it
    for a failure of the file being read."""


def _raise_in(thread: int, exc: type[BaseException] | None) -> None:
    """Have ``exc`` raised in ``thread`` at its next Python instruction (None: drop one not
    raised yet). It stops a parser busy in Python code (pydicom is pure Python) between
    two of the reading loop's own checks."""
    ctypes.pythonapi.PyThreadState_SetAsyncExc(
        ctypes.c_ulong(thread), ctypes.py_object(exc) if exc is not None else None
    )


class Job:
    """One request's work in a worker thread, and its cancellation: :meth:`check` is called
    in every loop of the work (the copy of an upload, each MiB a zip unpacks to, each file
    read); while the work is :meth:`interruptible`, :meth:`cancel` also raises
    :class:`Cancelled` in its thread, for a file that takes long to parse."""

    def __init__(self) -> None:
        self.cancelled = threading.Event()
        self._lock = threading.Lock()
        self._thread: int | None = None

    def check(self) -> None:
        if self.cancelled.is_set():
            raise Cancelled

    @contextmanager
    def interruptible(self) -> Iterator[None]:
        with self._lock:
            self._thread = threading.get_ident()
        try:
            self.check()
            yield
        finally:
            with self._lock:
                self._thread = None
                _raise_in(threading.get_ident(), None)

    def cancel(self) -> None:
        with self._lock:
            if self.cancelled.is_set():
                return
            self.cancelled.set()
            if self._thread is not None:
                _raise_in(self._thread, Cancelled)


# A body declared over the limit is still read (not kept) up to this many times the
# limit before the 413 answer; a larger one is refused at once and the connection closed.
DRAIN_FACTOR = 4
RETRY_AFTER_S = 2  # the Retry-After of a 503 for a busy service
TEMP_PREFIX = "lungct-serve-"  # + the owning process id + "-": its folder of uploads


def sweep_temp(parent: Path | None = None) -> int:
    """Remove the upload folders of service processes that are gone (a SIGKILL leaves them
    behind); return how many. A folder is ``lungct-serve-<pid>-*``, its process's."""
    removed = 0
    for folder in Path(parent or tempfile.gettempdir()).glob(f"{TEMP_PREFIX}*-*"):
        pid = folder.name.removeprefix(TEMP_PREFIX).split("-", 1)[0]
        if not pid.isdigit() or int(pid) == os.getpid() or not folder.is_dir():
            continue
        try:
            os.kill(int(pid), 0)
            continue  # its process runs
        except ProcessLookupError:
            pass
        except PermissionError:
            continue  # another user's process runs
        shutil.rmtree(folder, ignore_errors=True)
        removed += not folder.exists()
    return removed


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
        swept = sweep_temp()
        if swept:
            log.info("serve: removed %d upload folder(s) of stopped services", swept)
        self.temp_root = Path(tempfile.mkdtemp(prefix=f"{TEMP_PREFIX}{os.getpid()}-"))
        self._slots = threading.BoundedSemaphore(limits.concurrency)
        self._jobs: set[Job] = set()
        self._jobs_lock = threading.Lock()

    def problem(self) -> str | None:
        """Why the service cannot answer /predict, or None (``/health``)."""
        if self.batcher is not None and not self.batcher.alive:
            return "the model thread has stopped"
        if not self.temp_root.is_dir():
            return "its folder of uploads is gone"
        return None

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

    def run(self, uploads: list[tuple[str, IO[bytes]]], job: Job) -> dict[str, Any]:
        """:meth:`predict_uploads` in a worker thread, within ``--concurrency``: the slot is
        held until the work has really stopped (a request answered 503 at its time limit
        keeps it until its cancelled work returns)."""
        while not self._slots.acquire(timeout=0.05):
            job.check()
        with self._jobs_lock:
            self._jobs.add(job)
        try:
            return self.predict_uploads(uploads, job)
        finally:
            with self._jobs_lock:
                self._jobs.discard(job)
            self._slots.release()

    def predict_uploads(
        self, uploads: list[tuple[str, IO[bytes]]], job: Job | None = None
    ) -> dict[str, Any]:
        """Write the uploads, (name as the client sent it, bytes), to a private temporary
        folder (zips extracted), predict them with the predict command's code, and answer
        with its JSON document; file names are the uploads' own. The request's budget
        (``max_unpacked_bytes``, ``max_members``, ``max_decoded_bytes``) holds across all
        its parts, each checked before the space is used; a part over what is left is a
        failure row. ``job`` stops the work when it is cancelled (:class:`Cancelled`)."""
        job = job or Job()
        limits = self.limits
        names = [name for name, _ in uploads]
        with tempfile.TemporaryDirectory(prefix="request-", dir=self.temp_root) as folder:
            root = Path(folder)
            failures: list[tuple[int, Failure]] = []  # (upload index, failure)
            with job.interruptible():
                paths = self._write_uploads(root, uploads, job, failures)
                guard = ReadGuard(limits.max_decoded_bytes, job.check)
                predictor: Any = self.batcher or self.predictor
                with self.batcher.request() if self.batcher else nullcontext():
                    rows, failed = predict_files(
                        predictor, paths, limits.batch_size, pool=self.pool, guard=guard
                    )
            for row in rows:
                row.file = _uploaded(root, names, row.file)[1]
            for failure in failed:
                index, file = _uploaded(root, names, failure.file)
                failures.append((index, Failure(file, failure.reason, failure.detail)))
            failures.sort(key=lambda pair: pair[0])  # in upload order
            shown = [
                Failure(f.file, f.reason, self.client_text(f.detail, root, names))
                for _, f in failures
            ]
        return document(rows, self.contract, shown, self.about)

    def _write_uploads(
        self,
        root: Path,
        uploads: list[tuple[str, IO[bytes]]],
        job: Job,
        failures: list[tuple[int, Failure]],
    ) -> list[Path]:
        """Each upload to ``root/NNNN`` (a zip extracted into it), within the request's
        budget of bytes on disk and members; the paths to read."""
        limits = self.limits
        bytes_left, members_left = limits.max_unpacked_bytes, limits.max_members
        paths: list[Path] = []
        for index, (name, file) in enumerate(uploads):
            job.check()
            target = root / f"{index:04d}"
            size = file.seek(0, os.SEEK_END)
            file.seek(0)
            is_zip = file.read(4) in ZIP_MAGIC
            file.seek(0)
            refusal = self._over_budget(size, bytes_left, members_left)
            if refusal is not None:
                failures.append(
                    (index, Failure(name, BAD_ARCHIVE if is_zip else TOO_LARGE, refusal))
                )
                continue
            written = target.with_suffix(".zip") if is_zip else target
            with open(written, "xb") as out:
                while chunk := file.read(1 << 20):
                    job.check()
                    out.write(chunk)
            if not is_zip:
                bytes_left -= size
                members_left -= 1
                paths.append(target)
                continue
            target.mkdir()
            try:
                stats = safe_extract(
                    written,
                    target,
                    max_bytes=bytes_left - size,  # the zip is on disk while it unpacks
                    max_members=members_left,
                    limit_names=("max_unpacked_bytes_left", "max_members_left"),
                    check=job.check,
                )
            except ArchiveError as err:  # one line naming the archive, named as uploaded
                problem = str(err).removeprefix(f"{written.name}: ")
                failures.append((index, Failure(name, BAD_ARCHIVE, problem)))
                continue
            finally:
                written.unlink()
            bytes_left -= stats.bytes
            members_left -= stats.members
            paths.append(target)
        return paths

    def _over_budget(self, size: int, bytes_left: int, members_left: int) -> str | None:
        limits = self.limits
        if members_left < 1:
            return (
                f"not unpacked: the parts before it used up the limit of {limits.max_members} "
                "files per request (max_members)"
            )
        if size > bytes_left:
            return (
                f"{size_text(size)}, over what is left ({size_text(max(bytes_left, 0))}) of "
                f"the limit of {size_text(limits.max_unpacked_bytes)} of files per request "
                "(max_unpacked_bytes)"
            )
        return None

    def client_text(self, text: str, root: Path, names: list[str]) -> str:
        """``text`` (a failure's detail) with every server path as the client named it:
        ``<root>/0003/a/b.dcm`` is ``<fourth upload's name>/a/b.dcm``; any other path in
        the temporary folder is left out. The one place an answer's text passes through."""
        upload = re.compile(re.escape(str(root)) + r"/(\d{4})(?:\.zip)?")
        text = upload.sub(lambda m: names[int(m.group(1))], text)
        for place in {str(self.temp_root), tempfile.gettempdir()}:
            text = re.sub(re.escape(place) + r"[^\s'\"]*", "(a temporary file)", text)
        return text

    def close(self, wait_s: float = 10.0) -> None:
        """Stop the requests' work (cancelled), the reader processes (:func:`stop_pool`),
        the model thread, and remove the uploads."""
        with self._jobs_lock:
            jobs = list(self._jobs)
        for job in jobs:
            job.cancel()
        if self.pool is not None:
            stop_pool(self.pool)
        deadline = time.monotonic() + wait_s
        while self._jobs and time.monotonic() < deadline:
            time.sleep(0.05)
        if self.batcher is not None:
            self.batcher.close()
        shutil.rmtree(self.temp_root, ignore_errors=True)


def stop_pool(pool: Executor) -> None:
    """Stop the reader processes now: a file one is parsing is not waited for."""
    processes = list((getattr(pool, "_processes", None) or {}).values())  # gone after shutdown
    pool.shutdown(wait=False, cancel_futures=True)
    for process in processes:
        process.terminate()
    for process in processes:
        process.join(timeout=5)
        if process.is_alive():
            process.kill()
            process.join(timeout=5)


def _uploaded(root: Path, names: list[str], path: str) -> tuple[int, str]:
    """A temporary path as uploaded, with its upload's index: ``<root>/0003`` is the fourth
    upload, ``<root>/0003/a/b.dcm`` its member ``a/b.dcm``."""
    key, *rest = Path(path).relative_to(root).parts
    return int(key), "/".join([names[int(key)], *rest])


class Admission:
    """The requests to ``/predict`` held at once (receiving, waiting or worked on), and the
    bytes of their bodies (as declared, or ``max_upload_bytes`` for a body of unknown
    size): beyond ``max_pending`` or ``max_buffered_bytes``, a request is answered 503
    with ``Retry-After`` before its body is read. Used from the event loop only."""

    def __init__(self, limits: Limits) -> None:
        self.limits = limits
        self.requests = 0
        self.bytes = 0

    def enter(self, declared: str) -> int | None:
        """The bytes reserved for a body of Content-Length ``declared``; None: busy."""
        limits = self.limits
        size = int(declared) if declared.isdigit() else limits.max_upload_bytes
        size = min(size, limits.max_upload_bytes)  # a larger one is refused, not kept
        if self.requests >= limits.max_pending or self.bytes + size > limits.max_buffered_bytes:
            return None
        self.requests += 1
        self.bytes += size
        return size

    def leave(self, size: int) -> None:
        self.requests -= 1
        self.bytes -= size


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
    threads = anyio.CapacityLimiter(limits.max_pending)  # the worker threads of requests
    admission = Admission(limits)
    headers = {WARNING_HEADER: service.contract.warning} if service.contract.warning else {}

    def error(status: int, message: str, **more: str) -> JSONResponse:
        return JSONResponse({"error": message}, status_code=status, headers={**headers, **more})

    def busy(message: str) -> JSONResponse:
        return error(503, message, **{"Retry-After": str(RETRY_AFTER_S)})

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
        reserved = admission.enter(request.headers.get("content-length", ""))
        if reserved is None:
            return busy("the service is busy (too many uploads held at once); try again later")
        form = None
        job = Job()
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
                    service.run, files, job, limiter=threads, abandon_on_cancel=True
                )
        except TimeoutError:
            return busy(f"the request took longer than the limit of {limits.timeout_s:g} s")
        except Cancelled:
            return busy("the service is stopping")
        finally:
            job.cancel()  # the work stops where it is, if it has not returned
            if form is not None:
                await form.close()
            admission.leave(reserved)
        request.state.images = sum(r["level"] == "image" for r in answer["predictions"])
        request.state.failures = len(answer["failures"])
        return JSONResponse(answer, headers=headers)

    async def health(request: Request) -> JSONResponse:
        problem = service.problem()
        if problem is not None:
            return JSONResponse({"status": "error", "error": problem}, status_code=503)
        return JSONResponse({"status": "ok"})

    async def model(request: Request) -> JSONResponse:
        return JSONResponse(service.model_info(), headers=headers)

    async def http_error(request: Request, exc: HTTPException) -> JSONResponse:
        return error(exc.status_code, exc.detail)

    async def internal_error(request: Request, exc: Exception) -> JSONResponse:
        return JSONResponse(INTERNAL_ERROR, status_code=500)

    app = Starlette(
        routes=[
            Route("/predict", predict, methods=["POST"]),
            Route("/health", health, methods=["GET"]),
            Route("/model", model, methods=["GET"]),
        ],
        exception_handlers={HTTPException: http_error, Exception: internal_error},
    )
    return RequestLog(app)


INTERNAL_ERROR = {"error": "internal error"}


class RequestLog:
    """ASGI middleware: one log line per request (client, method, path, status, time, and
    for /predict the counts); an unexpected exception (answered with a JSON 500 by the
    app's handler, or here when nothing was sent yet) gets its type and first line in the
    log instead of a traceback."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500
        started = False

        async def sending(message: dict) -> None:
            nonlocal status, started
            if message["type"] == "http.response.start":
                status, started = message["status"], True
            await send(message)

        problem = ""
        try:
            await self.app(scope, receive, sending)
        except Exception as exc:  # a bug, re-raised by Starlette once it has answered
            problem = f" error {describe(exc)}"
            if not started:
                body = json.dumps(INTERNAL_ERROR).encode()
                kind = (b"content-type", b"application/json")
                await send({"type": "http.response.start", "status": 500, "headers": [kind]})
                await send(dict(type="http.response.body", body=body))
        state = scope.get("state", {})
        counts = "".join(f" {k}={state[k]}" for k in ("files", "images", "failures") if k in state)
        client = (scope.get("client") or ("-",))[0]
        request = f"{scope['method']} {scope['path']}"
        took_ms = 1000 * (time.perf_counter() - start)
        log.info("%s %s %d %.0fms%s%s", client, request, status, took_ms, counts, problem)


class OncePerInterval(logging.Filter):
    """The log at WARNING and above, rate-limited: one line per kind of failure (logger
    and first line of the message) per ``interval_s``, with the exception's type and first
    line instead of a traceback, and how many like it were left out since the last one.
    A flood (a full file table makes every accept fail) is then a line every few seconds."""

    def __init__(self, interval_s: float = 10.0) -> None:
        super().__init__()
        self.interval_s = interval_s
        self._seen: dict[tuple[str, str], tuple[float, int]] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.WARNING:
            return True
        line = first_line_of(record.getMessage())
        key = (record.name, line)
        now = time.monotonic()
        last, left_out = self._seen.get(key, (-math.inf, 0))
        if now - last < self.interval_s:
            self._seen[key] = (last, left_out + 1)
            return False
        if record.exc_info and record.exc_info[1] is not None:
            line = f"{line} ({describe(record.exc_info[1])})"
        if left_out:
            line += f" ({left_out} more like it in {self.interval_s:g} s)"
        record.msg, record.args = line, None
        record.exc_info = record.exc_text = record.stack_info = None
        self._seen[key] = (now, 0)
        return True


def first_line_of(text: str) -> str:
    return text.strip().splitlines()[0] if text.strip() else ""


BUSY_CONNECTIONS = b'{"error": "too many open connections; try again later"}'


def guarded_protocol(limits: Limits) -> type:
    """uvicorn's h11 protocol with what uvicorn lacks: a limit on open connections (one
    more is answered 503 and closed at once), a time limit on a request's headers (from
    the connection's start, or the previous answer: an idle or slow client is closed),
    and its own 400 for a malformed request in the service's JSON."""
    from uvicorn.protocols.http.h11_impl import H11Protocol

    def raw(status: str, body: bytes, *more: str) -> bytes:
        head = [
            f"HTTP/1.1 {status}",
            "content-type: application/json",
            f"content-length: {len(body)}",
            "connection: close",
            *more,
        ]
        return ("\r\n".join(head) + "\r\n\r\n").encode() + body

    busy = raw("503 Service Unavailable", BUSY_CONNECTIONS, f"retry-after: {RETRY_AFTER_S}")

    class GuardedH11Protocol(H11Protocol):
        _refused = False
        _header_timer: Any = None

        def connection_made(self, transport: Any) -> None:
            if len(self.connections) >= limits.max_connections:
                self._refused = True
                self.transport = transport
                log.warning(
                    "serve: refused a connection: %d open (max_connections)", limits.max_connections
                )
                transport.write(busy)
                transport.close()
                return
            super().connection_made(transport)
            self._wait_for_headers()

        def _wait_for_headers(self) -> None:
            self._stop_waiting()
            self._header_timer = self.loop.call_later(limits.header_timeout_s, self._too_slow)

        def _stop_waiting(self) -> None:
            if self._header_timer is not None:
                self._header_timer.cancel()
                self._header_timer = None

        def _too_slow(self) -> None:
            self._header_timer = None
            if not self.transport.is_closing():
                self.transport.close()

        def handle_events(self) -> None:
            before = self.cycle
            super().handle_events()
            if self.cycle is not before:  # a request's headers are in
                self._stop_waiting()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            if not self.transport.is_closing():
                self._wait_for_headers()

        def connection_lost(self, exc: Exception | None) -> None:
            if self._refused:
                return
            self._stop_waiting()
            super().connection_lost(exc)

        def send_400_response(self, msg: str) -> None:
            log.warning("serve: %s", msg)
            body = json.dumps({"error": "not a valid HTTP/1.1 request"}).encode()
            self.transport.write(raw("400 Bad Request", body))
            self.transport.close()

    return GuardedH11Protocol


FD_RESERVE = 64  # files the process needs besides its connections (model, logs, uploads)


def fit_connections(limits: Limits) -> int:
    """``max_connections``, within what the open-file limit allows: the soft limit is raised
    towards the hard one, and a limit that still cannot hold ``max_connections`` plus a
    reserve lowers it (logged), so that the service never runs out of files."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = limits.max_connections + FD_RESERVE
    if soft != resource.RLIM_INFINITY and soft < want:
        raised = want if hard == resource.RLIM_INFINITY else min(hard, want)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (raised, hard))
            soft = raised
        except (ValueError, OSError):
            pass
    if soft == resource.RLIM_INFINITY or soft >= want:
        return limits.max_connections
    fitted = max(1, soft - FD_RESERVE)
    log.warning(
        "serve: max_connections lowered from %d to %d: the open-file limit is %d",
        limits.max_connections,
        fitted,
        soft,
    )
    return fitted


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
    SIGINT or SIGTERM; then stop the requests' work and remove the uploads (the caller
    stops its reader processes)."""
    import uvicorn

    for handler in logging.getLogger().handlers:
        if not any(isinstance(f, OncePerInterval) for f in handler.filters):
            handler.addFilter(OncePerInterval())
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
        sock.listen(2048)  # connections wait in the backlog until uvicorn accepts them
    except OSError as exc:
        sock.close()
        service.close(0)
        raise UserError(f"cannot listen on {host}:{port} ({exc.strerror or exc})") from None
    bound = sock.getsockname()[1]
    limits = replace(service.limits, max_connections=fit_connections(service.limits))
    config = uvicorn.Config(
        create_app(service),
        http=guarded_protocol(limits),
        log_config=None,  # the service's own log (run_stage's), rate-limited above
        log_level="warning",
        access_log=False,  # RequestLog writes the one line per request
        server_header=False,
        timeout_keep_alive=limits.keep_alive_s,
        timeout_graceful_shutdown=limits.shutdown_s,
    )
    server = _Server(config)
    shown = f"[{host}]" if family == socket.AF_INET6 else host
    on_ready(f"http://{shown}:{bound}")
    try:
        server.run(sockets=[sock])
    finally:
        service.close()


def _server_class() -> type:
    import uvicorn

    class Server(uvicorn.Server):
        """uvicorn's server, except that a SIGTERM or SIGINT it caught is not raised again
        once it has stopped: that would end the process before its cleanup (the uploads'
        folder, the reader processes)."""

        @contextmanager
        def capture_signals(self) -> Iterator[None]:
            if threading.current_thread() is not threading.main_thread():
                yield
                return
            caught = (signal.SIGINT, signal.SIGTERM)
            original = {sig: signal.signal(sig, self.handle_exit) for sig in caught}
            try:
                yield
            finally:
                for sig, handler in original.items():
                    signal.signal(sig, handler)

    return Server


def _Server(config: Any) -> Any:  # noqa: N802 - a class made on first use (uvicorn import)
    return _server_class()(config)
