"""Inference with the trained model exactly as trained: the contract, the model, and batched
prediction of raw files (DICOM or images) for ``stages.predict`` and the app.

Every file goes through :func:`lungct.io.preprocess.model_images`, the convert stage's own
code, with the windows, channels and input size that ``models/labels.json`` records; the
uint8 result is fed as float32 0..255, as train and evaluate feed the PNGs. The model (a
TensorFlow import) is loaded only after the contract and the files' existence are
checked, so a missing model is reported at once.
"""

from __future__ import annotations

import multiprocessing
import os
import stat
import sys
import tempfile
import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Executor, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass, field
from itertools import groupby, islice
from pathlib import Path
from typing import Any

import numpy as np

from lungct.artifacts import CONTRACT_FILE, MODEL_FILE
from lungct.contract import Contract, Preprocessing
from lungct.errors import SkippedFile, UserError, first_line
from lungct.io.images import model_input
from lungct.io.preprocess import file_problem, model_images
from lungct.limits import size_text
from lungct.names import Crop
from lungct.reasons import NON_FINITE_OUTPUT, NOT_A_FILE, NOT_FOUND, TOO_LARGE, UNREADABLE

NO_MODEL_HINT = "no trained model: run `dvc repro` first (or give --model and --labels)"
READ_CHUNK = 8  # files per task on a reader process
# What a folder walk passes over by name (case-insensitive), never opened, only counted: the
# metadata a download keeps beside its images (TCIA's readers' XML, manifests, notes, the
# media directory). A file given by name is still read.
METADATA_SUFFIXES = (".xml", ".csv", ".json", ".txt", ".md")
METADATA_NAMES = ("DICOMDIR",)  # the DICOM media directory file


class NonFiniteOutput(SkippedFile):
    """Model outputs that are no probabilities, NaN or infinite (a model with damaged
    weights gives them for every image), reason ``non_finite_output``: never an answer.
    ``rows`` marks the images of the batch they are for; ``probabilities`` holds the
    batch's outputs, the marked rows' unusable."""

    def __init__(self, probabilities: np.ndarray, rows: np.ndarray) -> None:
        super().__init__(NON_FINITE_OUTPUT, "the model gave NaN or infinite outputs for it")
        self.probabilities, self.rows = probabilities, rows


def checked_outputs(probabilities: np.ndarray) -> np.ndarray:
    """``probabilities`` (N x classes) when every value is finite, else
    :class:`NonFiniteOutput` marking the rows that are not: the one check of what a model
    (Keras or ONNX, :class:`Predictor`) answered."""
    rows = ~np.isfinite(probabilities).reshape(len(probabilities), -1).all(axis=1)
    if rows.any():
        raise NonFiniteOutput(probabilities, rows)
    return probabilities


class Predictor:
    """A loaded model and its contract; thread-safe batched class probabilities."""

    def __init__(self, model: Any, contract: Contract) -> None:
        self.model = model
        self.contract = contract
        self._lock = threading.Lock()  # the app shares one model between sessions

    @property
    def classes(self) -> tuple[str, ...]:
        return self.contract.classes

    @property
    def prep(self) -> Preprocessing:
        return self.contract.prep

    @classmethod
    def load(
        cls, model: Path = MODEL_FILE, labels: Path = CONTRACT_FILE, tta: bool = False
    ) -> Predictor:
        """Read the contract, then load the model (Keras safe mode) and check they agree.
        The model is its float32 inference copy (``lungct.model.saving.load_model``); its
        ``conv`` layers keep their names, for Grad-CAM. TensorFlow's start-up chatter
        (CUDA probing on a machine without a GPU) stays off stderr, as in every stage
        (:mod:`lungct.model.quiet`, applied by the import of ``lungct.model``). ``tta``:
        the mean over test-time views (``lungct.model.network.tta_model``), as evaluate
        with ``evaluate.tta``.
        """
        contract = cls.check(model, labels)
        model = Path(model)
        try:
            from lungct.model.saving import load_model  # imports TensorFlow

            keras_model = load_model(model)
        except UserError:  # load_model names a truncated or foreign file itself
            raise
        except Exception as exc:  # anything else it lets through: still one line
            raise UserError(
                f"{model}: cannot load the model ({first_line(exc)}); rerun dvc repro"
            ) from None
        contract.check_model(keras_model, model, labels)
        if tta:
            from lungct.model.network import tta_model

            keras_model = tta_model(keras_model)
        return cls(keras_model, contract)

    def probabilities(self, images: Sequence[np.ndarray]) -> np.ndarray:
        """Class probabilities (N x classes, float32) of uint8 model images;
        :class:`NonFiniteOutput` when some are NaN or infinite (:func:`checked_outputs`)."""
        x = model_input(images)
        with self._lock:
            probabilities = np.asarray(self.model.predict_on_batch(x), dtype=np.float32)
        return checked_outputs(probabilities)

    @staticmethod
    def check(model: Path = MODEL_FILE, labels: Path = CONTRACT_FILE) -> Contract:
        """What :meth:`load` checks before importing TensorFlow: the contract, and that the
        model file exists (a missing model is reported at once)."""
        contract = Contract.read(Path(labels))
        if not Path(model).is_file():
            raise UserError(f"{model}: not found; {NO_MODEL_HINT}")
        return contract


