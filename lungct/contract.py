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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from lungct.artifacts import CONTRACT_FILE
from lungct.atomic import write_json
from lungct.errors import SkippedFile, UserError
from lungct.limits import MAX_IMAGE_BYTES
from lungct.params import Params
from lungct.windowing import is_window

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
    max_image_bytes: int
    context_slices: int
    crop: str
    crop_mm: float


@dataclass(frozen=True)
class Preprocessing:
    """How raw files become model inputs: CT windows in HU (center, width), whether the
    first channel takes the file's own window, and the side of the square input.

    ``max_image_bytes`` is the largest declared image decoded (:mod:`lungct.limits`): the
    convert stage takes it from params, predict and the app use the default. It guards the
    machine, not the model, so it is not part of the contract (nor of equality)."""

    windows: tuple[tuple[float, float], ...]
    file_window: bool
    image_size: int
    max_image_bytes: int = field(default=MAX_IMAGE_BYTES, compare=False)
    # 2.5-D: neighbours on each side stacked as channels (each times the windows)
    context_slices: int = 0
    # "lesion": trained on crop_mm squares around annotated lesions (convert only: a raw
    # file carries no annotation, so predict and the app say so and use the whole slice)
    crop: str = "none"
    crop_mm: float = 0.0

    @property
    def channels(self) -> int:
        return len(self.windows) * self.depth

    @property
    def depth(self) -> int:
        """Slices stacked per example: the slice and its neighbours."""
        return 2 * self.context_slices + 1

    @classmethod
    def from_params(cls, params: _ConvertLike) -> Preprocessing:
        """From the ``convert`` section of params.yaml (the convert stage and train; predict
        reads it from the model contract, :class:`lungct.contract.Contract`)."""
        return cls(
            windows=tuple((float(w.center), float(w.width)) for w in params.windows),
            file_window=bool(params.file_window),
            image_size=int(params.image_size),
            max_image_bytes=int(params.max_image_bytes),
            context_slices=int(params.context_slices),
            crop=str(params.crop),
            crop_mm=float(params.crop_mm) if params.crop != "none" else 0.0,
        )

    def windows_for(self, frame: _FrameLike) -> list[tuple[float, float]]:
        """The windows of one frame: the configured ones, the first replaced by the file's
        own Window Center/Width when ``file_window`` is on and the file has one.

        A file window that is there but is no window (not a number, infinite, width not
        positive) skips the file (``bad_window``): the first channel was asked to be the
        file's own window, and this file's is damaged."""
        windows = list(self.windows)
        if self.file_window and frame.window is not None:
            center, width = frame.window
            if not is_window(center, width):
                raise SkippedFile(
                    "bad_window",
                    f"the file's Window Center/Width {center:g}/{width:g} is not a window "
                    "(file_window: true)",
                )
            windows[0] = (center, width)
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
            "context_slices": prep.context_slices,
            "crop": {"kind": prep.crop, "mm": prep.crop_mm},
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
        # Added later: a contract without them is of a model of single whole slices.
        context = data.get("context_slices", 0)
        crop = data.get("crop", {"kind": "none", "mm": 0.0})
        if isinstance(context, bool) or not isinstance(context, int) or not 0 <= context <= 8:
            raise bad("context_slices must be an integer from 0 to 8")
        if (
            not isinstance(crop, dict)
            or crop.get("kind") not in ("none", "lesion")
            or isinstance(crop.get("mm"), bool)
            or not isinstance(crop.get("mm"), (int, float))
            or not 0 <= crop["mm"] < float("inf")
        ):
            raise bad("crop must be {kind: none | lesion, mm: a number}")
        depth = 2 * context + 1
        if channels != len(windows) * depth:
            raise bad(
                f"channels {channels} but {len(windows)} window(s) x {depth} slice(s) "
                f"(context_slices {context})"
            )
        if size < 1:
            raise bad(f"image_size {size}")
        if not isinstance(data["file_window"], bool):
            raise bad("file_window must be true or false")
        prep = Preprocessing(
            windows=windows,
            file_window=data["file_window"],
            image_size=size,
            context_slices=context,
            crop=crop["kind"],
            crop_mm=float(crop["mm"]),
        )
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
