"""The typed schema of ``params.yaml``: parsed and validated once, at stage start.

Every key is required and unknown keys are rejected, so a typo such as
``dvc exp run -S train.lrr=1e-3`` fails loudly instead of silently adding a key
that nothing reads. A key that only some values of another key read (:data:`GATES`)
holds its unset value while they do not, so a setting with no effect is an error too.
Every error about the file ends with how to get back to a good one
(:data:`RESTORE`). What each key means: docs/params.md.
"""

from __future__ import annotations

import copy
import re
import reprlib
import stat
import urllib.parse
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal, NamedTuple, Protocol

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    PlainSerializer,
    Strict,
    TypeAdapter,
    ValidationError,
    model_validator,
)

from lungct.errors import SkippedFile, UserError, first_line, printable
from lungct.limits import MAX_IMAGE_BYTES
from lungct.names import (
    AnnotationForm,
    Crop,
    Framing,
    Layout,
    TransferSyntax,
    check_class_names,
    choices,
)
from lungct.reasons import BAD_WINDOW

PARAMS_FILE = Path("params.yaml")
URL_SCHEMES = ("http", "https", "file")  # what data.url may be
# params.yaml is recorded in dvc.lock and DVC's run cache: credentials go elsewhere.
URL_CREDENTIALS_HINT = (
    "params are recorded in dvc.lock; give credentials in ~/.netrc (or $NETRC), or in "
    "LUNGCT_URL_USER and LUNGCT_URL_PASSWORD, or LUNGCT_URL_TOKEN (docs/data.md)"
)
# Query parameters named like these hold secrets (signed URLs, API keys).
_SECRET_QUERY = re.compile(r"token|secret|passw|pwd|key|sig|credential|auth|session", re.I)
MAX_DEPTH = 32  # nesting of params.yaml; its schema needs 4
MAX_INT = 2**63 - 1  # any integer in params
MAX_SEED = 2**32 - 1  # NumPy's legacy seeding (keras.utils.set_random_seed) takes no more
# owner/dataset or owner/dataset/versions/N: Kaggle's user and dataset slugs
KAGGLE_HANDLE = re.compile(
    r"[A-Za-z0-9][A-Za-z0-9_-]{0,49}/[A-Za-z0-9][A-Za-z0-9_-]{0,99}(/versions/[1-9][0-9]{0,8})?",
    re.ASCII,
)
# The data sources other than the built-in phantom (data.source).
EXTERNAL_SOURCES = ("kaggle", "url", "path")
# train.backbone besides the project's CNN: keras.applications networks.
APPLICATIONS = ("mobilenet_v2", "efficientnet_b0")
CROP_MM = 64.0  # convert.crop_mm where unset (null): the side of a lesion crop in mm
# How a user gets back from a bad params.yaml (an experiment's -S, a hand edit), after
# what to change: every error about the file ends with it.
RESTORE = "or restore the committed file: git checkout {path}"
# The raw labels of the built-in synthetic cohort (class_balance keys, the dicom presets).
SYNTHETIC_CLASSES: tuple[str, ...] = ("normal", "benign", "malignant")

ClassName = Literal[SYNTHETIC_CLASSES]  # type: ignore[valid-type]
# Every number in params has a range a real run can use (docs/params.md): past it, a run
# would exhaust the machine (memory, disk, time) before it says so.
BatchSize = Annotated[int, Field(gt=0, le=4096)]
MAX_EPOCHS = 10_000
MAX_DENSE_WEIGHTS = 2**28  # train.head: flatten: features x dense_units (1 GiB of float32)