@dataclass(frozen=True)
class UploadResult:
    """An uploaded file's model images (uint8, one per frame) and their probabilities."""

    pixels: np.ndarray  # N x H x W (x C)
    probabilities: np.ndarray  # N x classes, float32
    mode: str  # "HU" for DICOM, else the original PIL mode
    windows: tuple[tuple[float, float], ...]  # DICOM: the windows used (first frame)


def predict_bytes(predictor: Predictor, data: bytes, batch_size: int = 64) -> UploadResult:
    """An uploaded file's bytes, DICOM or image, told apart by content -> :class:`UploadResult`;
    :class:`SkippedFile` when it is neither a CT image nor an image. The readers take paths:
    the bytes go to a fresh private temporary folder (mode 700), removed before this returns.
    """
    with tempfile.TemporaryDirectory(prefix="lungct-upload-") as folder:
        path = Path(folder) / "upload"
        path.write_bytes(data)
        images = model_images(path, predictor.prep)
    pixels = [image.pixels for image in images]
    probabilities = np.concatenate(
        [
            predictor.probabilities(pixels[i : i + batch_size])
            for i in range(0, len(pixels), batch_size)
        ]
    )
    return UploadResult(np.stack(pixels), probabilities, images[0].mode, images[0].windows)


@dataclass(frozen=True)
class Failure:
    """An input that got no prediction, with the reason code of the convert manifest."""

    file: str
    reason: str
    detail: str = ""

    def __str__(self) -> str:
        return f"{self.file}: {self.reason}" + (f": {self.detail}" if self.detail else "")


@dataclass
class Prediction:
    """One image (a file, or one frame of a multi-frame file), or one series of a folder."""

    file: str  # the file, or for a series the folder given
    level: str  # "image" or "series"
    probabilities: np.ndarray  # float64, in class order
    frame: int | None = None  # 0-based frame of a multi-frame file
    series_uid: str = ""
    images: int = 1  # images averaged (series: its slices)

    def answer(self, contract: Contract) -> str:
        """The most probable class, or ``uncertain`` (:meth:`Contract.answer`)."""
        return contract.answer(self.probabilities)


@dataclass(frozen=True)
class PassedOver:
    """A file a folder walk passed over: plainly metadata by its name (:func:`is_metadata`)."""

    file: str


def is_metadata(name: str) -> bool:
    """Whether a file name is plainly metadata: :data:`METADATA_SUFFIXES`, or
    :data:`METADATA_NAMES` (case-insensitive)."""
    return name.upper() in METADATA_NAMES or name.lower().endswith(METADATA_SUFFIXES)


