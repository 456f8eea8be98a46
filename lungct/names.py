"""The project's named choices, each defined once: what params.yaml accepts, what the
phantom writes, what convert and the layouts test, what the docs tables list
(``tests/test_names.py`` checks them against docs/params.md and docs/data.md).

Each is a :class:`~enum.StrEnum`: a member *is* its string (``Layout.DICOM == "dicom"``,
``json.dumps`` and f-strings give the bare value), so what is written to disk is the same
text as before. A pydantic field takes them as :func:`choices` (a ``Literal`` of the values:
the plain strings of params.yaml and JSON, with pydantic's ``input should be 'a' or 'b'``).

Nothing here imports the rest of the project: params, the phantom and the readers all
import this module.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from enum import StrEnum
from typing import Any, Literal


class Layout(StrEnum):
    """How a raw dataset is organised (``data.layout``; lungct.data.layouts, docs/data.md)."""

    DICOM = "dicom"  # a DICOM tree: labels.csv by PatientID, or class subfolders
    IQOTHNCCD = "iqothnccd"  # IQ-OTH/NCCD class folders
    CHEST_CTSCAN = "chest-ctscan"  # Kaggle Chest CT-Scan, Data/{train,valid,test}/<class>/
    LIDC = "lidc"  # LIDC-IDRI: DICOM series and the readers' XML
    LUNA16 = "luna16"  # LUNA16: annotations.csv with DICOM series or MetaImage volumes
    LUNG_PET_CT_DX = "lung-pet-ct-dx"  # Lung-PET-CT-Dx: DICOM and Pascal VOC boxes
    FOLDERS = "folders"  # any other image dataset in class folders


# The layouts labelled slice by slice by their annotation files (lungct.annotations).
ANNOTATED_LAYOUTS = (Layout.LIDC, Layout.LUNA16, Layout.LUNG_PET_CT_DX)
# The layouts of exported PNG/JPG slices (no DICOM): one file, one image.
IMAGE_LAYOUTS = (Layout.IQOTHNCCD, Layout.CHEST_CTSCAN, Layout.FOLDERS)


class AnnotationForm(StrEnum):
    """The form the synthetic cohort is written in (``data.synthetic.annotations``)."""

    LABELS = "labels"  # labels.csv by PatientID (layout dicom)
    LIDC = "lidc"  # LIDC-IDRI reader XML
    LUNA16 = "luna16"  # annotations.csv with the DICOM series
    LUNA16_MHD = "luna16-mhd"  # the same with MetaImage volumes
    VOC = "voc"  # Lung-PET-CT-Dx boxes


# The layout each form is read as.
FORM_LAYOUTS: dict[AnnotationForm, Layout] = {
    AnnotationForm.LABELS: Layout.DICOM,
    AnnotationForm.LIDC: Layout.LIDC,
    AnnotationForm.LUNA16: Layout.LUNA16,
    AnnotationForm.LUNA16_MHD: Layout.LUNA16,
    AnnotationForm.VOC: Layout.LUNG_PET_CT_DX,
}


class TransferSyntax(StrEnum):
    """The lossless transfer syntaxes the phantom writes (``data.synthetic.transfer_syntax``;
    their UIDs: lungct.phantom.transfer_syntaxes.TRANSFER_SYNTAXES)."""

    EXPLICIT = "explicit"
    IMPLICIT = "implicit"
    DEFLATED = "deflated"
    BIG_ENDIAN = "big-endian"
    RLE = "rle"
    JPEG_LOSSLESS = "jpeg-lossless"  # process 14, selection value 1
    JPEG_LOSSLESS_P14 = "jpeg-lossless-p14"
    JPEG_LS = "jpeg-ls"
    JPEG2000 = "jpeg2000"


class Framing(StrEnum):
    """What of each image is resized to the model input (``convert.framing``)."""

    IMAGE = "image"  # the whole image
    BODY = "body"  # the body's bounding box (lungct.io.images.body_box)
    LUNGS = "lungs"  # the lungs' bounding box, with a margin (lungct.io.images.lung_box)


class Crop(StrEnum):
    """Which part of a slice an example shows (``convert.crop``)."""

    NONE = "none"  # the whole slice
    LESION = "lesion"  # a crop_mm square around the annotated lesion


def choices(enum: type[StrEnum], *extra: str) -> Any:
    """``Literal[...]`` of the values of ``enum`` (after ``extra``, choices that are no
    member): a pydantic field of the plain strings."""
    return Literal[(*extra, *(member.value for member in enum))]


# A class name: it becomes a folder of data/splits, a column of predict's CSV, a DICOM code
# and text on a screen, so it is letters, digits, "_" and "-", starts with a letter or a
# digit (never "." or "..", never a spreadsheet formula) and is at most CLASS_NAME_MAX long.
CLASS_NAME_MAX = 64
CLASS_NAME = re.compile(rf"[A-Za-z0-9][A-Za-z0-9_-]{{0,{CLASS_NAME_MAX - 1}}}")
CLASS_NAME_RULE = (
    f"letters, digits, '_' and '-', starting with a letter or a digit, "
    f"at most {CLASS_NAME_MAX} characters"
)


# The answer given in place of a class when the model is not sure enough
# (lungct.contract.Contract.answer): no class may be called so, in any case.
UNCERTAIN = "uncertain"


def class_name_problem(name: object) -> str | None:
    """Why ``name`` is no class name (:data:`CLASS_NAME_RULE`), or None. The one check of a
    class name, wherever one enters: params, the model contract, a layout's folder names."""
    if not isinstance(name, str):
        return f"class name {name!r} is not text"
    if not CLASS_NAME.fullmatch(name):
        shown = ascii(name[:CLASS_NAME_MAX]) + ("..." if len(name) > CLASS_NAME_MAX else "")
        return f"class name {shown} is not {CLASS_NAME_RULE}"
    if name.lower() == UNCERTAIN:
        return f"class name {name!r} is reserved: it is the answer of an uncertain prediction"
    return None


def check_class_names(names: Iterable[object]) -> None:
    """A ValueError (the caller names the file or key) unless ``names`` are distinct class
    names (:func:`class_name_problem`)."""
    names = list(names)
    for name in names:
        problem = class_name_problem(name)
        if problem:
            raise ValueError(problem)
    if len(set(names)) != len(names):
        twice = sorted({name for name in names if names.count(name) > 1})
        raise ValueError(f"class name(s) {', '.join(twice)} given twice")