def _quote(value: str, limit: int = 80) -> str:
    """A user's text in a one-line message: quoted, control characters escaped, cut short."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 4] + "..." + text[0]


def redact(url: str) -> str:
    """``url`` fit for messages, logs and SOURCE.json: without its query string and
    fragment (they may hold tokens), anything up to an ``@`` shown as ``***``, control
    characters escaped. Never raises, whatever the text."""
    text = re.split(r"[?#]", url, maxsplit=1)[0]
    scheme = re.match(r"[A-Za-z][A-Za-z0-9+.-]*://", text)
    head = scheme.group(0) if scheme else ""
    rest = text[len(head) :]
    if "@" in rest:
        rest = "***@" + rest.rpartition("@")[2]
    return printable(head + rest)


def url_secret(url: str) -> str | None:
    """Why ``url`` holds a secret that params.yaml must not (a user or password, a query
    parameter named like a token), or None. The message never shows the secret."""
    text = re.split(r"[?#]", url, maxsplit=1)[0]
    authority = text.split("//", 1)[1] if "//" in text else text
    if "@" in authority.split("/", 1)[0] or ("//" not in text and "@" in text):
        return f"holds a user name or password ({redact(url)}); {URL_CREDENTIALS_HINT}"
    query = url.split("?", 1)[1].split("#", 1)[0] if "?" in url else ""
    for name, _ in urllib.parse.parse_qsl(query, keep_blank_values=True):
        if _SECRET_QUERY.search(name):
            return (
                f"its query parameter {_quote(name, 40)} looks like a credential; "
                f"{URL_CREDENTIALS_HINT}"
            )
    return None


def url_problem(url: str) -> str | None:
    """Why ``url`` cannot be downloaded from (one line, never showing a secret), or None."""
    if not url:
        return "a url source needs data.url (an http, https or file URL)"
    if any(ch.isspace() or not ch.isprintable() for ch in url):
        return "contains a space or a control character (percent-encode it)"
    if secret := url_secret(url):
        return secret
    shown = _quote(redact(url))
    try:
        parts = urllib.parse.urlsplit(url)
        port = parts.port
    except ValueError as exc:  # worded here: urllib's message can quote the URL
        if "IPv6" in str(exc):
            return f"{shown}: the host has an unclosed '[' or a stray ']'"
        if "Port" in str(exc):
            return f"{shown}: the port is not a number from 1 to 65535"
        return f"{shown}: the host is not valid"
    scheme = parts.scheme.lower()
    if scheme not in URL_SCHEMES:
        return f"{shown} is not an http, https or file URL"
    if scheme == "file":
        if parts.netloc not in ("", "localhost"):
            return f"{shown}: a file URL names a file on this machine (file:///path)"
        return None if parts.path else f"{shown}: names no file"
    if not parts.hostname:
        return f"{shown}: has no host name"
    if port == 0:
        return f"{shown}: the port is not a number from 1 to 65535"
    return None


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class BaseParams(_Section):
    seed: Annotated[int, Field(ge=0, le=MAX_SEED)]


class SyntheticParams(_Section):
    """The built-in phantom cohort (``data.source: synthetic``)."""

    patients: Annotated[int, Field(ge=3, le=10_000)]
    slices: Annotated[int, Field(ge=1, le=512)]
    image_size: Annotated[int, Field(ge=32, le=1024)]
    class_balance: dict[ClassName, Annotated[float, Field(gt=0, le=1000, allow_inf_nan=False)]]
    annotations: choices(AnnotationForm)  # type: ignore[valid-type]
    transfer_syntax: choices(TransferSyntax)  # type: ignore[valid-type]

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
        mhd = self.annotations == AnnotationForm.LUNA16_MHD
        if mhd and self.transfer_syntax != TransferSyntax.EXPLICIT:
            raise ValueError("transfer_syntax: luna16-mhd writes MetaImage volumes, no DICOM")
        return self


class DataParams(_Section):
    """Where the raw data comes from. Only the keys of the chosen source are used."""

    source: Literal[("synthetic", *EXTERNAL_SOURCES)]  # type: ignore[valid-type]
    layout: choices(Layout, "auto")  # type: ignore[valid-type]  # auto: detect (and record)
    kaggle_handle: str
    url: str
    sha256: str
    path: str
    # refuse larger archives (decompression bombs); at most 16 TiB
    max_bytes: Annotated[int, Field(gt=0, le=2**44)]
    max_members: Annotated[int, Field(gt=0, le=10_000_000)]
    synthetic: SyntheticParams

    @model_validator(mode="after")
    def _source_is_complete(self) -> DataParams:
        # Whatever the source: the whole data section is recorded in dvc.lock.
        if secret := url_secret(self.url):
            raise ValueError(f"url: {secret}")
        if self.source == "kaggle" and not KAGGLE_HANDLE.fullmatch(self.kaggle_handle):
            raise ValueError(
                f"kaggle_handle: {_quote(self.kaggle_handle)} is not a Kaggle dataset handle "
                "(owner/dataset or owner/dataset/versions/N; letters, digits, - and _)"
            )
        if self.source == "url":
            if problem := url_problem(self.url):
                raise ValueError(f"url: {problem}")
            if not re.fullmatch(r"[0-9a-fA-F]{64}", self.sha256):
                raise ValueError("sha256: a url source needs the archive's sha256 (64 hex digits)")
        if self.source == "path" and not self.path:
            raise ValueError("path: a path source needs a folder or archive path")
        if self.source == "path" and "\x00" in self.path:
            raise ValueError("path: contains a NUL character")
        return self


class FieldProblem(ValueError):
    """What a field validator finds wrong with the value itself: reported as ``key:
    problem`` (a model validator's ValueError names the key in its message instead)."""


def _positive_width(width: float) -> float:
    if not width > 0:
        raise FieldProblem(f"{width:g} is not a positive width")
    return width


class Window(NamedTuple):
    """A CT window in Hounsfield units: a finite center, a finite positive width.
    ``{center, width}`` in params.yaml and the model contract; a ``(center, width)``
    tuple in code."""

    # HU: what 16-bit stored values can reach
    center: Annotated[float, Strict(), Field(ge=-65536, le=65536, allow_inf_nan=False)]
    width: Annotated[
        float, Strict(), Field(le=131072, allow_inf_nan=False), AfterValidator(_positive_width)
    ]


_WINDOW = TypeAdapter(Window)
# One window gives a grayscale PNG; three give one channel each (stored as RGB). A list or
# a tuple of windows, kept as a tuple (hashable); written as a list of {center, width}.
Windows = Annotated[
    list[Window],
    Field(min_length=1, max_length=3, strict=False),
    AfterValidator(tuple),
    PlainSerializer(lambda windows: [window._asdict() for window in windows]),
]
ImageBytes = Annotated[int, Field(gt=0, le=2**36)]  # at most 64 GiB
CropSide = Annotated[float, Field(ge=0, le=1000, allow_inf_nan=False)]  # mm


class PreprocessingSchema(_Section):
    """How raw files become model inputs, and the rules they must keep: the CT windows,
    whether the first channel takes the file's own window, the side of the square input,
    the 2.5-D context, the crop and the framing. :class:`ConvertParams` (params.yaml) and
    :class:`Preprocessing` (the model contract, lungct.contract) are both this schema."""

    windows: Windows
    file_window: bool
    image_size: Annotated[int, Field(ge=16, le=1024)]
    context_slices: Annotated[int, Field(ge=0, le=8)]
    crop: choices(Crop)  # type: ignore[valid-type]
    crop_mm: CropSide
    framing: choices(Framing)  # type: ignore[valid-type]

    @property
    def depth(self) -> int:
        """Slices stacked per example: the slice and its neighbours."""
        return 2 * self.context_slices + 1

    @property
    def channels(self) -> int:
        """Of the model input: each window of each stacked slice."""
        return len(self.windows) * self.depth

    @model_validator(mode="after")
    def _consistent(self) -> PreprocessingSchema:
        if len(self.windows) == 2:
            raise ValueError(
                "windows: give 1 window (grayscale) or 3 (one channel each); "
                "a 2-channel PNG would be read as gray + alpha"
            )
        if self.channels not in (1, 3):
            raise ValueError(
                f"context_slices: {self.context_slices} with {len(self.windows)} window(s) "
                f"gives {self.channels} channels; the converted PNGs hold 1 or 3 (use "
                "context_slices 1 with one window, or 0)"
            )
        # None: convert.crop_mm unset, CROP_MM (Preprocessing.from_params)
        if self.crop == Crop.LESION and self.crop_mm is not None and not self.crop_mm > 0:
            raise ValueError("crop_mm: a lesion crop needs a side above 0 mm")
        if self.framing != Framing.IMAGE and (self.context_slices or self.crop != Crop.NONE):
            raise ValueError(
                f"framing: {str(self.framing)!r} frames each image by itself; with "
                "context_slices or crop the slices of one example would be framed "
                "differently: set convert.framing: image with them"
            )
        return self


class _FrameLike(Protocol):  # lungct.io.dicom.CTFrame
    window: tuple[float, float] | None


# What a contract written before these keys existed means: single whole slices, the whole
# image; and the decoding limit predict and the app use (lungct.limits).
PREPROCESSING_DEFAULTS: dict[str, Any] = {
    "context_slices": 0,
    "crop": Crop.NONE.value,
    "crop_mm": 0.0,
    "framing": Framing.IMAGE.value,
    "max_image_bytes": MAX_IMAGE_BYTES,
}


class Preprocessing(PreprocessingSchema):
    """How raw files become model inputs (:class:`PreprocessingSchema`): the convert stage
    and train take it from params (:meth:`from_params`), predict, the app and the service
    from the model contract (:class:`lungct.contract.Contract`).
    ``Preprocessing(windows, file_window, image_size, **rest)``: ``windows`` as
    ``(center, width)`` pairs, the rest defaulting to :data:`PREPROCESSING_DEFAULTS`.

    ``max_image_bytes``, the largest declared image decoded (:mod:`lungct.limits`), guards
    the machine, not the model: it is not part of the contract (nor of equality)."""

    max_image_bytes: ImageBytes

    def __init__(self, windows: Any, file_window: Any, image_size: Any, **rest: Any) -> None:
        rest = {**PREPROCESSING_DEFAULTS, **rest}
        super().__init__(windows=windows, file_window=file_window, image_size=image_size, **rest)

    def _compared(self) -> tuple[object, ...]:
        return tuple(getattr(self, name) for name in PreprocessingSchema.model_fields)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Preprocessing):
            return NotImplemented
        return self._compared() == other._compared()

    def __hash__(self) -> int:
        return hash(self._compared())

    @classmethod
    def from_params(cls, params: ConvertParams) -> Preprocessing:
        """From the ``convert`` section of params.yaml (the convert stage and train; predict
        reads it from the model contract, :class:`lungct.contract.Contract`). Without a
        crop, ``crop_mm`` is unused and recorded as 0; with one, unset is :data:`CROP_MM`."""
        fields = {name: getattr(params, name) for name in PreprocessingSchema.model_fields}
        if params.crop == Crop.NONE:
            fields["crop_mm"] = 0.0
        elif params.crop_mm is None:
            fields["crop_mm"] = CROP_MM
        return cls(**fields, max_image_bytes=params.max_image_bytes)

    def to_json(self) -> dict[str, Any]:
        """The preprocessing as the contract (``models/labels.json``) and the service's
        ``GET /model`` write it."""
        return {
            "image_size": self.image_size,
            "channels": self.channels,
            "windows": [{"center": c, "width": w} for c, w in self.windows],
            "file_window": self.file_window,
            "context_slices": self.context_slices,
            "crop": {"kind": self.crop, "mm": self.crop_mm},
            "framing": self.framing,
        }

    def windows_for(self, frame: _FrameLike) -> list[tuple[float, float]]:
        """The windows of one frame: the configured ones, the first replaced by the file's
        own Window Center/Width when ``file_window`` is on and the file has one.

        A file window that is there but is no :class:`Window` (not a number, infinite,
        width not positive) skips the file (``bad_window``): the first channel was asked to
        be the file's own window, and this file's is damaged."""
        windows: list[tuple[float, float]] = list(self.windows)
        if self.file_window and frame.window is not None:
            center, width = frame.window
            try:
                windows[0] = _WINDOW.validate_python((float(center), float(width)))
            except ValidationError:
                raise SkippedFile(
                    BAD_WINDOW,
                    f"the file's Window Center/Width {center:g}/{width:g} is not a window "
                    "(file_window: true)",
                ) from None
        return windows


