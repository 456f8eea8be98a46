"""The model contract: what a trained model needs to be fed exactly as in training.

Train writes it beside the model (``models/labels.json``); evaluate, export, predict, the
app, the service and the benchmarks read it here, validated, and check it against the
loaded model. Its keys: the class order of the model's outputs, the preprocessing
(:class:`~lungct.params.Preprocessing`, validated by the schema params use too), a
plain-words description of it, what data the model was trained on
(:class:`TrainingData`; absent from contracts written before it was recorded), and the
calibration: the temperature that train fitted on the val split and put in the model's
graph (:mod:`lungct.model.calibrate`), and the calibrated top probability below which an
answer is ``uncertain`` (:meth:`Contract.answer`, the one rule every output follows).

A model's version (:func:`model_version`) is not in the contract: it is computed from the
files, the software's version and the model file's sha256, by whatever names the model
(the card, predict's JSON and CSV, the service, the DICOM SR).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import ValidationError

from lungct import __version__
from lungct.artifacts import CONTRACT_FILE, LEAKY, is_leaky
from lungct.atomic import read_json, write_json
from lungct.errors import UserError
from lungct.evaluation.calibration import TEMPERATURE_RANGE
from lungct.names import UNCERTAIN, Framing, check_class_names
from lungct.params import Params, Preprocessing, describe_error

__all__ = ["Contract", "Preprocessing", "TrainingData", "model_version"]

# What the model takes, and how raw files become it (for a person reading labels.json).
MODEL_INPUT = "float32 pixel values 0..255 (the model rescales to 0..1)"
PREPROCESSING_STEPS = (
    "DICOM stored values -> float32 -> padding pixels to air -> HU (slope, intercept)",
    "HU -> window -> [0, 1] -> uint8, one channel per window",
    "exported images: grayscale (alpha on black), repeated per window channel",
    "aspect-preserving resize with black padding to image_size",
)
FRAMING_STEPS = {  # convert.framing: what is cropped before the resize
    Framing.BODY: "framing body: cropped to the body's bounding box before the resize",
    Framing.LUNGS: "framing lungs: cropped to the lungs' bounding box with a margin (the "
    "body's where no lungs are found) before the resize",
}
REQUIRED_KEYS = ("classes", "image_size", "channels", "windows", "file_window")
# Keys added later (and crop): a contract without them is of a model of whole slices.
OPTIONAL_KEYS = ("context_slices", "framing")
# The contract's calibration: {temperature, uncertain_below}. A contract without it is of a
# model with no temperature layer, and no answer of it is uncertain.
CALIBRATION_KEY = "calibration"
# sha256 hex digits in a model version: 64 bits, and the version fits a DICOM LO (64).
MODEL_VERSION_HEX = 16
CROP_SHAPE = "crop must be {kind: none | lesion, mm: a number}"
RETRAIN = "rerun dvc repro"
SYNTHETIC_WARNING = (
    "this model was trained on the built-in synthetic CT cohort (data.source: synthetic), "
    "a check of the pipeline: it is not for real CT, and its classes mean nothing on a real scan"
)
# The same in a few words, for fields a screen shows whole (a DICOM series description).
SYNTHETIC_WARNING_BRIEF = "not for real CT (synthetic phantom)"


def model_version(sha256: str) -> str:
    """The one name of a model's version: the software's version and the first
    :data:`MODEL_VERSION_HEX` hex digits of the model file's sha256, as a PEP 440 local
    version (``0.1.0+sha256.1100a878e889b9fe``). Computed from the files, never recorded
    at train time: the pipeline's outputs do not depend on the commit they were made at."""
    return f"{__version__}+sha256.{sha256[:MODEL_VERSION_HEX]}"


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
            leaky=is_leaky(split),
            images=tuple((str(k), int(v)) for k, v in images.items()),
        )

    @property
    def warning(self) -> str | None:
        """What a user of the model must be told before trusting its output, or None."""
        return SYNTHETIC_WARNING if self.source == "synthetic" else None

    @property
    def brief_warning(self) -> str | None:
        """:attr:`warning` in a few words (at most 40 characters), or None."""
        return SYNTHETIC_WARNING_BRIEF if self.source == "synthetic" else None

    def to_dict(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "dataset": self.dataset,
            "layout": self.layout,
            "tree_sha256": self.tree_sha256,
            "class_mapping": self.class_mapping,
            "split": {"strategy": self.split_strategy, LEAKY: self.leaky},
            "images": dict(self.images),
        }

    @classmethod
    def from_dict(cls, data: object) -> TrainingData:
        """Raises ValueError (the caller names the file) for anything that is not one."""
        if not isinstance(data, dict) or not isinstance(data.get("source"), str):
            raise ValueError("data must be an object with a 'source'")
        split, images = data.get("split", {}), data.get("images", {})
        if not isinstance(split, dict) or not isinstance(images, dict):
            raise ValueError("data.split and data.images must be objects")
        texts = ("dataset", "layout", "tree_sha256", "class_mapping")
        texts_ok = all(isinstance(data.get(key, ""), str) for key in texts)
        if not texts_ok or not all(_is_integer(v) for v in images.values()):
            raise ValueError("data: dataset, layout, class_mapping are text; images counts")
        return cls(
            source=data["source"],
            dataset=data.get("dataset", ""),
            layout=data.get("layout", "unknown"),
            tree_sha256=data.get("tree_sha256", ""),
            class_mapping=data.get("class_mapping", "default"),
            split_strategy=str(split.get("strategy", "unknown")),
            leaky=is_leaky(split),
            images=tuple((str(k), v) for k, v in images.items()),
        )


