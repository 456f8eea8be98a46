"""The model contract: what a trained model needs to be fed exactly as in training.

:class:`Preprocessing` is how raw files become model inputs (windows, input size); the
convert stage takes it from params, predict and the app from the contract.

Train writes it beside the model (``models/labels.json``); evaluate, export, predict, the
app, the service and the benchmarks read it here, validated, and check it against the
loaded model. Its keys: the class order of the model's outputs, the square input size, the
channels (one per CT window), the windows in HU, whether the first window is the file's
own, a plain-words description of the preprocessing, and what data the model was trained
on (:class:`TrainingData`; absent from contracts written before it was recorded).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, get_args

from lungct.artifacts import CONTRACT_FILE
from lungct.atomic import write_json
from lungct.errors import SkippedFile, UserError
from lungct.io.windowing import is_window
from lungct.limits import MAX_IMAGE_BYTES
from lungct.params import ConvertParams, Params

# What the model takes, and how raw files become it (for a person reading labels.json).
MODEL_INPUT = "float32 pixel values 0..255 (the model rescales to 0..1)"
PREPROCESSING_STEPS = (
    "DICOM stored values -> float32 -> padding pixels to air -> HU (slope, intercept)",
    "HU -> window -> [0, 1] -> uint8, one channel per window",
    "exported images: grayscale (alpha on black), repeated per window channel",
    "aspect-preserving resize with black padding to image_size",
)
FRAMING_STEP = "framing body: cropped to the body's bounding box before the resize"
FRAMINGS = get_args(ConvertParams.model_fields["framing"].annotation)  # params' own values
REQUIRED_KEYS = ("classes", "image_size", "channels", "windows", "file_window")
RETRAIN = "rerun dvc repro"
SYNTHETIC_WARNING = (
    "this model was trained on the built-in synthetic CT cohort (data.source: synthetic), "
    "a check of the pipeline: it is not for real CT, and its classes mean nothing on a real scan"
)


class _WindowLike(Protocol):
    center: float
    width: float


class _FrameLike(Protocol):  # lungct.io.dicom.CTFrame
    window: tuple[float, float] | None


class _ConvertLike(Protocol):
    windows: Sequence[_WindowLike]
    file_window: bool
    image_size: int
    max_image_bytes: int
    context_slices: int
    crop: str
    crop_mm: float
    framing: str


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
    # "body": each image cropped to the body's bounding box before the resize
    # (lungct.io.images.body_box); "image": the whole image
    framing: str = "image"

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
            framing=str(params.framing),
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
class TrainingData:
    """What a model was trained on, as train found it in ``data/raw/SOURCE.json`` (the
    download record) and ``metrics/split.json``: where the data came from, its layout, the
    class mapping, the split strategy, and the images per split. No local path and no
    credential: ``dataset`` is the phantom and its seed, the Kaggle handle, the URL as the
    download record keeps it (no query, no user), or the file or folder *name* of a path."""

    source: str  # synthetic | kaggle | url | path (params data.source)
    dataset: str
    layout: str
    tree_sha256: str  # of data/raw as downloaded
    class_mapping: str  # split.classes: default | binary | custom
    split_strategy: str  # grouped | official | random
    leaky: bool  # the split lets patients or near duplicates cross (test figures optimistic)
    images: tuple[tuple[str, int], ...] = ()  # (split, images) in split order

    @classmethod
    def from_records(cls, source: dict, split: dict) -> TrainingData:
        """From the download record and the split stage's summary (plain dicts)."""
        kind = str(source.get("source", "unknown"))
        if kind == "synthetic":
            dataset = f"{source.get('generator', 'lungct.phantom')}, seed {source.get('seed')}"
        elif kind == "kaggle":
            dataset = str(source.get("handle", ""))
        elif kind == "url":
            dataset = str(source.get("url", ""))
        else:
            dataset = Path(str(source.get("path", ""))).name
        classes = split.get("classes", "default")
        images = split.get("images") or {}
        return cls(
            source=kind,
            dataset=dataset,
            layout=str(source.get("layout", split.get("layout", "unknown"))),
            tree_sha256=str(source.get("tree_sha256", "")),
            class_mapping=classes if isinstance(classes, str) else "custom",
            split_strategy=str(split.get("strategy", "unknown")),
            leaky=bool(split.get("leaky", False)),
            images=tuple((str(k), int(v)) for k, v in images.items()),
        )

    @property
    def warning(self) -> str | None:
        """What a user of the model must be told before trusting its output, or None."""
        return SYNTHETIC_WARNING if self.source == "synthetic" else None

    def to_dict(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "dataset": self.dataset,
            "layout": self.layout,
            "tree_sha256": self.tree_sha256,
            "class_mapping": self.class_mapping,
            "split": {"strategy": self.split_strategy, "leaky": self.leaky},
            "images": dict(self.images),
        }

    @classmethod
    def from_dict(cls, data: object) -> TrainingData:
        """Raises ValueError (the caller names the file) for anything that is not one."""
        if not isinstance(data, dict) or not isinstance(data.get("source"), str):
            raise ValueError("data must be an object with a 'source'")
        split = data.get("split", {})
        images = data.get("images", {})
        if not isinstance(split, dict) or not isinstance(images, dict):
            raise ValueError("data.split and data.images must be objects")
        texts = ("dataset", "layout", "tree_sha256", "class_mapping")
        if not all(isinstance(data.get(key, ""), str) for key in texts) or not all(
            isinstance(v, int) and not isinstance(v, bool) for v in images.values()
        ):
            raise ValueError("data: dataset, layout, class_mapping are text; images counts")
        return cls(
            source=data["source"],
            dataset=data.get("dataset", ""),
            layout=data.get("layout", "unknown"),
            tree_sha256=data.get("tree_sha256", ""),
            class_mapping=data.get("class_mapping", "default"),
            split_strategy=str(split.get("strategy", "unknown")),
            leaky=bool(split.get("leaky", False)),
            images=tuple((str(k), v) for k, v in images.items()),
        )