def expand(
    paths: Iterable[Path | str],
) -> Iterator[tuple[Path, int | None] | Failure | PassedOver]:
    """Each argument: a file, or a folder walked recursively (sorted; hidden files and
    folders left out; links to folders not followed). Yields (file, index of its folder
    argument or None); a :class:`PassedOver` for a file in a folder that is plainly
    metadata by its name (never opened); or a :class:`Failure` for an argument that does
    not exist and for anything that is not a regular file (a FIFO, socket or device: never
    opened, a read would block; a link to a folder inside a folder argument; a broken link).
    """

    def kind(path: Path) -> tuple[str, str] | None:
        """None for a regular file (through links); else (reason, detail)."""
        try:
            mode = path.stat().st_mode
        except FileNotFoundError:
            if path.is_symlink():
                return NOT_FOUND, "a broken symbolic link"
            return NOT_FOUND, "no such file or folder"
        except OSError as exc:
            return UNREADABLE, exc.strerror or type(exc).__name__
        if stat.S_ISREG(mode):
            return None
        if stat.S_ISDIR(mode):
            return NOT_A_FILE, "a link to a folder (not followed)"
        what = {stat.S_IFIFO: "a FIFO", stat.S_IFSOCK: "a socket"}.get(stat.S_IFMT(mode))
        return NOT_A_FILE, f"{what or 'a device'}, not a regular file"

    for index, arg in enumerate(paths):
        path = Path(arg)
        if path.is_dir():
            entries: list[tuple[Path, tuple[str, str] | None]] = []
            passed: list[Path] = []
            todo = [path]
            while todo:  # no recursion: a deep tree cannot overflow the stack
                folder = todo.pop()
                try:
                    with os.scandir(folder) as found:
                        children = [e for e in found if not e.name.startswith(".")]
                except OSError as exc:  # a folder it may not read: reported, the rest go on
                    entries.append((folder, (UNREADABLE, exc.strerror or type(exc).__name__)))
                    continue
                for entry in children:
                    if entry.is_dir(follow_symlinks=False):
                        todo.append(Path(entry.path))
                    elif is_metadata(entry.name):
                        passed.append(Path(entry.path))
                    else:
                        entries.append((Path(entry.path), kind(Path(entry.path))))
            yield from (PassedOver(str(file)) for file in sorted(passed))
            for file, problem in sorted(entries, key=lambda item: item[0]):
                yield (file, index) if problem is None else Failure(str(file), *problem)
        else:
            problem = kind(path)
            yield (path, None) if problem is None else Failure(str(path), *problem)


# What reading one file gives: (pixels, frame of a multi-frame file, series UID, slice
# position) per image, or the (reason, detail) it failed with; and the bytes its images
# decoded to (8-bit channels, before resizing). Plain data, so it crosses process boundaries.
_Images = list[tuple[np.ndarray, int | None, str, float | None]]
_Read = tuple[_Images, tuple[str, str] | None, int]


def read_file(path: Path | str, prep: Preprocessing) -> _Read:
    """One input file -> its model images, or why it has none (never raises for a bad file)."""
    try:
        images = model_images(Path(path), prep)
    except Exception as exc:  # one odd file must not stop the rest (lungct.io.preprocess)
        return [], file_problem(exc), 0
    decoded = sum(image.unresized.nbytes for image in images)
    multi = len(images) > 1
    out: _Images = []
    for image in images:
        if (frame := image.frame) is None:  # an exported image
            out.append((image.pixels, None, "", None))
        else:
            index = frame.frame if multi else None
            out.append((image.pixels, index, frame.series_uid, frame.slice_position))
    return out, None, decoded


def _read_chunk(paths: list[str], prep: Preprocessing) -> list[_Read]:
    return [read_file(path, prep) for path in paths]


def preprocess_pool(workers: int) -> ProcessPoolExecutor:
    """Processes that read and preprocess files while the model runs (pydicom is pure Python,
    so threads would wait on each other). Create it *before* TensorFlow is imported: the
    workers are then forked from a light process at once; after it, they start fresh
    (forkserver), which is slower but never forks TensorFlow's threads."""
    method = "forkserver" if "tensorflow" in sys.modules else "fork"
    pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context(method))
    list(pool.map(_read_chunk, [[]] * workers, [None] * workers))  # start the workers now
    return pool


@dataclass
class _Item:
    """One input file: where it came from, its images' (frame, series UID), probabilities."""

    file: Path
    folder: int | None  # index of the folder argument it was found in
    frames: list[tuple[int | None, str]] = field(default_factory=list)
    probabilities: list[np.ndarray] = field(default_factory=list)


class ReadGuard:
    """A caller's bounds on the reading of one :func:`predict_files` call (the service: one
    request's): ``decoded_bytes``, what its images may decode to in all, and ``check``,
    called before each file is read and while a reader process is awaited (it raises to
    stop the reading: a cancelled request).

    Each file may declare at most what is left of the budget (checked before it is
    decoded, as ``max_image_bytes``); what it decoded to is then taken from what is left.
    Once nothing is left, the remaining files fail ``too_large`` without being opened."""

    def __init__(self, decoded_bytes: int, check: Callable[[], None] = lambda: None) -> None:
        self.limit = decoded_bytes
        self.left = decoded_bytes
        self.check = check

    def prep(self, prep: Preprocessing) -> Preprocessing:
        """``prep`` with the per-image limit lowered to what is left."""
        if self.left >= prep.max_image_bytes:
            return prep
        return prep.model_copy(update={"max_image_bytes": max(self.left, 1)})

    def spend(self, read: _Read, limited: bool) -> _Read:
        """Take a file's decoded bytes from what is left; a refusal by the lowered
        per-image limit (``limited``) names the request's budget, not the image limit."""
        images, problem, decoded = read
        self.left -= decoded
        if limited and problem is not None and problem[0] == TOO_LARGE:
            left = f"(what is left of {self.budget_text()})"
            problem = (TOO_LARGE, problem[1].replace("(convert.max_image_bytes)", left))
        return images, problem, decoded

    def exhausted(self) -> _Read | None:
        """The failure of a file not read because nothing is left; None while something is."""
        if self.left > 0:
            return None
        return [], (TOO_LARGE, f"not read: the files before it used up {self.budget_text()}"), 0

    def budget_text(self) -> str:
        return f"the limit of {size_text(self.limit)} of decoded images per request"


