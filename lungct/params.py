"""The typed schema of ``params.yaml``: parsed and validated once, at stage start.

Every key is required and unknown keys are rejected, so a typo such as
``dvc exp run -S train.lrr=1e-3`` fails loudly instead of silently adding a key
that nothing reads.
"""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Annotated, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from lungct.errors import UserError, first_line

PARAMS_FILE = Path("params.yaml")
URL_SCHEMES = ("http", "https", "file")  # what data.url may be
# The raw labels of the built-in synthetic cohort (class_balance keys, the dicom presets).
SYNTHETIC_CLASSES: tuple[str, ...] = ("normal", "benign", "malignant")

ClassName = Literal[SYNTHETIC_CLASSES]  # type: ignore[valid-type]
PositiveInt = Annotated[int, Field(gt=0)]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class BaseParams(_Section):
    seed: Annotated[int, Field(ge=0)]


class SyntheticParams(_Section):
    """The built-in phantom cohort (``data.source: synthetic``)."""

    patients: Annotated[int, Field(ge=3)]
    slices: Annotated[int, Field(ge=1, le=512)]
    image_size: Annotated[int, Field(ge=32, le=1024)]
    class_balance: dict[ClassName, Annotated[float, Field(gt=0)]]

    @model_validator(mode="after")
    def _enough_patients(self) -> SyntheticParams:
        if not self.class_balance:
            raise ValueError("class_balance: must name at least one class")
        # Every class needs a patient in each of train, val and test.
        need = 3 * len(self.class_balance)
        if self.patients < need:
            raise ValueError(
                f"patients: {self.patients} is too few for {len(self.class_balance)} classes "
                f"in three splits (need at least {need})"
            )
        return self


class DataParams(_Section):
    """Where the raw data comes from. Only the keys of the chosen source are used."""

    source: Literal["synthetic", "kaggle", "url", "path"]
    layout: Literal["auto", "dicom", "iqothnccd", "chest-ctscan"]
    kaggle_handle: str
    url: str
    sha256: str
    path: str
    max_bytes: Annotated[int, Field(gt=0)]  # refuse larger archives (decompression bombs)
    max_members: Annotated[int, Field(gt=0)]
    synthetic: SyntheticParams

    @model_validator(mode="after")
    def _source_is_complete(self) -> DataParams:
        if self.source == "kaggle" and not re.fullmatch(r"[\w.-]+/[\w.-]+", self.kaggle_handle):
            raise ValueError(
                f"kaggle_handle: '{self.kaggle_handle}' is not a Kaggle dataset handle "
                "(owner/dataset)"
            )
        if self.source == "url":
            scheme = self.url.split(":", 1)[0].lower() if ":" in self.url else ""
            if scheme not in URL_SCHEMES:
                raise ValueError(f"url: '{self.url}' is not an http, https or file URL")
            if not re.fullmatch(r"[0-9a-fA-F]{64}", self.sha256):
                raise ValueError("sha256: a url source needs the archive's sha256 (64 hex digits)")
        if self.source == "path" and not self.path:
            raise ValueError("path: a path source needs a folder or archive path")
        return self


class WindowParams(_Section):
    """A CT window in Hounsfield units."""

    center: float
    width: Annotated[float, Field(gt=0)]


class ConvertParams(_Section):
    # One window gives a grayscale PNG; three give one channel each (stored as RGB).
    windows: Annotated[list[WindowParams], Field(min_length=1, max_length=3)]
    # Window the first channel with the file's own Window Center/Width when it has one.
    file_window: bool
    image_size: Annotated[int, Field(ge=16, le=1024)]
    workers: Annotated[int, Field(ge=0, le=256)]  # processes; 0 = one per CPU core
    # Fail the stage when more than this share of the input files is skipped.
    max_skipped_fraction: Annotated[float, Field(ge=0, le=1)]

    @model_validator(mode="after")
    def _png_channels(self) -> ConvertParams:
        if len(self.windows) == 2:
            raise ValueError(
                "windows: give 1 window (grayscale) or 3 (one channel each); "
                "a 2-channel PNG would be read as gray + alpha"
            )
        return self


class SplitParams(_Section):
    # grouped: whole groups, stratified; official: the dataset's own folders;
    # random: image by image (the notebook projects' leaky protocol, for comparison only).
    strategy: Literal["grouped", "official", "random"]
    # What to do with groups or near duplicates found on two sides of the split.
    leakage: Literal["fail", "warn", "drop"]
    # A preset ("default": the layout's own classes; "binary": with/without cancer)
    # or a mapping of raw labels (folder names) to classes.
    classes: Literal["default", "binary"] | dict[str, str]
    # Images without a PatientID are grouped by perceptual hash: images whose pHash
    # differ in at most this many of 64 bits (and their chains) form one group.
    near_duplicate_distance: Annotated[int, Field(ge=0, le=32)]
    val_fraction: Annotated[float, Field(gt=0, lt=1)]
    test_fraction: Annotated[float, Field(gt=0, lt=1)]

    @model_validator(mode="after")
    def _leaves_train(self) -> SplitParams:
        if self.val_fraction + self.test_fraction >= 0.9:
            raise ValueError(
                "test_fraction: val_fraction + test_fraction must stay below 0.9 to leave a train "
                "set "
                f"(got {self.val_fraction + self.test_fraction:g})"
            )
        return self