class AnnotationParams(_Section):
    """Slice labels of the annotated layouts (docs/annotations.md)."""

    min_readers: Annotated[int, Field(ge=1, le=4)]  # LIDC-IDRI readers who must mark a slice
    margin_mm: Annotated[float, Field(ge=0, le=1000, allow_inf_nan=False)]


class ConvertParams(PreprocessingSchema):
    """The ``convert`` section: the preprocessing (:class:`PreprocessingSchema`), and how
    the convert stage runs."""

    # null: unset (GATES), CROP_MM with convert.crop: lesion
    crop_mm: CropSide | None  # type: ignore[assignment]
    workers: Annotated[int, Field(ge=0, le=256)]  # processes; 0 = one per CPU core
    max_skipped_fraction: Annotated[float, Field(ge=0, le=1)]
    max_image_bytes: ImageBytes  # lungct.limits
    annotations: AnnotationParams


def _class_mapping(mapping: str | dict[str, str]) -> str | dict[str, str]:
    """``split.classes`` as a mapping (a preset name passes): each raw label to a class name
    (the one rule of :func:`lungct.names.class_name_problem`) or to "" (left out of the
    split), and two classes or more, checked before the split stage writes anything."""
    if isinstance(mapping, str):
        return mapping
    classes = sorted({name for name in mapping.values() if name != ""})
    try:
        check_class_names(classes)
    except ValueError as exc:
        raise FieldProblem(str(exc)) from None
    if len(classes) < 2:
        raise FieldProblem(
            f"a mapping must name two classes or more, got {len(classes)} "
            '(a raw label mapped to "" is left out)'
        )
    return mapping