def _read_all(
    entries: Iterator[tuple[Path, int | None]],
    prep: Preprocessing,
    pool: Executor | None,
    guard: ReadGuard | None = None,
) -> Iterator[tuple[_Item, _Read]]:
    """Files read in input order: here, or :data:`READ_CHUNK` files a task on ``pool`` with a
    bounded number of tasks in flight (memory holds a few batches, whatever the input size);
    within ``guard``'s bounds. Tasks not started when the reading stops are cancelled, and
    those running are waited for: a reader process is never left working for nobody."""
    if pool is None:
        for file, folder in entries:
            if guard is None:
                yield _Item(file, folder), read_file(file, prep)
                continue
            guard.check()
            skipped = guard.exhausted()
            if skipped is not None:
                yield _Item(file, folder), skipped
                continue
            limited = guard.prep(prep)
            yield _Item(file, folder), guard.spend(read_file(file, limited), limited is not prep)
        return
    in_flight = 4 * max(1, getattr(pool, "_max_workers", 2))  # a few tasks per worker
    pending: deque[tuple[list[_Item], Future[list[_Read]], bool]] = deque()
    try:
        while True:
            items = [_Item(file, folder) for file, folder in islice(entries, READ_CHUNK)]
            if items:
                limited = guard.prep(prep) if guard is not None else prep
                task = pool.submit(_read_chunk, [str(item.file) for item in items], limited)
                pending.append((items, task, limited is not prep))
            if pending and (not items or len(pending) >= in_flight):
                done, task, was_limited = pending.popleft()
                if guard is None:
                    yield from zip(done, task.result(), strict=True)
                    continue
                while not wait([task], timeout=0.05).done:
                    guard.check()
                for item, read in zip(done, task.result(), strict=True):
                    skipped = guard.exhausted()
                    yield item, skipped if skipped is not None else guard.spend(read, was_limited)
            if not items and not pending:
                return
    finally:
        for _, task, _ in pending:
            task.cancel()
        wait([task for _, task, _ in pending])  # the running ones; their outcome dropped


def predict_files(
    predictor: Predictor,
    paths: Sequence[Path | str],
    batch_size: int = 64,
    on_failure: Callable[[Failure], None] | None = None,
    pool: Executor | None = None,
    on_passed_over: Callable[[PassedOver], None] | None = None,
    guard: ReadGuard | None = None,
) -> tuple[list[Prediction], list[Failure]]:
    """Predict every image of every file under ``paths``, ``batch_size`` images per model
    call; files are read here, or on ``pool`` (:func:`preprocess_pool`) while the model runs,
    within ``guard``'s bounds (:class:`ReadGuard`), if given.

    Returns the predictions, in argument order: the images of each argument, then, for a
    folder argument, one ``series`` row per DICOM series found in it (the mean of its
    slices' probabilities, as evaluate averages a patient's slices); and the failures,
    also passed to ``on_failure`` as they happen. The metadata files a folder walk passes
    over (:class:`PassedOver`) are neither: they go to ``on_passed_over``.
    """
    failures: list[Failure] = []
    done: list[_Item] = []

    def fail(failure: Failure) -> None:
        failures.append(failure)
        if on_failure is not None:
            on_failure(failure)

    def entries() -> Iterator[tuple[Path, int | None]]:
        for entry in expand(paths):
            if isinstance(entry, Failure):
                fail(entry)
            elif isinstance(entry, PassedOver):
                if on_passed_over is not None:
                    on_passed_over(entry)
            else:
                yield entry

    batch: list[tuple[_Item, np.ndarray]] = []

    failed: set[int] = set()  # ids of the items whose outputs were not finite

    def flush() -> None:
        try:
            probabilities = predictor.probabilities([pixels for _, pixels in batch])
            bad = np.zeros(len(batch), dtype=bool)
        except NonFiniteOutput as exc:  # its rows are this batch's, unless a batcher merged
            probabilities = exc.probabilities
            same = len(exc.rows) == len(batch)
            bad = exc.rows if same else np.ones(len(batch), dtype=bool)
            for (item, _), is_bad in zip(batch, bad, strict=True):
                if is_bad and id(item) not in failed:
                    failed.add(id(item))
                    fail(Failure(str(item.file), exc.reason, exc.detail))
        for index, (item, _) in enumerate(batch):
            if not bad[index]:
                item.probabilities.append(probabilities[index])
        batch.clear()

    def push(item: _Item, pixels: np.ndarray) -> None:
        batch.append((item, pixels))
        if len(batch) >= batch_size:
            flush()

    # 2.5-D models: a folder's images wait until the folder is read, then each DICOM slice
    # is stacked with its neighbours in its series (a file given alone is its own).
    held: list[tuple[_Item, np.ndarray, str, float | None]] = []

    def release() -> None:
        for (item, *_), pixels in zip(held, restack(held, predictor.prep), strict=True):
            push(item, pixels)
        held.clear()

    for item, (images, problem, _) in _read_all(entries(), predictor.prep, pool, guard):
        if problem is not None:
            fail(Failure(str(item.file), *problem))
            continue
        if held and held[-1][0].folder != item.folder:
            release()
        done.append(item)
        for pixels, frame, series_uid, position in images:
            item.frames.append((frame, series_uid))
            if predictor.prep.context_slices and item.folder is not None:
                held.append((item, pixels, series_uid, position))
            else:
                push(item, pixels)
    release()
    if batch:
        flush()
    done = [item for item in done if id(item) not in failed]
    return _rows(done, [str(p) for p in paths]), failures


