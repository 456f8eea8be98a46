"""Raw file -> the uint8 image the model sees: the one preprocessing path of convert,
predict and the app.

A CT DICOM file gives one image per frame: HU (``lungct.dicom``), one 8-bit channel per
CT window (``lungct.windowing``; with ``file_window`` the first channel uses the file's
own Window Center/Width). An exported image (PNG, JPG, ...) is turned to grayscale
deliberately and repeated once per window channel (``lungct.images``). Both are then
resized to ``image_size`` keeping their aspect ratio, padded with black.

The result is exactly what the convert stage writes as PNG and what train and evaluate
decode from it, so predicting on a raw file feeds the model the same pixels as the
pipeline did. No I/O here beyond reading the one input file.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from lungct.dicom import PREAMBLE, CTFrame, read_ct
from lungct.errors import SkippedFile, UserError
from lungct.images import fit_square, read_image
from lungct.windowing import window_channels


class _WindowLike(Protocol):
    center: float
    width: float


class _ConvertLike(Protocol):
    windows: Sequence[_WindowLike]
    file_window: bool
    image_size: int


@dataclass(frozen=True)
class Preprocessing:
    """How raw files become model inputs: CT windows in HU (center, width), whether the
    first channel takes the file's own window, and the side of the square input."""

    windows: tuple[tuple[float, float], ...]
    file_window: bool
    image_size: int

    @property
    def channels(self) -> int:
        return len(self.windows)

    @classmethod
    def from_params(cls, params: _ConvertLike) -> Preprocessing:
        """From the ``convert`` section of params.yaml (the convert stage)."""
        return cls(
            windows=tuple((float(w.center), float(w.width)) for w in params.windows),
            file_window=bool(params.file_window),
            image_size=int(params.image_size),
        )

    @classmethod
    def from_contract(cls, contract: dict, source: Path | str = "labels.json") -> Preprocessing:
        """From the preprocessing contract train writes (``models/labels.json``); a contract
        that lacks a key or disagrees with itself is a :class:`UserError` naming it."""

        def bad(what: str) -> UserError:
            return UserError(f"{source}: {what} (retrain with dvc repro)")

        if not isinstance(contract, dict):
            raise bad("not a preprocessing contract")
        missing = [
            k for k in ("image_size", "channels", "windows", "file_window") if k not in contract
        ]
        if missing:
            raise bad(f"missing key(s) {', '.join(missing)}")
        try:
            windows = tuple((float(w["center"]), float(w["width"])) for w in contract["windows"])
            size, channels = int(contract["image_size"]), int(contract["channels"])
        except (TypeError, KeyError, ValueError):
            raise bad(
                "windows must be a list of {center, width}; image_size, channels integers"
            ) from None
        if not windows or any(width <= 0 for _, width in windows):
            raise bad("windows must be one or more windows of positive width")
        if channels != len(windows):
            raise bad(f"channels {channels} but {len(windows)} window(s)")
        if size < 1:
            raise bad(f"image_size {size}")
        return cls(windows=windows, file_window=bool(contract["file_window"]), image_size=size)

    def windows_for(self, frame: CTFrame) -> list[tuple[float, float]]:
        """The windows of one frame: the configured ones, the first replaced by the file's
        own Window Center/Width when ``file_window`` is on and the file has one."""
        windows = list(self.windows)
        if self.file_window and frame.window is not None:
            windows[0] = frame.window
        return windows


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


def dicom_images(path: Path, prep: Preprocessing) -> list[ModelImage]:
    """A CT DICOM file -> one model image per frame; :class:`SkippedFile` otherwise."""
    images = []
    for frame in read_ct(path):
        windows = prep.windows_for(frame)
        pixels = window_channels(frame.hu, windows)
        images.append(
            ModelImage(
                pixels=fit_square(pixels, prep.image_size),
                unresized=pixels,
                mode="HU",
                frame=frame,
                windows=tuple(windows),
            )
        )
    return images


def exported_image(path: Path, prep: Preprocessing) -> ModelImage:
    """An exported PNG/JPG/... slice: deliberate grayscale, repeated once per window channel."""
    gray, mode = read_image(path)
    pixels = gray if prep.channels == 1 else np.repeat(gray[..., None], prep.channels, axis=-1)
    return ModelImage(pixels=fit_square(pixels, prep.image_size), unresized=pixels, mode=mode)


def has_dicom_prefix(path: Path) -> bool:
    """A DICOM Part 10 file: 128-byte preamble, then ``DICM`` (PS3.10 7.1)."""
    with path.open("rb") as stream:
        return stream.read(PREAMBLE + 4)[PREAMBLE:] == b"DICM"


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
        if skip.reason != "not_image":
            raise
    try:
        read_ct(path)  # raises: no Part 10 prefix; says why (empty, no_preamble, not_dicom)
    except SkippedFile as skip:
        if skip.reason != "not_dicom":
            raise
    raise SkippedFile("not_image", "neither a DICOM file nor an image format Pillow can read")


def model_input(images: Sequence[np.ndarray]) -> np.ndarray:
    """uint8 model images -> one float32 batch, N x H x W x C, values 0..255: what train
    and evaluate feed (``tf.io.decode_png`` cast to float32; the model rescales)."""
    batch = np.stack(images).astype(np.float32)
    return batch[..., None] if batch.ndim == 3 else batch