class AugmentParams(_Section):
    """Random training-time transforms (Keras preprocessing layers, inactive at inference)."""

    flip: bool  # left-right mirror
    rotation: Annotated[float, Field(ge=0, le=0.5)]  # max angle, fraction of a full turn
    zoom: Annotated[float, Field(ge=0, lt=1)]  # max zoom in or out, fraction
    translation: Annotated[float, Field(ge=0, lt=1)]  # max shift, fraction of the side


class TrainParams(_Section):
    epochs: PositiveInt
    batch_size: PositiveInt
    lr: Annotated[float, Field(gt=0, le=1)]
    filters: Annotated[list[PositiveInt], Field(min_length=1, max_length=8)]
    # "cnn": the baseline CNN's conv blocks (filters, batch_norm, head); otherwise a
    # keras.applications network (filters and head unused).
    backbone: Literal["cnn", "mobilenet_v2", "efficientnet_b0"]
    pretrained: bool  # ImageNet weights for a backbone: needs internet the first time
    head: Literal["flatten", "global_max", "global_average"]
    dense_units: PositiveInt
    dropout: Annotated[float, Field(ge=0, lt=1)]
    batch_norm: bool
    augment: AugmentParams
    # "auto": weights inversely proportional to class frequency in the train split.
    class_weight: Literal["auto", "none"]
    # Stop when val loss has not improved for this many epochs and keep the best
    # weights; 0 trains all epochs and keeps the last ones.
    early_stopping_patience: Annotated[int, Field(ge=0)]
    lr_schedule: Literal["constant", "cosine"]
    cache: Literal["memory", "file", "none"]  # decoded-image cache of the input pipeline
    # "auto": MirroredStrategy over all GPUs when there are several, else the default.
    strategy: Literal["auto", "default", "mirrored"]


class EvaluateParams(_Section):
    batch_size: PositiveInt
    # Patient-level resamples for the 95 % intervals of accuracy and balanced accuracy; 0 = none.
    bootstrap: Annotated[int, Field(ge=0, le=100_000)]
    grid_images: Annotated[int, Field(ge=0, le=400)]  # test images in metrics/test_grid.png


class Params(_Section):
    base: BaseParams
    data: DataParams
    convert: ConvertParams
    split: SplitParams
    train: TrainParams
    evaluate: EvaluateParams

    @model_validator(mode="after")
    def _image_fits_network(self) -> Params:
        # Each conv block halves the image; the last feature map must keep at least 2x2 pixels.
        smallest = 2 * 2 ** len(self.train.filters)
        if self.convert.image_size < smallest:
            raise ValueError(
                f"convert.image_size: {self.convert.image_size} is too small for "
                f"{len(self.train.filters)} pooling blocks (train.filters); "
                f"need at least {smallest}"
            )
        return self


def _describe(err: dict) -> str:
    key = ".".join(str(part) for part in err["loc"])
    if err["type"] == "extra_forbidden":
        return f"{key}: unknown key"
    if err["type"] == "missing":
        return f"{key}: missing"
    if err["type"] == "value_error":
        # Our validators word their message as "<key relative to the section>: <problem>".
        msg = err["msg"].removeprefix("Value error, ")
        return f"{key}.{msg}" if key else msg
    got = repr(err["input"])
    got = got if len(got) <= 60 else got[:57] + "..."
    return f"{key}: {err['msg'].lower()} (got {got})"


def merge(base: dict, override: dict) -> dict:
    """``base`` with ``override`` laid over it, section by section (neither is changed);
    how tests and benchmarks derive small variants of params.yaml."""
    out = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


def parse_params(raw: object, source: str = str(PARAMS_FILE)) -> Params:
    """Validate an already-loaded params mapping; raise :class:`UserError` on the first problem."""
    if not isinstance(raw, dict):
        raise UserError(f"{source}: expected a mapping of sections, got {type(raw).__name__}")
    try:
        return Params.model_validate(raw)
    except ValidationError as exc:
        raise UserError(f"{source}: {_describe(exc.errors()[0])}") from None


def load_params(path: Path = PARAMS_FILE) -> Params:
    """Read and validate ``params.yaml``."""
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(f"{path}: not found (run stages from the project root)") from None
    except yaml.YAMLError as exc:
        raise UserError(f"{path}: not valid YAML ({first_line(exc)})") from None
    return parse_params(raw, str(path))