def input_notes(prep: Preprocessing, paths: Sequence[Path | str]) -> list[str]:
    """What a person should know about how this model sees the inputs given: a 2.5-D
    model's lone files, a lesion-crop model's whole slices."""
    notes = []
    if prep.context_slices and any(not Path(p).is_dir() for p in paths):
        notes.append(
            f"the model stacks {prep.context_slices} neighbouring slice(s) on each side; a "
            "file given alone has no series around it, so its own slice stands in for its "
            "neighbours (give the series folder to use the real ones)"
        )
    if prep.crop == Crop.LESION:
        notes.append(
            f"the model was trained on {prep.crop_mm:g} mm crops around annotated lesions; "
            "a raw file carries no annotation, so it sees whole slices, which it was not "
            "trained on: treat its output with caution"
        )
    return notes


def restack(
    held: Sequence[tuple[object, np.ndarray, str, float | None]], prep: Preprocessing
) -> list[np.ndarray]:
    """The images of one folder, each DICOM slice stacked with its ``context_slices``
    neighbours on each side in its series, by position along the slice normal (the series
    ends repeat the edge slice), as convert stacks them; others unchanged."""
    k = prep.context_slices
    out = [pixels for _, pixels, _, _ in held]
    if not k:
        return out
    windows = len(prep.windows)  # a slice's own channels: one per window
    series: dict[str, list[int]] = {}
    for i, (_, _, uid, position) in enumerate(held):
        if uid and position is not None:
            series.setdefault(uid, []).append(i)
    for members in series.values():
        members.sort(key=lambda i: held[i][3])
        last = len(members) - 1
        for rank, i in enumerate(members):
            near = [members[min(max(rank + d, 0), last)] for d in range(-k, k + 1)]
            out[i] = np.concatenate([held[j][1][..., :windows] for j in near], axis=-1)
    return out


def series_rows(folder: str, images: Iterable[Prediction]) -> list[Prediction]:
    """One row per DICOM series among ``images``: the mean of its slices' probabilities."""
    by_series: dict[str, list[np.ndarray]] = {}
    for row in images:
        if row.level == "image" and row.series_uid:
            by_series.setdefault(row.series_uid, []).append(row.probabilities)
    return [
        Prediction(
            file=folder,
            level="series",
            probabilities=np.mean(probabilities, axis=0),
            series_uid=uid,
            images=len(probabilities),
        )
        for uid, probabilities in by_series.items()
    ]


def _rows(done: list[_Item], args: list[str]) -> list[Prediction]:
    """Image rows in input order; after a folder's images, its series rows."""
    rows: list[Prediction] = []
    for folder, items in groupby(done, key=lambda item: item.folder):
        images = [
            Prediction(str(item.file), "image", p.astype(np.float64), frame=frame, series_uid=uid)
            for item in items
            for (frame, uid), p in zip(item.frames, item.probabilities, strict=True)
        ]
        rows.extend(images)
        if folder is not None:
            rows.extend(series_rows(args[folder], images))
    return rows
