"""The model contract: what a trained model needs to be fed exactly as in training.

:class:`Preprocessing` is how raw files become model inputs (windows, input size); the
convert stage takes it from params, predict and the app from the contract.

Train writes it beside the model (``models/labels.json``); evaluate, predict, the app and
the benchmarks read it here, validated, and check it against the loaded model. Its keys:
the class order of the model's outputs, the square input size, the channels (one per CT
window), the windows in HU, whether the first window is the file's own, and a plain-words
description of the preprocessing.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from lungct.artifacts import CONTRACT_FILE
from lungct.atomic import write_json
from lungct.errors import UserError
from lungct.params import Params

# What the model takes, and how raw files become it (for a person reading labels.json).
MODEL_INPUT = "float32 pixel values 0..255 (the model rescales to 0..1)"
PREPROCESSING_STEPS = (
    "DICOM stored values -> float32 -> padding pixels to air -> HU (slope, intercept)",
    "HU -> window -> [0, 1] -> uint8, one channel per window",
    "exported images: grayscale (alpha on black), repeated per window channel",
    "aspect-preserving resize with black padding to image_size",
)
REQUIRED_KEYS = ("classes", "image_size", "channels", "windows", "file_window")
RETRAIN = "rerun dvc repro"


class _WindowLike(Protocol):
    center: float
    width: float


class _FrameLike(Protocol):  # lungct.dicom.CTFrame
    window: tuple[float, float] | None


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
        """From the ``convert`` section of params.yaml (the convert stage and train; predict
        reads it from the model contract, :class:`lungct.contract.Contract`)."""
        return cls(
            windows=tuple((float(w.center), float(w.width)) for w in params.windows),
            file_window=bool(params.file_window),
            image_size=int(params.image_size),
        )

    def windows_for(self, frame: _FrameLike) -> list[tuple[float, float]]:
        """The windows of one frame: the configured ones, the first replaced by the file's
        own Window Center/Width when ``file_window`` is on and the file has one."""
        windows = list(self.windows)
        if self.file_window and frame.window is not None:
            windows[0] = frame.window
        return windows


@dataclass(frozen=True)
class Contract:
    """Class order (the model's outputs) and the preprocessing of its input."""

    classes: tuple[str, ...]
    prep: Preprocessing

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return (self.prep.image_size, self.prep.image_size, self.prep.channels)

    @classmethod
    def from_params(cls, params: Params, classes: list[str] | tuple[str, ...]) -> Contract:
        """The contract of a model trained now: ``convert`` params and the train split's classes."""
        return cls(tuple(classes), Preprocessing.from_params(params.convert))

    def to_dict(self) -> dict[str, Any]:
        prep = self.prep
        return {
            "classes": list(self.classes),
            "image_size": prep.image_size,
            "channels": prep.channels,
            "windows": [{"center": c, "width": w} for c, w in prep.windows],
            "file_window": prep.file_window,
            "input": MODEL_INPUT,
            "preprocessing": list(PREPROCESSING_STEPS),
        }

    def write(self, path: Path = CONTRACT_FILE) -> None:
        write_json(Path(path), self.to_dict())

    @classmethod
    def read(cls, path: Path = CONTRACT_FILE) -> Contract:
        """Read and validate a contract; any problem is one :class:`UserError` naming the file."""
        path = Path(path)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise UserError(
                f"{path}: not found; no trained model: run `dvc repro` first "
                "(or give --model and --labels)"
            ) from None
        except (OSError, UnicodeDecodeError, ValueError) as exc:
            reason = exc.msg if isinstance(exc, json.JSONDecodeError) else type(exc).__name__
            raise UserError(
                f"{path}: not a readable model contract ({reason}); {RETRAIN}"
            ) from None
        return cls.from_dict(data, path)

    @classmethod
    def from_dict(cls, data: object, source: Path | str = CONTRACT_FILE) -> Contract:
        def bad(what: str) -> UserError:
            return UserError(f"{source}: {what}; {RETRAIN}")

        if not isinstance(data, dict):
            raise bad("not a model contract (a JSON object)")
        missing = [key for key in REQUIRED_KEYS if key not in data]
        if missing:
            raise bad(f"missing key(s) {', '.join(missing)}")
        classes = data["classes"]
        if (
            not isinstance(classes, list)
            or len(classes) < 2
            or not all(isinstance(c, str) and c for c in classes)
            or len(set(classes)) != len(classes)
        ):
            raise bad("'classes' must list two or more distinct class names")
        try:
            windows = tuple((float(w["center"]), float(w["width"])) for w in data["windows"])
            size, channels = _integer(data["image_size"]), _integer(data["channels"])
        except (TypeError, KeyError, ValueError, OverflowError):
            raise bad(
                "windows must be a list of {center, width}; image_size, channels integers"
            ) from None
        finite = all(abs(v) < float("inf") for window in windows for v in window)
        if not windows or not finite or any(not width > 0 for _, width in windows):
            raise bad("windows must be one or more finite windows of positive width")
        if channels != len(windows):
            raise bad(f"channels {channels} but {len(windows)} window(s)")
        if size < 1:
            raise bad(f"image_size {size}")
        if not isinstance(data["file_window"], bool):
            raise bad("file_window must be true or false")
        prep = Preprocessing(windows=windows, file_window=data["file_window"], image_size=size)
        return cls(tuple(classes), prep)

    def check_model(self, model: Any, model_path: Path | str, source: Path | str = CONTRACT_FILE):
        """A loaded Keras model that takes this input and gives one output per class, or a
        :class:`UserError` saying how they disagree."""
        shape = tuple(model.input_shape[1:])
        outputs = model.output_shape[-1]
        if shape != self.input_shape or outputs != len(self.classes):
            raise UserError(
                f"{model_path}: takes {shape} and gives {outputs} classes, but {source} says "
                f"{self.input_shape} and {len(self.classes)} classes; {RETRAIN}"
            )
        return model


def _integer(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError("not an integer")
    return value