class SplitParams(_Section):
    strategy: Literal["grouped", "official", "random"]
    leakage: Literal["fail", "warn", "drop"]  # groups or near duplicates across splits
    # a preset, or raw label: class
    classes: Annotated[
        Literal["default", "binary"] | dict[str, str], AfterValidator(_class_mapping)
    ]
    grouping: Literal["phash", "patient_likely"]  # images without a PatientID
    near_duplicate_distance: Annotated[int, Field(ge=0, le=32)]
    view_duplicate_distance: Annotated[int, Field(ge=0, le=32)]  # pHash of the model's view
    duplicate_similarity: Annotated[float, Field(ge=-1, le=1)]  # thumbnail correlation
    patient_distance: Annotated[int, Field(ge=1, le=64)]  # view pHash bits, one patient
    patient_similarity: Annotated[float, Field(ge=-1, lt=1)]  # thumbnail correlation, one patient
    val_fraction: Annotated[float, Field(gt=0, lt=1)]
    test_fraction: Annotated[float, Field(gt=0, lt=1)]
    folds: Annotated[int, Field(ge=0, le=20)]  # cross-validation; 0 = off

    @model_validator(mode="after")
    def _leaves_train(self) -> SplitParams:
        if self.folds == 1:
            raise ValueError("folds: 0 (off) or at least 2")
        if self.val_fraction + self.test_fraction >= 0.9:
            raise ValueError(
                "test_fraction: val_fraction + test_fraction must stay below 0.9 to leave a train "
                f"set (got {self.val_fraction + self.test_fraction:g})"
            )
        return self


