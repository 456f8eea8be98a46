"""Raw file -> the uint8 image the model sees: the one preprocessing path of convert,
predict and the app, so predicting on a raw file feeds the model the pixels the convert
stage wrote as PNG. A CT DICOM file gives one image per frame, one 8-bit channel per CT
window (``lungct.io.windowing``); an exported image (PNG, JPG, ...) is deliberate
grayscale, repeated once per window channel; both are then framed and resized
(:func:`model_view`). No I/O beyond reading the one input file.

:func:`file_problem` is the one rule for what goes wrong on one input file.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

from lungct.contract import Preprocessing
from lungct.errors import SkippedFile, describe
from lungct.io.dicom import CTFrame, code_hu, has_dicom_prefix, read_ct
from lungct.io.images import fit_square, framed, read_image
from lungct.io.windowing import window_channels, window_lookup, window_uint8
from lungct.reasons import NOT_DICOM, NOT_IMAGE, UNREADABLE


@dataclass(frozen=True)
class ModelImage:
    """One image as the model sees it, with what the convert stage's manifest records."""

    pixels: np.ndarray  # uint8, image_size x image_size, x channels when there are several
    unresized: np.ndarray  # uint8, before the resize (convert hashes its first channel)
    mode: str  # "HU" for DICOM, else the original PIL mode
    frame: CTFrame | None = None  # DICOM: the frame and its metadata
    windows: tuple[tuple[float, float], ...] = ()  # DICOM: the windows used

    @property
    def rows(self) -> int:
        return int(self.unresized.shape[0])

    @property
    def columns(self) -> int:
        return int(self.unresized.shape[1])

    @property
    def gray(self) -> np.ndarray:
        """The first channel before the resize (what near-duplicate hashing looks at)."""
        return self.unresized if self.unresized.ndim == 2 else self.unresized[..., 0]


def model_view(pixels: np.ndarray, prep: Preprocessing, frame: CTFrame | None = None) -> np.ndarray:
    """Unresized uint8 channels -> the model's ``image_size`` square: first cropped as
    ``framing`` says (:func:`lungct.io.images.framed`: the body or the lungs of a CT
    ``frame`` found in its HU, whatever the window; of an exported image, by brightness),
    then :func:`lungct.io.images.fit_square`."""
    pixels = framed(pixels, prep.framing, frame.hu if frame is not None else None)
    return fit_square(pixels, prep.image_size)


def dicom_images(path: Path, prep: Preprocessing) -> list[ModelImage]:
    """A CT DICOM file -> one model image per frame; :class:`SkippedFile` otherwise."""
    images = []
    model_image = prep.image_size**2 * prep.channels  # bytes: each frame makes one
    for frame in read_ct(path, prep.max_image_bytes, model_image):
        windows = tuple(prep.windows_for(frame))
        pixels = frame_channels(frame, windows)
        view = repeat_slice(model_view(pixels, prep, frame), prep.depth)
        images.append(
            ModelImage(pixels=view, unresized=pixels, mode="HU", frame=frame, windows=windows)
        )
    return images


def frame_channels(frame: CTFrame, windows: Sequence[tuple[float, float]]) -> np.ndarray:
    """A CT frame's 8-bit channels, one per window: ``window_channels`` of its HU, as a
    table lookup on the stored values where they allow (``lungct.io.dicom.StoredPixels``:
    the same pixels), on the HU otherwise (a Modality LUT Sequence, MetaImage, 32 bits)."""
    stored = frame.stored
    codes = stored.codes() if stored is not None else None
    if codes is None:
        return window_channels(frame.hu, windows)
    rescale = stored.rescale
    return window_lookup(codes, [window_table(rescale, float(c), float(w)) for c, w in windows])


@lru_cache(maxsize=64)
def window_table(rescale: tuple, center: float, width: float) -> np.ndarray:
    """``window_uint8`` of the HU of every stored value (``lungct.io.dicom.code_hu``): the
    window as a lookup table, built once per rescale and window in a process."""
    table = window_uint8(code_hu(rescale), center, width)
    table.flags.writeable = False  # shared by every frame with this rescale and window
    return table


def repeat_slice(pixels: np.ndarray, depth: int) -> np.ndarray:
    """A slice as its own neighbours (2.5-D input, ``context_slices``): what a lone file or
    an end of a series gets, the slice's channels repeated ``depth`` times."""
    if depth == 1:
        return pixels
    return np.concatenate([pixels if pixels.ndim == 3 else pixels[..., None]] * depth, axis=-1)


def exported_image(path: Path, prep: Preprocessing) -> ModelImage:
    """An exported PNG/JPG/... slice: deliberate grayscale, repeated once per window channel."""
    gray, mode = read_image(path, prep.max_image_bytes)
    pixels = gray if prep.channels == 1 else np.repeat(gray[..., None], prep.channels, axis=-1)
    return ModelImage(pixels=model_view(pixels, prep), unresized=pixels, mode=mode)


def model_images(path: Path, prep: Preprocessing) -> list[ModelImage]:
    """Any input file, DICOM or image, told apart by content (not by name): a DICOM
    Part 10 file is read as CT, anything else as an image; a file that is neither is
    skipped as ``not_image`` (or with the DICOM reader's reason when it looks like a
    DICOM dataset without its header)."""
    if has_dicom_prefix(path):
        return dicom_images(path, prep)
    try:
        return [exported_image(path, prep)]
    except SkippedFile as skip:
        if skip.reason != NOT_IMAGE:
            raise
    try:
        read_ct(path, prep.max_image_bytes)  # raises: no Part 10 prefix; says why
    except SkippedFile as skip:
        if skip.reason != NOT_DICOM:
            raise
    raise SkippedFile(NOT_IMAGE, "neither a DICOM file nor an image format Pillow can read")


def file_problem(exc: Exception) -> tuple[str, str]:
    """Why one input file gave no image, as (reason code, detail): a :class:`SkippedFile`
    keeps its own; anything else a reader let through is ``unreadable`` with the exception
    in one line, so one odd file never stops the others. ``MemoryError`` is re-raised: it
    is the machine's state, not the file's (KeyboardInterrupt is no ``Exception``)."""
    if isinstance(exc, MemoryError):
        raise exc
    if isinstance(exc, SkippedFile):
        return exc.reason, str(exc.detail)
    return UNREADABLE, describe(exc)