@dataclass(frozen=True)
class Contract:
    """Class order (the model's outputs), the preprocessing of its input, the data it was
    trained on (None for a contract written before that was recorded), the temperature in
    the model's graph, and the calibrated top probability below which an answer is
    uncertain (0: never)."""

    classes: tuple[str, ...]
    prep: Preprocessing
    data: TrainingData | None = None
    temperature: float = 1.0
    uncertain_below: float = 0.0

    @property
    def warning(self) -> str | None:
        """The line predict, the app and the service show with every answer, or None."""
        return self.data.warning if self.data is not None else None

    @property
    def brief_warning(self) -> str | None:
        """:attr:`warning` in a few words, or None."""
        return self.data.brief_warning if self.data is not None else None

    def is_uncertain(self, probabilities: Any) -> bool:
        """Whether an answer (the model's calibrated probabilities, in class order) is
        uncertain: its top probability is below :attr:`uncertain_below`, the threshold
        train chose on the val split (:func:`lungct.evaluation.calibration.choose_threshold`)."""
        return bool(np.asarray(probabilities, dtype=np.float64).max() < self.uncertain_below)

    def answer(self, probabilities: Any) -> str:
        """The answer every output gives: the most probable class, or :data:`UNCERTAIN`."""
        if self.is_uncertain(probabilities):
            return UNCERTAIN
        return self.classes[int(np.argmax(np.asarray(probabilities, dtype=np.float64)))]

    def describe_uncertain(self) -> str:
        """The rule in words, for a reader of an answer."""
        if not self.uncertain_below:
            return "no answer is uncertain"
        return f"uncertain below a top probability of {self.uncertain_below:.4g}"

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
        cls, params: Params, classes: list[str] | tuple[str, ...], data: TrainingData | None = None
    ) -> Contract:
        """The contract of a model trained now: ``convert`` params, the train split's classes
        (class names, checked as the split stage wrote them) and what the data was."""
        try:
            check_class_names(classes)
        except ValueError as exc:
            raise UserError(f"the split's classes: {exc}; rerun the split stage") from None
        return cls(tuple(classes), Preprocessing.from_params(params.convert), data)

    def to_dict(self) -> dict[str, Any]:
        prep = self.prep
        return {
            "classes": list(self.classes),
            **prep.to_json(),
            "input": MODEL_INPUT,
            "preprocessing": [
                *PREPROCESSING_STEPS[:-1],
                *([FRAMING_STEPS[prep.framing]] if prep.framing in FRAMING_STEPS else []),
                PREPROCESSING_STEPS[-1],
            ],
            **({"data": self.data.to_dict()} if self.data is not None else {}),
            CALIBRATION_KEY: {
                "temperature": self.temperature,
                "uncertain_below": self.uncertain_below,
            },
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
            data = read_json(path)
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
        if not isinstance(classes, list) or len(classes) < 2:
            raise bad("'classes' must list two or more distinct class names")
        try:
            check_class_names(classes)
        except ValueError as exc:
            raise bad(f"classes: {exc}") from None
        if not _is_integer(data["image_size"]) or not _is_integer(data["channels"]):
            raise bad("image_size, channels integers expected")
        # The JSON's keys mapped to the schema's fields, validated by its rules (a key
        # added later and absent: lungct.params.PREPROCESSING_DEFAULTS).
        fields = {key: data[key] for key in OPTIONAL_KEYS if key in data}
        if "crop" in data:
            crop = data["crop"]
            if not isinstance(crop, dict) or set(crop) != {"kind", "mm"}:
                raise bad(CROP_SHAPE)
            fields.update(crop=crop["kind"], crop_mm=crop["mm"])
        try:
            prep = Preprocessing(data["windows"], data["file_window"], data["image_size"], **fields)
        except ValidationError as exc:
            raise bad(_problem(exc)) from None
        if data["channels"] != prep.channels:
            raise bad(
                f"channels {data['channels']} but {len(prep.windows)} window(s) x "
                f"{prep.depth} slice(s) (context_slices {prep.context_slices})"
            )
        # Added later too: a contract without it says nothing of its training data.
        trained_on = None
        if "data" in data:
            try:
                trained_on = TrainingData.from_dict(data["data"])
            except ValueError as exc:
                raise bad(str(exc)) from None
        try:
            temperature, below = _calibration(data.get(CALIBRATION_KEY, {}))
        except ValueError as exc:
            raise bad(str(exc)) from None
        return cls(tuple(classes), prep, trained_on, temperature, below)

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
        # the temperature layer (lungct.model.calibrate) is a Keras model's last, if any; an
        # exported model (ONNX) has it in its graph, checked against Keras by export
        layers = getattr(model, "layers", None)
        temperature = float(getattr(layers[-1], "temperature", 1.0)) if layers else None
        if (
            temperature is not None
            and abs(temperature - self.temperature) > 1e-6 * self.temperature
        ):
            raise UserError(
                f"{model_path}: calibrated with temperature {temperature:g}, but {source} "
                f"says {self.temperature:g}: not one model's pair; {RETRAIN}"
            )
        return model


def _calibration(data: object) -> tuple[float, float]:
    """``(temperature, uncertain_below)`` of a contract's calibration object; a ValueError
    saying what is wrong otherwise."""
    low, high = TEMPERATURE_RANGE
    if not isinstance(data, dict) or not set(data) <= {"temperature", "uncertain_below"}:
        raise ValueError(f"{CALIBRATION_KEY} must be {{temperature, uncertain_below}}")
    temperature = data.get("temperature", 1.0)
    below = data.get("uncertain_below", 0.0)
    if not _is_number(temperature) or not low <= temperature <= high:
        raise ValueError(f"{CALIBRATION_KEY}.temperature must be a number from {low} to {high}")
    if not _is_number(below) or not 0 <= below <= 1:
        raise ValueError(f"{CALIBRATION_KEY}.uncertain_below must be a number from 0 to 1")
    return float(temperature), float(below)


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and np.isfinite(value)


def _is_integer(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


# The contract's JSON spells these schema fields otherwise.
_JSON_KEYS = {"crop": "crop.kind", "crop_mm": "crop.mm"}


def _problem(exc: ValidationError) -> str:
    """The first problem the schema found, named by the contract's JSON key, in JSON's
    words for its types (true or false; one of the listed strings)."""
    err = exc.errors()[0]
    if err["loc"]:
        err = {**err, "loc": (_JSON_KEYS.get(str(err["loc"][0]), err["loc"][0]), *err["loc"][1:])}
    key = ".".join(str(part) for part in err["loc"])
    if err["type"] == "bool_type":
        return f"{key} must be true or false"
    if err["type"] == "literal_error":
        expected = re.findall(r"'([^']*)'", err["ctx"]["expected"])
        return f"{key} must be one of {', '.join(expected)}"
    return describe_error(err)