class AugmentParams(_Section):
    """Random training-time transforms (Keras preprocessing layers, inactive at inference)."""

    flip: bool  # left-right mirror
    rotation: Annotated[float, Field(ge=0, le=0.5)]  # max angle, fraction of a full turn
    zoom: Annotated[float, Field(ge=0, lt=1)]  # max zoom in or out, fraction
    translation: Annotated[float, Field(ge=0, lt=1)]  # max shift, fraction of the side
    contrast: Annotated[float, Field(ge=0, lt=1)]  # scale about the mean by up to 1 +- this
    brightness: Annotated[float, Field(ge=0, le=1)]  # add up to +- this of the range


class CalibrationParams(_Section):
    """Fitted on the val split after training and stored with the model
    (:mod:`lungct.model.calibrate`)."""

    # temperature scaling: auto: where it lowers the loss of val patients it was not fitted
    # on (lungct.evaluation.calibration.choose_temperature); true: always; false: never
    temperature: Literal["auto"] | bool
    # "uncertain" below the lowest calibrated top probability at which the answered val
    # images are this accurate, leaving at most max_uncertain of them unanswered
    answered_accuracy: Annotated[float, Field(gt=0, le=1)]
    max_uncertain: Annotated[float, Field(ge=0, lt=1)]  # 0: no answer is uncertain