@dataclass(frozen=True)
class Contract:
    """Class order (the model's outputs), the preprocessing of its input, and the data it
    was trained on (None for a contract written before that was recorded)."""

    classes: tuple[str, ...]
    prep: Preprocessing
    data: TrainingData | None = None

    @property
    def warning(self) -> str | None:
        """The line predict, the app and the service show with every answer, or None."""
        return self.data.warning if self.data is not None else None

    def describe_data(self) -> str:
        """What the model was trained on, in one line for people."""
        data = self.data
        if data is None:
            return "training data not recorded (a contract from before it was)"
        split = f"split {data.split_strategy}" + (" (LEAKY)" if data.leaky else "")
        return f"trained on {data.source} data ({data.dataset}; layout {data.layout}; {split})"

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return (self.prep.image_size, self.prep.image_size, self.prep.channels)

    @classmethod
    def from_params(
        cls,
        params: Params,
        classes: list[str] | tuple[str, ...],
        data: TrainingData | None = None,
    ) -> Contract:
        """The contract of a model trained now: ``convert`` params, the train split's classes
        and what the data was."""
        return cls(tuple(classes), Preprocessing.from_params(params.convert), data)

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
            "framing": prep.framing,
            "input": MODEL_INPUT,
            "preprocessing": [
                *PREPROCESSING_STEPS[:-1],
                *([FRAMING_STEP] if prep.framing == "body" else []),
                PREPROCESSING_STEPS[-1],
            ],
            **({"data": self.data.to_dict()} if self.data is not None else {}),
            # for a person reading the file; readers derive it from data.source
            **({"warning": self.warning} if self.warning else {}),
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
        framing = data.get("framing", "image")
        if framing not in FRAMINGS:
            raise bad(f"framing must be one of {', '.join(FRAMINGS)}")
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
            framing=framing,
        )
        # Added later too: a contract without it says nothing of its training data.
        trained_on = None
        if "data" in data:
            try:
                trained_on = TrainingData.from_dict(data["data"])
            except ValueError as exc:
                raise bad(str(exc)) from None
        return cls(tuple(classes), prep, trained_on)

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