class TrainParams(_Section):
    epochs: Annotated[int, Field(gt=0, le=MAX_EPOCHS)]
    batch_size: BatchSize  # per replica
    lr: Annotated[float, Field(gt=0, le=1)]
    filters: Annotated[
        list[Annotated[int, Field(gt=0, le=1024)]], Field(min_length=1, max_length=8)
    ]
    convs_per_block: Annotated[int, Field(ge=1, le=4)]
    # "cnn": the conv blocks (filters, batch_norm, head); else a keras.applications network
    backbone: Literal[("cnn", *APPLICATIONS)]  # type: ignore[valid-type]
    pretrained: bool  # ImageNet weights for a backbone: needs internet the first time
    head: Literal["flatten", "global_max", "global_average"]
    dense_units: Annotated[int, Field(gt=0, le=8192)]
    dropout: Annotated[float, Field(ge=0, lt=1)]
    batch_norm: bool
    augment: AugmentParams
    class_weight: Literal["auto", "none"]
    # 0: all epochs, the last weights
    early_stopping_patience: Annotated[int, Field(ge=0, le=MAX_EPOCHS)]
    lr_schedule: Literal["constant", "cosine"]
    cache: Literal["memory", "file", "none"]  # decoded-image cache of the input pipeline
    strategy: Literal["auto", "default", "mirrored", "multi_worker"]
    precision: Literal["auto", "float32", "mixed_bfloat16"]  # of the conv blocks in training
    ensemble: bool  # the saved model: the cv stage's fold models averaged
    seeds: Annotated[int, Field(ge=1, le=20)]  # more than 1: a seed ensemble
    calibration: CalibrationParams


class EvaluateParams(_Section):
    batch_size: BatchSize
    bootstrap: Annotated[int, Field(ge=0, le=100_000)]  # resamples for the 95 % intervals
    grid_images: Annotated[int, Field(ge=0, le=400)]  # test images in metrics/test_grid.png
    tta: bool  # test-time augmentation (lungct.model.network.tta_model)


class Gate(NamedTuple):
    """``key`` is read only while ``governor`` holds one of ``reads``; otherwise it must
    hold ``unset``, the value params.yaml gives it while nothing reads it. An unset key
    that is read is asked for by its section's own check (a url source without data.url),
    or takes its default (:data:`CROP_MM`)."""

    key: str
    governor: str
    reads: tuple[object, ...]
    unset: object


# Every key that only some values of another key read: one that holds anything but its
# unset value while those values are not chosen would be silently ignored (docs/params.md).
GATES = (
    Gate("data.kaggle_handle", "data.source", ("kaggle",), ""),
    Gate("data.url", "data.source", ("url",), ""),
    Gate("data.sha256", "data.source", ("url",), ""),
    Gate("data.path", "data.source", ("path",), ""),
    Gate("data.layout", "data.source", EXTERNAL_SOURCES, "auto"),  # the phantom's: its form
    Gate("convert.crop_mm", "convert.crop", (Crop.LESION.value,), None),
    Gate("train.pretrained", "train.backbone", APPLICATIONS, False),
    Gate("train.precision", "train.backbone", ("cnn",), "auto"),  # applications: float32
)


def yaml_value(value: object) -> str:
    """A scalar as params.yaml writes it: ``""``, ``null``, ``false``, ``auto``, ``0``."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    return printable(str(value)) if value != "" else '""'


class UnreadKey(ValueError):
    """A :data:`GATES` key set while its governor does not read it; ``fix`` says how to
    unset it."""

    def __init__(self, gate: Gate, governor: object) -> None:
        reads = " or ".join(", ".join(map(str, gate.reads)).rsplit(", ", 1))
        super().__init__(
            f"{gate.key}: set, but {gate.governor} is {yaml_value(governor)} "
            f"(only {gate.governor}: {reads} reads it)"
        )
        self.fix = f"unset it ({gate.key}: {yaml_value(gate.unset)})"


def _value(params: BaseModel, key: str) -> object:
    for part in key.split("."):
        params = getattr(params, part)
    return params


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
        side = self.convert.image_size // 2 ** len(self.train.filters)
        dense = side * side * self.train.filters[-1] * self.train.dense_units
        if self.train.head == "flatten" and dense > MAX_DENSE_WEIGHTS:
            raise ValueError(
                f"train.dense_units: {self.train.dense_units} units on a flattened "
                f"{side} x {side} x {self.train.filters[-1]} feature map are {dense:,} "
                f"weights, over {MAX_DENSE_WEIGHTS:,}: use fewer units, more pooling blocks "
                "(train.filters) or head: global_max"
            )
        if self.train.ensemble and not self.split.folds:
            raise ValueError(
                "train.ensemble: averages the cross-validation fold models; set split.folds "
                "(2 or more) too"
            )
        for gate in GATES:
            governor = _value(self, gate.governor)
            if governor not in gate.reads and _value(self, gate.key) != gate.unset:
                raise UnreadKey(gate, governor)
        return self


_SHORT = reprlib.Repr()  # bounded: an aliased YAML structure can be huge
_SHORT.maxlevel, _SHORT.maxdict, _SHORT.maxlist, _SHORT.maxstring = 2, 3, 3, 50


def describe_error(err: Mapping[str, Any]) -> str:
    """One error of a pydantic ValidationError as ``key: problem`` (the input shown unless
    it may hold a credential); the model contract words its own the same way."""
    key = ".".join(printable(str(part)) for part in err["loc"])
    if err["type"] == "extra_forbidden":
        return f"{key}: unknown key"
    if err["type"] == "missing":
        return f"{key}: missing"
    if err["type"] == "value_error":
        msg = err["msg"].removeprefix("Value error, ")
        if isinstance(err.get("ctx", {}).get("error"), FieldProblem):
            return f"{key}: {msg}"
        # Our model validators word theirs as "<key relative to the section>: <problem>".
        return f"{key}.{msg}" if key else msg
    got = _SHORT.repr(err["input"])
    if "@" in got or "?" in got:  # what a URL with credentials or a token holds: not shown
        return f"{key}: {err['msg'].lower()}"
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


class _LongInt:
    """An integer in params.yaml with more digits than Python reads (4300, see
    ``sys.set_int_max_str_digits``); :func:`parse_params` reports it by key."""

    def __init__(self, digits: int) -> None:
        self.digits = digits

    def __repr__(self) -> str:
        return f"<an integer of {self.digits} digits>"


class _Loader(yaml.SafeLoader):
    """``yaml.safe_load``, stricter: a key given twice in one mapping and nesting deeper
    than ``MAX_DEPTH`` are errors naming the line; a value YAML resolves but Python cannot
    build (``2024-13-01``) is a YAML error with its line, not a traceback."""

    _depth = 0

    def compose_node(self, parent, index):  # type: ignore[no-untyped-def]
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH:
                problem = f"nested deeper than {MAX_DEPTH} levels"
                raise yaml.composer.ComposerError(None, None, problem, self.peek_event().start_mark)
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def construct_object(self, node, deep=False):  # type: ignore[no-untyped-def]
        try:
            return super().construct_object(node, deep)
        except (ValueError, OverflowError, TypeError) as exc:
            raise yaml.constructor.ConstructorError(
                None, None, printable(first_line(exc)), node.start_mark
            ) from None

    def construct_mapping(self, node, deep=False):  # type: ignore[no-untyped-def]
        if isinstance(node, yaml.MappingNode):
            first: dict[object, yaml.Node] = {}
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue
                key = self.construct_object(key_node, deep=True)
                try:
                    earlier = first.setdefault(key, key_node)
                except TypeError:  # an unhashable key: SafeLoader names it
                    continue
                if earlier is not key_node:
                    line = earlier.start_mark.line + 1
                    problem = f"duplicate key {_quote(str(key), 40)} (first given at line {line})"
                    raise yaml.constructor.ConstructorError(
                        None, None, problem, key_node.start_mark
                    )
        return super().construct_mapping(node, deep)

    def construct_yaml_int(self, node):  # type: ignore[no-untyped-def]
        try:
            return super().construct_yaml_int(node)
        except ValueError:  # too many digits for int()
            return _LongInt(len(str(self.construct_scalar(node))))


_Loader.add_constructor("tag:yaml.org,2002:int", _Loader.construct_yaml_int)


def _yaml_problem(exc: yaml.YAMLError) -> str:
    mark = getattr(exc, "problem_mark", None)
    problem = printable(getattr(exc, "problem", None) or first_line(exc))
    return f"line {mark.line + 1}: {problem}" if mark is not None else problem


def bad_params(source: object, problem: str, fix: str = "correct it") -> UserError:
    """The one-line error about a params file: what is wrong, then how to get back
    (``fix``, or :data:`RESTORE`)."""
    return UserError(f"{source}: {problem}; {fix}, {RESTORE.format(path=source)}")


def _recovery(err: Mapping[str, Any]) -> str:
    """How to undo what a pydantic error of :func:`parse_params` is about."""
    if err["type"] == "extra_forbidden":
        return "remove it"
    if err["type"] == "missing":
        return "add it (docs/params.md)"
    error = err.get("ctx", {}).get("error")
    return error.fix if isinstance(error, UnreadKey) else "correct it"


def _check_tree(raw: object, source: str) -> None:
    """What the schema cannot say: nesting deeper than ``MAX_DEPTH`` and integers beyond
    ``MAX_INT`` (Python reads any size; NumPy, TensorFlow and DVC do not), named by key."""
    seen: set[int] = set()  # YAML aliases share objects: each is checked once
    stack: list[tuple[object, tuple[object, ...]]] = [(raw, ())]
    while stack:
        value, path = stack.pop()
        shown = ".".join(printable(str(part)) for part in path[:6])
        shown += ".." if len(path) > 6 else ""
        if isinstance(value, _LongInt) or (
            isinstance(value, int) and not isinstance(value, bool) and abs(value) > MAX_INT
        ):
            raise bad_params(source, f"{shown}: integer too large (at most {MAX_INT})")
        if isinstance(value, dict | list) and id(value) not in seen:
            seen.add(id(value))
            if len(path) >= MAX_DEPTH:
                raise bad_params(source, f"{shown}: nested deeper than {MAX_DEPTH} levels")
            items = value.items() if isinstance(value, dict) else enumerate(value)
            stack.extend((item, (*path, key)) for key, item in items)


def parse_params(raw: object, source: str = str(PARAMS_FILE)) -> Params:
    """Validate an already-loaded params mapping; raise :class:`UserError` on the first
    problem (:func:`bad_params`)."""
    if not isinstance(raw, dict):
        raise bad_params(source, f"expected a mapping of sections, got {type(raw).__name__}")
    _check_tree(raw, source)
    try:
        return Params.model_validate(raw)
    except ValidationError as exc:
        err = exc.errors()[0]
        raise bad_params(source, describe_error(err), _recovery(err)) from None


def load_params(path: Path = PARAMS_FILE) -> Params:
    """Read and validate ``params.yaml``: a regular file of UTF-8 YAML (:class:`_Loader`)."""
    try:
        if not stat.S_ISREG(path.stat().st_mode):  # a FIFO would block the read
            raise UserError(f"{path}: not a regular file")
        raw = yaml.load(path.read_bytes().decode("utf-8"), Loader=_Loader)  # a SafeLoader
    except FileNotFoundError:
        raise bad_params(path, "not found", "run stages from the project root") from None
    except UnicodeDecodeError as exc:
        problem = f"not UTF-8 text (byte {exc.start} cannot be decoded)"
        raise bad_params(path, problem, "save it as UTF-8") from None
    except yaml.YAMLError as exc:
        raise bad_params(path, f"not valid YAML ({_yaml_problem(exc)})") from None
    except RecursionError:
        raise bad_params(path, "not valid YAML (nested too deeply)") from None
    return parse_params(raw, str(path))
